"""Automatic bounding box for iUnet: a detector's probability map -> a voxel :class:`Box`.

iUnet needs a box around the organ (Boers et al. 2020: "the user must give the bounding box",
one of its weaknesses). :func:`detect_box` takes it from any detector that returns a
foreground probability on the CT's grid: the coarse stage of Zhou et al.
(:class:`iunet_nb.systems.zhou.ZhouModel`, ``stage="coarse"`` or ``"fine"``), the Roth
multi-organ FCN (:class:`iunet_nb.systems.roth.RothModel` for one of its organs), or a plain
function ``volume -> probability``.

The probability is thresholded; small connected components (false positives far from the
organ would blow the box up) are dropped unless they hold at least ``min_component_frac`` of
the largest one's voxels; the box is the bounding box of what is left, grown by
``margin_mm`` and clipped to the image. iUnet's own preprocessing then adds its 5 % margin.

Defaults by measurement (``benchmarks/bench_autobox.py``, bundled detector and iUnet, 5
held-out BTCV-synthetic cases, 20 fresh phantoms, the bundled sample; RESULTS.md): what
matters is the iUnet's DSC inside the box, not containment alone. The iUnet was trained on
the reference box plus its 5 % crop margin, so a generous box changes the scale it sees: a
LOW threshold (0.1) with a 10 mm margin held the whole pancreas in 25/25 held-out cases but
was 4.7x the organ's own box on BTCV anatomy and the iUnet reached only DSC 0.36 in it
(0.81 with the reference box). Threshold 0.3 without margin gives a box about the organ's
size (voxel recall >= 0.955; iUnet's 5 % crop margin takes in most of the rest) and DSC
0.78 / 0.94 / 0.92 on BTCV / phantoms / sample, within 0.03 of the reference box on the
synthetic cases. Organ parts a tight box cuts off can be added back by scribbles
(refinement works in the crop) or by redrawing the box.

:func:`settle_box` then replaces the detector's box by the box of the iUnet's own mask in it:
the iUnet segments up to its 5 % crop margin beyond a box that cuts the organ, and its mask's
box is what it was trained on (the organ's box). One such pass, measured (2026-11-29,
``bench_autobox.py``; held-out BTCV-synthetic / 20 phantoms / bundled sample): with the
1200-iteration 24 x 64 x 64 iUnet 0.818 / 0.942 / 0.929 -> 0.836 / 0.943 / 0.952 (reference box
0.846 / 0.946 / 0.947; the sample's box recall 0.797 -> 0.978); with the 32 x 64 x 64 iUnet
shipped since 0.842 / 0.946 / 0.931 -> 0.851 / 0.948 / 0.956 (reference box 0.859 / 0.950 /
0.955). More passes do not converge: the box wanders by a voxel or two and the BTCV mean drops
again (0.836 -> 0.831 -> 0.822 after passes 2 and 3, the 1200-iteration iUnet).

:func:`find_box` (what ``Session.predict()``, ``iunet-nb predict --auto-box`` and the
annotator use) then measures, in :func:`check_box`, the signs that the box is wrong: the
detector's peak and mean probability, the boxes' sizes in mm, the mask's volume, the box
reaching the first or last slice, how far settling moved it. On every real CT tried the
bundled detector (trained on synthetic CT only) misses and these signs say so
(:class:`BoxLimits`); callers then warn and ask for a drawn box.

Example:
    >>> model = load_zhou("zhou/model.pt")                      # doctest: +SKIP
    >>> box = detect_box(ct, model)                             # doctest: +SKIP
    >>> session.predict(box)                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import ndimage

from ..errors import ConfigError, InputError
from ..io.volume import Volume
from ..model.preprocess import Box
from ._common import _check_volume

__all__ = ["BoxCheck", "BoxDetector", "BoxLimits", "automatic_box", "box_contains",
           "box_recall", "check_box", "detect_box", "find_box", "settle_box"]

logger = logging.getLogger(__name__)

#: A box larger than this fraction of the image is reported as unreliable (logged).
_LARGE_BOX = 0.5


@dataclass(frozen=True)
class BoxLimits:
    """Plausible ranges for an automatic pancreas box; :func:`check_box` flags what is outside.

    Measured 2026-12-07 (``benchmarks/bench_autobox_check.py``, bundled detector and iUnet;
    RESULTS.md). Where the box works -- the bundled sample and 5 held-out BTCV-synthetic cases
    (box recall 0.947-0.997, DSC 0.81-0.96) -- versus the three real CTs where it misses
    (NIH PANCREAS_0002 DSC 0.12; 3D-IRCADb 1.7 and 1.17, masks on other organs):

    ===========================  ===================  ==================================
    sign                         synthetic (6 cases)  real: PANCREAS_0002 / 1.7 / 1.17
    ===========================  ===================  ==================================
    detector peak probability    0.986-1.000          0.646 / 0.651 / 0.833
    detector mean, kept voxels   0.484-0.699          0.349 / 0.384 / 0.446
    detector box reaches z end   never                yes / yes / no
    detector box z, y mm         <= 112, <= 66        187, 232 / 171, 75 / 114, 116
    settled box z, y, x mm       60-118, 47-74,       159, 171, 235 / 144, 94, 174 /
                                 114-166              106, 91, 140
    mask in detector's box mL    38-105               951 / 115 / 61
    largest face move mm         6-26                 41 / 40 / 17
    ===========================  ===================  ==================================

    The peak probability alone separates every case (gap 0.833 -> 0.986): 0.9. The other
    limits are set loosely, so that a real pancreas passes them: box sizes within the 30 BTCV
    pancreas label maps' range (z 48-144, y 56-110, x 98-170 mm) widened by 25 % (the lower
    ends to take the sample's small phantom pancreas, y 47 mm); mask volume around the BTCV
    range 35-150 mL (20-250 mL: partial or enlarged glands); mean probability 0.4 and a face
    move of 35 mm sit between the groups but near them, so they only add reasons.
    """

    min_peak_probability: float = 0.9
    min_mean_probability: float = 0.4
    min_box_mm: tuple[float, float, float] = (30.0, 35.0, 60.0)
    max_box_mm: tuple[float, float, float] = (180.0, 138.0, 213.0)
    min_mask_ml: float = 20.0
    max_mask_ml: float = 250.0
    max_moved_mm: float = 35.0


@runtime_checkable
class BoxDetector(Protocol):
    """Anything that maps a CT to a foreground probability on its own grid."""

    def organ_probability(self, image: Volume,
                          device: str | torch.device | None = None) -> np.ndarray:
        """float32 ``(z, y, x)`` probability of the organ, on ``image``'s grid."""
        ...  # pragma: no cover


