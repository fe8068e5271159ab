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

Example:
    >>> model = load_zhou("zhou/model.pt")                      # doctest: +SKIP
    >>> box = detect_box(ct, model)                             # doctest: +SKIP
    >>> session.predict(box)                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from scipy import ndimage

from ..errors import ConfigError, InputError
from ..preprocess import Box
from ..volume import Volume
from ._common import _check_volume

__all__ = ["BoxDetector", "automatic_box", "box_contains", "box_recall", "detect_box",
           "settle_box"]

logger = logging.getLogger(__name__)

#: A box larger than this fraction of the image is reported as unreliable (logged).
_LARGE_BOX = 0.5


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
        A :class:`~iunet_nb.preprocess.Box` inside the image (``hi`` exclusive).

    Raises:
        InputError: the detector finds nothing (max probability < ``min_probability``), or
            returns probabilities on another grid.
        ConfigError: a threshold or fraction out of range.
    """
    _check_volume(volume, "volume")
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold!r}")
    if not 0 <= min_component_frac <= 1:
        raise ConfigError(f"min_component_frac must be in [0, 1], got {min_component_frac!r}")
    if not isinstance(margin_mm, (int, float)) or not 0 <= margin_mm < float("inf"):
        raise ConfigError(f"margin_mm must be a finite number >= 0 (mm), got {margin_mm!r}")
    margin = tuple(int(np.ceil(margin_mm / s - 1e-9)) for s in volume.spacing_mm)
    prob = _probability(volume, detector, device)
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
    return box


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
    if not isinstance(passes, int) or passes < 0:
        raise ConfigError(f"passes must be an integer >= 0, got {passes!r}")
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
    return box


def automatic_box(volume: Volume, segment: Callable[[Box], np.ndarray]) -> Box:
    """The pancreas box without user input: the bundled detector's, settled once.

    What ``Session.predict()`` and ``iunet-nb predict --auto-box`` use: :func:`detect_box`
    with the shipped Zhou coarse-stage detector and its defaults, then :func:`settle_box`
    around ``segment``'s mask in it.

    Args:
        volume: CT in HU.
        segment: box -> mask of the whole image from the pancreas model that will segment.
    """
    from ..checkpoint import load_bundled_detector

    detected = detect_box(volume, load_bundled_detector())
    box = settle_box(detected, segment)
    logger.info("automatic box: the detector proposes %s, the network's own mask in it %s",
                detected.to_dict(), box.to_dict())
    return box


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
