"""Reading and writing CT and masks with their geometry.

:mod:`~iunet_nb.io.images` (NIfTI, NRRD, MHA, DICOM series, DICOM mask series; the public API,
re-exported here), :mod:`~iunet_nb.io.dicomseg` (DICOM Segmentation objects),
:mod:`~iunet_nb.io.volume` (:class:`Volume` and :class:`Geometry`), :mod:`~iunet_nb.io.paths`
(safe output paths), :mod:`~iunet_nb.io.datasets` (case folders and folds),
:mod:`~iunet_nb.io._atomic` (write, then rename).
"""

from .images import (  # noqa: F401 - the public API of iunet_nb.io
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_RATIO,
    ZIP_RATIO_ABOVE_BYTES,
    READ_EXTENSIONS,
    WRITE_EXTENSIONS,
    read_image,
    read_mask,
    read_label_map,
    read_dicom_mask_series,
    list_dicom_mask_organs,
    write_image,
    write_mask,
    check_same_grid,
    hu_problem,
)

__all__ = [
    "MAX_ZIP_BYTES",
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_RATIO",
    "ZIP_RATIO_ABOVE_BYTES",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "read_image",
    "read_mask",
    "read_label_map",
    "read_dicom_mask_series",
    "list_dicom_mask_organs",
    "write_image",
    "write_mask",
    "check_same_grid",
    "hu_problem",
]