def _probability(volume: Volume, detector: Any, device: str | torch.device | None
                 ) -> np.ndarray:
    if isinstance(detector, BoxDetector):
        prob = detector.organ_probability(volume, device)
    elif callable(detector):
        prob = detector(volume)
    else:
        raise InputError(f"the detector must have an organ_probability(volume, device) method "
                         f"(e.g. a ZhouModel or RothModel) or be a function volume -> "
                         f"probability; got {type(detector).__name__}")
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != volume.shape:
        raise InputError(f"the detector returned probabilities of shape {prob.shape} for an image "
                         f"of shape {volume.shape}; it must return them on the image's grid")
    return prob


def detect_box(volume: Volume, detector: BoxDetector | Callable[[Volume], np.ndarray], *,
               threshold: float = 0.3, min_component_frac: float = 0.1,
               margin_mm: float = 0.0, min_probability: float = 0.05,
               device: str | torch.device | None = None) -> Box:
    """A voxel box around the organ, found by a detector (no user input).

    Args:
        volume: CT in HU.
        detector: a :class:`BoxDetector` (``organ_probability(volume, device)``) or a
            function ``volume -> float32 (z, y, x)`` probability.
        threshold: foreground threshold (0.3: see the module docstring). When nothing
            reaches it but the maximum probability is at least ``min_probability``, half the
            maximum is used instead (logged).
        min_component_frac: keep 26-connected components with at least this fraction of the
            largest component's voxels (0 keeps all, 1 only the largest).
        margin_mm: added on each side, converted to voxels per axis with the image's spacing
            (rounded up), before clipping to the image.
        min_probability: below this maximum probability the organ counts as not found.
        device: passed to the detector.

    Returns:
        A :class:`~iunet_nb.model.preprocess.Box` inside the image (``hi`` exclusive).

    Raises:
        InputError: the detector finds nothing (max probability < ``min_probability``), or
            returns probabilities on another grid.
        ConfigError: a threshold or fraction out of range.
    """
    _check_volume(volume, "volume")
    _check_detect_args(threshold, min_component_frac, margin_mm)
    prob = _probability(volume, detector, device)
    return _box_from_probability(volume, prob, threshold=threshold,
                                 min_component_frac=min_component_frac, margin_mm=margin_mm,
                                 min_probability=min_probability)[0]


