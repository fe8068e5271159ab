"""Tests of the refinement helpers that need no Session (iunet_nb.interactive.refine)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from iunet_nb.errors import ConfigError
from iunet_nb.interactive.refine import (
    RefineConfig,
    _beyond_stroke_confidence,
    _near_scribbles,
    _refine_target,
    _refine_weights,
    _stroke_direction,
    background_side,
    confidently_contradicted,
    fine_tune,
    stroke_fill,
)
from iunet_nb.model.preprocess import Box


def test_refine_target_sets_scribble_voxels_to_their_label_on_a_copy():
    mask = np.zeros((2, 3, 4), np.uint8)
    mask[0, 1, 1:3] = 1
    scribbles = np.zeros_like(mask)
    scribbles[1, 2, 3] = 1  # foreground on background
    scribbles[0, 1, 2] = 2  # background on foreground
    scribbles[0, 1, 1] = 1  # foreground on foreground: stays 1
    before = mask.copy()
    target = _refine_target(mask, scribbles)
    expected = np.zeros_like(mask)
    expected[0, 1, 1] = expected[1, 2, 3] = 1
    np.testing.assert_array_equal(target, expected)
    np.testing.assert_array_equal(mask, before)  # the input is not changed


@pytest.mark.parametrize(("labels", "direction"), [({1}, 1), ({2}, -1), ({1, 2}, 0)])
def test_stroke_direction_of_scribble_labels(labels, direction):
    assert _stroke_direction(labels) == direction


def test_refine_weights_use_the_configs_band_and_scribble_weight():
    # one scribble voxel in the middle, Euclidean distance in mm ("none", geodesic_lam=0):
    # a 1.5 mm band holds the 6 face (1 mm) and 12 edge (1.41 mm) neighbours, not the
    # 8 corners (1.73 mm) nor anything 2 mm away
    shape, centre = (5, 7, 7), (2, 3, 3)
    image = np.zeros(shape, np.float32)
    scribbles = np.zeros(shape, np.uint8)
    scribbles[centre] = 1
    cfg = RefineConfig(threshold=1.5, normalisation="none", geodesic_lam=0.0,
                       scribble_weight=5.0)
    w = _refine_weights(image, scribbles, (1.0, 1.0, 1.0), cfg)
    expected = np.ones(shape, np.float32)
    for off in itertools.product((-1, 0, 1), repeat=3):
        if 0 < sum(abs(o) for o in off) <= 2:
            expected[tuple(c + o for c, o in zip(centre, off))] = 0.0
    expected[centre] = 5.0
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w, expected)
    assert int(np.count_nonzero(w == 0)) == 18
    # threshold 0: no band at all
    w0 = _refine_weights(image, scribbles, (1.0, 1.0, 1.0),
                         RefineConfig(threshold=0.0, normalisation="none", geodesic_lam=0.0))
    assert int(np.count_nonzero(w0 == 0)) == 0 and w0[centre] == 3.0


def test_refine_config_rejects_an_unknown_normalisation():
    with pytest.raises(ConfigError, match="normalisation must be one of"):
        RefineConfig(normalisation="mean")


def test_precision_auto_is_bfloat16_only_where_the_cpu_has_it(monkeypatch):
    from iunet_nb.model import checkpoint

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert checkpoint.autocast_dtype(cpu, "auto") is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert checkpoint.autocast_dtype(cpu, "auto") is torch.bfloat16
    assert checkpoint.autocast_dtype(cpu, "float32") is None
    assert checkpoint.autocast_dtype(cuda, "auto") is None       # CUDA keeps float32
    assert checkpoint.autocast_dtype(cuda, "bfloat16") is torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of"):
        RefineConfig(precision="half")


def test_scribble_term_makes_the_network_learn_the_strokes(model):
    """Eq. 3 alone does not teach a small stroke; the scribble term does."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16)).astype(np.float32)
    scribbles = np.zeros((8, 16, 16), np.uint8)
    scribbles[4, 6:10, 8] = 1  # a foreground stroke of 4 voxels in an empty mask
    target = _refine_target(np.zeros((8, 16, 16), np.uint8), scribbles)
    weight = np.where(scribbles > 0, 3.0, 1.0).astype(np.float32)
    stroke = scribbles == 1

    def prob_at_stroke(scribble_ce: float) -> float:
        torch.manual_seed(0)
        cfg = RefineConfig(iterations=20, lr=1e-2, scribble_ce=scribble_ce)
        prob, losses, _, _ = fine_tune(copy.deepcopy(model), x, target, weight, cfg,
                                       scribbles=scribbles)
        assert len(losses) == 20
        return float(prob[stroke].mean())

    with torch.no_grad():
        before = float(torch.softmax(model(torch.from_numpy(x)[None, None]), 1)[0, 1]
                       .numpy()[stroke].mean())
    without, with_term = prob_at_stroke(0.0), prob_at_stroke(1.0)
    # eq. 3 alone: the all-background rest of the target outweighs the 4 stroke voxels and the
    # stroke's probability goes *down*; with the term it goes up (0.39 -> 0.29 / 0.50)
    assert without < before
    assert with_term > before + 0.08


