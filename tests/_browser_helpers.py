"""Shared helpers of the real-browser tests (tests/test_browser.py, tests/test_voila.py).

They drive Debian's chromium (``apt-get install -y chromium``; never ``playwright install``)
with the ``playwright`` Python package: ``bash scripts/install_browser.sh``. Recipe and
pitfalls: ``../shared/ENVIRONMENT.md`` section 5.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "LOCAL_PREFIXES", "free_port", "isolated_jupyter_env",
           "model_path", "paint_axial_stroke", "saved_mask", "session_state", "skip_reason",
           "stop_server", "wait_http", "wait_port", "wait_state"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Request URLs that stay on this machine (anything else is a request to the internet).
LOCAL_PREFIXES = ("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "ws://localhost",
                  "data:", "blob:")


def skip_reason(*modules: str) -> str | None:
    """Why a browser test cannot run here (chromium, playwright or a module missing), or None."""
    if CHROMIUM is None:
        return "chromium not installed (bash scripts/install_browser.sh: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright)"
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install -e '.[view,test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_jupyter_env(folder: Path) -> dict[str, str]:
    """The environment with Jupyter's config/runtime/data/settings/workspace folders under
    ``folder``, so no state leaks between runs (installed extensions are still found under
    sys.prefix)."""
    return {**os.environ, "JUPYTER_CONFIG_DIR": str(folder / "config"),
            "JUPYTER_RUNTIME_DIR": str(folder / "runtime"), "JUPYTER_DATA_DIR": str(folder / "data"),
            "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces")}


def wait_http(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until ``url`` answers; fail with the server's log when it exits or times out."""
    t_end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > t_end or server.poll() is not None:
                raise AssertionError(f"the server at {url} did not start:\n"
                                     + log.read_text(errors="replace")[-3000:]) from None
            time.sleep(0.3)


def wait_port(port: int, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (for servers whose pages have side
    effects, e.g. Voila starts a kernel per page load); fail with the server's log."""
    t_end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            if time.monotonic() > t_end or server.poll() is not None:
                raise AssertionError(f"nothing listens on port {port}:\n"
                                     + log.read_text(errors="replace")[-3000:]) from None
            time.sleep(0.3)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (servers shut their kernels down), then kill after 15 s."""
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


def model_path(tmp: Path) -> str:
    """The bundled weights ("") when present, else a tiny net that predicts background."""
    from iunet_nb.checkpoint import ModelCard, bundled_model_path, save_model

    if bundled_model_path().is_file():
        return ""
    import torch

    from iunet_nb.nets import NetConfig, build_network

    card = ModelCard(net=NetConfig(base_channels=4), notes="browser test: background net")
    torch.manual_seed(0)
    net = build_network(card.net).eval()
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([4.0, -4.0]))
    return str(save_model(net, card, tmp / "tiny.pt"))


def session_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def wait_state(folder: Path, pred: Callable[[dict], bool], timeout: float) -> dict:
    """Poll the session's ``state.json`` until ``pred(state)`` holds."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        st = session_state(folder)
        if st is not None and pred(st):
            return st
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for the session state in {folder}: "
                         f"{json.dumps(session_state(folder))[:800]}")


def saved_mask(folder: Path, state: dict) -> np.ndarray:
    from iunet_nb.io import read_mask

    return read_mask(folder / state["files"]["mask"]["name"]).array


def paint_axial_stroke(page: Any, canvas: Any) -> tuple[int, int, int]:
    """Drag a short horizontal stroke through the middle (y, x) of the sample's reference box
    on the axial slice the page shows, with the mouse; returns the stroke's middle voxel
    ``(z, y, x)``. The canvas positions come from the views' own mapping
    (:class:`~iunet_nb.widgets.render.SliceTransform`), scaled to the canvas's on-page size."""
    from iunet_nb.preprocess import Box
    from iunet_nb.synth import load_sample
    from iunet_nb.widgets.render import SliceTransform, display_flips

    ct, ref = load_sample()
    box = Box.from_mask(ref.array)
    mid = tuple((lo + hi - 1) // 2 for lo, hi in zip(box.lo_zyx, box.hi_zyx))
    # after Segment the views show the mask's centre: paint on the axial slice shown
    readout = page.locator(".iunet-view-axial .widget-readout")
    if readout.count():
        mid = (int(readout.first.inner_text()), mid[1], mid[2])
    rows, cols = ct.shape[1], ct.shape[2]
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    bb = canvas.bounding_box()      # after any scrolling
    cw = page.evaluate("c => [c.width, c.height]", canvas.element_handle())
    tr = SliceTransform(rows, cols, ct.spacing_mm[1], ct.spacing_mm[2], cw[0], cw[1],
                        *display_flips(ct.geometry, "axial"))
    pts = [tr.index_to_canvas(mid[1], mid[2] + d) for d in range(-4, 5)]
    sx, sy = bb["width"] / cw[0], bb["height"] / cw[1]
    page.mouse.move(bb["x"] + pts[0][0] * sx, bb["y"] + pts[0][1] * sy)
    page.mouse.down()
    for x, y in pts[1:]:
        page.mouse.move(bb["x"] + x * sx, bb["y"] + y * sy, steps=2)
    page.mouse.up()
    return mid  # type: ignore[return-value]
