"""Tests of iunet_nb.interactive.geodesic: GeodisTK-exact raster scan, numpy fallback, iUnet weight map.

References are computed independently: a literal Python transcription of GeodisTK's C++ loop,
an exact 26-neighbour Dijkstra (scipy.sparse.csgraph) with the same edge cost, and closed-form
distances along straight lines.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from iunet_nb.errors import ConfigError, GeometryError, InputError, IunetError
from iunet_nb.interactive import geodesic as geo
from iunet_nb.interactive.geodesic import geodesic_distance, scribble_weight_map

SPACING = (2.5, 0.8, 0.7)  # (z, y, x) mm, anisotropic and all different
BACKENDS = ["numba", "numpy"]


# -- independent references ------------------------------------------------------------------
def _geodistk_transcription(img: np.ndarray, seeds: np.ndarray, spacing, lam: float,
                            iteration: int) -> np.ndarray:
    """GeodisTK 0.1.7 ``geodesic3d_raster_scan`` (channel 1), transcribed line by line.

    Offsets are written as GeodisTK writes them (three arrays dd/dh/dw), float arithmetic as in
    C++: float32 everywhere except the speed, which C++ evaluates in double.
    """
    f32 = np.float32
    depth, height, width = img.shape
    sp = [f32(s) for s in spacing]
    dist = np.where(seeds > 0, f32(0.0), f32(1.0e10)).astype(np.float32)
    dd_f = [-1, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1]
    dh_f = [-1, -1, -1, 0, 0, -1, -1, -1, 0, -1, -1, -1, 0]
    dw_f = [-1, 0, 1, -1, 0, -1, 0, 1, -1, -1, 0, 1, -1]
    dd_b = [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    dh_b = [0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1]
    dw_b = [1, -1, 0, 1, 1, -1, 0, 1, 0, 1, -1, 0, 1]

    def local(dd, dh, dw):
        out = []
        for i in range(13):
            acc = f32(0.0)
            if dd[i] != 0:
                acc = f32(acc + sp[0] * sp[0])
            if dh[i] != 0:
                acc = f32(acc + sp[1] * sp[1])
            if dw[i] != 0:
                acc = f32(acc + sp[2] * sp[2])
            out.append(f32(math.sqrt(float(acc))))
        return out

    local_f, local_b = local(dd_f, dh_f, dw_f), local(dd_b, dh_b, dw_b)
    lam_f = f32(lam)

    def visit(d, h, w, dd, dh, dw, loc):
        p_dis = dist[d, h, w]
        p_value = img[d, h, w]
        for i in range(13):
            nd, nh, nw = d + dd[i], h + dh[i], w + dw[i]
            if nd < 0 or nd >= depth or nh < 0 or nh >= height or nw < 0 or nw >= width:
                continue
            q_dis = dist[nd, nh, nw]
            l2dis = f32(abs(p_value - img[nd, nh, nw]))
            speed = f32((1.0 - float(lam_f)) + float(lam_f) / (float(l2dis) + 1e-5))
            delta_d = f32(loc[i] / speed)
            temp_dis = f32(q_dis + delta_d)
            if temp_dis < p_dis:
                p_dis = temp_dis
        dist[d, h, w] = p_dis

    for _ in range(iteration):
        for d in range(depth):
            for h in range(height):
                for w in range(width):
                    visit(d, h, w, dd_f, dh_f, dw_f, local_f)
        for d in range(depth - 1, -1, -1):
            for h in range(height - 1, -1, -1):
                for w in range(width - 1, -1, -1):
                    visit(d, h, w, dd_b, dh_b, dw_b, local_b)
    return dist


def _dijkstra_reference(img: np.ndarray, seeds: np.ndarray, spacing, lam: float) -> np.ndarray:
    """Exact 26-neighbour geodesic distance (float64) with GeodisTK's edge cost."""
    img64 = img.astype(np.float64)
    shape = img.shape
    index = np.arange(img.size).reshape(shape)
    rows, cols, costs = [], [], []
    for off in itertools.product((-1, 0, 1), repeat=3):
        if off <= (0, 0, 0):  # each undirected edge once: the 13 lexicographically positive
            continue
        src = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(off, shape))
        dst = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(off, shape))
        local = math.sqrt(sum(s * s for o, s in zip(off, spacing) if o != 0))
        speed = (1.0 - lam) + lam / (np.abs(img64[src] - img64[dst]) + 1e-5)
        rows.append(index[src].ravel())
        cols.append(index[dst].ravel())
        costs.append((local / speed).ravel())
    graph = coo_matrix((np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(img.size, img.size)).tocsr()
    dist = dijkstra(graph, directed=False, indices=np.flatnonzero(seeds), min_only=True)
    return dist.reshape(shape)


@pytest.fixture
def tiny_case() -> tuple[np.ndarray, np.ndarray]:
    """6 x 7 x 8 noise image in [-1, 1] (winding geodesic paths) and two seeds."""
    rng = np.random.default_rng(42)
    img = rng.uniform(-1.0, 1.0, size=(6, 7, 8)).astype(np.float32)
    seeds = np.zeros(img.shape, np.uint8)
    seeds[0, 0, 0] = 1
    seeds[5, 2, 6] = 2
    return img, seeds


# -- GeodisTK equivalence --------------------------------------------------------------------
def test_offset_tables_hold_each_of_26_neighbours_once():
    both = [tuple(o) for o in geo._FORWARD_OFFSETS] + [tuple(o) for o in geo._BACKWARD_OFFSETS]
    expected = {o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)}
    assert len(both) == 26 and set(both) == expected
    assert {tuple(-o) for o in geo._FORWARD_OFFSETS} == {tuple(o) for o in geo._BACKWARD_OFFSETS}


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("iterations", [1, 2])
def test_numba_port_matches_geodistk_transcription(lam, iterations):
    rng = np.random.default_rng(7)
    img = rng.uniform(-1, 1, size=(4, 5, 6)).astype(np.float32)
    seeds = np.zeros(img.shape, np.uint8)
    seeds[3, 4, 0] = 1
    seeds[1, 0, 5] = 1
    expected = _geodistk_transcription(img, seeds, SPACING, lam, iterations)
    got = geodesic_distance(img, seeds, SPACING, lam=lam, iterations=iterations, backend="numba")
    assert got.dtype == np.float32 and got.shape == img.shape
    np.testing.assert_array_equal(got, expected)  # bit for bit: IEEE float32 ops, same order
    if iterations == 1 and lam > 0:
        # One pass does not reach everything along a path: the reference is itself unconverged,
        # so agreement here is agreement of the scan order, not only of the limit.
        assert not np.allclose(expected, _dijkstra_reference(img, seeds, SPACING, lam),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 1, 8), (5, 3, 2), (1, 1, 1), (6, 7, 9)])
