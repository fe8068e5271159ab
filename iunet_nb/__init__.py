"""iunet-nb: interactive 3D segmentation of CT in Jupyter (iUnet, Boers et al. 2020).

One headless engine, many faces. The engine (no widget imports):

* :mod:`iunet_nb.io`: CT and masks with their geometry (NIfTI, NRRD, MHA, DICOM series,
  DICOM-SEG), :class:`Volume`, safe output paths, case folders and folds;
* :mod:`iunet_nb.model`: the networks, preprocessing (window, smooth, crop, resample and
  inverse), augmentation, losses, training, checkpoints and model cards, automatic
  segmentation, metrics;
* :mod:`iunet_nb.interactive`: :class:`Session` (the engine every front end drives), one
  refine round as a function, strokes, geodesic distances, the edge snapping, the autosave
  folder and its lock, the simulated annotator;
* :mod:`iunet_nb.studies`: reader studies (Experiment 2, real and simulated),
  cross-validation (Experiment 1), the comparison of refinement methods;
* :mod:`iunet_nb.synth`: synthetic CT from label maps, phantoms, contrast phases, the bundled
  sample, realism against real CT;
* :mod:`iunet_nb.systems`: the other papers' networks and the automatic box.

The faces: :mod:`iunet_nb.cli` (``iunet-nb``), :mod:`iunet_nb.widgets` (the JupyterLab
annotator; it imports the engine, never the reverse), the notebooks. Every public name below
is importable from ``iunet_nb`` directly.
"""

from .errors import (
                     CheckpointError,
                     ConfigError,
                     GeometryError,
                     InputError,
                     IunetError,
                     SessionError,
)
from .interactive.geodesic import geodesic_distance, scribble_weight_map
from .interactive.locking import FolderLock, break_lock
from .interactive.robot import RobotConfig, RobotResult, run_robot
from .interactive.session import RefineConfig, Session, stroke_to_voxels
from .io.datasets import (
                     BTCV_DIRECTION,
                     BTCV_LABELS,
                     Case,
                     find_cases,
                     load_folds,
                     make_folds,
                     save_folds,
                     with_true_direction,
)
from .io.dicomseg import read_dicom_seg, write_dicom_seg
from .io.images import (
                     check_same_grid,
                     list_dicom_mask_organs,
                     read_dicom_mask_series,
                     read_image,
                     read_label_map,
                     read_mask,
                     write_image,
                     write_mask,
)
from .io.paths import check_id, safe_join
from .io.volume import Geometry, Volume
from .memory import check_memory
from .model.augment import AugmentConfig, augment_batch
from .model.checkpoint import ModelCard, load_bundled_model, load_model, save_model
from .model.distributed import DistContext, distributed, is_main
from .model.evaluate import (
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
from .model.losses import interactive_loss, soft_dice_loss, tanimoto_ce_loss
from .model.nets import NetConfig, build_network
from .model.predict import make_box, predict_probabilities, segment
from .model.preprocess import (
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
from .model.train import TrainConfig, prepare_cases, train
from .studies.crossval import CVConfig, merge_folds, run_cv, run_fold
from .studies.study import StudyPlan, analyse_study, design_study, load_event_logs
from .synth.generator import SynthConfig, load_sample, synthesize_ct
from .synth.phantom import make_phantom

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