def _check_detect_args(threshold: float, min_component_frac: float, margin_mm: float) -> None:
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
    if not 0 <= min_component_frac <= 1:
        raise ConfigError(f"min_component_frac must be in [0, 1], got {min_component_frac!r}")
    if not isinstance(margin_mm, (int, float)) or not 0 <= margin_mm < float("inf"):
        raise ConfigError(f"margin_mm must be a finite number >= 0 (mm), got {margin_mm!r}")


def _box_from_probability(volume: Volume, prob: np.ndarray, *, threshold: float = 0.3,
                          min_component_frac: float = 0.1, margin_mm: float = 0.0,
                          min_probability: float = 0.05) -> tuple[Box, np.ndarray]:
    """:func:`detect_box` once the detector's probability is known: (box, the kept voxels)."""
    margin = tuple(int(np.ceil(margin_mm / s - 1e-9)) for s in volume.spacing_mm)
    peak = float(prob.max())
    mask = prob >= threshold
    if not mask.any():
        if peak < min_probability:
            raise InputError(f"the detector found no organ in this image (maximum probability "
                             f"{peak:.3f} < {min_probability}); draw the box by hand")
        logger.warning("no voxel reaches probability %.2f (max %.3f); using %.3f instead",
                       threshold, peak, peak / 2)
        mask = prob >= peak / 2
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component_frac * sizes.max()) + 1
        mask = np.isin(labels, keep)
        logger.debug("detect_box: kept %d of %d components", len(keep), n)
    box = Box.from_mask(mask).expand(margin).clip(volume.shape)
    fraction = float(np.prod(box.size)) / float(np.prod(volume.shape))
    if fraction > _LARGE_BOX:
        logger.warning("the detected box covers %.0f %% of the image (peak probability %.3f): "
                       "the detector is unsure where the organ is; check or redraw the box",
                       100 * fraction, peak)
    return box, mask


def settle_box(box: Box, segment: Callable[[Box], np.ndarray], *, passes: int = 1) -> Box:
    """The box of ``segment``'s own mask inside ``box``, ``passes`` times over.

    Args:
        box: the first box (e.g. from :func:`detect_box`).
        segment: box -> mask of the whole image (non-zero = organ), e.g. the iUnet in that box.
        passes: how many times to re-box (1 by measurement: module docstring).

    Returns:
        the last box; ``box`` itself when the mask is empty (nothing to re-box from). Stops
        early when a pass returns the box it was given.

    Raises:
        ConfigError: ``passes`` < 0.
    """
    return _settle(box, segment, passes)[0]


def _settle(box: Box, segment: Callable[[Box], np.ndarray], passes: int
            ) -> tuple[Box, np.ndarray | None]:
    """:func:`settle_box`, also returning the last mask ``segment`` gave (None: no pass)."""
    if not isinstance(passes, int) or passes < 0:
        raise ConfigError(f"passes must be an integer >= 0, got {passes!r}")
    mask = None
    for _ in range(passes):
        mask = np.asarray(segment(box))
        if not mask.any():
            logger.warning("settle_box: the segmentation in %s is empty; keeping the box",
                           box.to_dict())
            break
        new = Box.from_mask(mask)
        if new == box:
            break
        logger.debug("settle_box: %s -> %s", box.to_dict(), new.to_dict())
        box = new
    return box, mask