@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_numba_port_matches_the_transcription_on_thin_and_odd_grids(shape, lam):
    """The row-vectorised scan with its padding and edge-cost table against the voxel-by-voxel
    transcription, bit for bit, on grids with a single plane, row or column."""
    rng = np.random.default_rng(sum(shape))
    img = rng.uniform(-1, 1, size=shape).astype(np.float32)
    seeds = np.zeros(shape, np.uint8)
    seeds[tuple(n - 1 for n in shape)] = 1
    seeds[0, shape[1] // 2, 0] = 1
    expected = _geodistk_transcription(img, seeds, SPACING, lam, 4)
    got = geodesic_distance(img, seeds, SPACING, lam=lam, iterations=4, backend="numba")
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous and (got.size == 1 or got.max() > 0)


def test_numba_scan_refuses_a_grid_larger_than_memory(monkeypatch):
    monkeypatch.setattr("iunet_nb.memory.available_bytes", lambda: 10_000)
    img = np.zeros((8, 16, 16), np.float32)
    seeds = np.zeros(img.shape, np.uint8)
    seeds[0, 0, 0] = 1
    with pytest.raises(InputError, match="geodesic distance on a 8 x 16 x 16 grid"):
        geodesic_distance(img, seeds, backend="numba")
    assert geodesic_distance(img, seeds, backend="numpy").max() > 0


# -- exact shortest path ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0])
def test_many_iterations_converge_to_dijkstra(tiny_case, backend, lam):
    img, seeds = tiny_case
    exact = _dijkstra_reference(img, seeds, SPACING, lam)
    got = geodesic_distance(img, seeds, SPACING, lam=lam, iterations=30, backend=backend)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-4)
    assert np.all(got[seeds > 0] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_iterations_are_an_upper_bound(tiny_case, backend):
    img, seeds = tiny_case
    seeds = np.zeros_like(seeds)
    seeds[0, 0, 0] = 1  # one corner seed: the longest, most winding paths
    exact = _dijkstra_reference(img, seeds, SPACING, 1.0)
    got = geodesic_distance(img, seeds, SPACING, lam=1.0, iterations=4, backend=backend)
    assert np.all(got >= exact * (1 - 1e-6) - 1e-6)
    if backend == "numba":
        # GeodisTK's 4 iterations are not converged on this image: the bound is not trivial.
        assert (got - exact).max() > 1e-2


def test_both_backends_converge_to_the_same_answer(tiny_case):
    img, seeds = tiny_case
    a = geodesic_distance(img, seeds, SPACING, lam=0.8, iterations=20, backend="numba")
    b = geodesic_distance(img, seeds, SPACING, lam=0.8, iterations=20, backend="numpy")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # ...but not after a single iteration: they are different algorithms.
    a1 = geodesic_distance(img, seeds, SPACING, lam=0.8, iterations=1, backend="numba")
    b1 = geodesic_distance(img, seeds, SPACING, lam=0.8, iterations=1, backend="numpy")
    assert np.abs(a1 - b1).max() > 1e-2


# -- lam = 0: chamfer-26 Euclidean distance in mm, spacing in (z, y, x) order -----------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_lam_zero_is_euclidean_with_zyx_spacing(backend):
    rng = np.random.default_rng(3)
    img = rng.uniform(-1, 1, size=(5, 6, 9)).astype(np.float32)  # ignored when lam = 0
    seeds = np.zeros(img.shape, np.uint8)
    seeds[2, 3, 0] = 1
    d = geodesic_distance(img, seeds, SPACING, lam=0.0, iterations=4, backend=backend)
    k = np.arange(9)
    np.testing.assert_allclose(d[2, 3, :], 0.7 * k, rtol=1e-6)  # along x: spacing_mm[2]
    np.testing.assert_allclose(d[:, 3, 0], 2.5 * np.abs(np.arange(5) - 2), rtol=1e-6)  # z
    np.testing.assert_allclose(d[2, :, 0], 0.8 * np.abs(np.arange(6) - 3), rtol=1e-6)  # y
    # one diagonal y-x step plus two x steps (the chamfer-26 path)
    np.testing.assert_allclose(d[2, 4, 3], math.hypot(0.8, 0.7) + 2 * 0.7, rtol=1e-6)
    # one full 3D diagonal step
    np.testing.assert_allclose(d[3, 4, 1], math.sqrt(2.5**2 + 0.8**2 + 0.7**2), rtol=1e-6)


def test_constant_image_with_lam_one_gives_tiny_distances():
    img = np.full((3, 4, 5), 0.3, np.float32)
    seeds = np.zeros(img.shape, np.uint8)
    seeds[0, 0, 0] = 1
    d = geodesic_distance(img, seeds, (1.0, 1.0, 1.0), lam=1.0)
    # cost = local * (0 + 1e-5): the farthest voxel is 2 diagonal + 2 straight steps away
    np.testing.assert_allclose(d[2, 3, 4], (2 * math.sqrt(3) + 1 + math.sqrt(2)) * 1e-5,
                               rtol=1e-4)


# -- numba missing --------------------------------------------------------------------------
def test_falls_back_to_numpy_with_a_warning_when_numba_is_missing(tiny_case, monkeypatch,
                                                                   caplog):
    img, seeds = tiny_case
    monkeypatch.setattr(geo, "_HAVE_NUMBA", False)
    monkeypatch.setattr(geo, "_warned_no_numba", False)
    with caplog.at_level(logging.WARNING, logger="iunet_nb.interactive.geodesic"):
        got = geodesic_distance(img, seeds, SPACING, iterations=2)
    assert any("numba cannot be imported" in r.getMessage() for r in caplog.records)
    expected = geodesic_distance(img, seeds, SPACING, iterations=2, backend="numpy")
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(ConfigError, match="numba cannot be imported"):
        geodesic_distance(img, seeds, SPACING, backend="numba")


# -- input checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("image, seeds, spacing, kwargs, exc, match", [
    (np.zeros((4, 5)), np.ones((4, 5)), SPACING, {}, InputError, "3D"),
    (np.zeros((0, 5, 5)), np.ones((0, 5, 5)), SPACING, {}, InputError, "non-empty"),
    (np.zeros((2, 3, 4), complex), np.ones((2, 3, 4)), SPACING, {}, InputError, "real numbers"),
    (np.full((2, 3, 4), np.nan), np.ones((2, 3, 4)), SPACING, {}, InputError, "NaN/inf"),
    (np.zeros((2, 3, 4)), np.ones((2, 4, 3)), SPACING, {}, InputError, "does not match"),
    (np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), SPACING, {}, InputError, "at least one seed"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), (1.0, 1.0), {}, GeometryError, "3 positive"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), (1.0, 0.0, 1.0), {}, GeometryError, "positive"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), (1.0, -2, 1.0), {}, GeometryError, "positive"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), (1.0, np.inf, 1), {}, GeometryError, "finite"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), ("a", 1, 1), {}, GeometryError, "3 numbers"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), SPACING, {"lam": 1.5}, ConfigError, r"\[0, 1\]"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), SPACING, {"lam": "high"}, ConfigError, "lam"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), SPACING, {"iterations": 0}, ConfigError, ">= 1"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), SPACING, {"iterations": 2.5}, ConfigError,
     "integer"),
    (np.zeros((2, 3, 4)), np.ones((2, 3, 4)), SPACING, {"backend": "cuda"}, ConfigError,
     "backend"),
])
def test_bad_inputs_raise(image, seeds, spacing, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        geodesic_distance(image, seeds, spacing, **kwargs)


def test_integer_image_is_cast_like_geodistk():
    img = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    seeds = np.zeros(img.shape, np.uint8)
    seeds[0, 0, 0] = 1
    np.testing.assert_array_equal(geodesic_distance(img, seeds, SPACING),
                                  geodesic_distance(img.astype(np.float32), seeds, SPACING))


# -- weight map ------------------------------------------------------------------------------
def test_weight_map_marks_26_neighbours_as_uncertain():
    img = np.zeros((5, 6, 7), np.float32)
    scribbles = np.zeros(img.shape, np.uint8)
    scribbles[2, 3, 3] = 1
    w = scribble_weight_map(img, scribbles, (1.0, 1.0, 1.0), threshold=2.0, lam=0.0,
                            normalisation="none")
    # expected, from the Euclidean distance: 26 neighbours are at most sqrt(3) < 2 away and
    # everything else at least 2 (chamfer-26 distances never undercut Euclidean ones)
    zz, yy, xx = np.indices(img.shape)
    euclid = np.sqrt((zz - 2) ** 2 + (yy - 3) ** 2 + (xx - 3) ** 2)
    expected = np.where(euclid < 2.0, 0.0, 1.0).astype(np.float32)
    expected[2, 3, 3] = 3.0
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, expected)
    assert (w == 0).sum() == 26


