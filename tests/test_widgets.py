"""Headless tests of the widgets' Python side: SliceView gestures, Annotator actions, notebook.

Mouse events are simulated by calling the same handlers ipycanvas calls (canvas pixel
coordinates); expected canvas positions are worked out by hand from the geometry, not with
the view's own mapping.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from iunet_nb.errors import CheckpointError, InputError, SessionError
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.volume import Volume
from iunet_nb.model.checkpoint import save_model
from iunet_nb.model.preprocess import Box
from iunet_nb.widgets import (
    Annotator,
    SliceView,
    View3D,
    annotate_notebook,
    lab_command,
    niivue_available,
)
from iunet_nb.widgets.render import MASK_COLOR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg() -> RefineConfig:
    # box_fallback="error": these tiny ellipsoid cases are not abdomens for the pancreas detector
    return RefineConfig(device="cpu", iterations=2, box_fallback="error")


def _app(case, model, card, cfg, **kw) -> Annotator:
    ct, _ref = case
    kw.setdefault("view3d", "none")
    kw.setdefault("view_size_px", 300)
    return Annotator(ct, model=(model, card), config=cfg, **kw)


def _drag(view: SliceView, points: list[tuple[float, float]]) -> None:
    view.handle_mouse_down(*points[0])
    for p in points[1:]:
        view.handle_mouse_move(*p)
    view.handle_mouse_up(*points[-1])


# --------------------------------------------------------------------------- hand mapping
# conftest geometry: shape (24, 32, 32), spacing (z, y, x) = (2.5, 0.8, 0.7) mm, direction
# diag(1, -1, 1): z runs superior (flip rows on coronal/sagittal), y runs anterior (flip y).
# size_px=300: the longer physical side gets 300 px at zoom 1.
#   axial    rows y 32*0.8=25.6 mm, cols x 22.4 mm -> 300/25.6 px/mm; rows flipped
#   coronal  rows z 60 mm, cols x 22.4 mm          -> 5 px/mm; rows flipped
#   sagittal rows z 60 mm, cols y 25.6 mm          -> 5 px/mm; rows and cols flipped
HAND = {  # canvas (width, height) = the longer side 300 px, the other rounded to the aspect
    "axial": {"canvas": (262, 300), "rows": (32, 0.8, True), "cols": (32, 0.7, False)},
    "coronal": {"canvas": (112, 300), "rows": (24, 2.5, True), "cols": (32, 0.7, False)},
    "sagittal": {"canvas": (128, 300), "rows": (24, 2.5, True), "cols": (32, 0.8, True)},
}


def _hand_canvas(view: str, row: int, col: int) -> tuple[float, float]:
    """Canvas pixel of a voxel centre at zoom 1: fit, centre (letterbox), flip."""
    h = HAND[view]
    (nr, sr, fr), (nc, sc, fc) = h["rows"], h["cols"]
    width, height = h["canvas"]
    ppm = min(width / (nc * sc), height / (nr * sr))
    ox, oy = (width - nc * sc * ppm) / 2, (height - nr * sr * ppm) / 2
    dr = nr - 1 - row if fr else row
    dc = nc - 1 - col if fc else col
    return ox + (dc + 0.5) * sc * ppm, oy + (dr + 0.5) * sr * ppm


@pytest.mark.parametrize("view, k, row, cols, expected", [
    # a thin stroke (0.3 mm) along one row paints exactly the voxels under it
    ("coronal", 14, 10, (8, 20), lambda c: (10, 14, c)),   # (z, y=k, x)
    ("axial", 12, 5, (9, 17), lambda c: (12, 5, c)),       # (z=k, y, x)
    ("sagittal", 16, 7, (3, 11), lambda c: (7, c, 16)),    # (z, y, x=k)
])
def test_stroke_lands_on_the_voxels_under_it(ellipsoid_case, model, card, cfg, view, k, row,
                                             cols, expected):
    ct, _ = ellipsoid_case
    session = Session(ct, model, card, config=cfg)
    sv = SliceView(ct, view, session=session, size_px=300)
    assert (sv.canvas.width, sv.canvas.height) == HAND[view]["canvas"]
    got = []
    sv.on_stroke(lambda **kw: got.append(kw))
    sv.slice_index = k
    sv.tool = "fg"
    sv.brush_radius_mm = 0.3
    pts = [_hand_canvas(view, row, c) for c in np.linspace(cols[0], cols[1], 7)]
    _drag(sv, pts)
    assert len(got) == 1 and got[0]["view"] == view and got[0]["slice_index"] == k
    session.add_scribble("fg", got[0]["points"], view=view, slice_index=k,
                         radius_mm=got[0]["radius_mm"])
    painted = set(zip(*np.nonzero(session.scribbles.array)))
    assert painted == {expected(c) for c in range(cols[0], cols[1] + 1)}


def test_stroke_mapping_with_zoom_and_pan(ellipsoid_case):
    ct, _ = ellipsoid_case
    sv = SliceView(ct, "coronal", size_px=300)
    sv.zoom = 2.0                      # 10 px/mm around the slice centre (16, 12) display px
    sv.tool = "navigate"
    # voxel (z=10, x=10): display row 23-10=13; x = 56 + (10.5-16)*7, y = 150 + (13.5-12)*25
    sv.handle_mouse_down(17.5, 187.5)
    sv.handle_mouse_up(17.5, 187.5)
    assert sv.crosshair[0] == 10 and sv.crosshair[2] == 10 and sv.slice_index == 16
    _drag(sv, [(100, 100), (135, 75)])     # pan: the image follows the pointer
    sv.handle_mouse_down(17.5 + 35, 187.5 - 25)
    sv.handle_mouse_up(17.5 + 35, 187.5 - 25)
    assert (sv.crosshair[0], sv.crosshair[2]) == (10, 10)


def test_linked_crosshair_and_scrolling(ellipsoid_case, model, card, cfg):
    app = _app(ellipsoid_case, model, card, cfg)
    ax, co, sa = (app.views[k] for k in ("axial", "coronal", "sagittal"))
    x, y = _hand_canvas("axial", 5, 20)     # y=5, x=20 on axial slice 12
    ax.handle_mouse_down(x, y)
    ax.handle_mouse_up(x, y)
    assert ax.crosshair == (12, 5, 20) and co.slice_index == 5 and sa.slice_index == 20
    ax.handle_key("ArrowUp")
    assert co.crosshair[0] == 13 and ax.slider.value == 13
    ax.handle_wheel(0, 120)            # wheel down: previous slice
    ax.handle_key("PageDown", shift=True)
    assert ax.slice_index == 7 and sa.crosshair == (7, 5, 20)
    ax.slice_index = 999
    assert ax.slice_index == 23        # clipped to the volume


def test_redraw_is_one_batched_message_with_one_png(ellipsoid_case, monkeypatch):
    from ipycanvas.canvas import _CANVAS_MANAGER

    ct, _ = ellipsoid_case
    sv = SliceView(ct, "axial", size_px=300)
    sent = []
    monkeypatch.setattr(_CANVAS_MANAGER, "_send_custom",
                        lambda command, buffers=[]: sent.append((command, list(buffers))))
    sv.redraw()
    assert len(sent) == 1
    pngs = [b for b in sent[0][1] if bytes(b[:8]) == b"\x89PNG\r\n\x1a\n"]
    assert len(pngs) == 1
    sent.clear()
    sv.tool = "fg"                      # a stroke preview: one small message per move
    sv.handle_mouse_down(*_hand_canvas("axial", 5, 5))
    sv.handle_mouse_move(*_hand_canvas("axial", 5, 9))
    assert len(sent) == 2 and not any(bytes(b[:4]) == b"\x89PNG" for _, bs in sent for b in bs)


def test_scrolling_sends_one_png_and_moving_the_picture_none(ellipsoid_case, model, card,
                                                             cfg, monkeypatch):
    """Scrolling one view re-encodes only its slice: the other two views move their crosshair
    over the picture already in the browser (before: three PNGs of up to ~190 kB per scroll
    at 512 x 512); a pan or a rubber band sends no PNG; a new page gets the picture again."""
    from ipycanvas.canvas import _CANVAS_MANAGER

    app = _app(ellipsoid_case, model, card, cfg)
    ax, co, sa = (app.views[k] for k in ("axial", "coronal", "sagittal"))
    sent = []
    monkeypatch.setattr(_CANVAS_MANAGER, "_send_custom",
                        lambda command, buffers=[]: sent.append(list(buffers)))

    def pngs() -> int:
        n = sum(bytes(b[:8]) == b"\x89PNG\r\n\x1a\n" for bs in sent for b in bs)
        sent.clear()
        return n

    redraws = [v.redraw_count for v in (ax, co, sa)]
    ax.handle_key("ArrowUp")
    assert [v.redraw_count for v in (ax, co, sa)] == [n + 1 for n in redraws]
    assert pngs() == 1
    co.zoom = 2.0                        # zoom and pan: the same picture, moved
    co.center = (10.0, 5.0)
    assert pngs() == 0
    co.tool = "box"                      # a rubber band on every mouse move
    co.handle_mouse_down(*_hand_canvas("coronal", 5, 5))
    co.handle_mouse_move(*_hand_canvas("coronal", 9, 12))
    co.handle_mouse_move(*_hand_canvas("coronal", 10, 14))
    assert pngs() == 0
    sa._image._handle_frontend_event(None, {"event": "client_ready"}, [])
    assert pngs() == 1                   # a new page: its off-screen canvas is empty
    app.close()


def test_window_drag_and_presets_are_shared(ellipsoid_case, model, card, cfg):
    app = _app(ellipsoid_case, model, card, cfg)
    ax, co = app.views["axial"], app.views["coronal"]
    app.tool_buttons.value = "window"
    _drag(ax, [(100, 100), (150, 90)])   # +50 px -> width +100; up 10 px -> level +20
    assert (co.window_width, co.window_level) == (500.0, 60.0)
    assert app.preset.value == "custom" and "W 500 / L 60" in app.status.value
    app.preset.value = "bone"
    assert (ax.window_width, ax.window_level) == (1800.0, 400.0)


def test_segment_paint_and_overlay_pixels(ellipsoid_case, model, card, cfg):
    ct, _ref = ellipsoid_case
    app = _app(ellipsoid_case, model, card, cfg)
    app.tool_buttons.value = "paint"
    app.brush.value = 0.5
    ax = app.views["axial"]
    ax.slice_index = 12
    p = _hand_canvas("axial", 3, 4)
    _drag(ax, [p, p])
    assert app.session.mask.array[12, 3, 4] == 1 and app.session.mask.array.sum() == 1
    # the redraw shows it: display row of y=3 is 31-3 = 28 (rows flipped), col 4
    g = np.floor(np.clip((float(ct.array[12, 3, 4]) + 160) * 255 / 400, 0, 255) + 0.5)
    expected = [int(np.floor(g + (c - g) * 0.4 + 0.5)) for c in MASK_COLOR]
    assert ax.last_rgba[28, 4, :3].tolist() == expected
    assert "paint" in app.status.value and "ms" in app.status.value
    app.handle_key("z", ctrl=True)
    assert app.session.mask.array.sum() == 0
    app.handle_key("y", ctrl=True)
    assert app.session.mask.array.sum() == 1


def test_box_on_two_views_then_segment(ellipsoid_case, model, card, cfg):
    app = _app(ellipsoid_case, model, card, cfg)
    app.handle_key("s")                             # no box yet: a message, nothing else
    assert "box has no" in app.message.value and "Box" in app.messages[-1]
    app.tool_buttons.value = "box"
    ax, co = app.views["axial"], app.views["coronal"]
    _drag(ax, [_hand_canvas("axial", 8, 6), _hand_canvas("axial", 20, 25)])
    assert "another view for z" in app.status.value
    _drag(co, [_hand_canvas("coronal", 4, 7), _hand_canvas("coronal", 18, 24)])
    # z from coronal rows 4..18, y from axial rows 8..20, x from the coronal (latest) 7..24
    assert app.box() == Box((4, 8, 7), (19, 21, 25))
    assert ax.box_rect == (8, 7, 21, 25)
    app.handle_key("s")
    assert app.session.box == Box((4, 8, 7), (19, 21, 25))
    assert any(e["event"] == "predict" for e in app.session.events)


def test_click_outside_the_image_is_a_message(ellipsoid_case, model, card, cfg):
    app = _app(ellipsoid_case, model, card, cfg)
    app.tool_buttons.value = "fg"
    co = app.views["coronal"]
    co.zoom = 0.5                                    # the slice no longer fills the canvas
    _drag(co, [(2, 2), (5, 5)])
    assert "outside the image" in app.message.value
    assert app.session.scribble_ids == []


def test_refine_before_segmentation_keeps_the_work(ellipsoid_case, model, card, cfg):
    app = _app(ellipsoid_case, model, card, cfg)
    app.tool_buttons.value = "fg"
    ax = app.views["axial"]
    _drag(ax, [_hand_canvas("axial", 15, 10), _hand_canvas("axial", 15, 20)])
    assert app.session.scribble_ids == [1]
    app.buttons["refine"].click()
    assert "before the initial segmentation" in app.message.value
    assert app.session.scribble_ids == [1] and not app.busy


def test_refine_does_not_block_and_a_stroke_supersedes_it(ellipsoid_case, model, card):
    _ct, ref = ellipsoid_case
    slow = RefineConfig(device="cpu", iterations=400)
    app = _app(ellipsoid_case, model, card, slow, reference=ref, box_from_reference=True,
               segment_on_open=True)
    assert "segment" in app.status.value
    app.tool_buttons.value = "fg"
    ax = app.views["axial"]
    _drag(ax, [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    # not a timing test (speed is in benchmarks/): refine() hands the 400-iteration training
    # to a worker and returns while it runs, and a stroke painted meanwhile is handled at once
    future = app.refine()
    assert app.busy and not future.done()
    assert app.progress.layout.visibility == "visible"
    _drag(ax, [_hand_canvas("axial", 16, 12), _hand_canvas("axial", 16, 18)])
    assert app.session.scribble_ids == [1, 2]    # the kernel painted while the worker trained
    assert app.wait_idle(30)
    assert future.cancelled() and not app.busy
    assert "superseded" in app.status.value
    assert "refine" not in app.session.history and app.session.scribble_ids == [1, 2]


def test_refine_runs_async_and_redraws(ellipsoid_case, model, card, cfg):
    _ct, ref = ellipsoid_case
    app = _app(ellipsoid_case, model, card, cfg, reference=ref, box_from_reference=True,
               segment_on_open=True)
    app.tool_buttons.value = "fg"
    app.auto_refine = True                          # auto-refine on stroke end
    ax = app.views["axial"]
    before = ax.redraw_count
    _drag(ax, [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    assert app.wait_idle(60)
    assert app.session.history[-1] == "refine" and not app.busy
    assert "refine:" in app.status.value and ax.redraw_count >= before + 2
    assert app.messages == []


def test_save_without_folder_and_with_empty_mask(ellipsoid_case, model, card, cfg, tmp_path):
    app = _app(ellipsoid_case, model, card, cfg)
    app.handle_key("s", ctrl=True)
    assert "no session folder" in app.message.value
    app2 = _app(ellipsoid_case, model, card, cfg, folder=tmp_path, reader="R1")
    assert app2.save() is None
    assert "mask is empty" in app2.message.value
    assert (tmp_path / "R1" / "case" / "state.json").is_file()
    assert not list(tmp_path.rglob("*_mask.nii.gz"))


def test_reader_mode_save_export_and_resume(ellipsoid_case, model, card, cfg, tmp_path):
    _ct, ref = ellipsoid_case
    app = _app(ellipsoid_case, model, card, cfg, reference=ref, folder=tmp_path, reader="R2",
               box_from_reference=True, segment_on_open=True, study=True)
    assert "case time 0:0" in app.status.value and "reader R2" in app.status.value
    app.tool_buttons.value = "paint"               # the random net's mask may be empty
    _drag(app.views["axial"], [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    out = app.save()
    assert out == tmp_path / "R2" / "case" / "case_mask.nii.gz" and out.is_file()
    events = [json.loads(x) for x in (tmp_path / "R2" / "case" / "events.jsonl")
              .read_text().splitlines()]
    assert {"open", "predict", "paint", "save", "export"} <= {e["event"] for e in events}
    assert {e["reader_id"] for e in events} == {"R2"} and events[-1]["dsc"] is not None
    mask = app.session.mask.array
    app.close()  # one writer per session folder, in this process too
    again = _app(ellipsoid_case, model, card, cfg, reference=ref, folder=tmp_path, reader="R2")
    assert "resumed" in again.message.value
    np.testing.assert_array_equal(again.session.mask.array, mask)


def test_case_list_skips_a_case_that_fails_to_load(ellipsoid_case, model, card, cfg, tmp_path):
    ct, _ref = ellipsoid_case
    other = Volume(ct.array + 5.0, ct.geometry)
    app = Annotator([ct, tmp_path / "missing.nii.gz", other], model=(model, card), config=cfg,
                    folder=tmp_path, case_ids=["a", "b", "c"], view3d="none",
                    view_size_px=200)
    assert app.case_id == "a" and app.case_select.options == ("a", "b", "c")
    app.tool_buttons.value = "paint"
    ax = app.views["axial"]
    _drag(ax, [ax.transform.index_to_canvas(10, 10)] * 2)
    app.buttons["next"].click()
    assert (tmp_path / "a" / "a_mask.nii.gz").is_file()
    assert app.case_id == "c" and any("b could not be opened" in m for m in app.messages)
    assert app.session.mask.array.sum() == 0        # a fresh session for case c
    app.case_select.value = "b"                      # picking the broken case: stay on c
    assert app.case_id == "c" and "could not be opened" in app.message.value
    app.accept_and_next()                            # empty mask: saved, not exported
    assert "mask is empty" in app.message.value and app.case_id == "c"


def test_manual_method_has_no_network_tools(ellipsoid_case, model, card, cfg):
    app = _app(ellipsoid_case, model, card, cfg, method="manual")
    assert [v for _, v in app.tool_buttons.options] == ["navigate", "window", "paint", "erase"]
    assert app.buttons["segment"].layout.display == "none"
    app.handle_key("f")                               # no fg brush in the manual arm
    assert app.tool_buttons.value == "navigate"
    app.handle_key("s")
    assert not any(e["event"] == "predict" for e in app.session.events)
    app.handle_key("p")
    assert app.tool_buttons.value == "paint"


def test_constructor_errors(ellipsoid_case, model, card, cfg, tmp_path):
    ct, _ = ellipsoid_case
    with pytest.raises(InputError, match="method must be"):
        Annotator(ct, model=(model, card), method="robot")
    with pytest.raises(InputError, match="reader id"):
        Annotator(ct, model=(model, card), reader="a/b")
    with pytest.raises(CheckpointError, match="needs its ModelCard"):
        Annotator(ct, model=model)
    with pytest.raises(InputError, match="no case could be opened"):
        Annotator([tmp_path / "nope.nii.gz"], model=(model, card), view3d="none")
    with pytest.raises(InputError, match="unknown view"):
        SliceView(ct, "oblique")


def test_view3d_backends(ellipsoid_case):
    ct, ref = ellipsoid_case
    with pytest.raises(InputError, match="unknown 3D backend"):
        View3D(ct, backend="vtk")
    itk = View3D(ct, backend="itk")
    assert not itk.available and "itkwidgets" in itk.note and "niivue" in itk.note
    off = View3D(ct, backend="none")
    assert not off.available and off.children[0].value
    auto = View3D(ct, backend="auto")
    if niivue_available():
        assert auto.backend == "niivue" and auto.available
        auto.update_mask(ref, now=True)
        assert len(auto._viewer.volumes) == 2 and auto.mask_updates == 1
    else:
        assert "ipyniivue is not installed" in auto.note


# --------------------------------------------------------------------------- notebook
def test_annotate_notebook_in_repo_matches_the_generator():
    nb = json.loads((ROOT / "notebooks" / "annotate.ipynb").read_text())
    gen = annotate_notebook()
    assert [c["source"] for c in nb["cells"]] == [c["source"] for c in gen["cells"]]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code[0]["metadata"]["tags"] == ["parameters"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_annotate_notebook_code_runs(ellipsoid_case, model, card, tmp_path, monkeypatch):
    ct, ref = ellipsoid_case
    from iunet_nb.io.images import write_image, write_mask

    ct_path = write_image(ct, tmp_path / "ct.nii.gz")
    write_mask(ref, tmp_path / "ref.nii.gz")
    model_path = save_model(model, card, tmp_path / "m.pt")
    cells = ["".join(c["source"]) for c in annotate_notebook()["cells"]
             if c["cell_type"] == "code"]
    ns: dict = {}
    exec(cells[0], ns)  # noqa: S102 - the notebook's own cells
    assert ns["ct_path"] == "" and ns["segment_on_open"] is True
    ns.update(ct_path=str(ct_path), model_path=str(model_path),
              session_folder=str(tmp_path / "s"), reader_id="R9", view3d="none")
    exec(cells[1], ns)  # noqa: S102
    app = ns["app"]
    assert isinstance(app, Annotator) and app.case_id == "ct" and app.reader == "R9"
    assert (tmp_path / "s" / "R9" / "ct" / "state.json").is_file()


def test_lab_command(tmp_path, monkeypatch):
    cmd = lab_command(tmp_path, port=8890, open_browser=False)
    assert cmd[-1] == "annotate.ipynb" and "--port=8890" in cmd and "--no-browser" in cmd
    assert f"--ServerApp.root_dir={tmp_path}" in cmd
    # a relative folder is made absolute once (it used to resolve again in the server's cwd)
    monkeypatch.chdir(tmp_path)
    cmd = lab_command("labdir", token="s3cret", allow_root=True)
    assert f"--ServerApp.root_dir={tmp_path / 'labdir'}" in cmd
    assert "--IdentityProvider.token=s3cret" in cmd and "--allow-root" in cmd
    assert "--allow-root" not in lab_command("labdir", allow_root=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)              # root: added by itself
    assert "--allow-root" in lab_command("labdir")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--allow-root" not in lab_command("labdir")
    with pytest.raises(InputError, match="token"):
        lab_command("labdir", token="a b")
    with pytest.raises(InputError, match="port"):
        lab_command(tmp_path, port=70000)


def test_segment_without_a_box_shows_the_detected_box():
    from iunet_nb.model.checkpoint import load_bundled_model
    from iunet_nb.model.evaluate import dice
    from iunet_nb.synth.generator import load_sample

    ct, ref = load_sample()
    model, card = load_bundled_model()
    app = Annotator(ct, model, ref, card=card, config=RefineConfig(device="cpu"), view3d="none")
    app.segment()
    box = app.box()                         # the views now hold the detector's box
    assert box == app.session.box
    assert ref.array[box.slices].sum() > 0.75 * ref.array.sum()   # a tight box (79.7 %)
    assert dice(app.session.mask.array, ref.array) > 0.88        # measured 0.917


# --------------------------------------------------------------------------- study clock
class _FakeClock:
    """An injectable clock: the test moves time; the app's clock thread only reads it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _wait_for(pred, timeout: float = 5.0) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_study_clock_ticks_by_itself_and_stops_on_accept(ellipsoid_case, model, card, cfg,
                                                         tmp_path):
    ct, _ = ellipsoid_case
    clock = _FakeClock(1000.0)
    other = Volume(ct.array + 5.0, ct.geometry)
    app = Annotator([ct, other], model=(model, card), config=cfg, folder=tmp_path,
                    case_ids=["a", "b"], view3d="none", view_size_px=200, study=True,
                    clock=clock, tick_s=0.01)
    assert app.clock_running and "case time 0:00" in app.status.value
    clock.now += 65.4                         # nobody touches the app: the status line ticks
    assert _wait_for(lambda: "case time 1:05 " in app.status.value + " "), app.status.value
    clock.now += 3600.0
    assert _wait_for(lambda: "case time 61:05" in app.status.value), app.status.value
    app.tool_buttons.value = "paint"
    ax = app.views["axial"]
    _drag(ax, [ax.transform.index_to_canvas(10, 10)] * 2)
    app.accept_and_next()                     # case a accepted: case b's clock starts at 0:00
    assert app.case_id == "b" and app.clock_running
    assert "case time 0:00" in app.status.value and app.case_elapsed_s == 0.0
    clock.now += 7.0
    assert _wait_for(lambda: "case time 0:07" in app.status.value), app.status.value
    app.accept_and_next()                     # empty mask: not accepted, the clock goes on
    assert "mask is empty" in app.message.value and app.clock_running
    _drag(ax, [ax.transform.index_to_canvas(10, 10)] * 2)
    app.accept_and_next()                     # the last case accepted: the clock stops
    assert not app.clock_running and app._ticker is None
    frozen = app.status.value
    assert "case time 0:07 (accepted)" in frozen and app.case_elapsed_s == pytest.approx(7.0)
    assert "last case" in app.message.value
    clock.now += 100.0
    time.sleep(0.1)                           # ten tick intervals: nothing moves any more
    assert app.status.value == frozen and app.case_elapsed_s == pytest.approx(7.0)


