"""How CT-like is a CT? Per-tissue HU statistics, noise texture, and real-vs-synthetic comparison.

Used to check :mod:`iunet_nb.synth.generator` against the real 3D-IRCADb-01 CTs: the same functions
measure both, with the same tissue definitions:

* liver, spleen, kidneys, bone: from masks (organ masks eroded by ``erode_mm`` so that the
  boundary partial volume does not dominate; bone not eroded, it is thin);
* fat: -190 .. -30 HU inside the body (body = :func:`body_mask`, a threshold, for both);
* air: below -900 HU outside the body.

Example:
    >>> ct, organs = read_ircadb_tissues("ircadb/1.7")                  # doctest: +SKIP
    >>> real = tissue_statistics(ct, tissue_masks(ct, organs))           # doctest: +SKIP
    >>> compare(real, synth_stats)[["mean_diff_hu", "sd_ratio", "overlap"]]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..errors import ConfigError, GeometryError, InputError
from ..io.volume import Volume

__all__ = [
    "AIR_MAX_HU",
    "FAT_RANGE_HU",
    "HIST_EDGES_HU",
    "NoiseTexture",
    "body_mask",
    "compare",
    "edge_offset_mm",
    "noise_texture",
    "overlap_coefficient",
    "read_ircadb_tissues",
    "resample_to_spacing",
    "synthetic_tissues",
    "tissue_masks",
    "tissue_statistics",
]

logger = logging.getLogger(__name__)

HIST_EDGES_HU: np.ndarray = np.arange(-1100.0, 1605.0, 5.0)
"""Histogram bin edges (HU), 5 HU wide, shared by every tissue so histograms compare bin-wise."""
FAT_RANGE_HU: tuple[float, float] = (-190.0, -30.0)
AIR_MAX_HU: float = -900.0
_PERCENTILES = (5, 25, 50, 75, 95)


def _check(ct: Volume, mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != ct.shape:
        raise GeometryError(f"mask {name!r} has shape {mask.shape} but the CT is {ct.shape}; "
                            "resample the mask onto the CT grid first")
    return mask.astype(bool, copy=False)


def body_mask(ct: Volume, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient's body: the largest connected region above ``threshold_hu``, holes filled
    slice by slice (so lungs and bowel gas are inside). bool ``(z, y, x)``.

    Raises:
        InputError: nothing above the threshold.
    """
    fg = ndi.binary_opening(np.asarray(ct.array) > threshold_hu, np.ones((1, 3, 3), bool))
    lab, n = ndi.label(fg)
    if n == 0:
        raise InputError(f"no voxel above {threshold_hu} HU: is this a CT in Hounsfield units?")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    for k in range(body.shape[0]):
        body[k] = ndi.binary_fill_holes(body[k])
    return body


def tissue_masks(ct: Volume, organs: Mapping[str, np.ndarray], *, body: np.ndarray | None = None,
                 erode_mm: float = 2.0) -> dict[str, np.ndarray]:
    """Tissue masks for :func:`tissue_statistics`: eroded organ masks, bone, fat and air.

    Args:
        ct: CT in HU.
        organs: name -> bool/uint8 mask ``(z, y, x)`` (e.g. liver, spleen, kidneys, bone).
            ``bone`` is used as it is; the others are eroded by ``erode_mm``.
        body: body mask; default :func:`body_mask` of ``ct``.
        erode_mm: erosion of organ masks in mm (a ball in physical units).

    Returns:
        name -> bool mask, organs first, then ``fat`` and ``air``.

    Raises:
        GeometryError: a mask's shape differs from the CT's.
    """
    out: dict[str, np.ndarray] = {}
    sp = ct.spacing_mm
    for name, m in organs.items():
        m = _check(ct, m, name)
        if name != "bone" and erode_mm > 0 and m.any():
            box = ndi.find_objects(m.astype(np.uint8))[0]
            eroded = np.zeros(m.shape, bool)
            eroded[box] = ndi.distance_transform_edt(np.pad(m[box], 1),
                                                     sampling=sp)[1:-1, 1:-1, 1:-1] > erode_mm
            m = eroded
        out[name] = m
    body = body_mask(ct) if body is None else _check(ct, body, "body")
    a = np.asarray(ct.array)
    out["fat"] = body & (a >= FAT_RANGE_HU[0]) & (a <= FAT_RANGE_HU[1])
    out["air"] = ~body & (a < AIR_MAX_HU)
    return out


