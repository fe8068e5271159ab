"""The annotate notebook, ``iunet-nb lab`` (JupyterLab on it) and ``iunet-nb app`` (Voila).

The notebook is generated here (one source of truth, shipped inside the package) and written
to ``notebooks/annotate.ipynb`` in the repository; :func:`launch_lab` writes it into the
working folder when it is not there yet, so ``iunet-nb lab`` works from an installed wheel.
Its first code cell is tagged ``parameters`` (papermill / nbclient can override it), and the
only output is the annotator app, so Voila shows just the app.

:func:`launch_app` (``iunet-nb app``) writes the notebook with the user's parameters injected
after the ``parameters`` cell (as papermill does) into a temporary folder and serves it with
Voila: ``--strip_sources=True`` removes every code cell's source from the page, so the page
shows the notebook's title and the app, and nothing of the code. Everything is served from the
local Python environment (Voila's lab template and the widgets' JupyterLab extensions). Voila's
lab template also links Font Awesome's CSS from cdn.jsdelivr.net (voila PR #870); the app
uses no Font Awesome icons, and a render-blocking stylesheet from the internet would stall an
offline page and tell a CDN who opens it, so the page is served with a Content-Security-Policy
that allows only this server (:data:`APP_CSP`, written to ``voila.json`` beside the notebook):
the browser then requests nothing from the internet.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io._atomic import atomic_write_text

__all__ = ["APP_CSP", "NOTEBOOK_NAME", "PARAMETER_NAMES", "annotate_notebook", "app_command",
           "app_parameters", "app_url",
           "lab_command", "launch_app", "launch_lab", "voila_available", "voila_config",
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

#: Names of the annotate notebook's parameters (the ``parameters`` cell), in order.
PARAMETER_NAMES: tuple[str, ...] = tuple(
    line.split("=", 1)[0].strip() for line in _PARAMETERS.splitlines()[1:])

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
lists). With the pointer over the app, the keys listed under *keyboard shortcuts* act on it
(and never on the notebook). Every action is timed and written to the session's
`events.jsonl`.'''


def _cell(kind: str, source: str, **metadata: Any) -> dict[str, Any]:
    lines = source.splitlines(keepends=True)
    cell: dict[str, Any] = {"cell_type": kind, "metadata": metadata, "source": lines}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _injected_cell(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """papermill's ``injected-parameters`` cell: ``name = repr(value)`` lines."""
    unknown = sorted(set(parameters) - set(PARAMETER_NAMES))
    if unknown:
        raise InputError(f"unknown annotate-notebook parameter(s) {unknown}; the notebook has "
                         f"{list(PARAMETER_NAMES)}")
    lines = ["# Parameters injected by iunet-nb"]
    for name, value in parameters.items():
        if not isinstance(value, (str, bool, int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise InputError(f"parameter {name} must be a str, bool, int or float, got "
                             f"{type(value).__name__} {value!r}")
        lines.append(f"{name} = {value!r}")
    return _cell("code", "\n".join(lines), tags=["injected-parameters"])


def annotate_notebook(parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The annotate notebook as nbformat 4 JSON (outputs empty; first code cell tagged
    ``parameters``).

    Args:
        parameters: values for some of :data:`PARAMETER_NAMES` (str, bool, int, float),
            written into a cell tagged ``injected-parameters`` right after the ``parameters``
            cell, as papermill does. None or empty: the notebook as shipped.

    Raises:
        InputError: an unknown parameter name or a value of another type.
    """
    cells = [_cell("markdown", _INTRO), _cell("code", _PARAMETERS, tags=["parameters"])]
    if parameters:
        cells.append(_injected_cell(parameters))
    cells.append(_cell("code", _APP))
    return {
        "cells": cells,
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


def write_annotate_notebook(path: str | os.PathLike, *, overwrite: bool = True,
                            parameters: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`annotate_notebook` to ``path`` atomically; returns the path.

    Args:
        overwrite: False keeps an existing file (a user's edited copy).
        parameters: injected parameter values (see :func:`annotate_notebook`).

    Raises:
        InputError: an unknown parameter name or a value of another type.
    """
    path = Path(path)
    nb = annotate_notebook(parameters)
    if path.exists() and not overwrite:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_with_ids(nb), indent=1) + "\n")
    path.chmod(0o644)
    return path


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def lab_command(directory: str | os.PathLike, *, port: int | None = None,
                open_browser: bool = True, token: str | None = None,
                allow_root: bool | None = None,
                extra_args: tuple[str, ...] = ()) -> list[str]:
    """The ``jupyter lab`` command line that opens the annotate notebook in ``directory``.

    Args:
        directory: JupyterLab's root folder, made absolute here (once).
        port: server port (default: JupyterLab's choice).
        open_browser: open a browser tab.
        token: the server's token (``--IdentityProvider.token``); None: JupyterLab makes one
            and prints the URL with it; ``""`` turns the token off (only on a trusted machine).
        allow_root: pass ``--allow-root``; None: when this process runs as root (JupyterLab
            refuses to start as root without it).
        extra_args: more ``jupyter lab`` options.

    Raises:
        InputError: a bad port or token.
    """
    _check_port(port)
    if token is not None and (not isinstance(token, str) or any(c.isspace() for c in token)):
        raise InputError(f"token must be a string without spaces, got {token!r}")
    root = Path(directory).expanduser().resolve()
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}"]
    if port is not None:
        cmd.append(f"--port={port}")
    if not open_browser:
        cmd.append("--no-browser")
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    if _running_as_root() if allow_root is None else allow_root:
        cmd.append("--allow-root")
    cmd += list(extra_args)
    cmd.append(NOTEBOOK_NAME)
    return cmd


