"""The other systems of the seed papers, trained and evaluated with the same code as iUnet.

* :mod:`.zhou` — Zhou et al. (seed 004) coarse-to-fine 2D FCNs on three views;
* :mod:`.autobox` — an automatic bounding box for iUnet from a detector (:func:`detect_box`).
"""

from __future__ import annotations

from .autobox import BoxDetector, box_contains, box_recall, detect_box
from .zhou import (FCN2D, VIEWS, ZhouConfig, ZhouModel, ZhouPrediction, ZhouTrainResult,
                   load_zhou, predict_zhou, train_zhou)

__all__ = [
    "BoxDetector", "detect_box", "box_recall", "box_contains",
    "VIEWS", "ZhouConfig", "FCN2D", "ZhouModel", "ZhouTrainResult", "ZhouPrediction",
    "train_zhou", "predict_zhou", "load_zhou",
]
