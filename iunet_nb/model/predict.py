"""Automatic segmentation of a CT inside a box, back in the CT's own geometry.

Staged as in MONAILabel's infer tasks: pre-transform (:func:`iunet_nb.model.preprocess.preprocess_image`:
smooth, window, crop box + margin, reorient the crop to the patient axes (LPS), resample to the
working grid), inferer (the network, softmax), inverse transform
(:func:`iunet_nb.model.preprocess.restore_probabilities`: resample back to the crop, undo the
reorientation and paste into the full grid), post-transform (threshold, with the boundary
placed on the CT's own edges: :func:`iunet_nb.interactive.edges.snap_to_edges`).

The network therefore sees the same anatomy whatever order the CT's file stores its axes in
(identity-direction DICOM, a NIfTI stored right-to-left, ...), and the mask comes back on the
CT's own array and geometry; boxes are always in the CT's array indices.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..interactive.edges import EDGE_WEIGHT, snap_to_edges
from ..io.volume import Volume, check_ct_spacing
from .checkpoint import select_device
from .preprocess import (
    Box,
    CropRecord,
    PreprocessConfig,
    preprocess_image,
    restore_crop_probabilities,
    restore_probabilities,
)

__all__ = ["predict_probabilities", "segment", "make_box"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def _working_probabilities(model: torch.nn.Module, image: Volume, box: Box,
                           cfg: PreprocessConfig, device: str | torch.device | None,
                           ) -> tuple[np.ndarray, CropRecord]:
    check_ct_spacing(image.geometry)
    dev = select_device(device)
    x, record = preprocess_image(image, box, cfg)
    model = model.to(dev).eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(dev))
    return torch.softmax(logits, dim=1)[0, 1].float().cpu().numpy(), record


def predict_probabilities(model: torch.nn.Module, image: Volume, box: Box,
                          cfg: PreprocessConfig, device: str | torch.device | None = None,
                          ) -> np.ndarray:
    """Foreground probability on the CT's full grid.

    Args:
        model: a network returning logits ``(N, K, D, H, W)``; class 1 is the foreground.
        image: CT in HU.
        box: voxel box of the structure (before the margin, which ``cfg`` adds).
        cfg: the preprocessing the model was trained with (its card's ``preprocess``).
        device: None for CUDA when available, else CPU.

    Returns:
        ``float32 (z, y, x)`` probabilities on ``image``'s grid; 0 outside the crop.
    """
    prob, record = _working_probabilities(model, image, box, cfg, device)
    return restore_probabilities(prob, record)


def segment(image: Volume, model: torch.nn.Module, box: Box, cfg: PreprocessConfig,
            threshold: float = 0.5, device: str | torch.device | None = None, *,
            edge_weight: float = EDGE_WEIGHT) -> Volume:
    """Binary mask (uint8 {0, 1}) of the structure, on ``image``'s grid and geometry.

    Args:
        image: CT in HU.
        model: a network returning logits ``(N, K, D, H, W)``; class 1 is the foreground.
        box: voxel box of the structure (before the margin, which ``cfg`` adds).
        cfg: the preprocessing the model was trained with (its card's ``preprocess``).
        threshold: foreground probability threshold.
        device: None for CUDA when available, else CPU.
        edge_weight: weight of the CT's intensities in placing the boundary
            (:func:`iunet_nb.interactive.edges.snap_to_edges`); 0 thresholds the probability alone.
    """
    prob_working, record = _working_probabilities(model, image, box, cfg, device)
    prob = restore_crop_probabilities(prob_working, record)
    crop = record.crop.slices
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[crop] = snap_to_edges(prob, image.array[crop], image.spacing_mm,
                               weight=edge_weight, threshold=threshold)
    if not mask.any():
        logger.warning("the segmentation is empty: check the box and that the model fits the "
                       "structure (threshold %.2f, max probability %.3f)", threshold, prob.max())
    return Volume(mask, image.geometry, {"source": "iunet_nb.model.predict.segment",
                                         "box": box.to_dict(), "edge_weight": edge_weight})


def make_box(image: Volume, *, voxel: Sequence[int] | None = None,
             physical_mm: Sequence[float] | None = None,
             reference: Volume | None = None) -> Box:
    """A box from exactly one of: voxel indices, physical corners, or a reference mask.

    Args:
        voxel: ``(z0, y0, x0, z1, y1, x1)``, hi exclusive.
        physical_mm: two opposite corners ``(x0, y0, z0, x1, y1, z1)`` in mm (LPS).
        reference: a mask on the image's grid; its bounding box is used.

    Raises:
        InputError: none or several sources given, or a box outside the image.
        GeometryError: ``reference`` is not on the image's grid (shape, spacing, origin or
            direction differ), as :func:`iunet_nb.io.images.check_same_grid`.
    """
    given = [v is not None for v in (voxel, physical_mm, reference)]
    if sum(given) != 1:
        raise InputError("give exactly one box: voxel indices (z0 y0 x0 z1 y1 x1), physical "
                         "corners in mm (x0 y0 z0 x1 y1 z1), or a reference mask")
    if voxel is not None:
        if len(voxel) != 6:
            raise InputError(f"a voxel box needs 6 integers z0 y0 x0 z1 y1 x1, got {list(voxel)}")
        box = Box(tuple(int(v) for v in voxel[:3]), tuple(int(v) for v in voxel[3:]))
    elif physical_mm is not None:
        if len(physical_mm) != 6:
            raise InputError(f"a physical box needs 6 numbers x0 y0 z0 x1 y1 z1 (mm), got "
                             f"{list(physical_mm)}")
        box = Box.from_physical(physical_mm[:3], physical_mm[3:], image.geometry, image.shape)
    else:
        from ..io.images import check_same_grid

        check_same_grid(image, reference, "box mask")
        box = Box.from_mask(reference.array)
    box.validate(image.shape)
    return box
