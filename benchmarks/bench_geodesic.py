"""Benchmark of iunet_nb.interactive.geodesic: numba raster scan vs its baselines.

Prints, for 24x64x64 and 48x128x128 volumes (and 128x256x256 with ``--large``):

* the best-of-N time of the shipped numba raster scan (rows vectorised, edge costs computed
  once), of the straightforward voxel-by-voxel numba port it replaced (kept in this file as the
  baseline; it must give the same distances bit for bit, which is checked), and of the numpy
  fallback (same ``iterations``), with the ratios, all measured interleaved in one process;
* the max error of each after ``iterations`` against a converged reference (60 numba
  iterations), to show the accuracy bought by the time;
* the first-call time of the numba kernel in a fresh process, once with an empty numba cache
  (JIT compile) and once with the cache that call wrote (``cache=True``: load only).

With ``--band`` it also measures the uncertain band of :func:`scribble_weight_map` (threshold
0.2) on a 64x64x24 working grid of a pancreas box (a CT synthesised from a BTCV label map) and
of a spleen box (real CT, 3D-IRCADb 1.7), for each normalisation and ``lam`` in {0, 1}. It needs
``../shared/data``.

Usage::

    python benchmarks/bench_geodesic.py [--large] [--repeat 3] [--iterations 4] [--band]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from scipy import ndimage

from iunet_nb.interactive import geodesic as _geodesic
from iunet_nb.interactive.geodesic import NORMALISATIONS, geodesic_distance, scribble_weight_map

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPACING_MM = (3.3, 1.5, 2.3)  # (z, y, x): a 64x64x24 working grid of a ~150x100x80 mm box


def _test_volume(shape: tuple[int, int, int], rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed noise in [-1, 1] and a scribble: 5 seed voxels plus a short line."""
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    img = (2 * (img - img.min()) / (img.max() - img.min()) - 1).astype(np.float32)
    seeds = np.zeros(shape, np.uint8)
    for _ in range(5):
        seeds[tuple(int(rng.integers(0, n)) for n in shape)] = 1
    z, y = shape[0] // 2, shape[1] // 2
    seeds[z, y, shape[2] // 4: shape[2] // 2] = 2
    return img, seeds


_FIRST_CALL = (
    "import time; t0 = time.perf_counter(); import numpy as np; "
    "from iunet_nb.interactive.geodesic import geodesic_distance; t1 = time.perf_counter(); "
    "img = np.zeros((4, 5, 6), np.float32); s = np.zeros(img.shape, np.uint8); s[0, 0, 0] = 1; "
    "geodesic_distance(img, s, backend='numba'); t2 = time.perf_counter(); "
    "print(f'{1e3 * (t1 - t0):.0f} {1e3 * (t2 - t1):.0f}')")


def first_call_ms() -> tuple[float, float, float]:
    """(import ms, first call with an empty numba cache ms, first call from cache ms)."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):
            res = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                 capture_output=True, text=True)
            out.append([float(v) for v in res.stdout.split()])
    return out[0][0], out[0][1], out[1][1]


# -- the baseline: the voxel-by-voxel port the shipped scan replaced (2026-11-29) -----------
@numba.njit(cache=True, nogil=True)
def _voxel_pass(image, dist, offsets, local, lam, backward):  # type: ignore[no-untyped-def]
    depth, height, width = image.shape
    if backward:
        d0, d1, step, h0, h1, w0, w1 = depth - 1, -1, -1, height - 1, -1, width - 1, -1
    else:
        d0, d1, step, h0, h1, w0, w1 = 0, depth, 1, 0, height, 0, width
    for d in range(d0, d1, step):
        for h in range(h0, h1, step):
            for w in range(w0, w1, step):
                p_dis = dist[d, h, w]
                p_val = image[d, h, w]
                for i in range(offsets.shape[0]):
                    nd, nh, nw = d + offsets[i, 0], h + offsets[i, 1], w + offsets[i, 2]
                    if nd < 0 or nd >= depth or nh < 0 or nh >= height or nw < 0 or nw >= width:
                        continue
                    speed = np.float32((1.0 - lam) + lam / (abs(p_val - image[nd, nh, nw])
                                                            + 1e-5))
                    temp_dis = dist[nd, nh, nw] + local[i] / speed
                    if temp_dis < p_dis:
                        p_dis = temp_dis
                dist[d, h, w] = p_dis


def voxel_by_voxel(image: np.ndarray, seeds: np.ndarray, spacing, lam: float,
                   iterations: int) -> np.ndarray:
    """The previous kernel: one voxel at a time, bounds-checked, edge costs recomputed."""
    sp = np.asarray(spacing, np.float32)
    fwd, bwd = _geodesic._FORWARD_OFFSETS, _geodesic._BACKWARD_OFFSETS
    local_f, local_b = _geodesic._local_distances(fwd, sp), _geodesic._local_distances(bwd, sp)
    dist = np.where(seeds != 0, np.float32(0.0), np.float32(_geodesic._FAR)).astype(np.float32)
    image = np.ascontiguousarray(image, np.float32)
    for _ in range(iterations):
        _voxel_pass(image, dist, fwd, local_f, np.float32(lam), False)
        _voxel_pass(image, dist, bwd, local_b, np.float32(lam), True)
    return dist


def _best_ms_interleaved(fns: list, repeat: int) -> list[float]:
    """Best-of-``repeat`` ms of each function, run in turn so that load hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [1e3 * b for b in best]


def bench(shapes: list[tuple[int, int, int]], repeat: int, iterations: int) -> None:
    imp, cold, warm = first_call_ms()
    print(f"numba first call in a fresh process: JIT compile {cold:.0f} ms, from cache "
          f"{warm:.0f} ms (import of iunet_nb.interactive.geodesic: {imp:.0f} ms)")
    print(f"iterations={iterations}, spacing_mm={SPACING_MM}, best of {repeat}, interleaved; "
          "'x voxel': the voxel-by-voxel port's time over the shipped scan's")
    print(f"{'shape':>14} {'lam':>4} {'numba ms':>9} {'voxel ms':>9} {'x voxel':>8} "
          f"{'numpy ms':>9} {'x numpy':>8} {'numba err':>10} {'numpy err':>10} {'max d':>8}")
    rng = np.random.default_rng(0)
    for shape in shapes:
        img, seeds = _test_volume(shape, rng)
        for lam in (1.0, 0.0):
            def run(backend: str, it: int = iterations) -> np.ndarray:
                return geodesic_distance(img, seeds, SPACING_MM, lam, it, backend=backend)
            if not np.array_equal(run("numba"), voxel_by_voxel(img, seeds, SPACING_MM, lam,
                                                                 iterations)):
                raise SystemExit(f"{shape}, lam {lam}: the shipped scan and the voxel-by-voxel "
                                 "port disagree; they must match bit for bit")
            t_nb, t_vx, t_np = _best_ms_interleaved(
                [lambda: run("numba"),
                 lambda: voxel_by_voxel(img, seeds, SPACING_MM, lam, iterations),
                 lambda: run("numpy")], repeat)
            if img.size <= 48 * 128 * 128:
                ref = run("numba", 60)
                err_nb = f"{np.abs(run('numba') - ref).max():.3g}"
                err_np = f"{np.abs(run('numpy') - ref).max():.3g}"
                dmax = f"{ref.max():.3g}"
            else:
                err_nb = err_np = dmax = "-"
            name = "x".join(map(str, shape))
            print(f"{name:>14} {lam:>4.1f} {t_nb:>9.1f} {t_vx:>9.1f} {t_vx / t_nb:>8.2f} "
                  f"{t_np:>9.1f} {t_np / t_nb:>8.2f} {err_nb:>10} {err_np:>10} {dmax:>8}",
                  flush=True)


# -- uncertain band on a working grid ---------------------------------------------------------
_BTCV_HU = {0: -90.0, 1: 120.0, 2: 160.0, 3: 160.0, 4: 10.0, 5: 40.0, 6: 110.0, 7: 30.0,
            8: 190.0, 9: 170.0, 10: 180.0, 11: 100.0, 12: 50.0, 13: 50.0}


def _btcv_pancreas_case(rng: np.random.Generator):
    from iunet_nb.io.images import read_label_map
    labels = read_label_map(SHARED_DATA / "btcv_labels" / "0001.nii.gz")
    lut = np.array([_BTCV_HU[i] for i in range(14)], np.float32)
    ct = lut[np.clip(labels.array.astype(int), 0, 13)]
    ct += rng.normal(0.0, 20.0, ct.shape).astype(np.float32)
    return "pancreas, BTCV 0001 synthetic CT", ct, (labels.array == 11), labels.geometry


def _ircadb_spleen_case(rng: np.random.Generator):
    from iunet_nb.io.images import read_dicom_mask_series, read_image
    folder = SHARED_DATA / "ircadb" / "1.7"
    ct = read_image(folder / "PATIENT_DICOM")
    mask = read_dicom_mask_series(folder / "MASKS_DICOM.zip", "spleen")
    return "spleen, 3D-IRCADb 1.7 real CT", ct.array, mask.array > 0, ct.geometry


def band(iterations: int) -> None:
    from iunet_nb.model.preprocess import Box, PreprocessConfig, crop_mask, preprocess_image
    if not SHARED_DATA.is_dir():
        print(f"--band needs {SHARED_DATA}; skipped")
        return
    rng = np.random.default_rng(0)
    print("\nuncertain band (w = 0) at threshold 0.2 on the 24x64x64 working grid; foreground "
          "scribble: the organ voxels of the central axial slice's central row")
    print(f"{'case':>34} {'lam':>4} {'norm':>9} {'scale':>8} {'%grid':>6} {'%organ':>7} "
          f"{'%outside':>8} {'p50 mm':>7} {'p95 mm':>7} {'max mm':>7}")
    for make in (_btcv_pancreas_case, _ircadb_spleen_case):
        try:
            name, ct, organ, geometry = make(rng)
        except Exception as exc:  # noqa: BLE001 - a measurement, report and go on
            print(f"{make.__name__}: could not load ({exc})")
            continue
        x, record = preprocess_image(ct, Box.from_mask(organ), PreprocessConfig())
        organ_w = crop_mask(organ.astype(np.uint8), record) > 0
        spacing = record.working_geometry(geometry).spacing_mm
        z = int(np.round(np.nonzero(organ_w)[0].mean()))
        ys = np.nonzero(organ_w[z])[0]
        y = int(np.round(ys.mean()))
        scribbles = np.zeros(x.shape, np.uint8)
        scribbles[z, y][organ_w[z, y]] = 1
        edt = ndimage.distance_transform_edt(scribbles == 0, sampling=spacing)
        ext = np.array(x.shape) * np.array(spacing)
        print(f"{name}: working spacing (z, y, x) {tuple(round(s, 2) for s in spacing)} mm, "
              f"box {tuple(round(e) for e in ext)} mm, scribble {int(scribbles.sum())} voxels")
        for lam in (0.0, 1.0):
            dist = geodesic_distance(x, scribbles, spacing, lam, iterations)
            for norm in NORMALISATIONS:
                if norm == "none":
                    continue
                w = scribble_weight_map(x, scribbles, spacing, lam=lam, iterations=iterations,
                                        normalisation=norm)
                zero = w == 0
                scale = dist.max() if norm == "max" else float(np.sqrt((ext ** 2).sum()))
                p50, p95, pmax = (np.percentile(edt[zero], [50, 95, 100]) if zero.any()
                                  else (0.0, 0.0, 0.0))
                print(f"{'':>34} {lam:>4.1f} {norm:>9} {scale:>8.3g} "
                      f"{100 * zero.mean():>6.1f} {100 * zero[organ_w].mean():>7.1f} "
                      f"{100 * zero[~organ_w].mean():>8.1f} {p50:>7.1f} {p95:>7.1f} "
                      f"{pmax:>7.1f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="also time 128x256x256")
    parser.add_argument("--repeat", type=int, default=7, help="best of this many runs")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--band", action="store_true", help="measure the weight-map band")
    args = parser.parse_args(argv)
    shapes = [(24, 64, 64), (48, 128, 128)] + ([(128, 256, 256)] if args.large else [])
    bench(shapes, args.repeat, args.iterations)
    if args.band:
        band(args.iterations)


if __name__ == "__main__":
    main()