def test_extra_iterations_run_until_the_new_strokes_are_taken_in(model):
    """``extra_iterations`` continue only while the new strokes are mostly predicted wrong."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16)).astype(np.float32)
    scribbles = np.zeros((8, 16, 16), np.uint8)
    scribbles[4, 6:10, 8] = 1                          # foreground, where the network says 0.39
    scribbles[1, 2:5, 2] = 2                           # background
    target = _refine_target(np.zeros((8, 16, 16), np.uint8), scribbles)
    weight = np.where(scribbles > 0, 3.0, 1.0).astype(np.float32)

    def run(agree_on, extra):
        torch.manual_seed(0)
        cfg = RefineConfig(iterations=1, lr=5e-2, extra_iterations=extra)
        return fine_tune(copy.deepcopy(model), x, target, weight, cfg, scribbles=scribbles,
                         agree_on=agree_on)

    fg = scribbles == 1
    prob, losses, _, _ = run(fg, 0)
    assert len(losses) == 1 and np.mean(prob[fg] >= 0.5) < 0.5     # one step is not enough
    prob, losses, _, _ = run(fg, 40)
    assert 1 < len(losses) < 41 and np.mean(prob[fg] >= 0.5) >= 0.5  # stopped once taken in
    # the same as plain iterations up to that step (the extra steps are ordinary steps)
    torch.manual_seed(0)
    _, plain, _, _ = fine_tune(copy.deepcopy(model), x, target, weight,
                               RefineConfig(iterations=len(losses), lr=5e-2),
                               scribbles=scribbles)
    np.testing.assert_allclose(losses, plain, rtol=1e-6)
    # strokes the network already agrees with (background): no extra step
    _, losses, _, _ = run(scribbles == 2, 40)
    assert len(losses) == 1
    with pytest.raises(ConfigError, match="extra_iterations"):
        RefineConfig(extra_iterations=-1)


def test_refine_config_scribble_ce_must_be_a_non_negative_number():
    assert RefineConfig().scribble_ce > 0
    assert RefineConfig(scribble_ce=0).scribble_ce == 0.0
    for bad in (-1.0, float("nan"), "1", None):
        with pytest.raises(ConfigError, match="scribble_ce"):
            RefineConfig(scribble_ce=bad)


def test_beyond_stroke_confidence_compares_with_the_surest_and_least_sure_stroke_voxel():
    shape = (2, 3, 4)
    region = Box((0, 1, 0), (2, 3, 4))                # rows 1-2 of the image
    prior = np.array([[[0.9, 0.6, 0.2, 0.7], [0.95, 0.4, 0.1, 0.3]],
                      [[0.8, 0.55, 0.05, 0.99], [0.6, 0.65, 0.3, 0.45]]], dtype=np.float32)
    mask = (prior >= 0.5).astype(np.uint8)
    mask[1, 1, 3] = 1                                 # an earlier correction added this voxel
    mask[0, 0, 0] = 0                                 # and removed this one
    seeds = np.ravel_multi_index(np.array([[0, 1, 1], [1, 1, 1]]).T, shape)  # priors 0.6, 0.55
    bg = _beyond_stroke_confidence(prior, mask, seeds, shape, region, -1)
    sure = prior.copy()
    sure[1, 1, 3], sure[0, 0, 0] = 1.0, 0.0
    assert np.array_equal(bg, sure > 0.6)
    assert bg[1, 1, 3] and not bg[0, 0, 0]            # decided voxels count as certain
    assert bg.sum() == 6
    fg = _beyond_stroke_confidence(prior, mask, seeds, shape, region, +1)
    assert np.array_equal(fg, sure < 0.55) and fg[0, 0, 0] and fg.sum() == 7
    outside = np.ravel_multi_index((0, 0, 0), shape)  # row 0 is not in the region
    assert not _beyond_stroke_confidence(prior, mask, np.array([outside]), shape, region,
                                         -1).any()


def _two_blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A working image: two bright boxes apart in dark background; masks of both."""
    image = np.full((10, 24, 24), -0.8, np.float32)
    a = np.zeros(image.shape, bool)
    b = np.zeros(image.shape, bool)
    a[2:8, 3:10, 3:10] = True
    b[2:8, 14:21, 14:21] = True
    image[a | b] = 0.6
    image += np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    return image, a, b


