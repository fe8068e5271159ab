"""Real-browser test on a real 512 x 512 CT: NIH PANCREAS_0002 in JupyterLab, with the mouse.

The same steps as ``benchmarks/bench_browser.py`` (which measures the times; this test checks
that the steps work, not how fast): a fresh JupyterLab on a free port, ``Annotator(<DICOM
folder>, folder="sessions")`` run with Shift+Enter, the box drawn with the Box tool on the
axial and coronal views at the expert mask's bounding box, Segment, then two strokes planned
by the simulated expert and drawn with the mouse with auto-refine on. Checked: each step shows
on screen (the first picture, the mask after Segment with the busy indicator before it, the
strokes, the status line reporting each refinement), and the mask autosaved after the strokes
scores at least ``FLOOR`` against the expert mask (0.649 is the automatic figure with this box,
``benchmarks/RESULTS.md``). Needs chromium, playwright and ``../shared/data``; skipped with a
reason otherwise. About 1.5 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from _browser_helpers import saved_mask, session_state, skip_reason

from iunet_nb.model.evaluate import dice

pytestmark = [pytest.mark.browser, pytest.mark.realdata, pytest.mark.slow]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FLOOR = 0.62


def test_real_ct_opens_segments_and_refines_in_jupyterlab(tmp_path, shared_data):
    reason = skip_reason("jupyterlab")
    if reason:
        pytest.skip(reason)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_browser
    finally:
        sys.path.remove(str(BENCHMARKS))
    ct_dir, load_ref, _ = bench_browser._cases("spleen")["pancreas_0002"]
    args = argparse.Namespace(repeat=2, view3d="auto", threads=1, think=0.5,
                              steps="segment,scribbles", open_timeout=300.0)
    result = bench_browser.run_case("pancreas_0002", ct_dir, load_ref, args, tmp_path)

    by_kind: dict[str, list[dict]] = {}
    for action in result["actions"]:
        by_kind.setdefault(action["kind"], []).append(action)
    assert result["shape_zyx"] == [195, 512, 512]
    assert len(by_kind.get("open", [])) == 1
    segments = by_kind.get("segment", [])
    assert len(segments) == 2
    assert all(a["mask_px"] > 0 and a["busy_shown"] for a in segments)
    assert len(by_kind.get("stroke", [])) == 2 and len(by_kind.get("refined", [])) == 2
    assert len(by_kind.get("engine", [])) >= 2          # the session logged its refinements

    folder = tmp_path / "pancreas_0002" / "root" / "sessions" / "pancreas_0002"
    state = session_state(folder)
    assert state is not None and state["state"]["refine_round"] >= 2
    mask = saved_mask(folder, state)
    assert dice(mask, load_ref().array) >= FLOOR