def launch_lab(directory: str | os.PathLike = ".", *, port: int | None = None,
               open_browser: bool = True, token: str | None = None,
               extra_args: tuple[str, ...] = ()) -> int:
    """Open JupyterLab on ``directory/annotate.ipynb`` (written there when missing).

    This is what ``iunet-nb lab`` runs. It blocks until JupyterLab exits. ``directory`` is
    made absolute once, so a relative path means the same folder for the notebook, the
    server's root and the server's working folder; as root, ``--allow-root`` is added.

    Args:
        directory: JupyterLab's root folder (sessions are written under it).
        port: server port (default: JupyterLab's choice).
        open_browser: open a browser tab.
        token: the server's token (see :func:`lab_command`).
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
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    nb = write_annotate_notebook(directory / NOTEBOOK_NAME, overwrite=False)
    cmd = lab_command(directory, port=port, open_browser=open_browser, token=token,
                      extra_args=extra_args)
    shown = [c if not c.startswith("--IdentityProvider.token=") or c.endswith("=")
             else "--IdentityProvider.token=***" for c in cmd]
    logger.info("opening %s: %s", nb, " ".join(shown))
    return subprocess.call(cmd, cwd=directory)


# ---------------------------------------------------------------------------------- Voila app
#: Content-Security-Policy of the app page: only this server (and inline/data/blob content,
#: which Voila and the widgets use); blocks Voila's Font Awesome link to cdn.jsdelivr.net.
APP_CSP = ("default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:; "
           "frame-ancestors 'self'")

_VOILA_MISSING = ("Voila is not installed, so the annotator cannot be served as a web app: "
                  'pip install "iunet-nb[view]" (or pip install voila), or use `iunet-nb lab`')


def voila_available() -> bool:
    """Whether Voila can be imported (the ``view`` extra installs it)."""
    return importlib.util.find_spec("voila") is not None


def _check_port(port: int | None) -> None:
    if port is not None and not (isinstance(port, int) and not isinstance(port, bool)
                                 and 0 < port < 65536):
        raise InputError(f"port must be an integer in 1..65535, got {port!r}")


def app_url(port: int, token: str | None) -> str:
    """The app page's address, with the token when there is one."""
    return f"http://127.0.0.1:{port}/" + (f"?token={token}" if token else "")