def test_stroke_fill_takes_the_stroked_region_up_to_its_edges():
    image, a, b = _two_blobs()
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[5, 6, 5:8] = 1
    new = scribbles == 1
    region = stroke_fill(image, scribbles, new, (2.0, 1.0, 1.0))
    # the whole stroked box, not the other one, nothing of the background
    assert region[a].mean() > 0.95 and not region[b].any() and not region[~(a | b)].any()
    # a background stroke inside the box stops the fill short of it
    scribbles[5, 6, 3] = 2
    cut = stroke_fill(image, scribbles, new, (2.0, 1.0, 1.0))
    assert cut.sum() < region.sum() and not cut[5, 6, 3]
    # an older foreground stroke in the other box: its region is not this round's fill
    scribbles[5, 17, 16:19] = 1
    assert not stroke_fill(image, scribbles, new, (2.0, 1.0, 1.0))[b].any()
    assert not stroke_fill(image, np.zeros_like(scribbles), new, (2.0, 1.0, 1.0)).any()


def test_confidently_contradicted_needs_a_confident_network_the_other_way():
    prob = np.full((4, 4, 4), 0.02, np.float32)
    strokes = np.zeros(prob.shape, bool)
    strokes[1, 1, :] = True
    assert confidently_contradicted(prob, strokes, +1, 0.1)      # missed: fill
    assert not confidently_contradicted(prob, strokes, -1, 0.1)  # agrees: no fill
    assert not confidently_contradicted(prob, strokes, +1, 0.0)  # off
    assert not confidently_contradicted(prob, strokes, 0, 0.1)   # mixed strokes
    prob[strokes] = 0.3                                          # unsure: no fill
    assert not confidently_contradicted(prob, strokes, +1, 0.1)
    assert confidently_contradicted(1 - prob * 0.1, strokes, -1, 0.1)
    with pytest.raises(ConfigError, match="fill_below"):
        RefineConfig(fill_below=0.7)


def test_background_side_splits_the_image_between_the_stroke_kinds():
    image, a, b = _two_blobs()
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[5, 6, 5:8] = 1
    assert background_side(image, scribbles, (2.0, 1.0, 1.0)) is None   # no background stroke
    scribbles[5, 17, 16:19] = 2
    side = background_side(image, scribbles, (2.0, 1.0, 1.0))
    assert side[b].mean() > 0.95 and not side[a].any()


def test_background_side_keeps_what_the_mask_holds_away_from_the_stroke():
    image, a, b = _two_blobs()
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[5, 17, 16:19] = 2
    assert background_side(image, scribbles, (2.0, 1.0, 1.0)) is None   # nothing to keep
    side = background_side(image, scribbles, (2.0, 1.0, 1.0), keep=a)
    assert side[b].mean() > 0.95 and not side[a].any()


