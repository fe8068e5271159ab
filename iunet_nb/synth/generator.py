"""Synthetic portal-venous CT from organ label maps, and the bundled sample.

No CT with an expert pancreas mask exists on our machines, so training data and the bundled
default are CT-like volumes painted from label maps. :func:`synthesize` takes a label map with
(some of) the 13 BTCV organs and builds everything else around them, anatomically plausibly:
a body outline (a super-ellipse per slice enclosing every label with a margin), skin,
subcutaneous fat, the abdominal muscle wall, the spine posterior to the aorta (vertebral
bodies with discs, canal, arch, spinous and transverse processes), paraspinal and psoas
muscles, ribs on the upper levels, lungs, heart and mediastinum above the diaphragm, bowel
loops with wall, fluid, gas pockets and positive oral contrast, and visceral fat in the rest.
Organs get a portal-venous HU, a smooth low-frequency texture, liver vessels, a kidney
medulla graded into the cortex, a stomach wall with an air-fluid level. Then partial-volume
blur (a Gaussian PSF) and CT-like noise (white noise shaped to an FBP-like noise power
spectrum in physical frequency, aliased onto the grid). Every number is drawn per case from ``rng`` within the ranges of :class:`SynthConfig`.

Orientation is read from the anatomy, not from the header (the BTCV headers are wrong): axial
slices are array axis 0; anterior is the side of the pancreas/stomach/liver from the aorta
(else from the kidneys), patient-left the spleen's side of the liver, superior the liver's side
of the kidneys (else the header's +z).

Portal-venous HU (mean per case drawn uniformly in the range; sd comes from texture + noise):

=====================  ===============  ======================================================
tissue                 HU range         source / note
=====================  ===============  ======================================================
liver                  100 .. 130       [1] PV phase 100-130; IRCADb 1.7: 122, 1.17: 105 [M]
spleen                 105 .. 130       [1]; IRCADb 1.7: 119 [M]
pancreas               90 .. 110        [1] (pancreatic phase would be 110-130)
kidney                 180 .. 210       [1] 150-200+, [2]; IRCADb 1.7 kidney p95 210-217 [M]
kidney medulla         - 30..70, graded [2] fading corticomedullary contrast at ~70 s: one
                                        broad peak; IRCADb 1.7 kidney 173 +- 37 HU [M]
aorta                  150 .. 200       [2] PV-phase aortic enhancement 150-200
IVC                    120 .. 170       [2] mixing of enhanced renal and unenhanced leg blood
portal/splenic vein    150 .. 200       [2]; liver vessels +30..70 above liver
gallbladder (bile)     0 .. 20          [1]
stomach wall / content 80..110 / 5..25  [1] enhancing mucosa; water
bowel wall / content   60..100 / 0..30  [1]; gas -1000, oral contrast 150..350 [3]
fat                    -105 .. -80      [1] -120..-80; IRCADb fat median -87..-90 [M]
muscle                 40 .. 60         [1]
skin                   20 .. 50         [1]
trabecular bone        130 .. 240       [1] adult vertebral body 100-300
cortical bone          700 .. 1200      [1] up to 1500-1900; a 1 mm cortex in the shell,
                                        a random fraction per shell voxel (partial volume)
disc / CSF             70..100 / 0..15  [1]
lung / blood pool      -880..-820 / 130..170   [1]
air outside the body   -1020 .. -1000   physical -1000; scanners clip at -1024 [M]
=====================  ===============  ======================================================

[1] Textbook/teaching ranges, e.g. Radiopaedia "Hounsfield unit" and Brant & Helms,
*Fundamentals of Diagnostic Radiology*. [2] Bae KT, "Intravenous contrast medium
administration and scan timing at CT", Radiology 2010;256:32-61. [3] Positive oral contrast
is diluted iodine or barium, typically 150-400 HU in bowel. [M] measured here on the
3D-IRCADb-01 CTs (see :mod:`iunet_nb.synth.realism`); ranges were checked, not fitted, against them.
Image quality: organs are painted from the label map with its voxel staircase smoothed
(1.5-2.5 mm); PSF sigma 0.5-0.9 mm in plane (FWHM 1.2-2.1 mm), slice profile sigma 0.6-1.2 mm;
noise sd 10-20 HU (IRCADb local sd 10 and 20 HU) with an FBP-like in-plane spectrum peaking at
0.15-0.25 cycles/mm (IRCADb NPS mean frequency 0.24-0.35 cycles/mm) and 0.7-1.1 mm correlation
along z, folded onto the grid (almost white on 2 mm). Measured against real CT in
``docs/realism.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .._config import JsonConfig
from ..errors import ConfigError, InputError
from ..io.volume import Volume

__all__ = [
    "BTCV",
    "GENERATOR_VERSION",
    "PHANTOM_LABELS",
    "TISSUE",
    "SynthCase",
    "SynthConfig",
    "load_sample",
    "synthesize",
    "synthesize_ct",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "2.1"

BTCV: dict[str, int] = {"spleen": 1, "right_kidney": 2, "left_kidney": 3, "gallbladder": 4,
                        "esophagus": 5, "liver": 6, "stomach": 7, "aorta": 8, "ivc": 9,
                        "portal_splenic_vein": 10, "pancreas": 11, "right_adrenal": 12,
                        "left_adrenal": 13}
"""The BTCV abdomen label table (value of each organ in the label maps)."""

PHANTOM_LABELS: dict[str, int] = {**BTCV, "duodenum": 14, "sma": 15}
"""Labels of :func:`phantom_labels`: BTCV plus the duodenum and the superior mesenteric artery."""

TISSUE: dict[str, int] = {"air": 0, "fat": 1, "muscle": 2, "skin": 3, "bone_trabecular": 4,
                          "bone_cortical": 5, "disc": 6, "canal": 7, "bowel_wall": 8,
                          "bowel_content": 9, "bowel_gas": 10, "oral_contrast": 11, "lung": 12,
                          "heart": 13, "organ": 20}
"""Codes of :attr:`SynthCase.tissue`; ``organ + label`` marks voxels painted from the label map."""

Range = tuple[float, float]


@dataclass(frozen=True)
class SynthConfig(JsonConfig):
    """Ranges (lo, hi) from which each case draws its parameters uniformly; HU unless ``_mm``.

    See the module docstring for the HU sources. ``version`` tracks the meaning of the fields.

    ``organ_contact_fraction`` (a number, not a range; 0 = off) is the share of the fat
    within 2-6 mm (drawn per case) of the labelled structures that becomes soft tissue
    (``muscle_hu``) in smooth patches: the diaphragm, bowel and vessels that lie against
    real organs, where 2-6 mm outside the real 3D-IRCADb livers and spleen the median HU is
    -70..36 against -63..-86 around synthetic ones (``docs/realism.md`` section 6). When on,
    lung and heart within that distance become soft tissue too (the diaphragm lies between
    them and every organ; without it 28 % of the 2-6 mm ring around BTCV 0001's synthetic
    spleen is lung). Its randomness comes from a stream of its own, seeded by the case's
    drawn parameters, so turning it on moves no other draw of the case. Default 0.25
    (generator 2.1), measured with networks trained only on synthetic CT and tested on the
    real CTs (``docs/realism.md`` section 7): it narrows the synthetic-to-real gap of the
    liver and the spleen over several seeds; 0 gives generator 2.0.

    ``liver_lesion_fraction`` (a number in [0, 1]; 0 = off, the default) is the chance that a
    case's liver holds 1-4 hypodense lesions (radius 5-25 mm, 25-70 HU below the liver, a
    2 mm soft edge, kept inside the liver and deeper than 8 mm at their centre), painted
    inside the liver label, so the target includes them, as the LiTS challenge's liver label
    and 3D-IRCADb 1.17's liver mask do (186 000 tumour voxels, 8.8 % of the liver, median
    68 HU against the liver's 103; 3D-IRCADb 1.7's liver mask leaves its 669 mL tumour out),
    and a network that never saw one leaves most of them out
    (``docs/realism.md`` section 11). Its own stream, seeded by the case's drawn
    parameters, like ``organ_contact_fraction``.

    ``pancreas_lobulation_fraction`` (a number in [0, 1]; 0 = off, the default) is the chance
    that a case's pancreas is lobulated, with fat between its lobules: a common CT appearance
    of the adult gland that grows with age and body mass, where the generator's gland is
    otherwise a smooth, homogeneous solid. A smooth random field with a 3-7 mm correlation
    length turns a share of 5-40 % of the gland (drawn per case) into fat, blended over about
    a millimetre and painted before the scanner's blur (so thin clefts become partial-volume
    darkening). The label keeps the whole gland, as expert outlines do. Its own stream, like
    the liver lesions. Measured (``docs/report.md`` section 1): the bundled model fine-tuned
    on cases half of them lobulated fell from 0.649 to 0.325 on NIH PANCREAS_0002, a
    homogeneous gland; so it is off by default and not in the bundled model's data.
    """

    version: int = 2
    liver_hu: Range = (100.0, 130.0)
    spleen_hu: Range = (105.0, 130.0)
    pancreas_hu: Range = (90.0, 110.0)
    kidney_hu: Range = (180.0, 210.0)
    kidney_medulla_drop_hu: Range = (30.0, 70.0)
    kidney_texture_sd_hu: Range = (10.0, 18.0)
    aorta_hu: Range = (150.0, 200.0)
    ivc_hu: Range = (120.0, 170.0)
    portal_vein_hu: Range = (150.0, 200.0)
    gallbladder_hu: Range = (0.0, 20.0)
    adrenal_hu: Range = (40.0, 60.0)
    esophagus_hu: Range = (35.0, 55.0)
    stomach_wall_hu: Range = (80.0, 110.0)
    gastric_content_hu: Range = (5.0, 25.0)
    bowel_wall_hu: Range = (60.0, 100.0)
    bowel_content_hu: Range = (0.0, 30.0)
    oral_contrast_hu: Range = (150.0, 350.0)
    fat_hu: Range = (-105.0, -80.0)
    muscle_hu: Range = (40.0, 60.0)
    skin_hu: Range = (20.0, 50.0)
    trabecular_hu: Range = (130.0, 240.0)
    cortical_hu: Range = (700.0, 1200.0)
    disc_hu: Range = (70.0, 100.0)
    csf_hu: Range = (0.0, 15.0)
    lung_hu: Range = (-880.0, -820.0)
    outside_air_hu: Range = (-1020.0, -1000.0)
    blood_pool_hu: Range = (130.0, 170.0)
    liver_vessel_delta_hu: Range = (30.0, 70.0)
    texture_sd_hu: Range = (3.0, 8.0)
    texture_length_mm: Range = (12.0, 30.0)
    fat_texture_sd_hu: Range = (10.0, 18.0)
    bone_texture_sd_hu: Range = (30.0, 60.0)
    edge_smooth_mm: Range = (1.5, 2.5)
    subcut_fat_mm: Range = (10.0, 35.0)
    muscle_wall_mm: Range = (6.0, 14.0)
    bowel_fraction: Range = (0.35, 0.6)
    gas_fraction: Range = (0.05, 0.25)
    oral_contrast_fraction: Range = (0.0, 0.4)
    psf_sigma_mm: Range = (0.5, 0.9)
    slice_sigma_mm: Range = (0.6, 1.2)
    noise_sd_hu: Range = (10.0, 20.0)
    noise_peak_per_mm: Range = (0.15, 0.25)
    noise_z_sigma_mm: Range = (0.7, 1.1)
    organ_contact_fraction: float = 0.25
    liver_lesion_fraction: float = 0.0
    pancreas_lobulation_fraction: float = 0.0

    def __post_init__(self) -> None:
        for f in ("organ_contact_fraction", "liver_lesion_fraction",
                  "pancreas_lobulation_fraction"):   # numbers, not ranges
            v = getattr(self, f)
            if (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                    or not 0.0 <= float(v) <= 1.0):
                raise ConfigError(f"SynthConfig.{f} must be a number in [0, 1], got {v!r}")
            object.__setattr__(self, f, float(v))
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            if isinstance(v, (tuple, list)):
                if len(v) != 2 or not (np.isfinite(v[0]) and np.isfinite(v[1])) or v[0] > v[1]:
                    raise ConfigError(f"SynthConfig.{f} must be a (low, high) range with low <= "
                                      f"high, got {v}")
                object.__setattr__(self, f, (float(v[0]), float(v[1])))


@dataclass(frozen=True, eq=False)
class SynthCase:
    """A synthetic CT and what it was made of.

    Attributes:
        ct: float32 HU ``(z, y, x)``, the geometry of the label map.
        tissue: uint8 ``(z, y, x)`` tissue codes (:data:`TISSUE`; ``TISSUE['organ'] + label``
            where the label map has an organ).
        params: the numbers drawn for this case (JSON-native).
    """

    ct: Volume
    tissue: Volume
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def _field(shape: tuple[int, ...], spacing: tuple[float, ...], length_mm: float,
           rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field, sd ~1, correlation length ~``length_mm``, float32.

    White noise on a coarse grid (node spacing ``length_mm / 2``) is interpolated to the full
    grid with separable Gaussian kernels (three small matrix products: fast, crease-free).
    """
    coarse = [max(2, int(np.ceil(n * s / (length_mm / 2.0))) + 3) for n, s in zip(shape, spacing)]
    f = rng.standard_normal(coarse).astype(np.float32)
    for ax, (n, c, s) in enumerate(zip(shape, coarse, spacing)):
        pos = (np.arange(n) * s / (length_mm / 2.0) + 1.5)[:, None]
        w = np.exp(-0.5 * ((pos - np.arange(c)[None, :]) / 0.8) ** 2).astype(np.float32)
        w /= np.sqrt((w ** 2).sum(1, keepdims=True))
        f = np.moveaxis(np.tensordot(f, w, axes=([ax], [1])), -1, ax)
    return np.ascontiguousarray(f, dtype=np.float32)