def _free_port(start: int = 8866, tries: int = 50) -> int:
    """The first port from ``start`` on that 127.0.0.1 can listen on."""
    import socket

    for port in range(start, start + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise InputError(f"no free port in {start}..{start + tries - 1}; give one with --port")


def app_command(notebook: str | os.PathLike, *, port: int | None = None,
                open_browser: bool = True, token: str | None = None,
                extra_args: tuple[str, ...] = ()) -> list[str]:
    """The ``voila`` command line that serves ``notebook`` as an app page.

    ``--strip_sources=True`` keeps every code cell's source out of the page (it is Voila's
    default; given explicitly so a user's Voila config cannot turn it off),
    ``--show_tracebacks=True`` shows an error of the notebook itself (e.g. a CT path that does
    not exist) on the page instead of only in the terminal, ``--theme=light`` keeps the CT's
    grey levels on a light page, and the server listens on 127.0.0.1 only.

    Args:
        notebook: the ``.ipynb`` to serve.
        port: server port (default: Voila's, 8866, or the next free one).
        open_browser: open a browser tab on the page (Voila's own; :func:`launch_app` opens
            the page itself, with the token).
        token: the page's token (``--Voila.token``); ``""`` serves without one; None leaves
            Voila's default (no token).
        extra_args: more ``voila`` options.

    Raises:
        InputError: a bad port.
    """
    _check_port(port)
    cmd = [sys.executable, "-m", "voila", str(Path(notebook)), "--strip_sources=True",
           "--show_tracebacks=True", "--theme=light", "--Voila.ip=127.0.0.1"]
    if port is not None:
        cmd.append(f"--port={port}")
    if not open_browser:
        cmd.append("--no-browser")
    if token is not None:
        if any(c.isspace() for c in token):
            raise InputError("the token must not contain spaces")
        cmd.append(f"--Voila.token={token}")
    return cmd + list(extra_args)


def voila_config() -> dict[str, Any]:
    """Voila's configuration for the app (``voila.json`` in the folder Voila starts in):
    the page's Content-Security-Policy :data:`APP_CSP`, and no XSRF check.

    Voila shuts a page's kernel down when the page goes away (``beforeunload`` ->
    ``sendBeacon`` POST ``/voila/api/shutdown/<kernel id>``), but the beacon carries no
    ``_xsrf`` argument, so the server refused it with 403 (voila issue #1458, open): after a
    reload the old kernel lived on and kept the case folder locked, and the new page started
    ``sample-2``. Without the check the shutdown works. The page needs its token (or the login
    cookie it sets) all the same, a cross-site form can only name a kernel by its random id,
    and Voila serves no other state-changing POST.
    """
    return {"Voila": {"tornado_settings": {
        "headers": {"Content-Security-Policy": APP_CSP},
        "disable_check_xsrf": True}}}


def _existing(path: str | os.PathLike, what: str) -> str:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} {str(path)!r} does not exist (looked for {p.resolve()}); "
                         "give the path of an existing file or folder")
    return str(p.resolve())


def app_parameters(ct: str | os.PathLike | None = None, *, model: str | os.PathLike | None = None,
                   reader: str | None = None, sessions: str | os.PathLike = "sessions",
                   study: bool = False, method: str = "interactive",
                   view3d: str = "auto") -> dict[str, Any]:
    """The annotate notebook's parameters for :func:`launch_app`, with absolute paths.

    The Voila kernel runs in a temporary folder, so every path is made absolute here,
    relative to the current folder.

    Raises:
        InputError: the CT or the model does not exist, a bad reader id or method.
    """
    from .annotator import METHODS

    if method not in METHODS:
        raise InputError(f"method must be one of {list(METHODS)}, got {method!r}")
    if reader is not None and (not reader.strip() or any(c in reader for c in "/\\")):
        raise InputError(f"reader id must be a non-empty name without slashes, got {reader!r}")
    params: dict[str, Any] = {
        "ct_path": _existing(ct, "the CT") if ct else "",
        "model_path": _existing(model, "the model") if model else "",
        "reader_id": reader or "",
        "session_folder": str(Path(sessions).expanduser().resolve()),
        "study": bool(study),
        "method": method,
        "view3d": view3d,
    }
    if ct:  # a user's CT: no reference mask to take a box from, unless the sample
        params["box_from_reference"] = False
    return params


