"""Reading and writing CT and masks with their geometry.

:mod:`~iunet_nb.io.images` (NIfTI, NRRD, MHA, DICOM series, DICOM mask series; the public API,
re-exported here), :mod:`~iunet_nb.io.dicomseg` (DICOM Segmentation objects),
:mod:`~iunet_nb.io.volume` (:class:`Volume` and :class:`Geometry`), :mod:`~iunet_nb.io.paths`
(safe output paths), :mod:`~iunet_nb.io.datasets` (case folders and folds),
:mod:`~iunet_nb.io._atomic` (write, then rename).
"""

from . import images as _images
from .images import *  # noqa: F401,F403 - re-exported: iunet_nb.io.<name>

__all__ = list(_images.__all__)