def _ct_noise(shape: tuple[int, int, int], spacing: tuple[float, ...], sd_hu: float,
              peak_per_mm: float, z_sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """CT-like noise, float32 ``(z, y, x)`` with standard deviation ``sd_hu``.

    FBP noise: in plane a ramp-times-Gaussian noise power spectrum ``f * exp(-f^2 / (2 p^2))``
    (``f`` radial frequency in cycles/mm, peak at ``p = peak_per_mm``), along z a Gaussian
    correlation of ``z_sigma_mm`` (the slice profile). The spectrum is defined in physical
    frequency and folded (aliased) onto the grid, as a scanner reconstructing on that grid
    would sample it: on a 0.7 mm grid the ramp shows, on a 2 mm grid (Nyquist 0.25 cycles/mm,
    below the peak) the noise is almost white with a slight negative neighbour correlation.
    White noise shaped in the Fourier domain (one real FFT each way).
    """
    from scipy import fft as sfft

    w = rng.standard_normal(shape, dtype=np.float32)
    freqs = [np.fft.fftfreq(shape[0], spacing[0]), np.fft.fftfreq(shape[1], spacing[1]),
             np.fft.rfftfreq(shape[2], spacing[2])]

    def folded(f0: np.ndarray, d: float, sigma_per_mm: float) -> list[np.ndarray]:
        k = int(np.ceil(4.0 * sigma_per_mm * d)) + 1
        return [f0 + j / d for j in range(-k, k + 1)]

    sz = 1.0 / (2.0 * np.pi * max(z_sigma_mm, 1e-3))          # frequency sd of the z profile
    s_z = sum(np.exp(-0.5 * (f / sz) ** 2) for f in folded(freqs[0], spacing[0], sz))
    s_xy = np.zeros((shape[1], freqs[2].size))
    for fy in folded(freqs[1], spacing[1], peak_per_mm):
        for fx in folded(freqs[2], spacing[2], peak_per_mm):
            fr = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
            s_xy += fr * np.exp(-0.5 * (fr / peak_per_mm) ** 2)
    amp = (np.sqrt(s_z)[:, None, None] * np.sqrt(s_xy)[None]).astype(np.float32)
    out = sfft.irfftn(sfft.rfftn(w, workers=1) * amp, shape, workers=1).astype(np.float32)
    out *= np.float32(sd_hu / (out.std() + 1e-6))
    return out


def _smooth_labels(arr: np.ndarray, spacing: tuple[float, ...], sigma_mm: float) -> np.ndarray:
    """The label map with its voxel staircase smoothed: argmax of Gaussian-smoothed one-hots.

    Each label's indicator is smoothed (sigma ``sigma_mm``, at least half a voxel along each
    axis, so thick-slice steps along z are rounded off too) in its padded bounding box; a voxel
    takes the label whose smoothed indicator is largest, unless background's (one minus the
    sum of the others) is larger.
    Organ volumes change by a few per cent (convex parts keep their size; thin parts can thin).
    """
    sig = [max(sigma_mm / s, 0.5) for s in spacing]
    pad = [int(np.ceil(3 * g)) + 1 for g in sig]
    best = np.zeros(arr.shape, np.float32)
    total = np.zeros(arr.shape, np.float32)
    out = np.zeros_like(arr)
    boxes = ndi.find_objects(arr.astype(np.int32, copy=False))
    for v, box in enumerate(boxes, start=1):
        if box is None:
            continue
        b = tuple(slice(max(sl.start - p, 0), min(sl.stop + p, n))
                  for sl, p, n in zip(box, pad, arr.shape))
        pr = ndi.gaussian_filter((arr[b] == v).astype(np.float32), sig, mode="nearest")
        total[b] += pr
        win = pr > best[b]
        best[b][win] = pr[win]
        out[b][win] = v
    out[best <= 1.0 - total] = 0          # background wins
    return out


def _fill_series(values: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Fill missing slices by interpolation / nearest extrapolation, then smooth along z."""
    idx = np.arange(values.size)
    out = np.interp(idx, idx[valid], values[valid]).astype(np.float32)
    return ndi.gaussian_filter1d(out, sigma, mode="nearest") if sigma > 0 else out


def _centroids(arr: np.ndarray, table: Mapping[str, int]) -> dict[str, np.ndarray | None]:
    """Voxel-index centroid ``(z, y, x)`` of each named label (None where absent)."""
    boxes = ndi.find_objects(arr.astype(np.int32, copy=False)) if arr.max() > 0 else []
    out: dict[str, np.ndarray | None] = {}
    for name, v in table.items():
        box = boxes[v - 1] if 0 < v <= len(boxes) else None
        if box is None:
            out[name] = None
            continue
        idx = np.nonzero(arr[box] == v)
        out[name] = np.array([i.mean() + b.start for i, b in zip(idx, box)])
    return out


def _depth_inside(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance in mm from each voxel of ``mask`` to its outside (computed in the bounding box)."""
    out = np.zeros(mask.shape, np.float32)
    sl = ndi.find_objects(mask.astype(np.uint8))
    if not sl or sl[0] is None:
        return out
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl[0])
    out[box] = ndi.distance_transform_edt(mask[box], sampling=spacing)
    return out


def _check_labels(labels: Volume, table: Mapping[str, int]) -> np.ndarray:
    if not isinstance(labels, Volume):
        arr = np.asarray(labels)
        raise InputError(f"synthesize needs a 3D label map as a Volume (z, y, x), got "
                         f"{type(labels).__name__} with shape {arr.shape}; wrap it as "
                         "Volume(array.astype(np.uint8), geometry)")
    arr = labels.array
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"the label map must hold integer labels, got dtype {arr.dtype}; cast "
                         "a label image with .astype(np.uint8) (a CT is not a label map)")
    if min(arr.shape) < 4:
        raise InputError(f"the label map {arr.shape} is too small to synthesise a CT; it needs "
                         "at least 4 voxels along each axis")
    values = np.unique(arr)
    unknown = sorted(set(values.tolist()) - {0} - set(table.values()))
    if unknown:
        raise InputError(f"label values {unknown} are not in label_table {dict(table)}; pass a "
                         "label_table naming every label")
    if values.max() == 0:
        raise InputError("the label map is empty (all zeros): the body is built around the "
                         "organs, so at least one organ label is needed")
    return arr