@pytest.mark.parametrize("normalisation, threshold, band", [
    ("max", 0.25, 1),       # max distance 10 mm: d < 2.5 mm
    ("diagonal", 0.25, 2),  # diagonal |(1, 1, 22)| = 22.05 mm: d < 5.51 mm
    ("none", 3.0, 1),       # d < 3 mm
    ("none", 4.5, 2),       # d < 4.5 mm
])
def test_weight_map_normalisations(normalisation, threshold, band):
    img = np.zeros((1, 1, 11), np.float32)
    scribbles = np.zeros(img.shape, np.uint8)
    scribbles[0, 0, 5] = 2  # a background scribble counts like a foreground one
    w = scribble_weight_map(img, scribbles, (1.0, 1.0, 2.0), threshold=threshold, lam=0.0,
                            normalisation=normalisation)
    expected = np.ones(11, np.float32)
    expected[5 - band:5 + band + 1] = 0.0
    expected[5] = 3.0
    np.testing.assert_array_equal(w[0, 0], expected)


def test_weight_map_with_lam_one_stops_at_edges():
    img = np.full((3, 6, 10), -1.0, np.float32)
    img[:, :, 5:] = 1.0  # an edge of contrast 2 between x = 4 and x = 5
    scribbles = np.zeros(img.shape, np.uint8)
    scribbles[1, 2, 1] = 1
    w = scribble_weight_map(img, scribbles, (2.0, 1.0, 1.0), scribble_weight=5.0)
    expected = np.ones(img.shape, np.float32)
    expected[:, :, :5] = 0.0  # the whole homogeneous side, however far in mm
    expected[1, 2, 1] = 5.0
    np.testing.assert_array_equal(w, expected)


