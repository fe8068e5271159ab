"""Boundary placed on the CT's edges: the network's probability as prior, HU as evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iunet_nb.errors import ConfigError, InputError
from iunet_nb.interactive.edges import EDGE_WEIGHT, intensity_model, smooth_hu, snap_to_edges
from iunet_nb.interactive.refine import RefineConfig
from iunet_nb.interactive.session import Session
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.model.evaluate import dice
from iunet_nb.model.preprocess import PreprocessConfig


def _ball(shape, spacing, radius_mm, centre=None):
    """Distance (mm) of every voxel centre to the ball's centre, and the ball."""
    centre = np.array(centre if centre is not None else [(n - 1) / 2 for n in shape])
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre, spacing)))
    return d, d <= radius_mm


def _organ(shape=(40, 48, 48), spacing=(1.0, 1.0, 1.0), radius=12.0, inside=120.0,
           outside=-80.0, noise=10.0, shift_mm=2.5, width_mm=2.0, seed=0):
    """A ball of ``inside`` HU in ``outside`` HU with noise, and a smooth probability whose
    0.5 level lies ``shift_mm`` outside the ball (a coarse network's boundary)."""
    rng = np.random.default_rng(seed)
    d, ball = _ball(shape, spacing, radius)
    hu = np.where(ball, inside, outside) + rng.normal(0, noise, shape)
    prob = 1.0 / (1.0 + np.exp((d - radius - shift_mm) / width_mm))
    return hu.astype(np.float32), prob.astype(np.float32), ball


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 0.7)])
def test_a_displaced_boundary_moves_to_the_edge(spacing):
    hu, prob, ball = _organ(spacing=spacing)
    d, _ = _ball(hu.shape, spacing, 12.0)
    plain = prob >= 0.5
    snapped = snap_to_edges(prob, hu, spacing)
    assert dice(plain, ball) < 0.80                 # 2.5 mm out on a 12 mm ball
    assert dice(snapped, ball) > 0.90
    # what is left wrong is the partial-volume layer at the edge, nothing farther
    wrong = snapped ^ ball
    assert np.all(np.abs(d[wrong] - 12.0) <= max(spacing))
    assert snapped.sum() < plain.sum()              # it took the shell away, not more


def test_no_contrast_leaves_the_threshold_alone():
    hu, prob, _ = _organ(inside=60.0, outside=60.0)
    plain = prob >= 0.5
    snapped = snap_to_edges(prob, hu, (1.0, 1.0, 1.0))
    assert dice(snapped, plain) > 0.99


def test_a_firm_voxel_is_out_of_the_images_reach():
    hu, prob, ball = _organ(shift_mm=0.0)
    # fat inside the organ where the network is sure (p ~ 1): the image may not remove it
    d, core = _ball(hu.shape, (1, 1, 1), 4.0)
    hu[core] = -80.0
    prob[core] = 0.999
    snapped = snap_to_edges(prob, hu, (1.0, 1.0, 1.0), weight=EDGE_WEIGHT)
    assert snapped[core].all()
    # with a probability near 0.5 the same fat goes (its heart; the rim is blurred with the
    # organ, and the fat is itself part of the inside histogram)
    prob[core] = 0.55
    out = snap_to_edges(prob, hu, (1.0, 1.0, 1.0))
    assert not out[tuple(np.array(hu.shape) // 2)] and out[core].mean() < 0.6


def test_weight_zero_threshold_one_and_too_few_samples_give_the_threshold():
    hu, prob, _ = _organ()
    for kw in ({"weight": 0.0}, {"threshold": 0.7, "weight": 0.0}):
        out = snap_to_edges(prob, hu, (1, 1, 1), **kw)
        assert np.array_equal(out, prob >= kw.get("threshold", 0.5))
    assert np.array_equal(snap_to_edges(prob, hu, (1, 1, 1), threshold=1.0), prob >= 1.0)
    # a structure thinner than the 3 mm interior: no intensity model, plain threshold
    tiny = np.zeros_like(prob)
    tiny[20, 24, 24] = 0.9
    assert intensity_model(tiny >= 0.5, smooth_hu(hu, (1, 1, 1)), (1, 1, 1)) is None
    assert np.array_equal(snap_to_edges(tiny, hu, (1, 1, 1)), tiny >= 0.5)
    # outside the crop (probability 0) nothing is ever added
    assert not snap_to_edges(np.zeros_like(prob), hu, (1, 1, 1)).any()


def test_bad_input_is_refused():
    hu, prob, _ = _organ(shape=(10, 12, 12), radius=3)
    with pytest.raises(InputError, match="same 3D shape"):
        snap_to_edges(prob, hu[:-1], (1, 1, 1))
    with pytest.raises(InputError, match="spacing_mm"):
        snap_to_edges(prob, hu, (1, 0, 1))
    with pytest.raises(InputError, match="weight"):
        snap_to_edges(prob, hu, (1, 1, 1), weight=-1.0)
    with pytest.raises(InputError, match="threshold"):
        snap_to_edges(prob, hu, (1, 1, 1), threshold=0.0)
    nan_hu = hu.copy()
    nan_hu[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="HU hold 1 NaN"):
        snap_to_edges(prob, nan_hu, (1, 1, 1))
    with pytest.raises(ConfigError, match="edge_weight"):
        RefineConfig(edge_weight=float("nan"))


class _Blurry(torch.nn.Module):
    """A coarse 'network': foreground logit from the smoothed, widened bright region, so its
    boundary lies outside the organ's edge."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.ones(1, 1, 3, 3, 3) / 27.0
        smooth = torch.nn.functional.conv3d(x, k, padding=1)
        logit = 6.0 * (smooth + 0.45)
        return torch.cat([-logit, logit], dim=1)


def test_segment_snaps_a_coarse_networks_boundary():
    from iunet_nb.model.predict import make_box, segment

    spacing = (2.0, 0.8, 0.8)
    hu, _, ball = _organ(shape=(24, 64, 64), spacing=spacing, radius=10.0)
    geo = Geometry(spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    ct, ref = Volume(hu, geo), Volume(ball.astype(np.uint8), geo)
    cfg = PreprocessConfig(size_zyx=(8, 16, 16))
    box = make_box(ct, reference=ref)
    plain = segment(ct, _Blurry(), box, cfg, edge_weight=0.0)
    snapped = segment(ct, _Blurry(), box, cfg)
    assert dice(snapped.array, ball) > dice(plain.array, ball) + 0.02
    assert snapped.geometry == ct.geometry and snapped.meta["edge_weight"] == EDGE_WEIGHT


def test_session_predicts_what_segment_does():
    """One way from probability to mask: the Session's predicted mask is segment()'s
    (bundled model on the bundled sample, box from its reference)."""
    from iunet_nb.demo import load_sample
    from iunet_nb.model.checkpoint import load_bundled_model
    from iunet_nb.model.predict import make_box, segment

    ct, ref = load_sample()
    model, card = load_bundled_model("cpu")
    box = make_box(ct, reference=ref)
    snapped = segment(ct, model, box, card.preprocess, device="cpu").array
    plain = segment(ct, model, box, card.preprocess, device="cpu", edge_weight=0.0).array
    assert 0 < np.count_nonzero(snapped != plain) < 0.2 * plain.sum()
    for weight, expected in ((EDGE_WEIGHT, snapped), (0.0, plain)):
        cfg = RefineConfig(device="cpu", edge_weight=weight)
        with Session(ct, model, card, box, config=cfg) as s:
            assert np.array_equal(s.predict().array, expected)
