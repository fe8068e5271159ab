"""Real-browser test of ``iunet-nb app``: the annotator alone on a Voila page, in chromium.

Needs Debian's chromium, the ``playwright`` Python package and Voila (the ``view`` and ``test``
extras): ``bash scripts/setup.sh test``. Skipped with a reason when one is missing.

The test runs the real command, ``python -m iunet_nb.cli app --no-browser --port P --study``,
on the bundled sample with a temporary session folder (and temporary Jupyter config/data
folders), waits for the three slice canvases, checks that no code cell source is on the page
and that the study clock ticks on its own, paints a foreground stroke with the mouse on the
axial canvas, presses Refine and checks in the saved session folder that the mask changed.
The page needs the token the command printed (without it: the login form), and a reload
resumes the page's own session folder instead of starting ``sample-2``.
Stopping the command (SIGTERM) must leave no Voila server behind. A screenshot is saved in
the test's tmp folder (``voila_app.png``) as an artifact.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from _browser_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LOCAL_PREFIXES,
    free_port,
    isolated_jupyter_env,
    model_path,
    paint_axial_stroke,
    saved_mask,
    skip_reason,
    stop_server,
    wait_port,
    wait_state,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

#: Text of the notebook's code cells that must never reach the page.
CODE_SNIPPETS = ("from iunet_nb.widgets import Annotator", "ct_path =", "session_folder =",
                 "Parameters injected by iunet-nb", "app = Annotator(")


def _case_time_s(text: str) -> int:
    m = re.search(r"case time (\d+):(\d\d)", text)
    assert m, f"no case time in the status line: {text!r}"
    return int(m.group(1)) * 60 + int(m.group(2))


def test_annotator_app_in_voila(tmp_path):
    reason = skip_reason("voila")
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from iunet_nb.synth.generator import load_sample

    ct, _ref = load_sample()
    view3d = "niivue" if importlib.util.find_spec("ipyniivue") else "none"
    sessions = tmp_path / "sessions"
    folder = sessions / "sample"
    port = free_port()
    cmd = [sys.executable, "-m", "iunet_nb.cli", "app", "--no-browser", f"--port={port}",
           "--study", f"--view3d={view3d}", f"--sessions={sessions}"]
    model = model_path(tmp_path)
    if model:
        cmd.append(f"--model={model}")
    log_path = tmp_path / "voila.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the server writes it
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                              env=isolated_jupyter_env(tmp_path / "jupyter"))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, server, log_path, timeout=90)
        # a token by default: the command printed the page's address with it, and the page
        # without it goes to the login form
        printed = re.search(r"the annotator is at (http://\S+)", log_path.read_text())
        assert printed, log_path.read_text()[-2000:]
        url = printed.group(1)
        assert url.startswith(f"{base}/?token=") and len(url) > len(base) + 30
        import urllib.request
        with urllib.request.urlopen(base + "/", timeout=30) as resp:
            no_token_url = resp.geturl()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith(LOCAL_PREFIXES) else None)
            blocked: dict[str, str] = {}      # url -> failure ("csp": blocked by the policy)
            page.on("requestfailed", lambda r: blocked.__setitem__(r.url, r.failure or ""))
            try:
                page.goto(url, timeout=120_000)
                canvas = page.locator(".jp-OutputArea-output canvas").first
                canvas.wait_for(timeout=90_000)
                page.wait_for_function(
                    "() => document.querySelectorAll('.jp-OutputArea-output canvas').length >= 3",
                    timeout=30_000)
                st = wait_state(folder, lambda s: any(u["action"] == "predict"
                                                      for u in s["undo"]), 60)
                before = saved_mask(folder, st)
                status = page.get_by_text(re.compile(r"case time \d+:\d\d")).first
                t0 = _case_time_s(status.inner_text(timeout=20_000))
                page.wait_for_timeout(2_500)              # no user action: the clock ticks
                t1 = _case_time_s(status.inner_text())
                body = page.inner_text("body")
                n_inputs = page.locator(".jp-CodeCell .jp-InputArea, .jp-InputArea-editor, "
                                         ".jp-CodeMirrorEditor, .cm-editor").count()
                page.get_by_role("button", name="FG brush", exact=True).click()
                mid = paint_axial_stroke(page, canvas)
                wait_state(folder, lambda s: any(u["action"] == "scribble"
                                                 for u in s["undo"]), 30)
                page.get_by_role("button", name="Refine", exact=True).click()
                st = wait_state(folder, lambda s: any(u["action"] == "refine"
                                                      for u in s["undo"]), 120)
                after = saved_mask(folder, st)
                refined = page.get_by_text("last: refine:").first.inner_text(timeout=20_000)
                page.screenshot(path=str(tmp_path / "voila_app.png"), full_page=True)
                n_canvases = page.locator(".jp-OutputArea-output canvas").count()
                # a reload resumes the page's own session (the old kernel lets go of it)
                page.reload(timeout=120_000)
                page.wait_for_function(
                    "() => document.querySelectorAll('.jp-OutputArea-output canvas').length >= 3",
                    timeout=120_000)
                resumed = page.get_by_text("resumed your saved work").first.inner_text(
                    timeout=60_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
        assert "login" in no_token_url, no_token_url
        assert "resumed your saved work" in resumed
        assert sorted(p.name for p in sessions.iterdir()) == ["sample"], "a reload forked"
        # only the app: no code cell source, no editor, the app's own controls
        for snippet in CODE_SNIPPETS:
            assert snippet not in body, f"code is visible on the Voila page: {snippet!r}"
        assert n_inputs == 0, f"{n_inputs} code input areas on the Voila page"
        assert "Accept & next" in body and "keyboard shortcuts" in body
        # the study clock advanced by itself (2.5 s apart, whole seconds shown)
        assert 2 <= t1 - t0 <= 4, (t0, t1)
        assert after.shape == before.shape == ct.shape
        assert int(np.count_nonzero(after != before)) > 0, "Refine did not change the saved mask"
        assert after[mid] == 1          # the stroke's middle voxel is forced to foreground
        assert "case time" in refined
        assert (tmp_path / "voila_app.png").stat().st_size > 10_000
        events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events if e["event"] in ("predict", "scribble", "refine")] \
            == ["predict", "scribble", "refine"]
        # nothing left the machine: Voila's CDN links (Font Awesome) are stopped by the page's
        # Content-Security-Policy inside the browser, before any network access
        sent = [u for u in outside if "csp" not in blocked.get(u, "").lower()]
        assert not sent, f"the page requested non-local URLs: {sent[:5]}"
        if view3d == "niivue":  # the 3D view rendered offline in Voila too: a WebGL canvas
            assert n_canvases >= 4, f"expected 3 slice canvases + the 3D view, got {n_canvases}"
    finally:
        t_stop = time.monotonic()
        stop_server(server)
        log.close()
    # SIGTERM to `iunet-nb app` reached Voila: it shut its kernel down and exited in time
    assert time.monotonic() - t_stop < 15
    text = log_path.read_text(errors="replace")
    assert "Kernel shutdown" in text, text[-2000:]