def test_weight_map_bands_around_fg_and_bg_scribbles():
    img = np.zeros((1, 3, 20), np.float32)
    scribbles = np.zeros(img.shape, np.uint8)
    scribbles[0, 1, 2] = 1
    scribbles[0, 1, 16] = 2
    w = scribble_weight_map(img, scribbles, (1.0, 1.0, 1.0), threshold=1.5, lam=0.0,
                            normalisation="none")
    assert w[0, 1, 2] == 3.0 and w[0, 1, 16] == 3.0
    for x in (2, 16):
        assert np.all(w[0, :, x - 1:x + 2][w[0, :, x - 1:x + 2] != 3.0] == 0.0)
    assert np.all(w[0, :, 4:15] == 1.0) and np.all(w[0, :, 18:] == 1.0)


def test_weight_map_without_scribbles_is_all_ones():
    img = np.zeros((2, 3, 4), np.float32)
    w = scribble_weight_map(img, np.zeros(img.shape, np.uint8), (1.0, 1.0, 1.0))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, np.ones(img.shape, np.float32))


@pytest.mark.parametrize("scribbles, kwargs, exc, match", [
    (np.full((2, 3, 4), 3, np.uint8), {}, InputError, r"found labels \[3\]"),
    (np.zeros((2, 3, 5), np.uint8), {}, InputError, "does not match"),
    (np.ones((2, 3, 4), np.uint8), {"normalisation": "mean"}, ConfigError, "normalisation"),
    (np.ones((2, 3, 4), np.uint8), {"threshold": -0.1}, ConfigError, "threshold"),
    (np.ones((2, 3, 4), np.uint8), {"scribble_weight": float("nan")}, ConfigError,
     "scribble_weight"),
    (np.zeros((2, 3, 4), np.uint8), {"lam": 2.0}, ConfigError, "lam"),
])
def test_weight_map_bad_inputs_raise(scribbles, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        scribble_weight_map(np.zeros((2, 3, 4), np.float32), scribbles, (1.0, 1.0, 1.0),
                            **kwargs)


def test_errors_share_the_package_base_class():
    with pytest.raises(IunetError):
        scribble_weight_map(np.zeros((2, 3, 4), np.float32), np.ones((2, 3, 4), np.uint8),
                            (1.0, 1.0))


def test_geodistk_slow_diagonal_is_reproduced():
    """GeodisTK's table split makes (+z, -y) diagonals advance ~1 voxel per iteration."""
    img = np.zeros((6, 6, 1), np.float32)
    seeds = np.zeros(img.shape, np.uint8)
    seeds[0, 5, 0] = 1  # the path to (5, 0, 0) is 5 steps of (+z, -y)
    slow = geodesic_distance(img, seeds, (1.0, 1.0, 1.0), lam=0.0, iterations=1,
                             backend="numba")
    assert slow[5, 0, 0] > 5 * math.sqrt(2) + 0.5
    np.testing.assert_allclose(slow[5, 0, 0],
                               _geodistk_transcription(img, seeds, (1, 1, 1), 0.0, 1)[5, 0, 0])
    converged = geodesic_distance(img, seeds, (1.0, 1.0, 1.0), lam=0.0, iterations=6,
                                  backend="numba")
    np.testing.assert_allclose(converged[5, 0, 0], 5 * math.sqrt(2), rtol=1e-6)
    # the mirrored diagonal (+z, +y) is exact after one iteration, and so is the plane sweep
    seeds_mirror = np.zeros(img.shape, np.uint8)
    seeds_mirror[0, 0, 0] = 1
    fast = geodesic_distance(img, seeds_mirror, (1.0, 1.0, 1.0), lam=0.0, iterations=1,
                             backend="numba")
    np.testing.assert_allclose(fast[5, 5, 0], 5 * math.sqrt(2), rtol=1e-6)
    sweep = geodesic_distance(img, seeds, (1.0, 1.0, 1.0), lam=0.0, iterations=1,
                              backend="numpy")
    np.testing.assert_allclose(sweep[5, 0, 0], 5 * math.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("iterations", [1, 4])
def test_numba_port_matches_the_real_geodistk(lam, iterations):
    """Against GeodisTK itself when it is installed (`bash scripts/setup.sh test` builds it)."""
    geodistk = pytest.importorskip(
        "GeodisTK", reason="GeodisTK is not installed; `bash scripts/setup.sh test` builds it "
        "(CPPFLAGS=-DNPY_IN_ARRAY=NPY_ARRAY_IN_ARRAY pip install --no-build-isolation GeodisTK)")
    rng = np.random.default_rng(7)
    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(rng.random((12, 20, 24)), 1.5).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    seeds = np.zeros(image.shape, np.uint8)
    seeds[6, 10, 3:15] = 1
    seeds[2, 4, 20] = 1
    spacing = (2.5, 0.8, 0.7)
    ours = geodesic_distance(image, seeds, spacing, lam=lam, iterations=iterations,
                             backend="numba")
    theirs = geodistk.geodesic3d_raster_scan(image, seeds, list(map(float, spacing)), lam,
                                             iterations)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-5)