def _stream_seed(params: Mapping[str, float]) -> int:
    """A seed derived from a case's drawn parameters (for draws kept apart from the case's)."""
    text = json.dumps({k: float(v) for k, v in params.items()}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _draw(rng: np.random.Generator, cfg: SynthConfig) -> dict[str, float]:
    return {f: float(rng.uniform(*getattr(cfg, f))) for f in cfg.__dataclass_fields__
            if isinstance(getattr(cfg, f), tuple)}


# --------------------------------------------------------------------------- synthesis
def synthesize(labels: Volume, *, label_table: Mapping[str, int] = BTCV,
               rng: np.random.Generator | int | None = None,
               config: SynthConfig = SynthConfig()) -> SynthCase:
    """Synthesise a portal-venous CT, and its tissue map, around an organ label map.

    Args:
        labels: integer label map ``(z, y, x)``; axial slices along axis 0. Not modified.
        label_table: organ name -> label value (names as in :data:`BTCV` / :data:`PHANTOM_LABELS`;
            other names are painted as soft tissue, 40 HU).
        rng: seed or Generator; every parameter and every noise voxel comes from it.
        config: the parameter ranges.

    Returns:
        :class:`SynthCase` with ``ct`` float32 HU on the label map's geometry.

    Raises:
        InputError: not a 3D Volume, non-integer dtype, tiny, empty, or labels not in the table.

    Example:
        >>> case = synthesize(labels, rng=0)  # doctest: +SKIP
    """
    arr = _check_labels(labels, label_table)
    rng = np.random.default_rng(rng)
    p = _draw(rng, config)
    sp = labels.geometry.spacing_mm
    nz, ny, nx = arr.shape
    name_of = {v: k for k, v in label_table.items()}

    def organ(*names: str) -> np.ndarray:
        vals = [label_table[n] for n in names if n in label_table]
        return np.isin(arr, vals) if vals else np.zeros(arr.shape, bool)

    # --- orientation from anatomy (axis 0 is axial) ---------------------------------------
    cen = _centroids(arr, label_table)
    ant = [cen[n] for n in ("pancreas", "stomach", "liver", "gallbladder") if cen.get(n) is not None]
    ref = cen.get("aorta")
    if ref is None:
        kid = [cen[n] for n in ("right_kidney", "left_kidney") if cen.get(n) is not None]
        ref = np.mean(kid, 0) if kid else None
    s_ap = (np.sign(np.mean(ant, 0)[1] - ref[1]) if ant and ref is not None else
            -np.sign(labels.geometry.matrix[1, 1]) or -1.0) or -1.0
    s_lr = (np.sign(cen["spleen"][2] - cen["liver"][2]) if cen.get("spleen") is not None
            and cen.get("liver") is not None else 1.0) or 1.0
    kid = [cen[n] for n in ("right_kidney", "left_kidney") if cen.get(n) is not None]
    s_si = (np.sign(cen["liver"][0] - np.mean(kid, 0)[0]) if kid and cen.get("liver") is not None
            else np.sign(labels.geometry.matrix[2, 2]) or 1.0) or 1.0
    A = (s_ap * np.arange(ny) * sp[1]).astype(np.float32)[None, :, None]   # anterior +, mm
    L = (s_lr * np.arange(nx) * sp[2]).astype(np.float32)[None, None, :]   # patient left +, mm
    S = (s_si * np.arange(nz) * sp[0]).astype(np.float32)[:, None, None]   # superior +, mm
    zsig = 8.0 / sp[0]

    # --- per-slice organ extents, aorta, spine --------------------------------------------
    fg = arr > 0
    zy, zx = fg.any(2), fg.any(1)
    area = fg.sum((1, 2))
    has = area >= 0.3 * area.max()          # slices through the big organs set the outline
    Ay, Lx = A[0, :, 0], L[0, 0, :]
    big = np.float32(1e9)
    # the outline follows the widest organ extent within +-80 mm (below the kidneys only the
    # vessels are labelled, yet the abdomen does not shrink around them)
    win = int(160.0 / sp[0]) | 1
    a_max = ndi.gaussian_filter1d(ndi.maximum_filter1d(
        _fill_series(np.where(zy, Ay, -big).max(1), has, 0), win), zsig, mode="nearest")
    a_min = ndi.gaussian_filter1d(ndi.minimum_filter1d(
        _fill_series(np.where(zy, Ay, big).min(1), has, 0), win), zsig, mode="nearest")
    l_max = ndi.gaussian_filter1d(ndi.maximum_filter1d(
        _fill_series(np.where(zx, Lx, -big).max(1), has, 0), win), zsig, mode="nearest")
    l_min = ndi.gaussian_filter1d(ndi.minimum_filter1d(
        _fill_series(np.where(zx, Lx, big).min(1), has, 0), win), zsig, mode="nearest")
    ao = organ("aorta")
    n_ao = ao.sum((1, 2))
    if n_ao.any():
        ao_has = n_ao > 0
        ao_a = _fill_series((ao.sum(2) * Ay).sum(1) / np.maximum(n_ao, 1), ao_has, zsig)
        ao_l = _fill_series((ao.sum(1) * Lx).sum(1) / np.maximum(n_ao, 1), ao_has, zsig)
    else:
        ao_a = a_min + 0.3 * (a_max - a_min)
        ao_l = 0.5 * (l_min + l_max) + 15.0
    vb_ra, vb_rl = rng.uniform(14, 17), rng.uniform(18, 24)
    r_canal = rng.uniform(7, 9)
    vb_a = ao_a - 11.0 - vb_ra - 3.0
    vb_l = ao_l - rng.uniform(12, 20)
    can_a = vb_a - vb_ra - r_canal - 1.0
    spine_back = can_a - r_canal - 25.0
    t_sc, t_m = p["subcut_fat_mm"], p["muscle_wall_mm"]
    wall = t_sc + t_m
    front = a_max + wall + rng.uniform(0, 15)
    back = np.minimum(a_min - 10.0, spine_back - 5.0) - wall * 0.6
    side_lo, side_hi = l_min - wall - rng.uniform(0, 10), l_max + wall + rng.uniform(0, 10)
    A0, RA = (front + back) / 2, (front - back) / 2
    L0, RL = (side_lo + side_hi) / 2, (side_hi - side_lo) / 2
    pe = rng.uniform(2.2, 2.8)

    # grow the outline per slice until every label is inside the muscle wall
    r_in = np.clip(1.0 - (wall + 3.0) / np.minimum(RA, RL), 0.3, 1.0)
    zz, yy, xx = np.nonzero(fg)
    rl = ((np.abs(Ay[yy] - A0[zz]) / RA[zz]) ** pe + (np.abs(Lx[xx] - L0[zz]) / RL[zz]) ** pe) ** (1 / pe)
    kmax = np.ones(nz)
    np.maximum.at(kmax, zz, rl / r_in[zz])
    kmax = ndi.gaussian_filter1d(ndi.maximum_filter1d(kmax, int(4 * zsig) | 1), zsig, mode="nearest")
    RA, RL = (RA * kmax).astype(np.float32), (RL * kmax).astype(np.float32)
    A0, L0 = A0.astype(np.float32), L0.astype(np.float32)
    dA, dL = A - A0[:, None, None], L - L0[:, None, None]
    r = ((np.abs(dA) / RA[:, None, None]) ** pe + (np.abs(dL) / RL[:, None, None]) ** pe) ** (1 / pe)
    body = r < 1.0
    rad = np.sqrt(dA * dA + dL * dL)
    depth = rad * (1.0 / np.maximum(r, 1e-3) - 1.0)
    theta = np.arctan2(np.abs(dL), -dA)            # 0 posterior, pi anterior
    tsc = t_sc * (0.7 + 0.5 * np.sin(theta))
    tissue = np.zeros(arr.shape, np.uint8)
    tissue[body] = TISSUE["fat"]
    tissue[body & (depth >= tsc) & (depth < tsc + t_m)] = TISSUE["muscle"]
    tissue[body & (depth < min(2.0, t_sc / 3))] = TISSUE["skin"]
    cavity = body & (depth >= tsc + t_m)

    # --- spine and back muscles -----------------------------------------------------------
    def ell(a0: np.ndarray, l0: np.ndarray, ra: float, rl_: float) -> np.ndarray:
        return ((A - a0[:, None, None]) / ra) ** 2 + ((L - l0[:, None, None]) / rl_) ** 2 <= 1.0

    period = rng.uniform(30, 34)
    phase = ((S + rng.uniform(0, period)) / period) % 1.0
    disc_frac = rng.uniform(6, 9) / period
    vbody = ell(vb_a, vb_l, vb_ra, vb_rl)
    canal = ell(can_a, vb_l, r_canal, r_canal)
    arch = ell(can_a, vb_l, r_canal + 5, r_canal + 5) & ~canal & (A < (can_a + 0.3 * r_canal)[:, None, None])
    dLs, dAc = np.abs(L - vb_l[:, None, None]), A - can_a[:, None, None]
    spinous = (dLs < 4) & (dAc < -r_canal) & (dAc > -r_canal - 25)
    transverse = (np.abs(dAc) < 3) & (dLs < 35) & (phase > 0.25) & (phase < 0.55)
    post = (arch | spinous | transverse) & (phase > 0.1) & (phase < 0.85)
    disc = vbody & (phase < disc_frac)
    bone = (vbody & ~disc) | post
    para = ell(can_a - 20, vb_l - 28, 25, 25) | ell(can_a - 20, vb_l + 28, 25, 25)
    tissue[body & para & (depth >= tsc)] = TISSUE["muscle"]
    kid = organ("right_kidney", "left_kidney")
    s_kid = float(S[np.nonzero(kid.any((1, 2)))[0], 0, 0].mean()) if kid.any() else float(S.min())
    rp = np.clip((s_kid - S[:, 0, 0]) * 0.2, 0, 22)
    psoas = (rp[:, None, None] > 2) & (
        (((A - vb_a[:, None, None]) ** 2 + (L - (vb_l - vb_rl - rp)[:, None, None]) ** 2)
         <= (rp ** 2)[:, None, None]) |
        (((A - vb_a[:, None, None]) ** 2 + (L - (vb_l + vb_rl + rp)[:, None, None]) ** 2)
         <= (rp ** 2)[:, None, None]))
    tissue[cavity & psoas] = TISSUE["muscle"]

    # --- thorax above the diaphragm --------------------------------------------------------
    upper = organ("liver", "spleen", "stomach")
    thorax = np.zeros(arr.shape, bool)
    if upper.any():
        top = np.where(upper, S, -big).max(0)
        ok = top > -big / 2
        _, (iy, ix) = ndi.distance_transform_edt(~ok, return_indices=True)
        dome = ndi.gaussian_filter(top[iy, ix], 10.0 / sp[1])
        dome = np.maximum(dome, float(np.percentile(top[ok], 50)) - 40.0)
        above = S > dome[None] + 5.0
        thorax = cavity & above & ~upper
        tissue[cavity & (S > dome[None]) & ~above] = TISSUE["muscle"]   # diaphragm
        medi = (dLs / 45) ** 2 + ((A - (vb_a + 50)[:, None, None]) / 70) ** 2 <= 1.0
        heart = (((A - (vb_a + 70)[:, None, None]) / 55) ** 2 + ((L - (vb_l + 25)[:, None, None]) / 65) ** 2
                 + ((S - dome[None] - 50) / 60) ** 2) <= 1.0
        tissue[thorax & ~medi] = TISSUE["lung"]
        tissue[thorax & heart] = TISSUE["heart"]

    # --- ribs ------------------------------------------------------------------------------
    s_rib = s_kid - 20.0
    rib_drop, rib_period, rib_h = rng.uniform(120, 200), rng.uniform(25, 32), rng.uniform(8, 11)
    d0 = tsc + 0.3 * t_m
    ribs = (body & (S > s_rib) & (depth >= d0) & (depth < d0 + rng.uniform(8, 12))
            & (theta > 0.2 * np.pi) & (theta < 0.85 * np.pi)
            & (((S + rib_drop * theta / np.pi) / rib_period) % 1.0 < rib_h / rib_period))
    bone |= ribs
    bone &= body
    tissue[body & disc] = TISSUE["disc"]
    tissue[body & canal] = TISSUE["canal"]

    # --- bowel -----------------------------------------------------------------------------
    elig = cavity & ~thorax & (tissue == TISSUE["fat"]) & (A > (vb_a - vb_ra)[:, None, None]) & ~fg
    if elig.any():
        f1 = _field(arr.shape, sp, 40.0, rng)
        f2 = _field(arr.shape, sp, 40.0, rng)
        g = f1 * f1 + f2 * f2
        sub = g[elig][:: max(1, int(elig.sum() // 200000))]
        thr = float(np.quantile(sub, p["bowel_fraction"]))
        bowel = elig & (g < thr)
        inner = bowel & (g < 0.55 * thr)
        f3 = _field(arr.shape, sp, 20.0, rng) + 0.03 * (A - A0[:, None, None])
        v3 = f3[inner]
        if v3.size:
            q_gas = np.quantile(v3, 1 - p["gas_fraction"])
            q_con = np.quantile(v3, p["oral_contrast_fraction"])
            tissue[bowel] = TISSUE["bowel_wall"]
            tissue[inner] = TISSUE["bowel_content"]
            tissue[inner & (f3 >= q_gas)] = TISSUE["bowel_gas"]
            tissue[inner & (f3 < q_con) & (f3 < q_gas)] = TISSUE["oral_contrast"]

    # --- soft tissue against the organs (SynthConfig.organ_contact_fraction)
    if config.organ_contact_fraction > 0:
        crng = np.random.default_rng(_stream_seed(p))   # its own stream: no other draw moves
        reach = crng.uniform(2.0, 6.0)
        within = cavity & ~fg & (ndi.distance_transform_edt(~fg, sampling=sp) <= reach)
        # no lung or heart directly on an organ: the diaphragm lies between, everywhere
        tissue[within & ((tissue == TISSUE["lung"]) | (tissue == TISSUE["heart"]))] = \
            TISSUE["muscle"]
        near = within & (tissue == TISSUE["fat"])
        if near.any():
            f_c = _field(arr.shape, sp, 25.0, crng)
            thr_c = float(np.quantile(f_c[near], 1.0 - config.organ_contact_fraction))
            tissue[near & (f_c >= thr_c)] = TISSUE["muscle"]
    n_shell = max(1, round(1.0 / sp[1]))
    cort = bone & ~ndi.binary_erosion(bone, iterations=n_shell)
    # a ~1 mm cortex in a thicker shell of voxels: each shell voxel holds a random fraction of
    # cortex (partial volume), so bone HU has a long tail up to the cortical value
    cort_frac = min(1.0, 1.0 / (n_shell * sp[1]))
    tissue[bone] = TISSUE["bone_trabecular"]
    tissue[cort] = TISSUE["bone_cortical"]

    # --- paint HU ---------------------------------------------------------------------------
    # organs are painted from the label map with its voxel staircase smoothed (the tissue map
    # records what was painted); the label map itself is not changed
    arr = _smooth_labels(arr, sp, p["edge_smooth_mm"])
    fg = arr > 0
    hu_of = {TISSUE["air"]: p["outside_air_hu"], TISSUE["fat"]: p["fat_hu"], TISSUE["muscle"]: p["muscle_hu"],
             TISSUE["skin"]: p["skin_hu"], TISSUE["bone_trabecular"]: p["trabecular_hu"],
             TISSUE["bone_cortical"]: p["trabecular_hu"], TISSUE["disc"]: p["disc_hu"],
             TISSUE["canal"]: p["csf_hu"], TISSUE["bowel_wall"]: p["bowel_wall_hu"],
             TISSUE["bowel_content"]: p["bowel_content_hu"], TISSUE["bowel_gas"]: -1000.0,
             TISSUE["oral_contrast"]: p["oral_contrast_hu"], TISSUE["lung"]: p["lung_hu"],
             TISSUE["heart"]: p["blood_pool_hu"]}
    organ_hu = {"liver": p["liver_hu"], "spleen": p["spleen_hu"], "pancreas": p["pancreas_hu"],
                "right_kidney": p["kidney_hu"], "left_kidney": p["kidney_hu"],
                "aorta": p["aorta_hu"], "sma": p["aorta_hu"], "ivc": p["ivc_hu"],
                "portal_splenic_vein": p["portal_vein_hu"], "gallbladder": p["gallbladder_hu"],
                "right_adrenal": p["adrenal_hu"], "left_adrenal": p["adrenal_hu"],
                "esophagus": p["esophagus_hu"], "stomach": p["gastric_content_hu"],
                "duodenum": p["bowel_content_hu"]}
    lut = np.zeros(256, np.float32)
    for code, v in hu_of.items():
        lut[code] = v
    for v in np.unique(arr):
        if v > 0:
            lut[TISSUE["organ"] + int(v)] = organ_hu.get(name_of[int(v)], 40.0)
    tissue = np.where(fg, (TISSUE["organ"] + arr).astype(np.uint8), tissue)
    ct = lut[tissue]
    tex = _field(arr.shape, sp, p["texture_length_mm"], rng)
    soft = fg | (tissue == TISSUE["muscle"])
    ct[soft] += p["texture_sd_hu"] * tex[soft]
    fatm = tissue == TISSUE["fat"]
    ct[fatm] += p["fat_texture_sd_hu"] * tex[fatm]
    bonem = (tissue == TISSUE["bone_trabecular"]) | (tissue == TISSUE["bone_cortical"])
    ct[bonem] += p["bone_texture_sd_hu"] * tex[bonem]
    cortm = tissue == TISSUE["bone_cortical"]
    u = np.minimum(cort_frac * rng.uniform(0.1, 2.0, int(cortm.sum())), 1.0).astype(np.float32)
    ct[cortm] += u * (p["cortical_hu"] - p["trabecular_hu"])
    lung = tissue == TISSUE["lung"]
    ct[lung] += 25.0 * tex[lung]

    liver = organ("liver")
    if liver.any():
        box = ndi.find_objects(liver.astype(np.uint8))[0]
        shp = tuple(s.stop - s.start for s in box)
        h1, h2 = _field(shp, sp, 25.0, rng), _field(shp, sp, 25.0, rng)
        ves = (h1 * h1 + h2 * h2 < rng.uniform(0.06, 0.15)) & liver[box]
        ves &= _depth_inside(liver[box], sp) > 4.0
        ct[box][ves] += p["liver_vessel_delta_hu"]
        n_lesions = _paint_liver_lesions(ct, liver, sp, p, config.liver_lesion_fraction)
    else:
        n_lesions = 0
    lobulated = (_paint_pancreas_lobules(ct, organ("pancreas"), sp, p,
                                         config.pancreas_lobulation_fraction)
                 if config.pancreas_lobulation_fraction > 0 else 0.0)   # off: no mask made
    for kname in ("right_kidney", "left_kidney"):
        k = organ(kname)
        if k.any():
            box = ndi.find_objects(k.astype(np.uint8))[0]
            shp = tuple(b.stop - b.start for b in box)
            # medulla: darker towards the centre under a 4-6 mm cortex, blending smoothly (at
            # ~70 s the corticomedullary contrast is fading: one broad peak, not two levels)
            depth = _depth_inside(k[box], sp)
            ramp = np.clip((depth - rng.uniform(3, 5)) / 4.0, 0.0, 1.0)
            blob = 1.0 / (1.0 + np.exp(-2.5 * _field(shp, sp, 12.0, rng)))
            kt = p["kidney_texture_sd_hu"] * _field(shp, sp, 6.0, rng)
            ct[box][k[box]] += (kt - p["kidney_medulla_drop_hu"] * ramp * blob)[k[box]]
    st = organ("stomach", "duodenum")
    if st.any():
        d = _depth_inside(st, sp)
        wall_st = st & (d < rng.uniform(3, 5))
        ct[wall_st] = p["stomach_wall_hu"]
        inside = st & ~wall_st
        zs, ys, xs = np.nonzero(inside)
        if zs.size:
            a_in = Ay[ys]
            level = np.quantile(a_in, 1 - rng.uniform(0.05, 0.3))   # non-dependent gas (supine)
            gas = a_in > level
            ct[zs[gas], ys[gas], xs[gas]] = -1000.0

    # --- partial volume, noise --------------------------------------------------------------
    psf = [p["slice_sigma_mm"] / sp[0], p["psf_sigma_mm"] / sp[1], p["psf_sigma_mm"] / sp[2]]
    ct = ndi.gaussian_filter(ct, psf, mode="nearest")
    ct += _ct_noise(arr.shape, sp, p["noise_sd_hu"], p["noise_peak_per_mm"],
                    p["noise_z_sigma_mm"], rng)
    np.clip(ct, -1024.0, 3071.0, out=ct)
    params = {**p, "orientation_ap_lr_si": [float(s_ap), float(s_lr), float(s_si)],
              "generator_version": GENERATOR_VERSION}
    if config.liver_lesion_fraction > 0:
        params["liver_lesions"] = n_lesions
    if config.pancreas_lobulation_fraction > 0:
        params["pancreas_fat_share"] = lobulated
    meta = {"synthetic": True, "generator_version": GENERATOR_VERSION}
    return SynthCase(Volume(ct.astype(np.float32), labels.geometry, {**labels.meta, **meta}),
                     Volume(tissue, labels.geometry, dict(meta)), params)


def _paint_liver_lesions(ct: np.ndarray, liver: np.ndarray, sp: tuple[float, ...],
                         params: Mapping[str, float], fraction: float) -> int:
    """Darken 1-4 lesion-shaped regions of the liver in ``ct`` (in place); how many.

    Drawn from a stream of their own (seeded by the case's parameters), so a case with
    ``fraction`` 0 is bit-identical to one made before the option existed.
    """
    if fraction <= 0:
        return 0
    rng = np.random.default_rng(_stream_seed(params) + 1)
    if rng.uniform() >= fraction:
        return 0
    box = ndi.find_objects(liver.astype(np.uint8))[0]
    sub = liver[box]
    centres = np.argwhere(_depth_inside(sub, sp) > 8.0)
    if not len(centres):
        return 0
    n = int(rng.integers(1, 5))
    drop = rng.uniform(25.0, 70.0)
    spacing = np.asarray(sp, dtype=np.float32)
    weight = np.zeros(sub.shape, np.float32)
    for _ in range(n):
        c = centres[rng.integers(len(centres))]
        radii = rng.uniform(5.0, 25.0) * rng.uniform(0.75, 1.25, 3)
        half = np.ceil((radii + 3.0) / spacing).astype(int)
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, sub.shape)
        axes = [(np.arange(lo[i], hi[i]) - c[i]) * spacing[i] / radii[i] for i in range(3)]
        d = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2
                    + axes[2][None, None, :] ** 2)
        # 1 inside, 0 outside, a ~2 mm ramp across the edge
        w = np.clip((1.0 - d) * radii.min() / 2.0 + 0.5, 0.0, 1.0).astype(np.float32)
        win = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(weight[win], w, out=weight[win])
    weight *= sub
    ct[box] -= drop * weight
    return n


def _paint_pancreas_lobules(ct: np.ndarray, pancreas: np.ndarray, sp: tuple[float, ...],
                            params: Mapping[str, float], fraction: float) -> float:
    """Turn part of the pancreas in ``ct`` into interlobular fat (in place); the fat share.

    See ``SynthConfig.pancreas_lobulation_fraction``. 0.0 when the case is not lobulated. Its
    own stream (seeded by the case's drawn parameters), so a case with ``fraction`` 0 is
    bit-identical to one made before the option existed.
    """
    if fraction <= 0 or not pancreas.any():
        return 0.0
    rng = np.random.default_rng(_stream_seed(params) + 2)
    if rng.uniform() >= fraction:
        return 0.0
    share = float(rng.uniform(0.05, 0.40))
    box = ndi.find_objects(pancreas.astype(np.uint8))[0]
    inside = pancreas[box]
    f = _field(inside.shape, sp, float(rng.uniform(3.0, 7.0)), rng)
    cut = float(np.quantile(f[inside], 1.0 - share))
    # ~1 mm blend: the field's gradient is about 1 / (length / 2) per mm, sd 1
    weight = np.clip((f - cut) / 0.3 + 0.5, 0.0, 1.0) * inside
    sub = ct[box]
    sub += weight * (params["fat_hu"] - sub)
    return round(share, 4)


def synthesize_ct(labels: Volume, *, label_table: Mapping[str, int] = BTCV,
                  rng: np.random.Generator | int | None = None,
                  config: SynthConfig = SynthConfig()) -> Volume:
    """Synthetic portal-venous CT (float32 HU, same geometry) around an organ label map.

    Same as :func:`synthesize` but returns only the CT.

    Args:
        labels: integer label map ``(z, y, x)``, e.g. a BTCV case read with SimpleITK.
        label_table: organ name -> label value.
        rng: seed or Generator.
        config: parameter ranges.

    Returns:
        float32 HU ``(z, y, x)`` Volume with the label map's geometry.

    Raises:
        InputError: see :func:`synthesize`.
    """
    return synthesize(labels, label_table=label_table, rng=rng, config=config).ct


# --------------------------------------------------------------------------- sample
def load_sample() -> tuple[Volume, Volume]:
    """The bundled synthetic sample: ``(ct, pancreas)``, int16 HU and uint8 {0, 1}.

    Made by ``scripts/make_sample.py`` from :func:`make_phantom` with the seed stored in
    ``iunet_nb/assets/sample.json`` (no BTCV data in it); no download.

    Returns:
        ``(ct, mask)`` Volumes on the same geometry; ``ct.meta`` holds ``sample.json``.

    Raises:
        InputError: the assets are missing (a broken install).
    """
    import json

    import SimpleITK as sitk

    root = resources.files("iunet_nb") / "assets"
    try:
        card = json.loads((root / "sample.json").read_text(encoding="utf-8"))
        vols = []
        for name in ("sample_ct.nii.gz", "sample_pancreas.nii.gz"):
            with resources.as_file(root / name) as path:
                vols.append(Volume.from_sitk(sitk.ReadImage(str(path)), source=name))
    except (FileNotFoundError, RuntimeError) as exc:
        raise InputError(f"the bundled sample is missing or unreadable ({exc}); reinstall "
                         "iunet-nb or run scripts/make_sample.py") from exc
    ct, mask = vols
    return Volume(ct.array, ct.geometry, {**ct.meta, **card}), mask