def launch_app(ct: str | os.PathLike | None = None, *, model: str | os.PathLike | None = None,
               reader: str | None = None, sessions: str | os.PathLike = "sessions",
               study: bool = False, method: str = "interactive", view3d: str = "auto",
               port: int | None = None, open_browser: bool = True, token: str | None = None,
               announce: Any = None, extra_args: tuple[str, ...] = ()) -> int:
    """Serve the annotator as a web app page with Voila (only the app, no code).

    This is what ``iunet-nb app`` runs. It writes the annotate notebook with these parameters
    into a temporary folder, runs ``voila`` on it (:func:`app_command`) and blocks until Voila
    exits (Ctrl+C; a SIGTERM to this process is passed on to Voila, which shuts its kernels
    down). The temporary notebook is removed afterwards; the sessions stay in ``sessions``.

    The page needs a token by default (a random one, made here), so another user of the same
    machine cannot open the app and its patients' images; the address with the token is
    announced before the server starts. A reload of the page resumes the page's own session
    (the annotator waits for the old page's kernel to let go of the case folder).

    Args:
        ct: CT file, DICOM folder or data-set folder; None: the bundled sample.
        model: ``.pt`` with its ``.json`` card; None: the bundled pancreas iUnet.
        reader: reader id (reader mode); None: none.
        sessions: session folder (autosave, event log, masks), relative to the current folder.
        study: study mode (the status line shows the running case time).
        method: ``"interactive"`` or ``"manual"``.
        view3d: ``"auto"``, ``"niivue"``, ``"itk"`` or ``"none"``.
        port: server port (default: the first free one from 8866 on).
        open_browser: open a browser tab on the page (with the token).
        token: the page's token; None: a random one; ``""``: no token (only on a machine
            no one else uses).
        announce: called with the page's address (default: logged at INFO; the CLI prints
            it).
        extra_args: more ``voila`` options.

    Returns:
        Voila's exit status.

    Raises:
        InputError: Voila is not installed (``pip install "iunet-nb[view]"``), a path that
            does not exist, a bad port, reader id or method.
    """
    if not voila_available():
        raise InputError(_VOILA_MISSING)
    _check_port(port)
    params = app_parameters(ct, model=model, reader=reader, sessions=sessions, study=study,
                            method=method, view3d=view3d)
    if token is None:
        import secrets

        token = secrets.token_urlsafe(24)
    port = port if port is not None else _free_port()
    url = app_url(port, token)
    with tempfile.TemporaryDirectory(prefix="iunet-nb-app-") as tmp:
        nb = write_annotate_notebook(Path(tmp) / NOTEBOOK_NAME, parameters=params)
        # Voila reads voila.json from the folder it starts in (its config_file_paths)
        atomic_write_text(Path(tmp) / "voila.json", json.dumps(voila_config(), indent=1))
        cmd = app_command(nb, port=port, open_browser=False, token=token,
                          extra_args=extra_args)
        logger.info("serving the annotator with Voila (sessions in %s): %s",
                    params["session_folder"],
                    " ".join(c if not c.startswith("--Voila.token=") else "--Voila.token=***"
                             for c in cmd))
        (announce or (lambda u: logger.info("the annotator is at %s", u)))(url)
        if open_browser:
            _open_when_up(url, port)
        return _run_forwarding_sigterm(cmd, cwd=tmp)


def _open_when_up(url: str, port: int, timeout_s: float = 60.0) -> None:
    """Open ``url`` in a browser once the server listens (on a daemon thread)."""
    import socket
    import time
    import webbrowser

    def wait_and_open() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    webbrowser.open(url)
                    return
            time.sleep(0.3)

    threading.Thread(target=wait_and_open, name="iunet-nb open browser", daemon=True).start()


def _run_forwarding_sigterm(cmd: list[str], cwd: str) -> int:
    """Run ``cmd`` and wait; a SIGTERM to this process terminates the child first (so no
    server or kernel is left behind), then returns its status."""
    proc = subprocess.Popen(cmd, cwd=cwd)
    if threading.current_thread() is not threading.main_thread():
        return proc.wait()

    def forward(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the child got the same Ctrl+C: let it shut its kernels down
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