def tissue_statistics(ct: Volume, masks: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per-tissue HU statistics.

    Args:
        ct: CT Volume in HU (int16 or float32).
        masks: tissue name -> mask ``(z, y, x)`` on the CT grid (e.g. from :func:`tissue_masks`).

    Returns:
        DataFrame indexed by tissue with ``n_voxels``, ``volume_ml``, ``mean_hu``, ``sd_hu``,
        ``p5``, ``p25``, ``p50``, ``p75``, ``p95`` (HU) and ``hist``: float64 densities over
        :data:`HIST_EDGES_HU` (summing to 1; values outside the edges are clipped into the end
        bins). Empty masks give NaN statistics and an all-zero histogram.

    Raises:
        GeometryError: a mask's shape differs from the CT's.
    """
    a = np.asarray(ct.array)
    voxel_ml = float(np.prod(ct.spacing_mm)) / 1000.0
    rows = []
    for name, m in masks.items():
        v = a[_check(ct, m, name)].astype(np.float64)
        hist = np.zeros(len(HIST_EDGES_HU) - 1)
        row: dict[str, object] = {"tissue": name, "n_voxels": int(v.size),
                                  "volume_ml": v.size * voxel_ml}
        if v.size:
            hist = np.histogram(np.clip(v, HIST_EDGES_HU[0], HIST_EDGES_HU[-1] - 1e-3),
                                HIST_EDGES_HU)[0] / v.size
            row.update(mean_hu=float(v.mean()), sd_hu=float(v.std()))
            row.update({f"p{q}": float(x) for q, x in zip(_PERCENTILES, np.percentile(v, _PERCENTILES))})
        else:
            row.update(mean_hu=np.nan, sd_hu=np.nan, **{f"p{q}": np.nan for q in _PERCENTILES})
        row["hist"] = hist
        rows.append(row)
    return pd.DataFrame(rows).set_index("tissue")


@dataclass(frozen=True, eq=False)
class NoiseTexture:
    """Noise measured in a homogeneous region.

    Attributes:
        local_sd_hu: median local standard deviation (in-plane window ``window_mm``), HU.
        neighbour_corr_zyx: correlation of the high-pass residual with its next voxel along
            z, y and x (1 = perfectly smooth, 0 = white noise).
        freq_per_mm: radial spatial frequencies (cycles/mm) of the 2D noise power spectrum.
        nps: radially averaged in-plane NPS (HU^2 mm^2) at ``freq_per_mm``.
        mean_freq_per_mm: NPS-weighted mean frequency (cycles/mm); NaN without patches.
        n_patches: number of in-plane patches averaged for the NPS.
    """

    local_sd_hu: float
    neighbour_corr_zyx: tuple[float, float, float]
    freq_per_mm: np.ndarray
    nps: np.ndarray
    mean_freq_per_mm: float
    n_patches: int


def noise_texture(ct: Volume, mask: np.ndarray, *, window_mm: float = 4.0,
                  patch_mm: float = 24.0, max_patches: int = 200) -> NoiseTexture:
    """Local noise sd, neighbour correlation and 2D NPS of ``ct`` inside a homogeneous ``mask``.

    Args:
        ct: CT in HU.
        mask: a homogeneous region (e.g. an eroded liver) ``(z, y, x)``.
        window_mm: in-plane window for the local sd (at least 3 voxels).
        patch_mm: in-plane NPS patch size (at least 8 voxels); patches lie wholly in ``mask``.
        max_patches: at most this many patches, spread over the region.

    Returns:
        :class:`NoiseTexture`.

    Raises:
        InputError: the mask has fewer than 100 voxels.
        GeometryError: mask and CT shapes differ.
    """
    m = _check(ct, mask, "mask")
    if m.sum() < 100:
        raise InputError(f"the noise region has {int(m.sum())} voxels; give a homogeneous region "
                         "of at least 100 voxels (e.g. an eroded liver mask)")
    _, sy, sx = ct.spacing_mm
    box = ndi.find_objects(m.astype(np.uint8))[0]
    box = tuple(slice(max(b.start - 8, 0), b.stop + 8) for b in box)
    a = np.asarray(ct.array[box], np.float32)
    m = m[box]
    w = max(3, round(window_mm / sy) | 1)
    mu = ndi.uniform_filter(a, (1, w, w))
    var = ndi.uniform_filter(a * a, (1, w, w)) - mu * mu
    inner = ndi.binary_erosion(m, np.ones((1, w, w), bool))
    sel = inner if inner.any() else m
    local_sd = float(np.median(np.sqrt(np.maximum(var[sel], 0))))
    resid = a - ndi.gaussian_filter(a, (0, 3, 3))
    corr = []
    for ax in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        both = sel[tuple(lo)] & sel[tuple(hi)]
        if both.sum() < 10:
            corr.append(float("nan"))
            continue
        corr.append(float(np.corrcoef(resid[tuple(lo)][both], resid[tuple(hi)][both])[0, 1]))
    n = max(8, round(patch_mm / sy))
    full = ndi.uniform_filter(m.astype(np.float32), (1, n, n), mode="constant") > 0.999
    cz, cy, cx = np.nonzero(full)
    if cz.size > max_patches:
        keep = np.linspace(0, cz.size - 1, max_patches).astype(int)
        cz, cy, cx = cz[keep], cy[keep], cx[keep]
    fy, fx = np.fft.fftfreq(n, sy), np.fft.fftfreq(n, sx)
    fr = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    df = 1.0 / (n * max(sy, sx))
    nb = int(np.floor(fr.max() / df)) + 1
    acc = np.zeros((n, n))
    used = 0
    for k, j, i in zip(cz, cy, cx):
        j0, i0 = j - n // 2, i - n // 2
        if j0 < 0 or i0 < 0 or j0 + n > a.shape[1] or i0 + n > a.shape[2]:
            continue
        p = a[k, j0:j0 + n, i0:i0 + n].astype(np.float64)
        yy, xx = np.mgrid[:n, :n]
        design = np.stack([np.ones(n * n), yy.ravel(), xx.ravel()], 1)
        coef = np.linalg.lstsq(design, p.ravel(), rcond=None)[0]
        p = p - (design @ coef).reshape(n, n)
        acc += np.abs(np.fft.fft2(p)) ** 2
        used += 1
    bins = np.minimum((fr / df).astype(int), nb - 1)
    cnt = np.bincount(bins.ravel(), minlength=nb)
    freq = np.bincount(bins.ravel(), fr.ravel(), minlength=nb) / np.maximum(cnt, 1)
    if used:
        nps2d = acc / used * sy * sx / (n * n)
        nps = np.bincount(bins.ravel(), nps2d.ravel(), minlength=nb) / np.maximum(cnt, 1)
        mean_f = float((nps2d * fr).sum() / max(nps2d.sum(), 1e-12))
    else:
        nps, mean_f = np.full(nb, np.nan), float("nan")
    return NoiseTexture(local_sd, tuple(corr), freq, nps, mean_f, used)  # type: ignore[arg-type]


def resample_to_spacing(volume: Volume, spacing_mm: tuple[float, float, float], *,
                        labels: bool = False, antialias: bool = True) -> Volume:
    """The same field of view on a grid of ``spacing_mm`` (e.g. a real CT on the 2 mm BTCV grid).

    For comparing noise texture across grids: a 0.7 mm CT and a 2 mm synthetic CT differ in
    neighbour correlation and NPS for the grid alone. Images are low-pass filtered first when
    ``antialias`` (Gaussian, sigma ``(factor - 1) / 2`` source voxels per axis where the grid
    coarsens by ``factor``, scikit-image's ``rescale`` convention), then sampled trilinearly;
    label maps/masks are sampled by nearest neighbour, unfiltered. The first voxel centre and the
    direction stay; the extent is ``floor(n * old / new)`` voxels per axis.

    Args:
        volume: image (any real dtype) or mask/label map ``(z, y, x)``.
        spacing_mm: new ``(z, y, x)`` voxel size, mm, each > 0.
        labels: nearest-neighbour sampling, keep the dtype (for masks and label maps).
        antialias: Gaussian pre-filter for images (ignored with ``labels``).

    Returns:
        Volume: float32 for images, the input dtype for ``labels``; meta kept.

    Raises:
        InputError: ``spacing_mm`` not three positive finite numbers.

    Example:
        >>> ct2 = resample_to_spacing(ct, (2.0, 2.0, 2.0))          # doctest: +SKIP
    """
    import SimpleITK as sitk

    sp = tuple(float(s) for s in spacing_mm) if len(spacing_mm) == 3 else ()
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing_mm must be three positive numbers (z, y, x) in mm, got "
                         f"{spacing_mm!r}")
    old = volume.spacing_mm
    size_zyx = [max(1, int(np.floor(n * o / s + 1e-6))) for n, o, s in zip(volume.shape, old, sp)]
    a = np.asarray(volume.array)
    if labels and a.dtype == bool:
        a = a.astype(np.uint8)
    if not labels:
        a = a.astype(np.float32)
        if antialias:
            sig = [max(0.0, (s / o - 1.0) / 2.0) for s, o in zip(sp, old)]
            if max(sig) > 0:
                a = ndi.gaussian_filter(a, sig, mode="nearest")
    img = volume.geometry.apply_to(sitk.GetImageFromArray(a))
    ref = sitk.Image([int(n) for n in size_zyx[::-1]], img.GetPixelID())
    ref.SetSpacing(sp[::-1])
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    out = sitk.Resample(img, ref, sitk.Transform(), interp, 0.0, img.GetPixelID())
    arr = sitk.GetArrayFromImage(out)
    return Volume(arr.astype(volume.array.dtype if labels else np.float32, copy=False),
                  type(volume.geometry).from_sitk(out), dict(volume.meta))


def edge_offset_mm(ct: Volume, mask: np.ndarray, *, level_mm: tuple[float, float] = (3.0, 6.0),
                   bin_mm: float = 0.25, reach_mm: float = 3.0) -> dict[str, float]:
    """Where the organ's HU edge lies relative to its mask: the half-way crossing, in mm.

    The HU profile across the mask's surface is the median HU per signed distance bin
    (``bin_mm`` wide; a voxel's distance is its centre's Euclidean distance to the nearest
    voxel centre on the other side less half the smallest spacing, negative inside). The
    inside and outside levels are the median HU at ``level_mm`` (depth range) inside and
    outside; the offset is where the profile crosses half-way between them, linearly
    interpolated between bin centres, taking the crossing nearest the surface within
    ``reach_mm``. Positive: the HU edge lies outside the mask (the mask is drawn tight);
    negative: inside. Measured (``docs/realism.md``, section 5): the 3D-IRCADb references
    here +0.53 mm (spleen 1.7), +0.63 and +1.20 mm (livers 1.17, 1.7); synthetic CT from the
    BTCV maps (2 mm grid) +0.12 to +0.80 mm (spleen) and +0.34 to +1.32 mm (liver), so the
    synthetic edge sits where the real references put theirs.

    Args:
        ct: the CT (HU).
        mask: bool ``(z, y, x)`` on the CT grid, non-empty.
        level_mm: ``(near, far)`` depth range of the two levels, mm.
        bin_mm: width of the distance bins, mm (> 0).
        reach_mm: the crossing is searched within this distance of the surface, mm.

    Returns:
        ``{"offset_mm", "inside_hu", "outside_hu"}``; ``offset_mm`` is NaN when the profile
        does not cross half-way within ``reach_mm`` (an organ with no contrast to its
        surroundings), all three are NaN when no voxel lies at ``level_mm`` on one side
        (an organ thinner than that, or cut by the image border).

    Raises:
        GeometryError: the mask is not on the CT grid. InputError: the mask is empty.
        ConfigError: a distance is not positive, or ``level_mm`` is not ``near < far``.
    """
    near, far = (float(v) for v in level_mm)
    if not (bin_mm > 0 and reach_mm > 0 and 0 <= near < far):
        raise ConfigError(f"edge_offset_mm needs bin_mm > 0, reach_mm > 0 and level_mm = "
                          f"(near, far) with 0 <= near < far; got {bin_mm!r}, {reach_mm!r}, "
                          f"{level_mm!r}")
    m = _check(ct, mask, "mask")
    if not m.any():
        raise InputError("the mask is empty: there is no edge to measure")
    sp = tuple(float(v) for v in ct.spacing_mm)
    pad = [int(np.ceil(far / v)) + 2 for v in sp]
    box = tuple(slice(max(sl.start - p, 0), sl.stop + p)
                for sl, p in zip(ndi.find_objects(m.astype(np.uint8))[0], pad))
    mb, hu = m[box], np.asarray(ct.array[box], dtype=np.float64)
    half = 0.5 * min(sp)
    signed = np.where(mb, -(ndi.distance_transform_edt(mb, sampling=sp) - half),
                      ndi.distance_transform_edt(~mb, sampling=sp) - half)
    in_level = hu[(signed <= -near) & (signed >= -far)]
    out_level = hu[(signed >= near) & (signed <= far)]
    if not in_level.size or not out_level.size:
        return {"offset_mm": float("nan"), "inside_hu": float("nan"), "outside_hu": float("nan")}
    inside, outside = float(np.median(in_level)), float(np.median(out_level))
    band = np.abs(signed) <= reach_mm
    signed, hu = signed[band], hu[band]
    edges = np.arange(-reach_mm, reach_mm + bin_mm / 2, bin_mm)
    which = np.digitize(signed, edges)
    centres, levels = [], []
    for k in range(1, len(edges)):
        sel = which == k
        if sel.any():
            centres.append(0.5 * (edges[k - 1] + edges[k]))
            levels.append(float(np.median(hu[sel])))
    mid = 0.5 * (inside + outside)
    d = (np.asarray(levels) - mid) * (1.0 if inside >= outside else -1.0)
    best = float("nan")
    for i in range(len(d) - 1):
        if d[i] >= 0 > d[i + 1]:
            x = centres[i] + (centres[i + 1] - centres[i]) * d[i] / (d[i] - d[i + 1])
            if not np.isfinite(best) or abs(x) < abs(best):
                best = float(x)
    return {"offset_mm": best, "inside_hu": inside, "outside_hu": outside}


def overlap_coefficient(p: np.ndarray, q: np.ndarray) -> float:
    """Histogram overlap: sum of bin-wise minima of the two normalised histograms, in [0, 1].

    Raises:
        InputError: different lengths, negative values or an empty histogram.
    """
    p, q = np.asarray(p, float), np.asarray(q, float)
    if p.shape != q.shape or p.ndim != 1:
        raise InputError(f"histograms must be 1D of equal length, got {p.shape} and {q.shape}")
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise InputError("histograms must be non-negative with a positive total")
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def compare(real_stats: pd.DataFrame, synth_stats: pd.DataFrame) -> pd.DataFrame:
    """Real vs synthetic per tissue, for the tissues both tables have (non-empty).

    Args:
        real_stats: :func:`tissue_statistics` of a real CT.
        synth_stats: :func:`tissue_statistics` of a synthetic CT.

    Returns:
        DataFrame indexed by tissue: ``mean_real``, ``mean_synth``, ``mean_diff_hu`` (synth -
        real), ``sd_real``, ``sd_synth``, ``sd_ratio`` (synth / real), ``p50_real``,
        ``p50_synth``, ``overlap`` (:func:`overlap_coefficient` of the histograms).

    Raises:
        InputError: no tissue in common.
    """
    common = [t for t in real_stats.index if t in synth_stats.index
              and real_stats.loc[t, "n_voxels"] > 0 and synth_stats.loc[t, "n_voxels"] > 0]
    if not common:
        raise InputError(f"no non-empty tissue in common: real has {list(real_stats.index)}, "
                         f"synthetic has {list(synth_stats.index)}")
    rows = []
    for t in common:
        r, s = real_stats.loc[t], synth_stats.loc[t]
        rows.append({"tissue": t, "mean_real": r.mean_hu, "mean_synth": s.mean_hu,
                     "mean_diff_hu": s.mean_hu - r.mean_hu, "sd_real": r.sd_hu,
                     "sd_synth": s.sd_hu,
                     "sd_ratio": s.sd_hu / r.sd_hu if r.sd_hu > 0 else float("nan"), "p50_real": r.p50,
                     "p50_synth": s.p50, "overlap": overlap_coefficient(r["hist"], s["hist"])})
    return pd.DataFrame(rows).set_index("tissue")


def read_ircadb_tissues(patient_dir: str | os.PathLike) -> tuple[Volume, dict[str, np.ndarray]]:
    """A 3D-IRCADb-01 patient's CT and its organ masks, as tissues for :func:`tissue_masks`.

    Liver excludes every ``*tumor*`` mask (tumours are not liver parenchyma); ``kidneys`` is
    the union of right and left. Only the masks the patient has are returned.

    Args:
        patient_dir: ``<patient>/`` holding ``PATIENT_DICOM/`` and ``MASKS_DICOM.zip``.

    Returns:
        ``(ct, organs)``: int16 HU Volume; name -> bool mask for liver, spleen, kidneys, bone.

    Raises:
        InputError: folder or files missing or unreadable (see :mod:`iunet_nb.io.images`).
    """
    from ..io.images import list_dicom_mask_organs, read_dicom_mask_series, read_image

    root = Path(patient_dir)
    ct = read_image(root / "PATIENT_DICOM")
    zp = root / "MASKS_DICOM.zip"
    if not zp.exists():
        zp = root / "MASKS_DICOM"
    names = list_dicom_mask_organs(zp)

    def read(name: str) -> np.ndarray:
        m = read_dicom_mask_series(zp, name)
        if m.shape != ct.shape:
            raise GeometryError(f"{root}: mask {name} {m.shape} does not match the CT {ct.shape}")
        return m.array > 0

    organs: dict[str, np.ndarray] = {}
    tumour = np.zeros(ct.shape, bool)
    for name in names:
        if "tumor" in name.lower():
            tumour |= read(name)
    if "liver" in names:
        organs["liver"] = read("liver") & ~tumour
    if "spleen" in names:
        organs["spleen"] = read("spleen")
    kid = [n for n in names if n.lower() in ("rightkidney", "leftkidney")]
    if kid:
        organs["kidneys"] = np.logical_or.reduce([read(n) for n in kid])
    if "bone" in names:
        organs["bone"] = read("bone")
    logger.info("read %s: tissues %s", root, sorted(organs))
    return ct, organs


def synthetic_tissues(labels: Volume, tissue: Volume,
                      label_table: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Organ masks of a synthetic case in the names :func:`read_ircadb_tissues` uses.

    Args:
        labels: the label map the CT was synthesised from.
        tissue: :attr:`iunet_nb.synth.generator.SynthCase.tissue`.
        label_table: organ name -> label (default :data:`iunet_nb.synth.generator.BTCV`).

    Returns:
        name -> bool mask for liver, spleen, kidneys and bone (the generated spine and ribs).
    """
    from .generator import BTCV, TISSUE

    table = BTCV if label_table is None else label_table
    a = labels.array
    out = {"liver": a == table.get("liver", -1), "spleen": a == table.get("spleen", -1),
           "kidneys": np.isin(a, [table.get("right_kidney", -1), table.get("left_kidney", -1)]),
           "bone": np.isin(tissue.array, [TISSUE["bone_trabecular"], TISSUE["bone_cortical"]])}
    return out
