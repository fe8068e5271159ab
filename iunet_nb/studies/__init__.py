"""Experiments: reader studies, cross-validation and method comparison.

:mod:`~iunet_nb.studies.design` (plans), :mod:`~iunet_nb.studies.study`,
:mod:`~iunet_nb.studies.analysis` and :mod:`~iunet_nb.studies.report` (Experiment 2),
:mod:`~iunet_nb.studies.simstudy` (Experiment 2 with the simulated annotator),
:mod:`~iunet_nb.studies.crossval` and :mod:`~iunet_nb.studies.cv_report` (Experiment 1: the
folds, then the statistics and the report) and :mod:`~iunet_nb.studies.compare`
(refinement methods).
"""