@dataclass(frozen=True)
class BoxCheck:
    """The automatic box and the signs that it may be wrong (:func:`check_box`).

    Attributes:
        detected: the detector's box.
        box: the settled box (the network's own mask's box in ``detected``).
        peak_probability: the detector's maximum probability.
        mean_probability: the detector's mean probability over the voxels it kept (those
            that made its box).
        detected_mm: the detector's box size ``(z, y, x)`` in mm.
        box_mm: the settled box's size ``(z, y, x)`` in mm.
        mask_ml: volume of the network's mask in the detector's box (the one settled on), mL.
        z_border: the detector's box reaches the first or last slice.
        moved_mm: the largest distance any face moved from the detector's box to the settled
            box, mm.
        reasons: what looked wrong, one short phrase each; empty when nothing did.
    """

    detected: Box
    box: Box
    peak_probability: float
    mean_probability: float
    detected_mm: tuple[float, float, float]
    box_mm: tuple[float, float, float]
    mask_ml: float
    z_border: bool
    moved_mm: float
    reasons: tuple[str, ...] = ()

    @property
    def unsure(self) -> bool:
        """True when any sign is outside its plausible range: ask the user for a box."""
        return bool(self.reasons)

    def summary(self) -> str:
        """One line: what looked wrong (empty string when nothing did)."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native fields (for the event log)."""
        return {"detected": self.detected.to_dict(), "box": self.box.to_dict(),
                "peak_probability": round(self.peak_probability, 4),
                "mean_probability": round(self.mean_probability, 4),
                "detected_mm": [round(v, 1) for v in self.detected_mm],
                "box_mm": [round(v, 1) for v in self.box_mm],
                "mask_ml": round(self.mask_ml, 1), "z_border": self.z_border,
                "moved_mm": round(self.moved_mm, 1), "unsure": self.unsure,
                "reasons": list(self.reasons)}


def check_box(detected: Box, box: Box, prob: np.ndarray, kept: np.ndarray,
              mask: np.ndarray | None, spacing_mm: tuple[float, float, float], *,
              limits: BoxLimits | None = None) -> BoxCheck:
    """Measure the signs that an automatic pancreas box is unsure or implausible.

    Args:
        detected: the detector's box (voxels, ``hi`` exclusive).
        box: the settled box.
        prob: float32 ``(z, y, x)`` detector probability on the image's grid.
        kept: bool ``(z, y, x)``: the voxels the detector's box was made from.
        mask: the network's mask in ``detected`` (non-zero = organ), or None (not settled).
        spacing_mm: ``(z, y, x)`` voxel size.
        limits: the plausible ranges (default :class:`BoxLimits`, measured: RESULTS.md).

    Returns:
        a :class:`BoxCheck`; ``reasons`` lists each sign outside ``limits``.
    """
    lim = limits or BoxLimits()
    sp = np.asarray(spacing_mm, dtype=float)
    peak = float(prob.max()) if prob.size else 0.0
    mean = float(prob[kept].mean()) if np.any(kept) else 0.0
    det_mm = tuple(float(v) for v in np.asarray(detected.size) * sp)
    box_mm = tuple(float(v) for v in np.asarray(box.size) * sp)
    voxel_ml = float(np.prod(sp)) / 1000.0
    mask_ml = float(np.count_nonzero(mask)) * voxel_ml if mask is not None else 0.0
    z_border = detected.lo_zyx[0] == 0 or detected.hi_zyx[0] == prob.shape[0]
    moved = np.abs(np.concatenate([(np.subtract(box.lo_zyx, detected.lo_zyx)) * sp,
                                   (np.subtract(box.hi_zyx, detected.hi_zyx)) * sp]))
    moved_mm = float(moved.max())
    reasons = []
    if peak < lim.min_peak_probability:
        reasons.append(f"the detector's highest probability is {peak:.2f} "
                       f"(< {lim.min_peak_probability})")
    if mean < lim.min_mean_probability:
        reasons.append(f"the detector's mean probability in its box is {mean:.2f} "
                       f"(< {lim.min_mean_probability})")
    if z_border:
        reasons.append("the detector's box reaches the first or last slice")
    big = [f"{'zyx'[a]} {det_mm[a]:.0f} mm" for a in range(3) if det_mm[a] > lim.max_box_mm[a]]
    if big:
        reasons.append(f"the detector's box is too large for a pancreas ({', '.join(big)})")
    bad = [f"{'zyx'[a]} {box_mm[a]:.0f} mm" for a in range(3)
           if not lim.min_box_mm[a] <= box_mm[a] <= lim.max_box_mm[a]]
    if bad:
        reasons.append(f"the box is not a pancreas's size ({', '.join(bad)}; expected "
                       + ", ".join(f"{'zyx'[a]} {lim.min_box_mm[a]:.0f}-{lim.max_box_mm[a]:.0f}"
                                   for a in range(3)) + " mm)")
    if mask is not None and not lim.min_mask_ml <= mask_ml <= lim.max_mask_ml:
        reasons.append(f"the mask holds {mask_ml:.0f} mL (a pancreas: "
                       f"{lim.min_mask_ml:.0f}-{lim.max_mask_ml:.0f} mL)")
    if moved_mm > lim.max_moved_mm:
        reasons.append(f"the network's mask disagrees with the detector's box by "
                       f"{moved_mm:.0f} mm (> {lim.max_moved_mm:.0f})")
    return BoxCheck(detected, box, peak, mean, det_mm, box_mm, mask_ml, z_border, moved_mm,
                    tuple(reasons))


