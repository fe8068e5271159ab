"""Shared helpers of the real-browser tests (tests/test_browser.py, tests/test_voila.py) and of
the real-browser benchmark (benchmarks/bench_browser.py).

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

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "LOCAL_PREFIXES", "PAGE_PROBE_JS", "PageProbe",
           "accept_kernel_dialog", "free_port", "isolated_jupyter_env", "model_path",
           "paint_axial_stroke", "saved_mask", "session_state", "skip_reason", "start_jupyterlab",
           "stop_server", "view_to_page", "wait_http", "wait_port", "wait_state"]

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


def start_jupyterlab(root: Path, workdir: Path, *, port: int | None = None,
                     env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """JupyterLab serving ``root`` on a free local port, without token or password, with its
    Jupyter folders under ``workdir / "jupyter"`` and its log in ``workdir / "jupyter.log"``;
    waits until it answers. Returns ``(server, base_url)``; stop it with :func:`stop_server`.
    """
    import sys

    port = port or free_port()
    log_path = workdir / "jupyter.log"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
             "--allow-root", "--ServerApp.disable_check_xsrf=True",
             f"--ServerApp.root_dir={root}"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root,
            env={**isolated_jupyter_env(workdir / "jupyter"), **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/api/status", server, log_path)
    except BaseException:
        stop_server(server)
        raise
    return server, base


def accept_kernel_dialog(page: Any) -> None:
    """Under load JupyterLab sometimes asks which kernel to start (the notebook names
    python3, which is there); accept its proposal so the dialog does not block the clicks."""
    dialog = page.locator(".jp-Dialog")
    for _ in range(10):
        if dialog.count() and dialog.first.is_visible():
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
            page.wait_for_timeout(500)
            return
        page.wait_for_timeout(200)


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
    from iunet_nb.model.checkpoint import ModelCard, bundled_model_path, save_model

    if bundled_model_path().is_file():
        return ""
    import torch

    from iunet_nb.model.nets import NetConfig, build_network

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
    from iunet_nb.io.images import read_mask

    return read_mask(folder / state["files"]["mask"]["name"]).array


def view_to_page(page: Any, canvas: Any, volume: Any, view: str, points_rc: Any, *,
                 canvas_units: bool = False) -> list[tuple[float, float]]:
    """Page coordinates of ``(row, col)`` array indices on a slice view's canvas (zoom 1, not
    panned), through the views' own mapping (:class:`~iunet_nb.widgets.render.SliceTransform`),
    scaled to the canvas's on-page size; scrolls the canvas into view first. With
    ``canvas_units`` the canvas's own pixel coordinates instead (what its pixels are read in).
    """
    from iunet_nb.widgets.render import SliceTransform, display_flips

    row_axis, col_axis = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}[view]
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    bb = canvas.bounding_box()      # after any scrolling
    cw = page.evaluate("c => [c.width, c.height]", canvas.element_handle())
    sp = volume.spacing_mm
    tr = SliceTransform(volume.shape[row_axis], volume.shape[col_axis], sp[row_axis],
                        sp[col_axis], cw[0], cw[1], *display_flips(volume.geometry, view))
    sx, sy = bb["width"] / cw[0], bb["height"] / cw[1]
    out = []
    for r, c in points_rc:
        x, y = tr.index_to_canvas(float(r), float(c))
        out.append((x, y) if canvas_units else (bb["x"] + x * sx, bb["y"] + y * sy))
    return out


def paint_axial_stroke(page: Any, canvas: Any) -> tuple[int, int, int]:
    """Drag a short horizontal stroke through the middle (y, x) of the sample's reference box
    on the axial slice the page shows, with the mouse; returns the stroke's middle voxel
    ``(z, y, x)``. The canvas positions come from the views' own mapping
    (:class:`~iunet_nb.widgets.render.SliceTransform`), scaled to the canvas's on-page size."""
    from iunet_nb.model.preprocess import Box
    from iunet_nb.synth.generator import load_sample

    ct, ref = load_sample()
    box = Box.from_mask(ref.array)
    mid = tuple((lo + hi - 1) // 2 for lo, hi in zip(box.lo_zyx, box.hi_zyx))
    # after Segment the views show the mask's centre: paint on the axial slice shown
    readout = page.locator(".iunet-view-axial .widget-readout")
    if readout.count():
        mid = (int(readout.first.inner_text()), mid[1], mid[2])
    pts = view_to_page(page, canvas, ct, "axial", [(mid[1], mid[2] + d) for d in range(-4, 5)])
    page.mouse.move(*pts[0])
    page.mouse.down()
    for x, y in pts[1:]:
        page.mouse.move(x, y, steps=2)
    page.mouse.up()
    return mid  # type: ignore[return-value]


#: An in-page recorder of what the user sees, on the page's own clock (``performance.now()``,
#: ms). A ``requestAnimationFrame`` loop reads each slice view's canvas (``.iunet-view-<name>
#: canvas``) and logs a frame whenever its pixels change (a hash), with the number of lit
#: pixels and of pixels in the mask's overlay colour; it logs the status line and whether the
#: busy bar shows (``.iunet-status``, ``.iunet-progress``) whenever they change, the first
#: frame at which a watched canvas point shows a scribble colour, and every gap of more than
#: 50 ms between two frames (the page did not answer meanwhile). A capturing listener logs
#: each input event (mouse moves only while a button is down). Timing in the page, not from Python, keeps the waits of the driver out of
#: the figures (``../shared/ENVIRONMENT.md`` section 5a).
PAGE_PROBE_JS = r"""
() => {
  if (window.__iunetProbe) return;
  const VIEWS = ["axial", "coronal", "sagittal"];
  const P = window.__iunetProbe = {frames: [], dom: [], inputs: [], gaps: [], hits: [],
                                   points: [], errors: [], last: {}, lastT: null, status: null,
                                   busy: null, cost: {n: 0, sum: 0, max: 0}};
  // the mask overlay (255, 64, 32) at opacity 0.4 over any grey: R - G = 76, R - B = 90,
  // G - B = 13; the yellow labels (R - G <= 45), scribble and change colours fail the test
  const isMask = (r, g, b) => r - g > 60 && r - b > 60 && Math.abs(g - b) < 40;
  const COLOURS = {
    fg: (r, g, b) => g - r > 60 && g - b > 60,      // (40, 220, 60): preview 0.7, drawn 0.85
    bg: (r, g, b) => b - r > 80 && b - g > 50,      // (40, 140, 255)
    // the eraser's preview (255, 255, 255) at 0.7 over air: 178 each
    white: (r, g, b) => r > 120 && g > 120 && b > 120 && Math.max(r, g, b) - Math.min(r, g, b) < 25,
  };
  const analyse = (canvas) => {
    const w = canvas.width, h = canvas.height;
    if (!w || !h) return null;
    const d = canvas.getContext("2d").getImageData(0, 0, w, h).data;
    let hash = 2166136261, mask = 0, lit = 0;
    for (let i = 0; i < d.length; i += 4) {
      const r = d[i], g = d[i + 1], b = d[i + 2];
      hash = Math.imul(hash ^ (r | (g << 8) | (b << 16)), 16777619);
      if (r + g + b > 30) lit++;
      if (isMask(r, g, b)) mask++;
    }
    return {hash: hash >>> 0, mask, lit, w, h, d};
  };
  const tick = () => {
    const t0 = performance.now();
    try { step(); } catch (e) { P.errors.push(String(e)); }
    const dt = performance.now() - t0;   // the probe's own cost, reported with the figures
    P.cost.n++; P.cost.sum += dt; P.cost.max = Math.max(P.cost.max, dt);
    requestAnimationFrame(tick);    // never stop recording on one bad frame
  };
  const step = () => {
    const now = performance.now();
    if (P.lastT !== null && now - P.lastT > 50) P.gaps.push([P.lastT, now]);
    P.lastT = now;
    for (const view of VIEWS) {
      const c = document.querySelector(`.iunet-view-${view} canvas`);
      if (!c) continue;
      const a = analyse(c);
      if (!a) continue;
      const prev = P.last[view];
      if (!prev || prev.hash !== a.hash) {
        P.frames.push({t: now, view, hash: a.hash, mask: a.mask, lit: a.lit});
        P.last[view] = {hash: a.hash};
      }
      for (const p of P.points) {
        if (p.view !== view || p.t !== null) continue;
        let hit = false;   // any pixel of the 3 x 3 around the point
        for (let dy = -1; dy <= 1 && !hit; dy++) for (let dx = -1; dx <= 1 && !hit; dx++) {
          const x = Math.round(p.x) + dx, y = Math.round(p.y) + dy;
          if (x < 0 || y < 0 || x >= a.w || y >= a.h) continue;
          const i = 4 * (y * a.w + x);
          hit = COLOURS[p.kind](a.d[i], a.d[i + 1], a.d[i + 2]);
        }
        if (hit) { p.t = now; P.hits.push({id: p.id, t: now}); }
      }
    }
    const st = document.querySelector(".iunet-status");
    const pr = document.querySelector(".iunet-progress");
    const status = st ? st.innerText : "";
    const busy = !!pr && getComputedStyle(pr).visibility !== "hidden";
    if (status !== P.status || busy !== P.busy) {
      P.dom.push({t: now, status, busy});
      P.status = status; P.busy = busy;
    }
  };
  for (const type of ["mousedown", "mouseup", "click", "wheel", "keydown", "mousemove"]) {
    document.addEventListener(type, (e) => {
      if (type === "mousemove" && !e.buttons) return;    // only drags
      P.inputs.push({t: performance.now(), type, key: e.key || null});
    }, true);
  }
  P.watch = (id, view, x, y, kind) => P.points.push({id, view, x, y, kind, t: null});
  P.drain = () => {
    const out = {frames: P.frames, dom: P.dom, inputs: P.inputs, gaps: P.gaps, hits: P.hits,
                 errors: P.errors, cost: P.cost, now: performance.now()};
    P.frames = []; P.dom = []; P.inputs = []; P.gaps = []; P.hits = []; P.errors = [];
    P.points = P.points.filter((p) => p.t === null);
    return out;
  };
  requestAnimationFrame(tick);
}
"""


class PageProbe:
    """Python side of :data:`PAGE_PROBE_JS`: installs it and accumulates what it logged.

    Attributes (all times in ms on the page's clock): ``frames`` (``t``, ``view``, ``hash``,
    ``mask``, ``lit``), ``dom`` (``t``, ``status``, ``busy``), ``inputs`` (``t``, ``type``,
    ``key``), ``gaps`` (``[start, end]``), ``hits`` (``{id: t}``), ``errors`` (the probe's own,
    which it survives), ``cost`` (its own time per frame: ``n``, ``sum``, ``max`` in ms),
    ``now``.
    """

    def __init__(self, page: Any) -> None:
        self.page = page
        self.frames: list[dict] = []
        self.dom: list[dict] = []
        self.inputs: list[dict] = []
        self.gaps: list[list[float]] = []
        self.hits: dict[str, float] = {}
        self.errors: list[str] = []
        self.cost = {"n": 0, "sum": 0.0, "max": 0.0}
        self.now = 0.0
        page.evaluate(PAGE_PROBE_JS)

    def poll(self) -> PageProbe:
        out = self.page.evaluate("() => window.__iunetProbe.drain()")
        self.frames += out["frames"]
        self.dom += out["dom"]
        self.inputs += out["inputs"]
        self.gaps += out["gaps"]
        self.hits.update({h["id"]: h["t"] for h in out["hits"]})
        self.errors += out["errors"]
        self.cost = out["cost"]
        self.now = out["now"]
        return self

    def watch(self, point_id: str, view: str, x: float, y: float, kind: str) -> None:
        """Log the first frame at which canvas pixel ``(x, y)`` (canvas units) of ``view``
        shows the ``kind`` scribble colour (``"fg"``, ``"bg"``, or ``"white"``: the eraser)
        in :attr:`hits`."""
        self.page.evaluate("([i, v, x, y, k]) => window.__iunetProbe.watch(i, v, x, y, k)",
                           [point_id, view, x, y, kind])

    def wait(self, pred: Callable[[PageProbe], Any], timeout_s: float, what: str,
             interval_s: float = 0.03) -> Any:
        """Poll until ``pred(self)`` is truthy and return it; AssertionError after
        ``timeout_s``."""
        t_end = time.monotonic() + timeout_s
        while True:
            found = pred(self.poll())
            if found:
                return found
            if time.monotonic() > t_end:
                last = [(round(d["t"]), d["status"][-90:], d["busy"]) for d in self.dom[-4:]]
                raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last "
                                     f"status lines, busy bar: {last}; page probe errors: "
                                     f"{self.errors[-3:]})")
            time.sleep(interval_s)

    def last_input(self, type_: str, after: float = -1.0) -> dict | None:
        """The latest input of ``type_`` logged after page time ``after``."""
        found = [e for e in self.inputs if e["type"] == type_ and e["t"] > after]
        return found[-1] if found else None
