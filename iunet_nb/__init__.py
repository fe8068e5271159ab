"""iunet-nb: interactive 3D segmentation of CT in Jupyter (iUnet, Boers et al. 2020)."""

from .errors import (CheckpointError, ConfigError, GeometryError, InputError, IunetError,
                     SessionError)
from .volume import Geometry, Volume

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "IunetError", "InputError", "GeometryError", "ConfigError", "CheckpointError",
    "SessionError",
    "Geometry", "Volume",
]