# ----------------------------------------------------------------------------- refine_step
def _round_inputs(case, model, card, config):
    """A refine round's inputs built by hand: the untrained network's mask, one foreground
    stroke of reference voxels the mask misses."""
    from iunet_nb.interactive.refine import RefineInput, network_output
    from iunet_nb.model.predict import make_box
    from iunet_nb.model.preprocess import crop_mask, preprocess_image

    ct, ref = case
    x, record = preprocess_image(ct, make_box(ct, reference=ref), card.preprocess)
    with torch.no_grad():
        prob = torch.softmax(model(torch.from_numpy(x)[None, None]), dim=1)[0, 1].numpy()
    hu = ct.array[record.crop.slices]
    start = network_output(prob, record, hu, ct.spacing_mm, config)
    full = np.zeros(ct.shape, np.uint8)
    full[record.crop.slices] = start.mask
    missed = np.argwhere((ref.array > 0) & (full == 0))
    zyx = missed[missed[:, 0] == np.median(missed[:, 0]).astype(int)][:12]
    assert len(zyx) > 0
    w = np.rint(record.original_to_working_index(zyx)).astype(np.int64)
    scribbles = np.zeros(record.size_zyx, np.uint8)
    scribbles[tuple(w.T)] = 1
    inp = RefineInput(
        image=x, record=record, ct_shape=ct.shape, ct_spacing_mm=ct.spacing_mm,
        working_spacing_mm=record.working_geometry(ct.geometry).spacing_mm, hu=hu,
        smoothed_hu=None, mask=start.mask.copy(),
        mask_working=(crop_mask(full, record) >= 0.5).astype(np.uint8),
        scribbles=scribbles, new_strokes=scribbles.astype(bool),
        new_idx=np.ravel_multi_index(tuple(zyx.T), ct.shape), direction=1,
        previous=start)
    return inp, start


def test_refine_step_is_a_function_of_its_inputs(ellipsoid_case, model, card):
    import dataclasses

    from iunet_nb.interactive.refine import refine_step

    # the untrained network's mask is empty; 20 steps at 1e-2 make it claim the stroke's
    # surroundings, of which local_mm keeps the nearest
    config = RefineConfig(local_mm=10.0, iterations=20, lr=1e-2)
    inp, start = _round_inputs(ellipsoid_case, model, card, config)
    frozen = {k: np.copy(v) for k, v in vars(inp).items() if isinstance(v, np.ndarray)}
    a = refine_step(copy.deepcopy(model), inp, config, seed=3)
    for k, v in frozen.items():  # nothing it was given changes
        np.testing.assert_array_equal(getattr(inp, k), v, err_msg=k)
    # the start network's output, when given, only saves its restoration
    b = refine_step(copy.deepcopy(model), dataclasses.replace(inp, start=start), config, seed=3)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.output.prob, b.output.prob)
    assert a.losses == b.losses and len(a.losses) == config.iterations
    # a foreground stroke only adds, and only within local_mm of itself
    changed = a.mask != inp.mask
    assert changed.any() and np.all(a.mask[changed] == 1)
    assert a.n_reverted > 0 and np.count_nonzero(changed) + a.n_reverted == np.count_nonzero(
        a.output.mask != inp.mask)
    near = _near_scribbles(inp.ct_shape, inp.ct_spacing_mm, inp.new_idx, inp.record.crop, 10.0)
    assert not np.any(changed & ~near)


def test_refine_step_stops_when_asked(ellipsoid_case, model, card):
    from iunet_nb.interactive.refine import refine_step

    config = RefineConfig()
    inp, _ = _round_inputs(ellipsoid_case, model, card, config)
    calls = []
    assert refine_step(copy.deepcopy(model), inp, config, seed=0,
                       should_stop=lambda: calls.append(1) or len(calls) > 2) is None
    assert len(calls) == 3
