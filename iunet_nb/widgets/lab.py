"""The annotate notebook and ``iunet-nb lab``: JupyterLab opened on it.

The notebook is generated here (one source of truth, shipped inside the package) and written
to ``notebooks/annotate.ipynb`` in the repository; :func:`launch_lab` writes it into the
working folder when it is not there yet, so ``iunet-nb lab`` works from an installed wheel.
Its first code cell is tagged ``parameters`` (papermill / nbclient can override it), and the
only output is the annotator app, so Voila shows just the app.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from ..errors import InputError

__all__ = ["NOTEBOOK_NAME", "annotate_notebook", "lab_command", "launch_lab",
           "write_annotate_notebook"]

logger = logging.getLogger(__name__)

NOTEBOOK_NAME = "annotate.ipynb"

_PARAMETERS = '''\
# Parameters (papermill can override them). Small CPU-friendly defaults.
ct_path = ""              # CT file, DICOM folder, data-set folder; "" = the bundled sample
model_path = ""           # .pt with its .json model card; "" = the bundled pancreas iUnet
reader_id = ""            # reader id (reader mode: written into the event log); "" = none
study = False             # study mode: the status line shows the running case time
method = "interactive"    # "interactive" (network + scribbles) or "manual" (reader study arm)
session_folder = "sessions"   # autosave, event log (events.jsonl) and exported masks
box_from_reference = True     # start from the reference mask's box (the sample has one)
segment_on_open = True        # predict as soon as a case opens (when a box is known)
view3d = "auto"               # "auto" (ipyniivue if installed), "niivue", "itk", "none"'''

_APP = '''\
from iunet_nb.widgets import Annotator

app = Annotator(ct_path or None, model=model_path or None, reader=reader_id or None,
                folder=session_folder or None, study=study, method=method,
                box_from_reference=box_from_reference, segment_on_open=segment_on_open,
                view3d=view3d)
app'''

_INTRO = '''\
# Annotate a CT with iUnet

Draw a **box** on two views (Box tool: axial + coronal), press **Segment**, then correct the
mask with **foreground** / **background** scribbles and press **Refine** (or switch on
*auto-refine*): each refinement fine-tunes the network on this image. **Undo**, **Redo**,
**Reset**, **Save** (session folder + mask in the CT's geometry) and **Accept & next** (case
lists). Click a view, then use the keys listed under *keyboard shortcuts*. Every action is
timed and written to the session's `events.jsonl`.'''


def _cell(kind: str, source: str, **metadata: Any) -> dict[str, Any]:
    lines = source.splitlines(keepends=True)
    cell: dict[str, Any] = {"cell_type": kind, "metadata": metadata, "source": lines}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def annotate_notebook() -> dict[str, Any]:
    """The annotate notebook as nbformat 4 JSON (outputs empty; first code cell tagged
    ``parameters``)."""
    return {
        "cells": [
            _cell("markdown", _INTRO),
            _cell("code", _PARAMETERS, tags=["parameters"]),
            _cell("code", _APP),
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _with_ids(nb: dict[str, Any]) -> dict[str, Any]:
    for i, cell in enumerate(nb["cells"]):
        cell.setdefault("id", f"iunet-annotate-{i}")
    return nb


def write_annotate_notebook(path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write :func:`annotate_notebook` to ``path`` atomically; returns the path.

    Args:
        overwrite: False keeps an existing file (a user's edited copy).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_with_ids(annotate_notebook()), indent=1) + "\n")
    path.chmod(0o644)
    return path


def lab_command(directory: str | os.PathLike, *, port: int | None = None,
                open_browser: bool = True, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The ``jupyter lab`` command line that opens the annotate notebook in ``directory``."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={Path(directory)}"]
    if port is not None:
        if not (isinstance(port, int) and 0 < port < 65536):
            raise InputError(f"port must be an integer in 1..65535, got {port!r}")
        cmd.append(f"--port={port}")
    if not open_browser:
        cmd.append("--no-browser")
    cmd += list(extra_args)
    cmd.append(NOTEBOOK_NAME)
    return cmd


def launch_lab(directory: str | os.PathLike = ".", *, port: int | None = None,
               open_browser: bool = True, extra_args: tuple[str, ...] = ()) -> int:
    """Open JupyterLab on ``directory/annotate.ipynb`` (written there when missing).

    This is what ``iunet-nb lab`` runs. It blocks until JupyterLab exits.

    Args:
        directory: JupyterLab's root folder (sessions are written under it).
        port: server port (default: JupyterLab's choice).
        open_browser: open a browser tab.
        extra_args: more ``jupyter lab`` options.

    Returns:
        JupyterLab's exit status.

    Raises:
        InputError: JupyterLab is not installed (``pip install jupyterlab``), or a bad port.
    """
    if shutil.which("jupyter-lab") is None:
        try:
            import jupyterlab  # noqa: F401
        except ImportError as exc:
            raise InputError("JupyterLab is not installed: pip install 'jupyterlab>=4.2' "
                             "(it is a dependency of iunet-nb: reinstall it)") from exc
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    nb = write_annotate_notebook(directory / NOTEBOOK_NAME, overwrite=False)
    cmd = lab_command(directory, port=port, open_browser=open_browser, extra_args=extra_args)
    logger.info("opening %s: %s", nb, " ".join(cmd))
    return subprocess.call(cmd, cwd=directory)