def test_study_clock_close_and_non_study_mode(ellipsoid_case, model, card, cfg, tmp_path):
    plain = _app(ellipsoid_case, model, card, cfg)
    assert not plain.clock_running and "case time" not in plain.status.value
    clock = _FakeClock(0.0)
    app = _app(ellipsoid_case, model, card, cfg, folder=tmp_path, study=True, clock=clock,
               tick_s=0.01)
    ticker = app._ticker
    assert app.clock_running and ticker.daemon
    clock.now = 12.0
    assert _wait_for(lambda: "case time 0:12" in app.status.value)
    app.close()
    assert not app.clock_running and not ticker.is_alive()
    assert "case time 0:12 (closed)" in app.status.value
    clock.now = 99.0
    assert app.case_elapsed_s == pytest.approx(12.0)
    with pytest.raises(SessionError, match="closed"):   # the session let go of its folder
        app.session.save()
    app.close()                                         # idempotent


def test_study_clock_ticks_beside_a_refinement(ellipsoid_case, model, card, cfg):
    _ct, ref = ellipsoid_case
    app = _app(ellipsoid_case, model, card, cfg, reference=ref, box_from_reference=True,
               segment_on_open=True, study=True, tick_s=0.002)
    app.tool_buttons.value = "fg"
    _drag(app.views["axial"], [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    app.refine()
    assert app.wait_idle(60)
    # the refine worker's final status write is not overwritten by a stale tick
    assert _wait_for(lambda: "last: refine:" in app.status.value and "case time" in
                     app.status.value)
    time.sleep(0.02)                           # ten more ticks
    assert "last: refine:" in app.status.value and "running" not in app.status.value
    assert app.clock_running and app.session.history[-1] == "refine" and app.messages == []
    app.close()


@pytest.mark.parametrize("kw, match", [
    ({"tick_s": 0}, "tick_s"), ({"tick_s": -1.0}, "tick_s"), ({"tick_s": float("nan")}, "tick_s"),
    ({"tick_s": "1"}, "tick_s"), ({"tick_s": True}, "tick_s"), ({"clock": 5.0}, "clock must be"),
])
def test_study_clock_bad_arguments(ellipsoid_case, model, card, cfg, kw, match):
    with pytest.raises(InputError, match=match):
        _app(ellipsoid_case, model, card, cfg, study=True, **kw)


# --------------------------------------------------------------------------- iunet-nb app
def test_annotate_notebook_with_injected_parameters():
    nb = annotate_notebook({"study": True, "reader_id": "R1", "ct_path": "/d/ct 1.nii.gz"})
    tags = [c["metadata"].get("tags") for c in nb["cells"]]
    assert tags[1] == ["parameters"] and tags[2] == ["injected-parameters"]
    ns: dict = {}
    for c in nb["cells"][1:3]:                   # parameters, then the injected values
        exec("".join(c["source"]), ns)  # noqa: S102 - the notebook's own cells
    assert ns["study"] is True and ns["reader_id"] == "R1" and ns["ct_path"] == "/d/ct 1.nii.gz"
    assert ns["method"] == "interactive"         # not injected: the default stays
    assert "Annotator(" in "".join(nb["cells"][3]["source"])
    assert annotate_notebook({}) == annotate_notebook()
    with pytest.raises(InputError, match=r"unknown annotate-notebook parameter.*'ct'"):
        annotate_notebook({"ct": "x"})
    with pytest.raises(InputError, match="must be a str, bool, int or float"):
        annotate_notebook({"ct_path": ["a"]})
    with pytest.raises(InputError, match="must be a str, bool, int or float"):
        annotate_notebook({"view3d": float("inf")})


def test_app_command_and_parameters(tmp_path, monkeypatch):
    from iunet_nb.widgets import app_command, app_parameters

    cmd = app_command(tmp_path / "a.ipynb", port=8900, open_browser=False)
    assert cmd[1:4] == ["-m", "voila", str(tmp_path / "a.ipynb")]
    assert {"--strip_sources=True", "--port=8900", "--no-browser",
            "--Voila.ip=127.0.0.1"} <= set(cmd)
    assert "--no-browser" not in app_command("a.ipynb")
    with pytest.raises(InputError, match="port"):
        app_command("a.ipynb", port=0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ct.nii.gz").write_bytes(b"")
    p = app_parameters("ct.nii.gz", reader="R1", sessions="s", study=True)
    assert p["ct_path"] == str(tmp_path / "ct.nii.gz") and p["model_path"] == ""
    assert p["session_folder"] == str(tmp_path / "s") and p["reader_id"] == "R1"
    assert p["study"] is True and p["box_from_reference"] is False
    assert "box_from_reference" not in app_parameters()   # the sample: box from its mask
    with pytest.raises(InputError, match="the CT 'nope.nii.gz' does not exist"):
        app_parameters("nope.nii.gz")
    with pytest.raises(InputError, match="the model 'm.pt' does not exist"):
        app_parameters(model="m.pt")
    with pytest.raises(InputError, match="method must be"):
        app_parameters(method="robot")
    with pytest.raises(InputError, match="reader id"):
        app_parameters(reader="a/b")


def test_launch_app_writes_the_notebook_and_the_csp_for_voila(tmp_path, monkeypatch):
    from iunet_nb.widgets import lab

    seen: dict = {}

    def fake_run(cmd, cwd):
        seen["cmd"], seen["cwd"] = cmd, Path(cwd)
        seen["nb"] = json.loads((Path(cwd) / "annotate.ipynb").read_text())
        seen["config"] = json.loads((Path(cwd) / "voila.json").read_text())
        return 0

    monkeypatch.setattr(lab, "voila_available", lambda: True)
    monkeypatch.setattr(lab, "_run_forwarding_sigterm", fake_run)
    monkeypatch.chdir(tmp_path)
    urls: list = []
    assert lab.launch_app(reader="R3", study=True, port=8901, open_browser=False,
                          announce=urls.append) == 0
    assert seen["cmd"][3] == str(seen["cwd"] / "annotate.ipynb") and "--port=8901" in seen["cmd"]
    # a token by default: random, passed to Voila, announced in the page's address
    tokens = [c.split("=", 1)[1] for c in seen["cmd"] if c.startswith("--Voila.token=")]
    assert len(tokens) == 1 and len(tokens[0]) >= 24
    assert urls == [f"http://127.0.0.1:8901/?token={tokens[0]}"]
    injected = "".join(seen["nb"]["cells"][2]["source"])
    assert "reader_id = 'R3'" in injected and "study = True" in injected
    assert f"session_folder = {str(tmp_path / 'sessions')!r}" in injected
    csp = seen["config"]["Voila"]["tornado_settings"]["headers"]["Content-Security-Policy"]
    assert csp.startswith("default-src 'self'") and "http" not in csp
    # Voila's page-unload kernel shutdown sends no _xsrf (voila #1458): checked off
    assert seen["config"]["Voila"]["tornado_settings"]["disable_check_xsrf"] is True
    assert not seen["cwd"].exists()              # the temporary notebook is gone afterwards
    monkeypatch.setattr(lab, "voila_available", lambda: False)
    with pytest.raises(InputError, match=r'Voila is not installed.*pip install "iunet-nb\[view\]"'):
        lab.launch_app()
    monkeypatch.setattr(lab, "voila_available", lambda: True)
    lab.launch_app(port=8901, open_browser=False, announce=urls.append)
    assert urls[-1] != urls[0]                                  # a new token per server
    lab.launch_app(port=8901, open_browser=False, token="", announce=urls.append)
    assert urls[-1] == "http://127.0.0.1:8901/" and "--Voila.token=" in seen["cmd"]


def test_cli_app(tmp_path, monkeypatch, capsys):
    from iunet_nb import cli, widgets
    from iunet_nb.widgets import lab

    got: dict = {}
    monkeypatch.setattr(widgets, "launch_app", lambda ct, **kw: got.update(ct=ct, **kw) or 0)
    assert cli.main(["app", "ct.nii.gz", "--model", "m.pt", "--reader", "R1", "--port", "9000",
                     "--no-browser", "--study", "--method", "manual"]) == 0
    announce = got.pop("announce")
    assert got == {"ct": "ct.nii.gz", "model": "m.pt", "reader": "R1", "sessions": "sessions",
                   "study": True, "method": "manual", "view3d": "auto", "port": 9000,
                   "open_browser": False, "token": None}
    announce("http://127.0.0.1:9000/?token=abc")
    assert "the annotator is at http://127.0.0.1:9000/?token=abc" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setattr(lab, "voila_available", lambda: False)
    assert cli.main(["app", "--no-browser"]) == 2
    assert 'pip install "iunet-nb[view]"' in capsys.readouterr().err


def test_sigterm_reaches_the_server_process():
    """`iunet-nb app` passes a SIGTERM on to Voila (no server left behind) and restores the
    previous handler."""
    import signal
    import sys
    import threading

    from iunet_nb.widgets.lab import _run_forwarding_sigterm

    previous = signal.getsignal(signal.SIGTERM)

    def send_when_forwarding() -> None:
        t_end = time.monotonic() + 10
        while signal.getsignal(signal.SIGTERM) is previous and time.monotonic() < t_end:
            time.sleep(0.01)
        if signal.getsignal(signal.SIGTERM) is not previous:  # never SIGTERM pytest itself
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_when_forwarding, daemon=True)
    sender.start()
    t0 = time.monotonic()
    rc = _run_forwarding_sigterm([sys.executable, "-c", "import time; time.sleep(30)"], ".")
    sender.join(5)
    assert rc == -signal.SIGTERM and time.monotonic() - t0 < 10
    assert signal.getsignal(signal.SIGTERM) is previous


# --------------------------------------------------------------------------- issue 23
def test_downsample_for_the_3d_view_keeps_geometry_and_thin_structures():
    from iunet_nb.io.volume import Geometry
    from iunet_nb.widgets.view3d import downsample_factors, downsample_volume

    # 64 voxels along 460.8 mm: 7.2 mm blocks, 7 voxels of 1.0 mm and 8 of 0.9 mm
    assert downsample_factors((195, 512, 512), (1.0, 0.9, 0.9)) == (7, 8, 8)
    assert downsample_factors((195, 512, 512), (1.0, 0.9, 0.9), max_side=128) == (4, 4, 4)
    assert downsample_factors((24, 32, 32), (2.5, 0.8, 0.7)) == (1, 1, 1)
    with pytest.raises(InputError, match="max_side"):
        downsample_factors((10, 10, 10), (1, 1, 1), max_side=2)
    g = Geometry(spacing_mm=(2.0, 1.0, 0.5), origin_mm=(10.0, -5.0, 3.0),
                 direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    a = np.zeros((9, 12, 13), np.uint8)
    a[5, 7, 9] = 1                                   # one voxel: a block maximum keeps it
    small = downsample_volume(Volume(a, g), (2, 3, 4), reduce="max")
    assert small.shape == (4, 4, 3) and small.array.sum() == 1
    assert small.array[2, 2, 2] == 1                 # 5 // 2, 7 // 3, 9 // 4
    assert small.spacing_mm == (4.0, 3.0, 2.0)
    # a coarse voxel's centre is the centre of its block of fine voxels (by hand: the mean
    # of the block's fine index positions, mapped through the fine geometry)
    fine_centre = g.index_to_physical(np.array([2 * 2 + 0.5, 2 * 3 + 1.0, 2 * 4 + 1.5]))
    np.testing.assert_allclose(small.geometry.index_to_physical(np.array([2, 2, 2])),
                               fine_centre, atol=1e-9)
    ct = Volume(np.arange(9 * 12 * 13, dtype=np.int16).reshape(9, 12, 13), g)
    sampled = downsample_volume(ct, (2, 3, 4))
    assert sampled.array[1, 1, 1] == ct.array[3, 4, 6]   # the block's middle voxel


@pytest.mark.skipif(not niivue_available(), reason="ipyniivue not installed")
def test_view3d_updates_off_the_critical_path(ellipsoid_case):
    ct, ref = ellipsoid_case
    v = View3D(ct, backend="niivue", delay_s=0.3)
    assert v._viewer.opts.is_radiological_convention     # the slice views' convention
    for _ in range(3):                                   # three quick edits
        v.update_mask(ref)
    assert v.mask_updates == 0 and v.pending             # nothing sent on the spot
    deadline = time.monotonic() + 10
    while v.mask_updates == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert v.mask_updates == 1 and not v.pending         # one send for the three edits
    v.set_window(-100.0, 300.0)
    v.auto_update = False
    v.update_mask(ref)
    time.sleep(0.6)
    assert v.mask_updates == 1 and v.pending             # off: only on request
    assert v.flush() and v.mask_updates == 2
    assert (v._ct_layer.cal_min, v._ct_layer.cal_max) == (-100.0, 300.0)
    v.close()


@pytest.mark.skipif(not niivue_available(), reason="ipyniivue not installed")
def test_view3d_updates_on_request_where_the_page_draws_webgl_in_software(ellipsoid_case):
    """A page without a GPU (headless Chromium's SwiftShader) held the page 0.5-0.9 s after
    each mask update even at 64 voxels a side: there the view waits for 'update 3D'."""
    from iunet_nb.widgets.view3d import software_webgl

    ct, ref = ellipsoid_case
    assert software_webgl("ANGLE (Google, Vulkan 1.3.0 (SwiftShader Device (Subzero) "
                          "(0x0000C0DE)), SwiftShader driver)")
    assert software_webgl("llvmpipe (LLVM 15.0.6, 256 bits)")
    assert not software_webgl("ANGLE (NVIDIA, NVIDIA GeForce RTX 3060 Direct3D11 vs_5_0)")
    gpu = View3D(ct, backend="niivue", delay_s=0)
    soft = View3D(ct, backend="niivue", delay_s=0)
    forced = View3D(ct, backend="niivue", delay_s=0, auto_update=True)
    assert gpu._gl_probe in gpu.children and forced._gl_probe is None
    gpu._gl_probe.renderer = "ANGLE (NVIDIA, NVIDIA GeForce RTX 3060 Direct3D11 vs_5_0)"
    soft._gl_probe.renderer = "ANGLE (Google, Vulkan 1.3.0 (SwiftShader Device (Subzero)))"
    assert gpu.auto_update and not soft.auto_update and forced.auto_update
    assert "update 3D" in soft.note and "SwiftShader" in soft.note
    for v in (gpu, soft):
        v.update_mask(ref)
    assert gpu.mask_updates == 1                          # on its own
    assert soft.mask_updates == 0 and soft.pending        # waits for the button / key u
    assert soft.flush() and soft.mask_updates == 1
    for v in (gpu, soft, forced):
        v.close()


@pytest.mark.skipif(not niivue_available(), reason="ipyniivue not installed")
def test_annotator_mask_change_does_not_wait_for_the_3d_view(ellipsoid_case, model, card, cfg,
                                                             monkeypatch):
    app = _app(ellipsoid_case, model, card, cfg, view3d="niivue")
    sent = []
    monkeypatch.setattr(app.view3d, "_send_mask", lambda m: sent.append(m))
    app.tool_buttons.value = "paint"
    _drag(app.views["axial"], [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    assert app.session.mask.array.sum() > 0
    assert sent == [] and app.view3d.pending             # queued, not sent in the handler
    app.handle_key("u")                                  # "update the 3D view now"
    assert len(sent) == 1
    shown = sent[0]() if callable(sent[0]) else sent[0]   # read when sent, not in the handler
    assert shown.array.sum() == app.session.mask.array.sum()
    app.preset.value = "bone"                            # the 3D window follows the views
    assert app.view3d.window == (-500.0, 1300.0)
    app.close()


def test_segment_shows_busy_and_jumps_to_the_mask(ellipsoid_case, model, card, cfg):
    _ct, ref = ellipsoid_case
    app = _app(ellipsoid_case, model, card, cfg, reference=ref, box_from_reference=True)
    seen = []
    real = app.session.predict

    def predict(box):
        seen.append((app.busy, app.progress.layout.visibility, app.progress.description,
                     app.buttons["segment"].disabled))
        real(box)
        old = np.argwhere(app.session.mask.array)       # a known mask, off the box's centre
        if len(old):
            app.session.paint(0, points=old)
        block = np.zeros(app.session.mask.shape, bool)
        block[3:6, 20:23, 5:8] = True
        app.session.paint(1, points=np.argwhere(block))
    app.session.predict = predict
    for v in app.views.values():
        v.slice_index = 0
    app.segment()
    assert seen == [(True, "visible", "segmenting…", True)]
    assert not app.busy and app.progress.layout.visibility == "hidden"
    assert not app.buttons["segment"].disabled
    assert app.views["axial"].crosshair == (4, 21, 6)   # the mask's centre voxel
    assert (app.views["axial"].slice_index, app.views["coronal"].slice_index,
            app.views["sagittal"].slice_index) == (4, 21, 6)


def test_refine_shows_what_changed_for_a_moment(ellipsoid_case, model, card, cfg, monkeypatch):
    from iunet_nb.widgets import annotator as annotator_module
    from iunet_nb.widgets.render import ADDED_COLOR

    monkeypatch.setattr(annotator_module, "CHANGE_FLASH_S", 0.5)
    _ct, ref = ellipsoid_case
    app = _app(ellipsoid_case, model, card, cfg, reference=ref, box_from_reference=True,
               segment_on_open=True)
    before = app.session.mask.array.copy()
    app.tool_buttons.value = "fg"
    ax = app.views["axial"]
    _drag(ax, [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    app.refine()
    assert app.wait_idle(60)
    after = app.session.mask.array
    added = int(((after == 1) & (before == 0)).sum())
    removed = int(((after == 0) & (before == 1)).sum())
    assert added + removed > 0 and app.last_changes == (added, removed)
    assert f"+{added} / -{removed} voxels" in app.status.value
    ch = ax.changes
    assert ch is not None and int((ch == 1).sum()) == added and int((ch == 2).sum()) == removed
    z, y, x = (int(v[0]) for v in np.nonzero((ch == 1) if added else (ch == 2)))
    if added:                       # an added voxel on its slice shows in the added colour
        ax.slice_index = z
        row = 31 - y                # axial rows flipped (conftest geometry)
        assert ax.last_rgba[row, x, :3].tolist() != ax.last_rgba[0, 0, :3].tolist()
        grey_mask = ax.last_rgba[row, x, :3].astype(int)
        assert abs(int(grey_mask[0]) - ADDED_COLOR[0]) < 60 and grey_mask[2] < 100
    deadline = time.monotonic() + 10
    while ax.changes is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ax.changes is None       # gone after the flash
    app.close()


def test_keys_from_the_page_go_to_the_view_under_the_pointer(ellipsoid_case, model, card, cfg):
    from iunet_nb.widgets.keys import KEY_CATCHER_ESM

    app = _app(ellipsoid_case, model, card, cfg)
    assert "iunet-annotator" in app._dom_classes
    catcher = app.key_catcher
    assert catcher is not None and catcher in app.children
    assert catcher.root_class == "iunet-annotator"
    assert "data-lm-suppress-shortcuts" in KEY_CATCHER_ESM and "stopPropagation" in KEY_CATCHER_ESM
    co = app.views["coronal"]
    k0 = co.slice_index
    catcher._handle_custom_msg({"type": "key", "key": "ArrowUp", "shift": False, "ctrl": False,
                                "meta": False, "view": "coronal"}, [])
    assert co.slice_index == k0 + 1 and app.views["axial"].slice_index == 12
    catcher._handle_custom_msg({"type": "key", "key": "o", "view": "axial"}, [])
    assert app.tool_buttons.value == "box"
    catcher._handle_custom_msg({"type": "key", "key": "g", "view": "axial"}, [])
    assert app.tool_buttons.value == "erase"
    app.tool_buttons.value = "navigate"
    for key in ("x", "d", "0"):     # JupyterLab's cut / delete / restart keys do nothing here
        catcher._handle_custom_msg({"type": "key", "key": key, "view": "axial"}, [])
    assert app.tool_buttons.value == "navigate"
    co.zoom = 2.0
    catcher._handle_custom_msg({"type": "key", "key": "0", "view": "coronal"}, [])
    assert co.zoom == 2.0
    catcher._handle_custom_msg({"type": "key", "key": "Home", "view": "coronal"}, [])
    assert co.zoom == 1.0
    catcher._handle_custom_msg({"type": "nonsense"}, [])      # ignored, no error
    assert app.messages == []


def test_view_size_slider_width_letters_and_presets(ellipsoid_case, model, card, cfg):
    ct, _ = ellipsoid_case
    app = Annotator(ct, model=(model, card), config=cfg, view3d="none")
    ax = app.views["axial"]
    assert max(ax.canvas.width, ax.canvas.height) == 400          # the default size
    for v in app.views.values():                                   # sliders span the views
        assert v.slider.layout.width == f"{v.canvas.width}px" and v.slider.description == ""
    assert ax.letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert app.views["sagittal"].letters == {"left": "A", "right": "P", "top": "S",
                                             "bottom": "I"}
    labels = [label for label, _ in app.preset.options]
    assert len(set(labels)) == len(labels) and "abdomen W400 L40" in labels
    big = Annotator(ct, model=(model, card), config=cfg, view3d="none", view_size_px=640)
    assert max(big.views["coronal"].canvas.width, big.views["coronal"].canvas.height) == 640
    with pytest.raises(InputError, match="view_size_px"):
        Annotator(ct, model=(model, card), config=cfg, view3d="none", view_size_px=50)


def test_orientation_letters_are_drawn_on_the_canvas(ellipsoid_case, monkeypatch):
    ct, _ = ellipsoid_case
    sv = SliceView(ct, "coronal", size_px=300)
    texts = []
    monkeypatch.setattr(sv.canvas, "fill_text", lambda text, x, y, *a: texts.append((text, x, y)))
    sv.redraw()
    w_, h_ = sv.canvas.width, sv.canvas.height
    at = {t: (x, y) for t, x, y in texts}
    assert at["R"][0] < w_ / 4 and at["L"][0] > 3 * w_ / 4          # left / right edges
    assert at["S"][1] < h_ / 4 and at["I"][1] > 3 * h_ / 4          # top / bottom edges
    assert any(t.startswith("coronal ") and t.endswith("/32") for t in at)


def test_cli_lab_token_and_relative_folder(tmp_path, monkeypatch):
    from iunet_nb import cli, widgets
    from iunet_nb.widgets import lab

    got: dict = {}
    monkeypatch.setattr(widgets, "launch_lab", lambda d, **kw: got.update(d=d, **kw) or 0)
    assert cli.main(["lab", "labdir", "--port", "8899", "--no-browser", "--token", "t0k"]) == 0
    assert got == {"d": "labdir", "port": 8899, "open_browser": False, "token": "t0k"}
    monkeypatch.undo()
    calls: list = []
    monkeypatch.setattr(lab.subprocess, "call", lambda cmd, cwd: calls.append((cmd, cwd)) or 0)
    monkeypatch.chdir(tmp_path)
    assert lab.launch_lab("labdir", open_browser=False) == 0
    cmd, cwd = calls[0]
    assert Path(cwd) == tmp_path / "labdir" and (tmp_path / "labdir" / "annotate.ipynb").is_file()
    assert f"--ServerApp.root_dir={tmp_path / 'labdir'}" in cmd    # not labdir/labdir


def test_case_names_from_the_dicom_header_or_the_file_stem(tmp_path, ellipsoid_case):
    import SimpleITK as sitk

    from iunet_nb.widgets.annotator import _case_id

    ct, _ = ellipsoid_case
    img = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))

    def series(folder: Path, tags: dict) -> Path:
        folder.mkdir(parents=True)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(img.GetDepth()):
            sl = img[:, :, k]
            for tag, value in tags.items():
                sl.SetMetaData(tag, value)
            sl.SetMetaData("0008|0060", "CT")
            writer.SetFileName(str(folder / f"{k:03d}.dcm"))
            writer.Execute(sl)
        return folder

    a = series(tmp_path / "1.7" / "PATIENT_DICOM", {"0010|0010": "liver_07^patient"})
    b = series(tmp_path / "P2" / "dicom", {"0010|0020": "PANCREAS_0002",
                                           "0008|103e": "Pancreas"})
    c = series(tmp_path / "case9" / "dicom", {"0010|0020": "anon 9",
                                              "0008|103e": "portal venous"})
    assert _case_id(a) == "liver_07_patient"          # PatientName when there is no ID
    assert _case_id(b) == "PANCREAS_0002"             # the description repeats the ID
    assert _case_id(c) == "anon_9_portal_venous"
    empty = tmp_path / "x" / "PATIENT_DICOM"
    empty.mkdir(parents=True)
    assert _case_id(empty) == "x"                     # a generic folder name: its parent's
    assert _case_id(tmp_path / "ct_42.nii.gz") == "ct_42"


def test_a_reload_resumes_the_case_once_the_old_kernel_lets_go(ellipsoid_case, model, card, cfg,
                                                               tmp_path):
    """Voila: a reloaded page's new kernel finds the case folder still locked by the old
    kernel, which is shutting down; it waits and resumes the same folder."""
    import multiprocessing as mp

    from iunet_nb.interactive.locking import FolderLock

    first = _app(ellipsoid_case, model, card, cfg, folder=tmp_path)
    first.tool_buttons.value = "paint"
    _drag(first.views["axial"], [_hand_canvas("axial", 15, 12), _hand_canvas("axial", 15, 18)])
    first.save()
    painted = first.session.mask.array
    first.close()
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()

    def hold(folder: str) -> None:      # the old page's kernel: holds the lock a moment
        lock = FolderLock(Path(folder), what="session")
        ready.set()
        release.wait(30)
        lock.release()

    proc = ctx.Process(target=hold, args=(str(tmp_path / "case"),))
    proc.start()
    try:
        assert ready.wait(30)
        import threading
        threading.Timer(1.0, release.set).start()
        again = _app(ellipsoid_case, model, card, cfg, folder=tmp_path, lock_wait_s=20)
        assert again.session.folder == tmp_path / "case"               # the page's own
        np.testing.assert_array_equal(again.session.mask.array, painted)
        assert "resumed your saved work" in again.message.value
        again.close()
    finally:
        release.set()
        proc.join(30)
    # a folder held for good: a separate copy, said in a user's words (no developer API)
    proc = ctx.Process(target=hold, args=(str(tmp_path / "case"),))
    ready.clear()
    release.clear()
    proc.start()
    try:
        assert ready.wait(30)
        other = _app(ellipsoid_case, model, card, cfg, folder=tmp_path, lock_wait_s=0.5)
        assert other.session.folder == tmp_path / "case-2"
        text = other.message.value
        assert "open in another window or tab" in text and "case-2" in text
        assert "break_lock" not in text and "iunet_nb." not in text
        other.close()
    finally:
        release.set()
        proc.join(30)
