"""The annotator in a real browser on real 512 x 512 CT: issue 23's goal table, on screen.

Usage::

    python benchmarks/bench_browser.py                          # both cases, 10 actions each
    python benchmarks/bench_browser.py --cases pancreas_0002 --repeat 12 --out runs/browser.json
    python benchmarks/bench_browser.py --view3d none            # the same without the 3D view

Needs Debian's chromium and the ``playwright`` Python package (``bash
scripts/install_browser.sh``) and the real CTs in ``../shared/data`` (a case whose data is
absent is skipped with a message). Per case it starts a fresh JupyterLab 4 on a free local
port, opens a notebook in headless Chromium and works like a user, with the mouse and keys:

1. runs ``from iunet_nb.widgets import Annotator`` (not timed), then the cell
   ``Annotator(<DICOM folder>, folder="sessions")``: **open** is Shift+Enter on that cell
   to the first axial picture on screen;
2. draws the box with the Box tool, on the axial and the coronal view, at the expert mask's
   bounding box (``make_box(ct, reference=mask)``: the paper's Experiment 1 box), then
   clicks Segment ``--repeat`` times, with Undo (mask off the screen again) in between:
   **Segment** is the click to the first axial frame showing the mask, and whether the busy
   bar or a "running" status showed between the two;
3. switches auto-refine on and draws ``--repeat`` scribbles with the mouse, each planned
   by the simulated expert (:func:`iunet_nb.interactive.robot.plan_stroke`, axial view, the 3 mm brush,
   aimed at error a brush fits in) from the autosaved mask and the expert mask, after
   scrolling to its slice with the arrow keys; a 3 s pause (think time) follows each refined
   mask. Every second stroke is drawn while a refinement runs (key ``r`` pressed just
   before; the stroke supersedes it). **Stroke on screen**: mouse-up to the frame in which
   the stroke's middle and last point both show the scribble colour (0 when already there at
   mouse-up: the preview is drawn while dragging). **Refined mask on screen**: mouse-up to
   the later of the status line reporting the refinement and the last canvas frame it
   redrew;
4. **Stroke preview** (the stroke's immediate effect while dragging): ``--repeat`` times,
   with the eraser held down in the air of the axial view, one jump of the pointer 40 voxels
   on, to the frame that shows the segment's far end; every second one while a refinement
   runs (key ``r``);
5. **3D view on request** (where it does not follow edits: a page without a GPU):
   ``--repeat`` times Undo or Redo, then the key ``u``; the longest frame gap in the 3 s
   after the key;
6. ``--repeat`` wheel notches and ``--repeat`` ArrowUp/ArrowDown presses over the axial view:
   the input event to the first axial frame that changed.

Everything is timed inside the page (``tests/_browser_helpers.PAGE_PROBE_JS``): the input
events and the canvases' pixels on the page's clock, never the kernel's word. **Page stall**:
the longest gap between two animation frames (the page did not answer) from an action's
input to the next action's input; the figure is the largest over all actions (open
included), with the action it followed.

Prints one table (p50 / p95 over the actions, numpy's linear percentiles, n in brackets)
against the goals; ``--out`` writes every action's figures as JSON. The kernel inherits
``OMP_NUM_THREADS``; ``--threads`` sets torch's threads in it (1 by default: a shared
2-core host). About 3-4 minutes per case on a 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _browser_helpers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    PageProbe,
    accept_kernel_dialog,
    model_path,
    saved_mask,
    skip_reason,
    start_jupyterlab,
    stop_server,
    view_to_page,
    wait_state,
)

DATA = ROOT.parent / "shared" / "data"
#: Issue 23's goals, in ms: (p50 goal, p95 goal); None where the issue sets none.
GOALS_MS: dict[str, tuple[float | None, float | None]] = {
    "open": (5000, None), "segment": (3000, None), "preview": (300, None), "stroke": (300, None),
    "refined": (1500, 3000), "engine": (1000, None), "view3d": (None, 1000), "wheel": (None, 100),
    "key": (None, 100), "stall": (1000, None)}
LABELS = {
    "open": ("open the CT: first picture on screen", "<= 5 s"),
    "segment": ("Segment (box drawn): mask on screen", "<= 3 s, busy shown"),
    "preview": ("scribble drag: pointer move to the stroke on screen", "<= 0.3 s"),
    "stroke": ("scribble mouse-up: whole stroke on screen", "<= 0.3 s"),
    "refined": ("scribble mouse-up: refined mask on screen", "<= 1.5 s p50, <= 3 s p95"),
    "engine": ("engine's refine round (events.jsonl, kernel)", "<= 1.0 s median"),
    "view3d": ("3D view updated on request (key u): longest frame gap", "<= 1 s"),
    "wheel": ("slice redraw on wheel", "<= 100 ms p95"),
    "key": ("slice redraw on arrow key", "<= 100 ms p95"),
    "stall": ("longest page stall after an action", "<= 1 s"),
}
_REFINED = re.compile(r"last: refine: \d+ ms")


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------
def _cases(organ: str) -> dict[str, tuple[Path, Callable[[], Any], str]]:
    """name -> (DICOM folder, loader of the expert mask, what the mask is)."""
    from iunet_nb.io.images import read_dicom_mask_series, read_mask

    ircadb = DATA / "ircadb" / "1.7"
    nih = DATA / "nih_pancreas_ct" / "PANCREAS_0002"
    return {
        "ircadb_1.7": (ircadb / "PATIENT_DICOM",
                       lambda: read_dicom_mask_series(ircadb / "MASKS_DICOM.zip", organ),
                       f"3D-IRCADb 1.7, expert {organ} mask"),
        "pancreas_0002": (nih / "dicom", lambda: read_mask(nih / "label0002.nii.gz"),
                          "NIH Pancreas-CT 0002, expert pancreas mask"),
    }


def _notebook(ct: Path, case_id: str, view3d: str, threads: int, model: str) -> dict:
    def cell(src: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                "source": src.splitlines(keepends=True)}
    return {"cells": [
        cell(f"import torch\ntorch.set_num_threads({threads})\n"
             "from iunet_nb.widgets import Annotator"),
        cell(f"app = Annotator({str(ct)!r}, model={model or None!r}, folder='sessions',\n"
             f"                case_ids=[{case_id!r}], view3d={view3d!r})\napp")],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                    "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5}


# ----------------------------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------------------------
class _Run:
    """One case in one page: the probe, the actions measured so far."""

    def __init__(self, page: Any, probe: PageProbe, ct: Any, ref: Any, folder: Path) -> None:
        self.page, self.probe, self.ct, self.ref, self.folder = page, probe, ct, ref, folder
        self.actions: list[dict[str, Any]] = []

    # -- the page ------------------------------------------------------------------------
    def canvas(self, view: str) -> Any:
        return self.page.locator(f".iunet-view-{view} canvas").first

    def readout(self, view: str) -> int:
        return int(self.page.locator(f".iunet-view-{view} .widget-readout").first.inner_text())

    def hover(self, view: str) -> None:
        bb = self.canvas(view).bounding_box()
        self.page.mouse.move(bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2, steps=3)
        self.page.wait_for_timeout(100)

    def frame_after(self, t: float, view: str = "axial",
                    cond: Callable[[dict], bool] = lambda f: True) -> Callable[[PageProbe], Any]:
        return lambda p: next((f for f in p.frames if f["view"] == view and f["t"] > t
                               and cond(f)), None)

    def status_after(self, t: float, pattern: re.Pattern) -> Callable[[PageProbe], Any]:
        return lambda p: next((d for d in p.dom if d["t"] > t and pattern.search(d["status"])),
                              None)

    def input_time(self, type_: str, after: float) -> float:
        ev = self.probe.wait(lambda p: p.last_input(type_, after), 10, f"the {type_} event")
        return float(ev["t"])

    def record(self, kind: str, t_in: float, t_done: float, **extra: Any) -> dict[str, Any]:
        row = {"kind": kind, "t_in": t_in, "t_done": t_done, "ms": t_done - t_in, **extra}
        self.actions.append(row)
        return row

    # -- steps ---------------------------------------------------------------------------
    def open(self, timeout_s: float) -> None:
        page = self.page
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        accept_kernel_dialog(page)
        cells.nth(0).locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        cells.nth(0).locator(".jp-InputPrompt", has_text="[1]").wait_for(timeout=180_000)
        self.probe.poll()
        t0 = self.probe.now
        page.keyboard.press("Shift+Enter")           # the Annotator cell, now selected
        t_in = self.input_time("keydown", t0)
        first = self.probe.wait(self.frame_after(t_in, cond=lambda f: f["lit"] > 5000),
                                timeout_s, "the first axial picture")
        self.record("open", t_in, first["t"])
        cells.nth(1).locator(".jp-InputPrompt", has_text="[2]").wait_for(timeout=300_000)
        page.wait_for_timeout(1500)

    def draw_box(self, box: Any) -> None:
        page = self.page
        page.get_by_role("button", name="Box", exact=True).click()
        (z0, y0, x0), (z1, y1, x1) = box.lo_zyx, box.hi_zyx
        for view, (r0, c0, r1, c1) in (("axial", (y0, x0, y1 - 1, x1 - 1)),
                                       ("coronal", (z0, x0, z1 - 1, x1 - 1))):
            pts = view_to_page(page, self.canvas(view), self.ct, view, [(r0, c0), (r1, c1)])
            page.mouse.move(*pts[0])
            page.mouse.down()
            page.mouse.move(*pts[1], steps=8)
            page.mouse.up()
            self.probe.wait(self.status_after(-1, re.compile(f"box on {view}")), 30,
                            f"the box on the {view} view")
        self.probe.wait(self.status_after(-1, re.compile("ready, press Segment")), 30,
                        "the box to be complete")

    def segment(self, repeat: int) -> None:
        page = self.page
        for i in range(repeat):
            self.probe.poll()
            t0 = self.probe.now
            page.get_by_role("button", name="Segment", exact=True).click()
            t_in = self.input_time("click", t0)
            shown = self.probe.wait(self.frame_after(t_in, cond=lambda f: f["mask"] > 0), 120,
                                    "the mask after Segment")
            busy = [d for d in self.probe.dom if t_in < d["t"] <= shown["t"]
                    and (d["busy"] or "running" in d["status"])]
            self.record("segment", t_in, shown["t"], busy_shown=bool(busy),
                        busy_after_ms=(busy[0]["t"] - t_in) if busy else None,
                        mask_px=shown["mask"])
            if i < repeat - 1:   # take the mask off again, so the next one shows
                self.probe.poll()
                t1 = self.probe.now
                page.get_by_role("button", name="Undo", exact=True).click()
                t_undo = self.input_time("click", t1)
                self.probe.wait(self.frame_after(t_undo, cond=lambda f: f["mask"] == 0), 60,
                                "the mask to go after Undo")
                page.wait_for_timeout(500)

    def go_to_slice(self, k: int) -> None:
        self.hover("axial")
        now = self.readout("axial")
        delta = k - now
        for _ in range(abs(delta) // 5):
            self.page.keyboard.press("Shift+ArrowUp" if delta > 0 else "Shift+ArrowDown")
        for _ in range(abs(delta) % 5):
            self.page.keyboard.press("ArrowUp" if delta > 0 else "ArrowDown")
        t_end = time.monotonic() + 30
        while self.readout("axial") != k:
            if time.monotonic() > t_end:
                raise AssertionError(f"the axial view did not reach slice {k}")
            self.page.wait_for_timeout(50)
        self.page.wait_for_timeout(400)

    def scribbles(self, repeat: int, think_s: float) -> None:
        from iunet_nb.interactive.robot import RobotConfig, plan_stroke

        page = self.page
        page.get_by_text("auto-refine on stroke end", exact=True).click()
        config = RobotConfig.preset("expert", views=("axial",), radius_mm=3.0, jitter_mm=0.0,
                                    fit_brush=True)
        tool = None
        for i in range(repeat):
            st = wait_state(self.folder, lambda s, i=i: s["state"]["refine_round"] >= i, 60)
            mask = saved_mask(self.folder, st)
            stroke = plan_stroke(mask, self.ref.array, self.ct.spacing_mm, config, rng=i)
            if stroke is None:
                print(f"    stroke {i + 1}: the mask matches the expert's; no more strokes")
                break
            self.go_to_slice(stroke.slice_index)
            if tool != stroke.label:
                tool = stroke.label
                page.get_by_role("button", name="FG brush" if tool == "fg" else "BG brush",
                                 exact=True).click()
            pts_rc = stroke.points
            if len(pts_rc) > 16:
                pts_rc = pts_rc[np.linspace(0, len(pts_rc) - 1, 16).round().astype(int)]
            canvas = self.canvas("axial")
            on_page = view_to_page(page, canvas, self.ct, "axial", pts_rc)
            in_canvas = view_to_page(page, canvas, self.ct, "axial", pts_rc, canvas_units=True)
            mid = len(pts_rc) // 2
            for name, j in (("mid", mid), ("end", len(pts_rc) - 1)):
                self.probe.watch(f"s{i}-{name}", "axial", *in_canvas[j], tool)
            busy_draw = i % 2 == 1
            if busy_draw:   # Refine (key r) just before: the stroke is drawn while it runs
                page.mouse.move(*on_page[0])
                page.keyboard.press("r")
                self.probe.wait(self.status_after(self.probe.now, re.compile("refine: running")),
                                30, "the refinement to start")
            self.probe.poll()
            t0 = self.probe.now
            page.mouse.move(*on_page[0])
            page.mouse.down()
            for x, y in on_page[1:]:
                page.mouse.move(x, y, steps=2)
                page.wait_for_timeout(15)
            page.mouse.up()
            t_up = self.input_time("mouseup", t0)
            hits = self.probe.wait(lambda p, i=i: [p.hits[k] for k in (f"s{i}-mid", f"s{i}-end")]
                                   if all(k in p.hits for k in (f"s{i}-mid", f"s{i}-end"))
                                   else None, 60, "the stroke on screen")
            t_vis = max(hits)
            running = [d for d in self.probe.dom if d["t"] <= t_up]
            running = bool(running) and "refine: running" in running[-1]["status"]
            status = self.probe.wait(self.status_after(t_up, _REFINED), 180,
                                     "the refined mask")
            page.wait_for_timeout(400)
            self.probe.poll()
            redrawn = [f["t"] for f in self.probe.frames
                       if t_up < f["t"] <= status["t"] + 300]
            t_done = max([status["t"], *redrawn])
            last = [d["status"] for d in self.probe.dom if d["t"] >= status["t"]]
            m = re.search(r"\+(\d+) / -(\d+) voxels", last[-1] if last else "")
            self.record("stroke", t_up, max(t_vis, t_up), raw_ms=t_vis - t_up,
                        refine_running=running, label=tool, slice=int(stroke.slice_index),
                        points=len(pts_rc))
            self.record("refined", t_up, t_done, status_ms=status["t"] - t_up,
                        added=int(m.group(1)) if m else None,
                        removed=int(m.group(2)) if m else None)
            page.wait_for_timeout(int(think_s * 1000))

    def preview(self, repeat: int) -> None:
        """The stroke preview's own latency: with the eraser down in the air near the axial
        picture's top-left corner, one jump of the pointer 40 voxels to the right, to the frame
        in which the segment's far end shows (the eraser's white); every second one while a
        refinement runs (key r). The eraser leaves the mask and the scribbles as they are."""
        page = self.page
        page.get_by_role("button", name="Eraser", exact=True).click()
        canvas = self.canvas("axial")
        running_re = re.compile("refine: running")
        for i in range(repeat):
            row = 40 + 8 * (i % 6)
            ends = [(row, 20), (row, 60)]
            on_page = view_to_page(page, canvas, self.ct, "axial", ends)
            in_canvas = view_to_page(page, canvas, self.ct, "axial", ends, canvas_units=True)
            page.mouse.move(*on_page[0], steps=2)
            running = i % 2 == 1
            if running:
                page.keyboard.press("r")
                self.probe.wait(self.status_after(self.probe.now, running_re), 30,
                                "the refinement to start")
            self.probe.watch(f"p{i}", "axial", *in_canvas[1], "white")
            page.mouse.down()
            page.wait_for_timeout(150)
            self.probe.poll()
            t0 = self.probe.now
            page.mouse.move(*on_page[1], steps=1)
            t_move = self.probe.wait(lambda p, t0=t0: p.last_input("mousemove", t0), 10,
                                     "the mouse move")["t"]
            t_hit = self.probe.wait(lambda p, i=i: p.hits.get(f"p{i}"), 30,
                                    "the preview segment")
            page.mouse.up()
            if t_hit >= t_move:      # else the point was white already: no figure
                self.record("preview", t_move, t_hit, refine_running=running)
            page.wait_for_timeout(300)
            self.probe.wait(lambda p: not p.dom[-1]["busy"]
                            and "refine: running" not in p.dom[-1]["status"], 120,
                            "the app to be idle")

    def view3d_mode(self) -> str:
        """How the 3D view follows edits, from its note on the page."""
        if not self.page.get_by_role("button", name="update 3D", exact=True).count():
            return "off"
        software = self.page.get_by_text("without a graphics card", exact=False).count()
        return "on request (software WebGL)" if software else "follows edits"

    def view3d(self, repeat: int) -> None:
        """The 3D view's update on request: Undo or Redo (key Ctrl+z / Ctrl+y, so the mask
        changes), then the key u; its figure is the longest frame gap in the 3 s after u."""
        undo_redo = re.compile(r"last: (undo|redo):")
        for i in range(repeat):
            self.hover("axial")
            self.probe.poll()
            t0 = self.probe.now
            self.page.keyboard.press("Control+z" if i % 2 == 0 else "Control+y")
            self.probe.wait(self.status_after(t0, undo_redo), 60, "the undo / redo")
            self.page.wait_for_timeout(300)
            self.probe.poll()
            t1 = self.probe.now
            self.page.keyboard.press("u")
            t_in = self.input_time("keydown", t1)
            self.page.wait_for_timeout(3000)
            self.probe.poll()
            gaps = [g[1] - g[0] for g in self.probe.gaps if t_in < g[1] and g[0] < t_in + 3000]
            self.record("view3d", t_in, t_in + max(gaps, default=0.0))

    def scroll(self, kind: str, repeat: int) -> None:
        self.hover("axial")
        for i in range(repeat):
            up = (i // 5) % 2 == 0          # five up, five down: stays near the mask
            self.probe.poll()
            t0 = self.probe.now
            if kind == "wheel":
                self.page.mouse.wheel(0, -100 if up else 100)
                t_in = self.input_time("wheel", t0)
            else:
                self.page.keyboard.press("ArrowUp" if up else "ArrowDown")
                t_in = self.input_time("keydown", t0)
            shown = self.probe.wait(self.frame_after(t_in), 30, f"the redraw after {kind}")
            self.record(kind, t_in, shown["t"])
            self.page.wait_for_timeout(250)

    def engine_rounds(self) -> None:
        """The engine's refinement rounds as the session logged them (``events.jsonl``,
        ``duration_s``): the kernel's word, for the issue's engine row only."""
        lines = (self.folder / "events.jsonl").read_text().splitlines()
        for line in lines:
            event = json.loads(line)
            if event.get("event") == "refine" and "duration_s" in event:
                ms = 1000.0 * float(event["duration_s"])
                self.actions.append({"kind": "engine", "t_in": None, "ms": ms})

    def stalls(self, end: float) -> None:
        """Each action's longest frame gap, from its input to the next action's input."""
        timed = [a for a in self.actions if a["t_in"] is not None]
        starts = sorted(a["t_in"] for a in timed) + [end]
        for a in timed:
            nxt = min((t for t in starts if t > a["t_in"]), default=end)
            gaps = [g for g in self.probe.gaps if g[1] > a["t_in"] and g[0] < nxt]
            worst = max(gaps, key=lambda g: g[1] - g[0], default=None)
            a["stall_ms"] = 0.0 if worst is None else worst[1] - worst[0]
            # where it began, from the action's input (ms): tells what it followed
            a["stall_at_ms"] = None if worst is None else worst[0] - a["t_in"]


def run_case(name: str, ct_dir: Path, load_ref: Callable[[], Any], args: argparse.Namespace,
             work: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from iunet_nb.io.images import check_same_grid, read_image
    from iunet_nb.model.predict import make_box

    ct = read_image(ct_dir)
    ref = load_ref()
    check_same_grid(ct, ref, f"expert mask of {name}")
    box = make_box(ct, reference=ref)
    print(f"{name}: CT {ct.shape} (z, y, x), spacing {tuple(round(s, 2) for s in ct.spacing_mm)} "
          f"mm; box z {box.lo_zyx[0]}-{box.hi_zyx[0]}, y {box.lo_zyx[1]}-{box.hi_zyx[1]}, "
          f"x {box.lo_zyx[2]}-{box.hi_zyx[2]}", flush=True)
    root = work / name / "root"
    root.mkdir(parents=True)
    nb = _notebook(ct_dir.resolve(), name, args.view3d, args.threads, model_path(work))
    (root / "bench.ipynb").write_text(json.dumps(nb, indent=1))
    server, base = start_jupyterlab(root, work / name)
    t_case = time.monotonic()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            try:
                page.goto(f"{base}/lab/tree/bench.ipynb")
                page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]',
                                       timeout=120_000)
                page.wait_for_timeout(1000)
                run = _Run(page, PageProbe(page), ct, ref, root / "sessions" / name)
                print("  open ...", flush=True)
                run.open(args.open_timeout)
                steps = args.steps.split(",")
                if "segment" in steps or "scribbles" in steps:
                    print("  box + Segment ...", flush=True)
                    run.draw_box(box)
                    run.segment(args.repeat if "segment" in steps else 1)
                if "scribbles" in steps:
                    print("  scribbles ...", flush=True)
                    run.scribbles(args.repeat, args.think)
                if "preview" in steps:
                    print("  stroke preview ...", flush=True)
                    run.preview(args.repeat)
                mode = run.view3d_mode()
                print(f"  3D view: {mode}", flush=True)
                if "view3d" in steps and mode != "off":
                    print("  3D view on request ...", flush=True)
                    run.view3d(args.repeat)
                if "scroll" in steps:
                    print("  wheel / keys ...", flush=True)
                    run.scroll("wheel", args.repeat)
                    run.scroll("key", args.repeat)
                page.wait_for_timeout(2000)   # a deferred 3D update still counts as a stall
                run.probe.poll()
                run.stalls(run.probe.now)
                if (run.folder / "events.jsonl").is_file():
                    run.engine_rounds()
                page.screenshot(path=str(work / f"{name}.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(work / f"{name}-failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        stop_server(server)
    return {"case": name, "shape_zyx": list(ct.shape), "spacing_mm": list(ct.spacing_mm),
            "box": {"lo_zyx": list(box.lo_zyx), "hi_zyx": list(box.hi_zyx)},
            "wall_s": round(time.monotonic() - t_case, 1), "view3d": mode, "actions": run.actions,
            "probe_ms_per_frame": {"mean": run.probe.cost["sum"] / max(run.probe.cost["n"], 1),
                                   "max": run.probe.cost["max"], "frames": run.probe.cost["n"]},
            "gaps_over_250_ms": [g for g in run.probe.gaps if g[1] - g[0] > 250]}


# ----------------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------------
def summarize(actions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """kind -> {n, p50_ms, p95_ms, max_ms, ...}; 'stall' is the largest gap after any action."""
    out: dict[str, dict[str, Any]] = {}
    for kind in ("open", "segment", "preview", "stroke", "refined", "engine", "view3d", "wheel",
                 "key"):
        ms = np.array([a["ms"] for a in actions if a["kind"] == kind], dtype=float)
        if not ms.size:
            continue
        row = {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
               "p95_ms": float(np.percentile(ms, 95)), "max_ms": float(ms.max())}
        if kind == "segment":
            row["busy_shown"] = sum(a["busy_shown"] for a in actions if a["kind"] == kind)
        if kind in ("stroke", "preview"):
            during = [a["ms"] for a in actions if a["kind"] == kind and a["refine_running"]]
            row["during_refine_n"] = len(during)
            row["during_refine_max_ms"] = max(during, default=None)
        out[kind] = row
    stalls = [(a.get("stall_ms", 0.0), a["kind"]) for a in actions
              if a["kind"] not in ("refined", "engine")]   # a stroke's window covers its refine
    if stalls:
        worst = max(stalls)
        per_kind = {k: max(s for s, kk in stalls if kk == k) for _, k in stalls}
        out["stall"] = {"n": len(stalls), "max_ms": worst[0], "after": worst[1],
                        "per_kind_max_ms": per_kind}
    return out


def _fmt(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def _cell(kind: str, s: dict[str, Any]) -> str:
    row = s.get(kind)
    if row is None:
        return "-"
    if kind == "stall":
        return f"{_fmt(row['max_ms'])} (after {row['after']})"
    if row["n"] == 1:
        text = f"{_fmt(row['p50_ms'])} (1)"
    else:
        text = f"{_fmt(row['p50_ms'])} / {_fmt(row['p95_ms'])} ({row['n']})"
    if kind == "segment":
        text += f", busy shown {row['busy_shown']}/{row['n']}"
    if kind in ("stroke", "preview") and row["during_refine_n"]:
        text += (f"; {row['during_refine_n']} while a refinement ran: max "
                 f"{_fmt(row['during_refine_max_ms'])}")
    return text


def _verdict(kind: str, row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    p50_goal, p95_goal = GOALS_MS[kind]
    value50 = row["max_ms"] if kind == "stall" else row["p50_ms"]
    ok = (p50_goal is None or value50 <= p50_goal) and (
        p95_goal is None or row.get("p95_ms", 0) <= p95_goal)
    if kind == "segment":
        ok = ok and row["busy_shown"] == row["n"]
    return "meets" if ok else "MISSES"


def print_table(results: list[dict[str, Any]]) -> None:
    names = [r["case"] for r in results]
    print()
    print("| figure | goal | " + " | ".join(f"{n}: p50 / p95 (n)" for n in names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    for kind, (label, goal) in LABELS.items():
        cells = [f"{_cell(kind, r['summary'])} {_verdict(kind, r['summary'].get(kind))}"
                 for r in results]
        print(f"| {label} | {goal} | " + " | ".join(cells) + " |")


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="ircadb_1.7,pancreas_0002",
                    help="comma-separated: ircadb_1.7, pancreas_0002")
    ap.add_argument("--organ", default="spleen",
                    help="3D-IRCADb 1.7's expert mask for the box and the strokes")
    ap.add_argument("--repeat", type=int, default=10, help="actions per repeated figure")
    ap.add_argument("--view3d", default="auto", choices=("auto", "niivue", "none"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the kernel")
    ap.add_argument("--think", type=float, default=3.0,
                    help="pause after each refined mask, s (the reader's think time)")
    ap.add_argument("--steps", default="segment,scribbles,preview,view3d,scroll",
                    help="what to measure after opening (comma-separated; scribbles need a "
                         "Segment first, which is then done once when segment is left out)")
    ap.add_argument("--open-timeout", type=float, default=600.0)
    ap.add_argument("--out", default="", help="write every figure to this JSON file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (screenshots)")
    args = ap.parse_args()
    reason = skip_reason("jupyterlab")
    if reason:
        print(f"cannot run: {reason}")
        return 1
    cases = _cases(args.organ)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in cases]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {list(cases)}")
        return 2
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; "
          f"load average {_load_average()}; kernel torch threads {args.threads}; "
          f"3D view {args.view3d}; {args.repeat} actions per figure", flush=True)
    work = Path(tempfile.mkdtemp(prefix="iunet-bench-browser-"))
    results = []
    load_before = _load_average()
    try:
        for name in names:
            ct_dir, load_ref, what = cases[name]
            if not ct_dir.is_dir():
                print(f"{name}: skipped, no CT at {ct_dir} (../shared/data is not here)")
                continue
            res = run_case(name, ct_dir, load_ref, args, work)
            res["reference"] = what
            res["summary"] = summarize(res["actions"])
            res["load_average_after"] = _load_average()
            cost = res["probe_ms_per_frame"]
            print(f"  done in {res['wall_s']:.0f} s; load average {res['load_average_after']}; "
                  f"the page probe took {cost['mean']:.1f} ms a frame (max {cost['max']:.0f})",
                  flush=True)
            results.append(res)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not results:
        print("no case ran")
        return 0
    print_table(results)
    print(f"load average before / after: {load_before} / {_load_average()}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "machine": {"machine": platform.machine(), "cores": os.cpu_count(),
                        "load_average_before": load_before,
                        "load_average_after": _load_average()},
            "args": vars(args), "goals_ms": GOALS_MS, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
