"""The other systems of the seed papers, trained and evaluated with the same code as iUnet.

* :mod:`.zhou` — Zhou et al. (seed 004): coarse-to-fine 2D FCNs on three views, trained from
  scratch (no ImageNet weights);
* :mod:`.roth` — Roth et al. (seed 002): multi-organ 3D FCN (the seed's seven organs and the kidneys; a CPU-trained
  model ships, :func:`load_bundled_roth`);
* :mod:`.kloenne` — Kloenne et al. (seed 003): CT-specific preprocessing and augmentation,
  2D/3D nnU-Net-style U-Net and MS-D Net, stacked top-k ensemble, slice-count folds (a
  CPU-trained liver model ships, :func:`load_bundled_kloenne`);
* :mod:`.autobox` — an automatic bounding box for iUnet from a detector (:func:`detect_box`),
  with the signs that it is wrong (:func:`find_box`, :func:`check_box`);
* :mod:`.commands` — ``add_cli(subparsers)``: ``train-system``, ``predict-system``,
  ``detect-box``.

Each system has a frozen JSON config whose defaults are the paper's full-scale settings and a
``reduced()`` constructor for a CPU, ``train_<system>`` / ``predict_<system>`` returning masks
in the CT's geometry, and ``load_<system>`` (state dict + JSON card, ``weights_only=True``).
"""

from __future__ import annotations

from .autobox import (BoxCheck, BoxDetector, BoxLimits, box_contains, box_recall, check_box,
                      detect_box, find_box)
from .commands import SYSTEMS, add_cli, load_label_map_cases
from .kloenne import (
                      KloenneConfig,
                      KloenneEnsemble,
                      KloenneModel,
                      KloenneTrainResult,
                      MSDNet,
                      UNetND,
                      bundled_kloenne_path,
                      load_bundled_kloenne,
                      load_kloenne,
                      percentile_window,
                      predict_kloenne,
                      select_top_k,
                      slice_count_folds,
                      train_kloenne,
)
from .roth import (
                      BTCV_TO_ROTH,
                      ROTH_ORGANS,
                      SEED_ORGANS,
                      RothConfig,
                      RothModel,
                      RothPrediction,
                      RothTrainResult,
                      bspline_displacement,
                      bundled_roth_path,
                      load_bundled_roth,
                      load_roth,
                      map_labels,
                      predict_roth,
                      train_roth,
                      weighted_dice_loss,
)
from .zhou import (
                      FCN2D,
                      VIEWS,
                      ZhouConfig,
                      ZhouModel,
                      ZhouPrediction,
                      ZhouTrainResult,
                      bundled_zhou_path,
                      load_bundled_zhou,
                      load_zhou,
                      predict_zhou,
                      train_zhou,
)

__all__ = [
    # automatic box
    "BoxDetector", "detect_box", "box_recall", "box_contains", "BoxCheck", "BoxLimits",
    "check_box", "find_box",
    # Zhou
    "VIEWS", "ZhouConfig", "FCN2D", "ZhouModel", "ZhouTrainResult", "ZhouPrediction",
    "train_zhou", "predict_zhou", "load_zhou", "load_bundled_zhou", "bundled_zhou_path",
    # Roth
    "ROTH_ORGANS", "SEED_ORGANS", "BTCV_TO_ROTH", "RothConfig", "RothModel", "RothTrainResult",
    "RothPrediction", "map_labels", "weighted_dice_loss", "bspline_displacement",
    "train_roth", "predict_roth", "load_roth", "load_bundled_roth", "bundled_roth_path",
    # Kloenne
    "KloenneConfig", "UNetND", "MSDNet", "KloenneModel", "KloenneEnsemble",
    "KloenneTrainResult", "percentile_window", "slice_count_folds", "train_kloenne",
    "predict_kloenne", "select_top_k", "load_kloenne", "load_bundled_kloenne",
    "bundled_kloenne_path",
    # CLI
    "SYSTEMS", "add_cli", "load_label_map_cases",
]
