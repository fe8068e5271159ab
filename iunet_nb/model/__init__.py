"""The segmentation network and what surrounds it.

:mod:`~iunet_nb.model.nets` (iUnet and the other architectures),
:mod:`~iunet_nb.model.preprocess` (window, smooth, crop, resample and inverse),
:mod:`~iunet_nb.model.augment`, :mod:`~iunet_nb.model.losses`, :mod:`~iunet_nb.model.train`,
:mod:`~iunet_nb.model.distributed`, :mod:`~iunet_nb.model.checkpoint` (weights and model
cards), :mod:`~iunet_nb.model.predict` (automatic segmentation) and
:mod:`~iunet_nb.model.evaluate` (DSC, HD95, ...).
"""
