"""Jupyter front ends of iunet_nb (ipywidgets + ipycanvas): slice views, annotator, 3D view.

The engine never imports this package; these widgets only call a
:class:`~iunet_nb.interactive.session.Session` and hold view state.

* :class:`Annotator`: the annotation app (three linked views, tools, Segment/Refine/...).
* :class:`SliceView`: one view of a CT with overlays; canvas pixels <-> array indices.
* :class:`View3D`: optional 3D view (ipyniivue, offline in JupyterLab 4).
* :mod:`~iunet_nb.widgets.render`: pure NumPy slice rendering (window, overlay, PNG).
* :func:`launch_lab`: open JupyterLab on the annotate notebook (``iunet-nb lab``).
* :func:`launch_app`: serve the annotator alone as a Voila page (``iunet-nb app``).
"""

from .annotator import METHODS, SHORTCUTS, Annotator, CaseSource
from .lab import (
    PARAMETER_NAMES,
    annotate_notebook,
    app_command,
    app_parameters,
    lab_command,
    launch_app,
    launch_lab,
    voila_available,
    write_annotate_notebook,
)
from .render import (
                     WINDOW_PRESETS,
                     SliceTransform,
                     compose_slice,
                     display_flips,
                     encode_png,
                     mask_contour,
                     orientation_letters,
                     window_lut,
                     window_to_uint8,
)
from .slice_view import PAINT_TOOLS, TOOLS, SliceView
from .view3d import View3D, downsample_factors, downsample_volume, niivue_available

__all__ = [
    "METHODS",
    "PAINT_TOOLS",
    "PARAMETER_NAMES",
    "SHORTCUTS",
    "TOOLS",
    "WINDOW_PRESETS",
    "Annotator",
    "CaseSource",
    "SliceTransform",
    "SliceView",
    "View3D",
    "annotate_notebook",
    "app_command",
    "app_parameters",
    "compose_slice",
    "display_flips",
    "downsample_factors",
    "downsample_volume",
    "encode_png",
    "lab_command",
    "launch_app",
    "launch_lab",
    "mask_contour",
    "niivue_available",
    "orientation_letters",
    "voila_available",
    "window_lut",
    "window_to_uint8",
    "write_annotate_notebook",
]