def find_box(volume: Volume, segment: Callable[[Box], np.ndarray], *,
             detector: BoxDetector | Callable[[Volume], np.ndarray] | None = None,
             limits: BoxLimits | None = None,
             device: str | torch.device | None = None) -> BoxCheck:
    """The pancreas box without user input, with the signs that it may be wrong.

    :func:`detect_box` (default: the shipped Zhou coarse-stage detector, its defaults), then
    :func:`settle_box` once around ``segment``'s mask, then :func:`check_box`. The caller
    says what to do when ``unsure`` (warn, ask for a drawn box).

    Args:
        volume: CT in HU.
        segment: box -> mask of the whole image from the pancreas model that will segment.
        detector: default the bundled one.
        limits: plausible ranges (default :class:`BoxLimits`).
        device: passed to the detector.
    """
    _check_volume(volume, "volume")
    if detector is None:
        from ..model.checkpoint import load_bundled_detector

        detector = load_bundled_detector()
    prob = _probability(volume, detector, device)
    detected, kept = _box_from_probability(volume, prob)
    box, mask = _settle(detected, segment, 1)
    check = check_box(detected, box, prob, kept, mask, volume.spacing_mm, limits=limits)
    logger.info("automatic box: the detector proposes %s, the network's own mask in it %s%s",
                detected.to_dict(), box.to_dict(),
                f"; uncertain: {check.summary()}" if check.unsure else "")
    return check


def automatic_box(volume: Volume, segment: Callable[[Box], np.ndarray]) -> Box:
    """The pancreas box without user input: :func:`find_box`'s settled box.

    Args:
        volume: CT in HU.
        segment: box -> mask of the whole image from the pancreas model that will segment.
    """
    return find_box(volume, segment).box


def box_recall(box: Box, mask: np.ndarray) -> float:
    """Fraction of the mask's voxels inside ``box`` (1.0 = the whole organ is inside).

    Raises:
        InputError: the mask is not 3D or is empty.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"box_recall expects a 3D mask (z, y, x), got shape {mask.shape}")
    total = int(np.count_nonzero(mask))
    if total == 0:
        raise InputError("box_recall: the reference mask is empty")
    inside = int(np.count_nonzero(mask[box.clip(mask.shape).slices]))
    return inside / total


def box_contains(box: Box, mask: np.ndarray) -> bool:
    """True when every non-zero voxel of ``mask`` lies inside ``box``."""
    return box_recall(box, mask) == 1.0
