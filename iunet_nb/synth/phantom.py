"""The procedural abdomen phantom: a label map drawn from jittered ellipsoids and tubes
(:func:`phantom_labels`), synthesised into CT (:func:`make_phantom`), and the liver
grown to the spleen in a BTCV map (:func:`grow_liver_to_spleen`, an anatomical
variant). No data needed: the bundled sample and the fast tests are made from it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError, InputError
from ..io.volume import Geometry, Volume
from .generator import BTCV, GENERATOR_VERSION, PHANTOM_LABELS, SynthConfig, synthesize_ct

__all__ = ["grow_liver_to_spleen", "make_phantom", "phantom_labels"]


class _Grid:
    """Physical axes (mm) of the phantom grid; shapes are evaluated in their bounding box only."""

    def __init__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
        self.x, self.y, self.z = x, y, z

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
        sl = []
        for v, a, b in zip((self.z, self.y, self.x), lo[::-1], hi[::-1]):
            i0, i1 = np.searchsorted(v, a), np.searchsorted(v, b, side="right")
            sl.append(slice(int(i0), int(max(i1, i0))))
        Z = self.z[sl[0]][:, None, None]
        Y = self.y[sl[1]][None, :, None]
        X = self.x[sl[2]][None, None, :]
        return tuple(sl), (X, Y, Z)


def grow_liver_to_spleen(labels: Volume, rng: np.random.Generator | int | None = None, *,
                         width_mm: tuple[float, float] = (10.0, 25.0),
                         cover_mm: tuple[float, float] | None = None,
                         label_table: Mapping[str, int] = BTCV) -> Volume:
    """An anatomical augmentation: the liver grown over background until it touches the spleen.

    Some livers have a long left lobe that reaches, or wraps around, the spleen ("beaver
    tail" liver); in portal-venous CT the two then meet with the same HU and no visible edge.
    In only 6 of the 30 BTCV maps does the liver come within 4 mm of the spleen (at most 988
    voxels), and a spleen model trained on them took the left lobe of 3D-IRCADb 1.7 for
    spleen (``docs/realism.md``, section 4). This adds liver where ``d_liver + d_spleen <=
    gap + width`` (an ellipsoid-like bridge around the shortest liver-spleen segment, ``gap``
    the shortest distance, ``width`` drawn from ``width_mm``), on background voxels only, so
    no organ is overwritten and the spleen is unchanged.

    With ``cover_mm`` the grown liver also spreads as a sheet over the spleen's surface: on
    background within 8-20 mm of the spleen (thickness drawn per map) and within ``spread``
    mm (drawn from ``cover_mm``) of where the two organs meet. On 3D-IRCADb 1.7 the left lobe
    lies over the spleen's upper pole like this for a dozen slices, and every spleen model
    trained on bridges alone took that lobe for spleen (``docs/realism.md``, section 12).

    Args:
        labels: integer label map with ``label_table``'s liver and spleen values. Not modified.
        rng: seed or Generator for the width.
        width_mm: ``(low, high)`` range of the extra path length in mm (> 0).
        cover_mm: ``(low, high)`` range of how far the sheet spreads from the contact in mm
            (> 0); None: the bridge alone (the draws for it come after the width's, so
            without it a map is grown exactly as before the option existed).
        label_table: organ name -> label value; needs ``"liver"`` and ``"spleen"``.

    Returns:
        A new label map on the same geometry; ``labels`` itself when the liver or the spleen
        is absent.

    Raises:
        ConfigError: a bad ``width_mm`` or ``cover_mm``, or a table without liver/spleen.
    """
    ranges = {"width_mm": width_mm} if cover_mm is None else {"width_mm": width_mm,
                                                                "cover_mm": cover_mm}
    for name, value in ranges.items():
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan
        if not (0 < lo <= hi and np.isfinite(hi)):
            raise ConfigError(f"{name} must be (low, high) with 0 < low <= high, got {value!r}")
    lo, hi = (float(v) for v in width_mm)
    if "liver" not in label_table or "spleen" not in label_table:
        raise ConfigError("grow_liver_to_spleen needs 'liver' and 'spleen' in the label table")
    rng = np.random.default_rng(rng)
    arr = np.asarray(labels.array)
    liver, spleen = arr == label_table["liver"], arr == label_table["spleen"]
    if not liver.any() or not spleen.any():
        return labels
    sp = labels.geometry.spacing_mm
    d_liver = ndi.distance_transform_edt(~liver, sampling=sp)
    d_spleen = ndi.distance_transform_edt(~spleen, sampling=sp)
    gap = float(d_liver[spleen].min())
    bridge = (arr == 0) & (d_liver + d_spleen <= gap + rng.uniform(lo, hi))
    out = arr.copy()
    out[bridge] = label_table["liver"]
    if cover_mm is not None:
        thickness, spread = rng.uniform(8.0, 20.0), rng.uniform(*(float(v) for v in cover_mm))
        grown = out == label_table["liver"]
        reach = 2.0 * max(sp)    # "meet": both organs within two voxels
        contact = (ndi.distance_transform_edt(~grown, sampling=sp) <= reach) & (d_spleen <= reach)
        if contact.any():
            d_contact = ndi.distance_transform_edt(~contact, sampling=sp)
            sheet = (out == 0) & (d_spleen <= thickness) & (d_contact <= spread)
            out[sheet] = label_table["liver"]
    return labels.with_array(out)


def _tube(g: _Grid, out: np.ndarray, value: int, pts: np.ndarray, radii: np.ndarray,
          flat: float = 1.0) -> np.ndarray:
    """Paint voxels within ``radii`` (mm) of the sampled curve ``pts`` (k, 3) (X, Y, Z).

    Y distances are divided by ``flat`` (an AP-flattened cross-section). Returns the box mask.
    """
    pad = float(radii.max()) + 1.0
    sl, (X, Y, Z) = g.box(pts.min(0) - pad, pts.max(0) + pad)
    best = np.full(out[sl].shape, np.inf, np.float32)
    for c, rad in zip(pts, radii):
        d = ((X - c[0]) ** 2 + ((Y - c[1]) / flat) ** 2 + (Z - c[2]) ** 2) / rad ** 2
        np.minimum(best, d, out=best)
    hit = best <= 1.0
    if value:
        out[sl][hit] = value
    full = np.zeros(out.shape, bool)
    full[sl] = hit
    return full


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _polyline(points: list[tuple[float, float, float]], step: float = 3.0) -> np.ndarray:
    pts = [np.asarray(points[0], float)]
    for a, b in itertools.pairwise(points):
        a, b = np.asarray(a, float), np.asarray(b, float)
        n = max(2, int(np.linalg.norm(b - a) / step))
        pts += list(a + (b - a) * np.linspace(0, 1, n)[1:, None])
    return np.array(pts)


def phantom_labels(rng: np.random.Generator | int | None = None, *,
                   shape_zyx: tuple[int, int, int] = (48, 128, 128),
                   spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5),
                   pad_to_body: bool = True) -> Volume:
    """A procedural abdomen label map (:data:`PHANTOM_LABELS`), no data needed.

    Physical frame: LPS millimetres with identity direction (x to the patient's left, y
    posterior, z superior), pancreas near ``(0, 0, 0)``. Organs are jittered ellipsoids and
    tubes: liver (right lobe + left lobe), spleen, kidneys (right lower), stomach, gallbladder,
    adrenals, aorta, IVC, SMA, portal and splenic veins, duodenal C-loop, and a pancreas whose
    head lies in the duodenal C next to the IVC, whose body crosses anterior to the SMA and
    aorta, and whose tail reaches the splenic hilum, 60-130 mL by construction.

    Args:
        rng: seed or Generator.
        shape_zyx: voxels ``(z, y, x)``; with ``pad_to_body`` the in-plane grid is enlarged
            (centred) so that the whole body fits, as :func:`make_phantom` needs.
        spacing_mm: ``(z, y, x)`` voxel size in mm.
        pad_to_body: enlarge y/x to at least 400 x 340 mm.

    Returns:
        uint8 label map Volume.

    Raises:
        InputError: shape below 8 x 32 x 32 or spacing not positive.
    """
    rng = np.random.default_rng(rng)
    shape = tuple(int(n) for n in shape_zyx)
    if len(shape) != 3 or min(shape[0], 8) < 8 or min(shape[1:]) < 32:
        raise InputError(f"phantom shape must be (z, y, x) with at least 8 x 32 x 32 voxels, got "
                         f"{shape_zyx}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise InputError(f"spacing_mm must be 3 positive numbers (z, y, x), got {spacing_mm}")
    sz, sy, sx = (float(s) for s in spacing_mm)
    nz, ny, nx = shape
    if pad_to_body:
        ny, nx = max(ny, int(np.ceil(340 / sy))), max(nx, int(np.ceil(400 / sx)))
    z = ((np.arange(nz) - (nz - 1) / 2) * sz).astype(np.float32)
    y = ((np.arange(ny) - (ny - 1) / 2) * sy + 5.0).astype(np.float32)
    x = ((np.arange(nx) - (nx - 1) / 2) * sx).astype(np.float32)
    g = _Grid(x, y, z)
    lab = np.zeros((nz, ny, nx), np.uint8)
    T = PHANTOM_LABELS

    def jit(c: tuple[float, float, float], s: float = 6.0) -> np.ndarray:
        return np.asarray(c, float) + rng.uniform(-s, s, 3)

    def ellipsoid(value: int, c: Any, r: Any, jitter: bool = True) -> np.ndarray:
        cc = jit(c) if jitter else np.asarray(c, float)
        rr = np.asarray(r, float) * (rng.uniform(0.88, 1.12) if jitter else 1.0)
        sl, (X, Y, Z) = g.box(cc - rr, cc + rr)
        hit = ((X - cc[0]) / rr[0]) ** 2 + ((Y - cc[1]) / rr[1]) ** 2 + ((Z - cc[2]) / rr[2]) ** 2 <= 1
        if value:
            lab[sl][hit] = value
        full = np.zeros(lab.shape, bool)
        full[sl] = hit
        return full

    ellipsoid(T["liver"], (-80, 5, 45), (58, 70, 70))
    ellipsoid(T["liver"], (-10, -55, 60), (55, 25, 35))
    ellipsoid(T["stomach"], (45, -45, 30), (42, 32, 45))
    ellipsoid(T["spleen"], (100, 35, 40), (26, 42, 50))
    ellipsoid(T["right_kidney"], (-68, 40, -15), (26, 22, 52))
    ellipsoid(T["left_kidney"], (68, 40, -5), (26, 22, 52))
    ellipsoid(T["gallbladder"], (-55, -45, 5), (14, 14, 30))
    ellipsoid(T["right_adrenal"], (-40, 25, 45), (5, 12, 15))
    ellipsoid(T["left_adrenal"], (42, 25, 40), (5, 12, 15))
    duo = _polyline([(-15, -40, 25), (-55, -12, 20), (-60, -5, -5), (-55, 0, -38),
                     (-10, -12, -45), (20, -10, -35)])
    _tube(g, lab, T["duodenum"], duo, np.full(len(duo), rng.uniform(10, 13)))

    # pancreas: bulbous head in the C-loop, body over SMA/aorta, tail to the splenic hilum
    head, ctrl, tail = jit((-38, -8, -12), 4), jit((5, -38, 0), 4), jit((82, 12, 14), 4)
    curve = _bezier(head, ctrl, tail)
    target_ml = rng.uniform(60, 130)
    t = np.linspace(0, 1, len(curve))
    prof = np.interp(t, [0, 0.3, 0.7, 1], [16, 11, 10, 8]) * rng.uniform(0.9, 1.1)
    flat = rng.uniform(0.65, 0.85)
    hr = np.array([20, 16, 24]) * rng.uniform(0.9, 1.1)
    voxel_ml = sz * sy * sx / 1000.0
    for _ in range(4):
        panc = _tube(g, lab, 0, curve, prof, flat) | ellipsoid(0, head, hr, jitter=False)
        ml = panc.sum() * voxel_ml
        f = np.clip(target_ml / max(ml, 1e-3), 0.6, 1.6)
        if abs(f - 1) < 0.03:
            break
        prof, hr = prof * f ** 0.5, hr * f ** (1 / 3)
    lab[panc] = T["pancreas"]
    ao_c = jit((15, 12, 0), 3)
    Y2, X2 = y[:, None], x[None, :]
    lab[:, (X2 - ao_c[0]) ** 2 + (Y2 - ao_c[1]) ** 2 <= 11.0 ** 2] = T["aorta"]
    lab[:, ((X2 - ao_c[0] + 40) / 12) ** 2 + ((Y2 - ao_c[1] + 2) / 9) ** 2 <= 1] = T["ivc"]
    sma = _polyline([(ao_c[0], ao_c[1] - 8, 25), (ao_c[0] - 3, -6, 10), (ao_c[0] - 3, -4, -80)])
    _tube(g, lab, T["sma"], sma, np.full(len(sma), 4.0))
    off = np.array([0.0, 1.0, 0.0])
    k0 = int(0.35 * len(curve))
    sv = curve[k0:] + off * (prof[k0:, None] * flat + 5)
    conf = curve[k0] + off * (prof[k0] * flat + 6)
    pv = _polyline([tuple(conf), (-45, -5, 35)])
    ves = np.concatenate([sv, pv])
    _tube(g, lab, T["portal_splenic_vein"], ves, np.full(len(ves), 5.5))
    geom = Geometry(spacing_mm=(sz, sy, sx), origin_mm=(float(x[0]), float(y[0]), float(z[0])))
    return Volume(lab, geom, {"source": "iunet_nb.synth.phantom.phantom_labels",
                              "generator_version": GENERATOR_VERSION})


def make_phantom(rng: np.random.Generator | int | None = None, *,
                 shape_zyx: tuple[int, int, int] = (48, 128, 128),
                 spacing_mm: tuple[float, float, float] = (2.5, 1.5, 1.5),
                 config: SynthConfig = SynthConfig()) -> tuple[Volume, Volume]:
    """A synthetic abdominal CT and its pancreas mask, from a procedural phantom.

    The label map of :func:`phantom_labels` is built on a grid wide enough for the whole body,
    synthesised with :func:`synthesize`, then cropped in plane to ``shape_zyx`` around the
    pancreas (the geometry's origin moves with the crop).

    Args:
        rng: seed or Generator (the same seed gives the same arrays).
        shape_zyx: output voxels ``(z, y, x)``.
        spacing_mm: output voxel size ``(z, y, x)`` in mm.
        config: synthesis parameter ranges.

    Returns:
        ``(ct, pancreas)``: float32 HU and uint8 {0, 1} Volumes on the same geometry.

    Raises:
        InputError: see :func:`phantom_labels`.

    Example:
        >>> ct, mask = make_phantom(0)
        >>> ct.shape, 50 < mask.array.sum() * 2.5 * 1.5 * 1.5 / 1000 < 150
        ((48, 128, 128), True)
    """
    rng = np.random.default_rng(rng)
    labels = phantom_labels(rng, shape_zyx=shape_zyx, spacing_mm=spacing_mm)
    ct = synthesize_ct(labels, label_table=PHANTOM_LABELS, rng=rng, config=config)
    _, ny, nx = shape_zyx
    _, py, px = np.nonzero(labels.array == PHANTOM_LABELS["pancreas"])
    cy = int(np.clip(round((py.min() + py.max()) / 2) - ny // 2, 0, labels.shape[1] - ny))
    cx = int(np.clip(round((px.min() + px.max()) / 2) - nx // 2, 0, labels.shape[2] - nx))
    box = (slice(None), slice(cy, cy + ny), slice(cx, cx + nx))
    g = labels.geometry
    origin = g.index_to_physical([0, cy, cx])
    geom = Geometry(g.spacing_mm, tuple(float(o) for o in origin), g.direction)
    meta = {"source": "iunet_nb.synth.phantom.make_phantom", "generator_version": GENERATOR_VERSION}
    mask = (labels.array[box] == PHANTOM_LABELS["pancreas"]).astype(np.uint8)
    return (Volume(np.ascontiguousarray(ct.array[box]), geom, dict(meta)),
            Volume(np.ascontiguousarray(mask), geom, dict(meta)))
