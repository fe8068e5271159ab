"""Real-browser test: JupyterLab + the annotate notebook, driven by Playwright in chromium.

Needs Debian's chromium (``apt-get install -y chromium``) and the ``playwright`` Python package
(never ``playwright install``): ``bash scripts/install_browser.sh``. Skipped with a reason when
either is missing. Recipe and pitfalls: ``../shared/ENVIRONMENT.md`` section 5.

The test starts JupyterLab on a free port with a temporary root folder (and temporary
Jupyter config/runtime/workspace folders, so no state leaks between runs), opens the annotate
notebook on the bundled sample, runs all cells, paints a foreground stroke with the mouse on
the axial canvas, presses Refine and checks in the saved session folder that the mask changed.
A screenshot is saved in the test's tmp folder (``annotator.png``) as an artifact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return "chromium not installed (bash scripts/install_browser.sh: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright)"
    if importlib.util.find_spec("jupyterlab") is None:
        return "jupyterlab is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_path(tmp: Path) -> str:
    """The bundled weights when present, else a tiny net that predicts background."""
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


def _write_notebook(root: Path, params: dict) -> Path:
    """The annotate notebook with an injected parameters cell (as papermill does)."""
    from iunet_nb.widgets.lab import annotate_notebook

    nb = annotate_notebook()
    idx = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c["metadata"].get("tags", []))
    src = "# Parameters injected by the test\n" + "".join(
        f"{k} = {v!r}\n" for k, v in params.items())
    nb["cells"].insert(idx + 1, {"cell_type": "code", "execution_count": None, "outputs": [],
                                 "metadata": {"tags": ["injected-parameters"]},
                                 "source": src.splitlines(keepends=True)})
    for i, c in enumerate(nb["cells"]):
        c["id"] = f"cell-{i}"
    path = root / "annotate.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path


def _state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _accept_kernel_dialog(page) -> None:
    """Under load JupyterLab sometimes asks which kernel to start (the notebook names
    python3, which is there); accept its proposal so the dialog does not block the clicks."""
    dialog = page.locator(".jp-Dialog")
    for _ in range(10):
        if dialog.count() and dialog.first.is_visible():
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
            page.wait_for_timeout(500)
            return
        page.wait_for_timeout(200)


def _wait_state(folder: Path, pred, timeout: float) -> dict:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        st = _state(folder)
        if st is not None and pred(st):
            return st
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for the session state in {folder}: "
                         f"{json.dumps(_state(folder))[:800]}")


def _mask(folder: Path, state: dict) -> np.ndarray:
    from iunet_nb.io import read_mask

    return read_mask(folder / state["files"]["mask"]["name"]).array


def test_annotate_notebook_in_jupyterlab(tmp_path):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from iunet_nb.preprocess import Box
    from iunet_nb.synth import load_sample
    from iunet_nb.widgets.render import SliceTransform, display_flips

    root = tmp_path / "root"
    root.mkdir()
    jdir = tmp_path / "jupyter"
    view3d = "niivue" if importlib.util.find_spec("ipyniivue") else "none"
    params = {"model_path": _model_path(tmp_path), "session_folder": "sessions",
              "view3d": view3d}
    _write_notebook(root, params)
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(jdir / "config"),
           "JUPYTER_RUNTIME_DIR": str(jdir / "runtime"), "JUPYTER_DATA_DIR": str(jdir / "data"),
           "JUPYTERLAB_SETTINGS_DIR": str(jdir / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(jdir / "workspaces")}
    log = open(tmp_path / "jupyter.log", "wb")  # noqa: SIM115 - the server writes it
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.token=", "--ServerApp.password=", "--allow-root",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    folder = root / "sessions" / "sample"
    try:
        t_end = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > t_end or server.poll() is not None:
                    raise AssertionError("JupyterLab did not start: "
                                         + (tmp_path / "jupyter.log").read_text()[-2000:])
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            outside = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "http://localhost", "data:",
                                             "blob:")) else None)
            try:
                page.goto(f"{base}/lab/tree/annotate.ipynb")
                idle = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'
                page.wait_for_selector(idle, timeout=90_000)
                page.wait_for_timeout(500)
                canvas = page.locator(".jp-OutputArea-output canvas").first
                for attempt in range(2):  # a click right after start-up is sometimes lost
                    _accept_kernel_dialog(page)
                    page.get_by_role("menuitem", name="Run", exact=True).click()
                    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                    try:
                        canvas.wait_for(timeout=60_000)
                        break
                    except Exception:
                        if attempt:
                            raise
                page.wait_for_selector(idle, timeout=120_000)
                st = _wait_state(folder, lambda s: any(u["action"] == "predict"
                                                       for u in s["undo"]), 60)
                before = _mask(folder, st)
                # the box's middle (the app centres the views on it) on the axial canvas
                ct, ref = load_sample()
                box = Box.from_mask(ref.array)
                mid = [(lo + hi - 1) // 2 for lo, hi in zip(box.lo_zyx, box.hi_zyx)]
                rows, cols = ct.shape[1], ct.shape[2]
                page.get_by_role("button", name="FG brush", exact=True).click()
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
                st = _wait_state(folder, lambda s: any(u["action"] == "scribble"
                                                       for u in s["undo"]), 30)
                page.get_by_role("button", name="Refine", exact=True).click()
                st = _wait_state(folder, lambda s: any(u["action"] == "refine"
                                                       for u in s["undo"]), 120)
                after = _mask(folder, st)
                page.wait_for_timeout(1000)
                page.screenshot(path=str(tmp_path / "annotator.png"), full_page=True)
                status = page.locator("text=last: refine").first.inner_text(timeout=20_000)
                n_canvases = page.locator(".jp-OutputArea-output canvas").count()
                if view3d == "niivue" and n_canvases >= 4:   # a second artifact: the 3D view
                    page.locator(".jp-OutputArea-output canvas").last.scroll_into_view_if_needed()
                    page.wait_for_timeout(1500)
                    page.screenshot(path=str(tmp_path / "view3d.png"))
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
        assert after.shape == before.shape == ct.shape
        changed = int(np.count_nonzero(after != before))
        assert changed > 0, "Refine did not change the saved mask"
        # the stroke was forced into the mask: the voxel under the stroke's middle is foreground
        assert after[mid[0], mid[1], mid[2]] == 1
        assert "refine" in status
        assert (tmp_path / "annotator.png").stat().st_size > 10_000
        events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events if e["event"] in ("predict", "scribble", "refine")] \
            == ["predict", "scribble", "refine"]
        assert not outside, f"the page requested non-local URLs: {outside[:5]}"
        if view3d == "niivue":  # the 3D view rendered offline: a second WebGL canvas
            assert n_canvases >= 4, f"expected 3 slice canvases + the 3D view, got {n_canvases}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
