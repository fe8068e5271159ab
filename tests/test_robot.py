"""Tests of the simulated annotator: error regions, medial axis, strokes, rounds, CLI."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import ndimage

from iunet_nb.errors import ConfigError, GeometryError, InputError
from iunet_nb.interactive.robot import (
    RobotConfig,
    add_cli,
    find_largest_error,
    medial_axis_2d,
    plan_stroke,
    run_robot,
    summarize_rounds,
)
from iunet_nb.interactive.session import RefineConfig, Session, stroke_to_voxels
from iunet_nb.io.images import write_image, write_mask
from iunet_nb.io.volume import Volume
from iunet_nb.model.checkpoint import save_model
from iunet_nb.model.evaluate import dice, hausdorff95, surface_dice
from iunet_nb.model.preprocess import Box


def _session(ct, model, card, ref, **kw) -> Session:
    return Session(ct, model, card, Box.from_mask(ref.array),
                   config=RefineConfig(device="cpu", iterations=2), **kw)


# ------------------------------------------------------------------------------ pure functions
def test_largest_error_picks_the_bigger_component_and_its_largest_slice():
    shape, spacing = (10, 30, 30), (2.5, 0.8, 0.7)
    ref = np.zeros(shape, np.uint8)
    mask = np.zeros(shape, np.uint8)
    ref[2:5, 5:15, 5:9] = 1          # missed: 3 x 10 x 4 = 120 voxels
    ref[3, 5:15, 9:13] = 1           # plus 40 voxels on z = 3 -> 160 voxels
    mask[6:8, 20:25, 20:25] = 1      # leak: 50 voxels (smaller)
    error, region, view, k = find_largest_error(mask, ref, spacing)
    assert error == "fn" and region.sum() == 160 and np.array_equal(region, ref.astype(bool))
    # axial area at z=3: 10 * 8 * 0.8 * 0.7 = 44.8 mm^2; coronal (z, x) max at any y: 3 * 4 *
    # 2.5 * 0.7 + 4 * 2.5 * 0.7 = 28 mm^2; sagittal (z, y) at x in 5..8: 3 * 10 * 2.5 * 0.8 = 60
    assert (view, k) == ("sagittal", 5)
    error, region, view, k = find_largest_error(mask, ref, spacing, views=("axial",))
    assert (view, k) == ("axial", 3)
    # the leak wins once the miss is fixed
    error, region, _, _ = find_largest_error(mask | ref, ref, spacing)
    assert error == "fp" and region.sum() == 50
    assert find_largest_error(ref, ref, spacing) is None
    with pytest.raises(InputError, match="shape"):
        find_largest_error(mask[:5], ref, spacing)


def test_fit_brush_aims_at_error_a_ball_fits_in_not_at_a_thin_shell():
    shape, spacing = (20, 40, 40), (1.0, 1.0, 1.0)
    ref = np.zeros(shape, np.uint8)
    ref[4:16, 8:32, 8:32] = 1
    mask = ref.copy()
    mask[3:17, 7:33, 7:33] = 1                         # a 1 mm shell all around: 2 408 voxels
    mask[10:16, 20:32, 20:32] = 0                      # a compact 6 x 12 x 12 miss: 864 voxels
    shell = (mask == 1) & (ref == 0)
    error, region, _, _ = find_largest_error(mask, ref, spacing)
    assert error == "fp" and np.array_equal(region, shell) and shell.sum() > 864
    error, region, _, _ = find_largest_error(mask, ref, spacing, fit_radius_mm=2.0)
    miss = (ref == 1) & (mask == 0)
    # the part of the miss a 2 mm ball fits in (the opening rounds the box's edges)
    assert error == "fn" and np.all(miss[region]) and 500 < region.sum() < 864
    # only thin error left: the unopened rule
    mask[10:16, 20:32, 20:32] = 1
    error, region, _, _ = find_largest_error(mask, ref, spacing, fit_radius_mm=2.0)
    assert error == "fp" and np.array_equal(region, shell)
    # the robot passes its brush radius
    mask[10:16, 20:32, 20:32] = 0
    plain = plan_stroke(mask, ref, spacing, RobotConfig(jitter_mm=0.0), 0)
    fitted = plan_stroke(mask, ref, spacing, RobotConfig(jitter_mm=0.0, fit_brush=True), 0)
    assert plain.error == "fp" and fitted.error == "fn" and fitted.label == "fg"
    with pytest.raises(ConfigError, match="fit_brush must be true or false"):
        RobotConfig(fit_brush=1)


def test_medial_axis_of_a_rectangle_is_its_centre_line():
    region = np.zeros((9, 30), bool)
    region[2:7, 3:26] = True          # 5 rows x 23 cols
    ridge, clearance = medial_axis_2d(region, (1.0, 1.0))
    assert ridge[4, 6:23].all()       # the centre row, away from the ends
    assert not ridge[[2, 3, 5, 6], 8:21].any()  # not the rows off the centre
    assert not (ridge & ~region).any()
    assert clearance[4, 12] == pytest.approx(3.0)  # 3 pixels to the nearest outside centre
    assert clearance.max() == pytest.approx(3.0) and clearance[0, 0] == 0
    # anisotropic pixels: distances in mm
    _, clear_mm = medial_axis_2d(region, (2.0, 0.5))
    assert clear_mm[4, 12] == pytest.approx(min(3 * 2.0, 10 * 0.5))


def test_stroke_lies_inside_the_region_follows_the_axis_and_has_the_right_label():
    shape, spacing = (6, 40, 60), (3.0, 1.0, 1.0)
    ref = np.zeros(shape, np.uint8)
    ref[1:5, 10:30, 5:55] = 1
    mask = ref.copy()
    mask[1:5, 14:26, 10:50] = 0       # a 12 x 40 hole: missed organ
    cfg = RobotConfig(radius_mm=3.0, stroke_length_mm=20.0, jitter_mm=0.0, views=("axial",))
    stroke = plan_stroke(mask, ref, spacing, cfg, rng=0)
    hole = (ref == 1) & (mask == 0)
    assert stroke.label == "fg" and stroke.error == "fn" and stroke.view == "axial"
    assert stroke.radius_mm == 3.0 and not stroke.use_points
    assert hole.ravel()[stroke.voxels].all()
    z = np.unravel_index(stroke.voxels, shape)[0]
    assert np.all(z == stroke.slice_index)
    # along the hole's centre line (rows 19.5 +- 0.5) and about 20 mm long
    assert np.all(np.abs(stroke.points[:, 0] - 19.5) <= 0.5)
    assert 18.0 <= stroke.length_mm <= 20.0 + 1e-9
    assert stroke.points[:, 1].max() - stroke.points[:, 1].min() == pytest.approx(
        stroke.length_mm, abs=1.5)
    # its voxels are exactly what the Session's brush paints
    again = stroke_to_voxels(shape, spacing, stroke.points, "axial", stroke.slice_index,
                             radius_mm=3.0)
    assert np.array_equal(again, stroke.voxels)
    # a leak gets a background stroke
    leak = plan_stroke(ref, mask, spacing, cfg, rng=0)
    assert leak.label == "bg" and leak.error == "fp"
    assert ((ref == 1) & (mask == 0)).ravel()[leak.voxels].all()


def test_thin_region_shrinks_the_brush_and_jitter_stays_inside():
    shape, spacing = (3, 30, 40), (2.0, 1.0, 1.0)
    ref = np.zeros(shape, np.uint8)
    ref[1, 10:13, 5:35] = 1           # 3 voxels thick: a 4 mm brush cannot fit
    mask = np.zeros_like(ref)
    for seed in range(5):
        cfg = RobotConfig(radius_mm=4.0, jitter_mm=1.5, views=("axial",), seed=seed)
        stroke = plan_stroke(mask, ref, spacing, cfg, rng=seed)
        assert stroke.radius_mm < 1.5
        assert ref.ravel()[stroke.voxels].all() and stroke.voxels.size >= 3
    # a one-voxel line: only the exact points fit
    line = np.zeros(shape, np.uint8)
    line[1, 10, 5:35] = 1
    stroke = plan_stroke(mask, line, spacing, RobotConfig(views=("axial",), jitter_mm=0.0))
    assert line.ravel()[stroke.voxels].all() and stroke.voxels.size >= 10


def test_summarize_rounds_golden():
    s = summarize_rounds([0.5, 0.8, 0.9, 0.86])
    assert s["auc"] == pytest.approx((0.25 + 0.8 + 0.9 + 0.43) / 3)
    assert s["rounds_to_0.85"] == 2 and s["rounds_to_0.90"] == 2
    assert s["monotone"] is False and s["dsc_final"] == 0.86
    s = summarize_rounds([0.5, 1.0], rounds=3)      # stopped early: carried forward
    assert s["auc"] == pytest.approx((0.25 + 1 + 1 + 0.5) / 3) and s["monotone"] is True
    assert s["rounds_to_0.85"] == 1
    s = summarize_rounds([0.95], rounds=0)
    assert s["auc"] == 0.95 and s["rounds_to_0.90"] == 0
    assert summarize_rounds([0.1, 0.2])["rounds_to_0.85"] is None
    with pytest.raises(InputError, match="initial DSC"):
        summarize_rounds([])


@pytest.mark.parametrize("kwargs, match", [
    ({"rounds": 0}, "rounds must be an integer >= 1"),
    ({"radius_mm": 0}, "radius_mm must be a finite number > 0"),
    ({"jitter_mm": -1}, "jitter_mm"),
    ({"views": ("oblique",)}, "views"),
    ({"think_model": "gamma"}, "think_model"),
    ({"skill": "wizard"}, "skill"),
])
def test_bad_robot_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RobotConfig(**kwargs)


def test_presets_and_json_round_trip():
    novice = RobotConfig.preset("novice", rounds=3)
    assert novice.skill == "novice" and novice.radius_mm == 4.0 and novice.rounds == 3
    assert RobotConfig.from_json(novice.to_json()) == novice
    with pytest.raises(ConfigError, match="unknown skill"):
        RobotConfig.preset("wizard")


# ------------------------------------------------------------------------------ driving a Session
def test_paint_mode_first_stroke_and_monotone_dsc(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    s = _session(ct, model, card, ref)
    shifted = np.roll(ref.array, 5, axis=2)   # a leak on one side, a miss on the other
    s.paint(1, points=np.argwhere(shifted))
    start = s.mask.array
    cfg = RobotConfig(rounds=4, seed=3)
    result = run_robot(s, ref, cfg, apply=lambda sess, st: st.apply_paint(sess), predict=False)
    # independent check of the first target: the largest 26-connected error component
    first = result.strokes[0]
    best = None
    for kind, wrong in (("fn", (ref.array == 1) & (start == 0)),
                        ("fp", (start == 1) & (ref.array == 0))):
        lab, _ = ndimage.label(wrong, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        if best is None or sizes.max() > best[0]:
            best = (sizes.max(), kind, lab == 1 + np.argmax(sizes))
    assert first.error == best[1] and first.label == {"fn": "fg", "fp": "bg"}[best[1]]
    assert best[2].ravel()[first.voxels].all()
    t = result.table
    assert list(t["round"]) == [0, 1, 2, 3, 4]
    assert t["dsc"].iloc[0] == pytest.approx(dice(start, ref.array))
    # painting inside error regions only ever fixes voxels
    assert all(b > a for a, b in zip(t["dsc"], t["dsc"].iloc[1:]))
    final = s.mask.array
    assert t["dsc"].iloc[-1] == pytest.approx(dice(final, ref.array))
    assert t["hd95_mm"].iloc[-1] == pytest.approx(hausdorff95(final, ref.array, ct.spacing_mm))
    assert t["nsd_2mm"].iloc[-1] == pytest.approx(surface_dice(final, ref.array, ct.spacing_mm))
    assert result.summary["monotone"] and result.summary["rounds_done"] == 4
    assert (t["think_s"].iloc[1:] > 0).all() and t["elapsed_s"].is_monotonic_increasing


def test_refine_mode_uses_scribble_then_refine_and_is_seeded(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    runs = []
    for seed in (7, 7, 8):
        s = _session(ct, model, card, ref)
        result = run_robot(s, ref, RobotConfig(rounds=2, seed=seed, jitter_mm=1.0))
        runs.append((s, result))
    s, result = runs[0]
    actions = [e["event"] for e in s.events]
    assert actions == ["open", "predict", "scribble", "refine", "scribble", "refine"]
    first = result.strokes[0]
    scrib = s.scribbles.array.ravel()
    sid = s.scribble_ids[0]
    assert s.scribble_info(sid)["n_voxels"] == first.voxels.size
    assert np.all(scrib[first.voxels] == (1 if first.label == "fg" else 2))
    a, b = (r.table for _, r in runs[:2])
    assert np.array_equal(a["dsc"], b["dsc"]) and np.array_equal(a["think_s"], b["think_s"])
    assert all(np.array_equal(x.points, y.points) for x, y in zip(runs[0][1].strokes,
                                                                  runs[1][1].strokes))
    assert not np.array_equal(runs[0][1].strokes[0].points, runs[2][1].strokes[0].points)


def test_robot_stops_when_nothing_is_wrong(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    s = _session(ct, model, card, ref)
    s.paint(1, points=np.argwhere(ref.array))
    result = run_robot(s, ref, RobotConfig(rounds=3), apply=lambda x, st: st.apply_paint(x),
                       predict=False)
    assert len(result.table) == 1 and result.strokes == []
    assert result.summary["dsc_final"] == 1.0 and result.summary["auc"] == 1.0


def test_robot_input_errors(ellipsoid_case, model, card):
    ct, ref = ellipsoid_case
    s = _session(ct, model, card, ref)
    with pytest.raises(InputError, match="reference mask is empty"):
        run_robot(s, ref.with_array(np.zeros_like(ref.array)))
    with pytest.raises(GeometryError, match="not on the image's grid"):
        run_robot(s, Volume(ref.array[:, :, :20]))
    with pytest.raises(InputError, match="must be a Volume"):
        run_robot(s, ref.array)
    with pytest.raises(ConfigError, match="RobotConfig"):
        run_robot(s, ref, {"rounds": 2})


def test_cli_prints_the_per_round_table(ellipsoid_case, model, card, tmp_path, capsys):
    ct, ref = ellipsoid_case
    write_image(ct, tmp_path / "ct.nii.gz")
    write_mask(ref, tmp_path / "ref.nii.gz")
    save_model(model, card, tmp_path / "model.pt")
    (tmp_path / "refine.json").write_text(RefineConfig(device="cpu", iterations=1).to_json())
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["annotate-robot", str(tmp_path / "ct.nii.gz"), "--reference",
                              str(tmp_path / "ref.nii.gz"), "--rounds", "2", "--model",
                              str(tmp_path / "model.pt"), "--refine-config",
                              str(tmp_path / "refine.json"), "--csv",
                              str(tmp_path / "rounds.csv")])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["round", "dsc", "hd95_mm", "nsd_2mm"]
    assert [line.split()[0] for line in out[1:4]] == ["0", "1", "2"]
    assert out[4].startswith("AUC(DSC per round)")
    csv = (tmp_path / "rounds.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].startswith("round,dsc,hd95_mm")
    assert not args.fit_brush
    args = parser.parse_args(["annotate-robot", str(tmp_path / "ct.nii.gz"), "--reference",
                              str(tmp_path / "ref.nii.gz"), "--rounds", "1", "--model",
                              str(tmp_path / "model.pt"), "--refine-config",
                              str(tmp_path / "refine.json"), "--fit-brush"])
    assert args.fit_brush and args.func(args) == 0
