"""iunet-nb: interactive 3D segmentation of CT in Jupyter (iUnet, Boers et al. 2020).

The engine is headless (no widget imports): ``io`` (read/write with geometry), ``preprocess``
(window, smooth, crop, resample and inverse), ``nets``, ``losses``, ``augment``, ``train``,
``predict``, ``evaluate``, ``geodesic``, ``datasets``, ``checkpoint``, ``synth`` (synthetic CT
and the bundled sample), ``session`` (the interactive engine every front end drives),
``robot`` (simulated annotator), ``crossval`` and ``study`` (Experiments 1 and 2), and
``systems`` (the other papers' networks). The JupyterLab front end is ``iunet_nb.widgets``; it
imports the engine, never the reverse.
"""

from .augment import AugmentConfig, augment_batch
from .checkpoint import ModelCard, load_bundled_model, load_model, save_model
from .crossval import CVConfig, merge_folds, run_cv, run_fold
from .datasets import (
                     BTCV_DIRECTION,
                     BTCV_LABELS,
                     Case,
                     find_cases,
                     load_folds,
                     make_folds,
                     save_folds,
                     with_true_direction,
)
from .dicomseg import read_dicom_seg, write_dicom_seg
from .distributed import DistContext, distributed, is_main
from .errors import (
                     CheckpointError,
                     ConfigError,
                     GeometryError,
                     InputError,
                     IunetError,
                     SessionError,
)
from .evaluate import (
                     dice,
                     evaluate_case,
                     hausdorff95,
                     jaccard,
                     precision,
                     recall,
                     summarize,
                     surface_dice,
                     volume_difference,
                     volume_ml,
)
from .geodesic import geodesic_distance, scribble_weight_map
from .io import (
                     check_same_grid,
                     list_dicom_mask_organs,
                     read_dicom_mask_series,
                     read_image,
                     read_label_map,
                     read_mask,
                     write_image,
                     write_mask,
)
from .locking import FolderLock, break_lock
from .losses import interactive_loss, soft_dice_loss, tanimoto_ce_loss
from .memory import check_memory
from .nets import NetConfig, build_network
from .paths import check_id, safe_join
from .predict import make_box, predict_probabilities, segment
from .preprocess import (
                     Box,
                     CropRecord,
                     PreprocessConfig,
                     crop_mask,
                     lps_orientation,
                     preprocess_image,
                     reorient_from_lps,
                     reorient_to_lps,
                     restore_mask,
                     restore_probabilities,
)
from .robot import RobotConfig, RobotResult, run_robot
from .session import RefineConfig, Session, stroke_to_voxels
from .study import StudyPlan, analyse_study, design_study, load_event_logs
from .synth import SynthConfig, load_sample, make_phantom, synthesize_ct
from .train import TrainConfig, prepare_cases, train
from .volume import Geometry, Volume

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # errors
    "IunetError", "InputError", "GeometryError", "ConfigError", "CheckpointError",
    "SessionError",
    # data
    "Geometry", "Volume",
    "read_image", "read_mask", "read_label_map", "read_dicom_mask_series",
    "list_dicom_mask_organs", "write_image", "write_mask", "check_same_grid",
    "BTCV_LABELS", "BTCV_DIRECTION", "Case", "find_cases", "make_folds", "save_folds",
    "load_folds", "with_true_direction",
    # preprocessing
    "PreprocessConfig", "Box", "CropRecord", "preprocess_image", "crop_mask",
    "lps_orientation", "reorient_to_lps", "reorient_from_lps",
    "restore_probabilities", "restore_mask",
    # networks and training
    "DistContext", "distributed", "is_main",
    "NetConfig", "build_network", "soft_dice_loss", "interactive_loss", "tanimoto_ce_loss",
    "AugmentConfig", "augment_batch", "TrainConfig", "prepare_cases", "train",
    "ModelCard", "save_model", "load_model", "load_bundled_model",
    # prediction and metrics
    "make_box", "predict_probabilities", "segment",
    "dice", "jaccard", "precision", "recall", "volume_ml", "volume_difference",
    "hausdorff95", "surface_dice", "evaluate_case", "summarize",
    # interactive
    "geodesic_distance", "scribble_weight_map", "RefineConfig", "Session", "stroke_to_voxels",
    # synthetic data and the bundled sample
    "SynthConfig", "synthesize_ct", "make_phantom", "load_sample",
    # simulated annotator and studies
    "RobotConfig", "RobotResult", "run_robot", "CVConfig", "run_cv", "run_fold", "merge_folds",
    "StudyPlan", "design_study", "analyse_study", "load_event_logs",
    # reliability
    "read_dicom_seg", "write_dicom_seg", "FolderLock", "break_lock", "check_memory", "check_id",
    "safe_join",
]
