"""Interactive segmentation: the headless engine every front end drives.

:mod:`~iunet_nb.interactive.session` (:class:`Session`: actions, threads, history, event log),
:mod:`~iunet_nb.interactive.refine` (one refine round as a function),
:mod:`~iunet_nb.interactive.strokes` (the brush), :mod:`~iunet_nb.interactive.geodesic` and
:mod:`~iunet_nb.interactive.edges` (what a round computes on the image),
:mod:`~iunet_nb.interactive.autosave` and :mod:`~iunet_nb.interactive.locking` (the session
folder), :mod:`~iunet_nb.interactive.robot` (the simulated annotator) and
:mod:`~iunet_nb.interactive.session_cli` (``iunet-nb session``).
"""
