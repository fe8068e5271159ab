"""Real-browser test: JupyterLab + the annotate notebook, driven by Playwright in chromium.

Needs Debian's chromium (``apt-get install -y chromium``) and the ``playwright`` Python package
(never ``playwright install``): ``bash scripts/install_browser.sh``. Skipped with a reason when
either is missing. Recipe and pitfalls: ``../shared/ENVIRONMENT.md`` section 5.

The test starts JupyterLab on a free port with a temporary root folder (and temporary
Jupyter config/runtime/workspace folders, so no state leaks between runs), opens the annotate
notebook on the bundled sample, runs all cells, paints a foreground stroke with the mouse on
the axial canvas, presses Refine and checks in the saved session folder that the mask changed.
It runs in study mode and checks that the case time on the status line ticks on its own.
Then, with a notebook cell selected (JupyterLab's command mode), it moves the pointer over the
coronal view without a click and presses keys: the view scrolls, ``b`` and ``o`` pick tools,
and no cell is inserted (the keys never reach JupyterLab); after a click on the app's
crosshair checkbox the arrow keys still scroll the view under the pointer.
A screenshot is saved in the test's tmp folder (``annotator.png``) as an artifact.
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
from _browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LOCAL_PREFIXES,
    accept_kernel_dialog,
    model_path,
    paint_axial_stroke,
    saved_mask,
    skip_reason,
    start_jupyterlab,
    stop_server,
    wait_state,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _case_time_s(text: str) -> int:
    m = re.search(r"case time (\d+):(\d\d)", text)
    assert m, f"no case time in the status line: {text!r}"
    return int(m.group(1)) * 60 + int(m.group(2))


def _keys_while_hovering(page) -> dict:
    """Select a notebook cell (JupyterLab's command mode, focus outside the app), move the
    pointer over the coronal view without clicking, press ArrowUp twice, b and o."""
    out: dict = {"cells_before": page.locator(".jp-Notebook .jp-Cell").count()}
    page.locator(".jp-Notebook .jp-MarkdownCell").first.click()
    page.keyboard.press("Escape")                       # command mode on the notebook
    readout = page.locator(".iunet-view-coronal .widget-readout").first
    out["slice_before"] = int(readout.inner_text())
    canvas = page.locator(".iunet-view-coronal canvas").first
    canvas.scroll_into_view_if_needed()
    bb = canvas.bounding_box()
    page.mouse.move(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2, steps=4)
    page.wait_for_timeout(300)
    for key in ("ArrowUp", "ArrowUp", "b", "o"):
        page.keyboard.press(key)
        page.wait_for_timeout(150)
    for _ in range(50):                                 # the kernel answers within seconds
        if int(readout.inner_text()) == out["slice_before"] + 2:
            break
        page.wait_for_timeout(200)
    out["slice_after"] = int(readout.inner_text())
    page.wait_for_timeout(500)
    out["cells_after"] = page.locator(".jp-Notebook .jp-Cell").count()
    out["tool"] = page.locator(".widget-toggle-button.mod-active").first.inner_text().strip()
    # a click on one of the app's checkboxes leaves the focus on it (twice: back as it was);
    # the keys must still reach the view under the pointer
    crosshair = page.get_by_text("crosshair", exact=True).first
    crosshair.click()
    crosshair.click()
    page.mouse.move(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2 + 5, steps=4)
    for _ in range(2):
        page.keyboard.press("ArrowDown")
        page.wait_for_timeout(150)
    for _ in range(50):
        if int(readout.inner_text()) == out["slice_before"]:
            break
        page.wait_for_timeout(200)
    out["slice_after_checkbox"] = int(readout.inner_text())
    return out


def test_annotate_notebook_in_jupyterlab(tmp_path):
    reason = skip_reason("jupyterlab")
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from iunet_nb.synth.generator import load_sample
    from iunet_nb.widgets.lab import write_annotate_notebook

    ct, _ref = load_sample()
    root = tmp_path / "root"
    root.mkdir()
    view3d = "niivue" if importlib.util.find_spec("ipyniivue") else "none"
    params = {"model_path": model_path(tmp_path), "session_folder": "sessions",
              "view3d": view3d, "study": True}
    # the parameters go into an injected cell after the parameters cell, as papermill does
    write_annotate_notebook(root / "annotate.ipynb", parameters=params)
    server, base = start_jupyterlab(root, tmp_path)
    folder = root / "sessions" / "sample"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            outside = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(LOCAL_PREFIXES) else None)
            try:
                page.goto(f"{base}/lab/tree/annotate.ipynb")
                idle = '.jp-Notebook-ExecutionIndicator[data-status="idle"]'
                page.wait_for_selector(idle, timeout=90_000)
                page.wait_for_timeout(500)
                canvas = page.locator(".jp-OutputArea-output canvas").first
                for attempt in range(2):  # a click right after start-up is sometimes lost
                    accept_kernel_dialog(page)
                    page.get_by_role("menuitem", name="Run", exact=True).click()
                    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                    try:
                        canvas.wait_for(timeout=60_000)
                        break
                    except Exception:
                        if attempt:
                            raise
                page.wait_for_selector(idle, timeout=120_000)
                st = wait_state(folder, lambda s: any(u["action"] == "predict"
                                                      for u in s["undo"]), 60)
                before = saved_mask(folder, st)
                clock = page.get_by_text(re.compile(r"case time \d+:\d\d")).first
                t0 = _case_time_s(clock.inner_text(timeout=20_000))
                page.wait_for_timeout(2_500)      # no user action: the study clock ticks
                t1 = _case_time_s(clock.inner_text())
                page.get_by_role("button", name="FG brush", exact=True).click()
                mid = paint_axial_stroke(page, canvas)
                st = wait_state(folder, lambda s: any(u["action"] == "scribble"
                                                      for u in s["undo"]), 30)
                page.get_by_role("button", name="Refine", exact=True).click()
                st = wait_state(folder, lambda s: any(u["action"] == "refine"
                                                      for u in s["undo"]), 120)
                after = saved_mask(folder, st)
                page.wait_for_timeout(1000)
                keys = _keys_while_hovering(page)
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
        assert 2 <= t1 - t0 <= 4, (t0, t1)
        # keys with the pointer over the app and no click on it: the view under the pointer
        # scrolls, b / o pick tools, and none of them reaches JupyterLab (b inserts a cell)
        assert keys["slice_after"] == keys["slice_before"] + 2, keys
        assert keys["slice_after_checkbox"] == keys["slice_before"], keys
        assert keys["cells_after"] == keys["cells_before"], keys
        assert keys["tool"] == "Box", keys
        assert (tmp_path / "annotator.png").stat().st_size > 10_000
        events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events if e["event"] in ("predict", "scribble", "refine")] \
            == ["predict", "scribble", "refine"]
        assert not outside, f"the page requested non-local URLs: {outside[:5]}"
        if view3d == "niivue":  # the 3D view rendered offline: a second WebGL canvas
            assert n_canvases >= 4, f"expected 3 slice canvases + the 3D view, got {n_canvases}"
    finally:
        stop_server(server)
