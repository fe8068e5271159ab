"""Tests of iunet_nb.model.losses against numbers computed by hand (plain Python / NumPy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iunet_nb.errors import InputError
from iunet_nb.model.losses import (
    interactive_loss,
    one_hot,
    scribble_cross_entropy,
    soft_dice_loss,
    tanimoto_ce_loss,
)

# One item, two classes, four voxels (spatial shape (4,)).
P1 = [0.9, 0.2, 0.7, 0.1]
T1 = [1.0, 0.0, 1.0, 0.0]


def _pair(p1=P1, t1=T1):
    p = torch.tensor([[[1 - v for v in p1], p1]], dtype=torch.float64)
    t = torch.tensor([[[1 - v for v in t1], t1]], dtype=torch.float64)
    return p, t


def test_soft_dice_hand_computed():
    p, t = _pair()
    # class 1: 2*(0.9+0.7) / (1.9 + 2) ; class 0: 2*(0.8+0.9) / (2.1 + 2)
    expected = -(3.2 / 3.9 + 3.4 / 4.1) / 2
    assert float(soft_dice_loss(p, t, eps=0.0)) == pytest.approx(expected, rel=1e-12)
    assert float(soft_dice_loss(p, t)) == pytest.approx(expected, abs=1e-6)


def test_soft_dice_per_item_versus_batch():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=(2, 6))
    t1 = (rng.uniform(size=(2, 6)) > 0.5).astype(float)
    t1[1] = 0.0
    t1[1, 0] = 1.0  # item 1: one foreground voxel
    p = np.stack([1 - p1, p1], axis=1)  # (N=2, K=2, 6)
    t = np.stack([1 - t1, t1], axis=1)

    def dice(pp, tt):
        return -2 * float(np.sum(pp * tt)) / (float(np.sum(pp)) + float(np.sum(tt)))

    per_item = np.mean([dice(p[n, k], t[n, k]) for n in range(2) for k in range(2)])
    batch = np.mean([dice(p[:, k], t[:, k]) for k in range(2)])
    assert abs(per_item - batch) > 1e-3  # the two conventions really differ here
    pt, tt = torch.from_numpy(p), torch.from_numpy(t)
    assert float(soft_dice_loss(pt, tt, eps=0.0)) == pytest.approx(per_item, rel=1e-12)
    assert float(soft_dice_loss(pt, tt, eps=0.0, batch_dice=True)) == pytest.approx(batch,
                                                                                  rel=1e-12)


def test_soft_dice_perfect_prediction_is_minus_one_even_with_empty_class():
    t = one_hot(torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]]), 2)  # item 1: no foreground
    assert float(soft_dice_loss(t, t)) == pytest.approx(-1.0, abs=1e-12)
    worse = 0.9 * t + 0.1 * (1 - t)
    assert float(soft_dice_loss(worse, t)) > -1.0 + 1e-3


def test_interactive_loss_hand_computed():
    p, t = _pair()
    w = torch.tensor([[3.0, 1.0, 0.0, 1.0]], dtype=torch.float64)  # (N, *spatial)
    lam = 0.5
    # class 1: weighted inter = 3*0.9*1 + 0 (w=0 at voxel 2) = 2.7; sums P=1.9, T=2
    k1 = -2 * 2.7 / (1.9 + 2) + lam * ((2 - 1.9) / 2) ** 2
    # class 0: P0 = [.1,.8,.3,.9], T0 = [0,1,0,1]; weighted inter = 1*.8 + 1*.9 = 1.7; P=2.1
    k0 = -2 * 1.7 / (2.1 + 2) + lam * ((2 - 2.1) / 2) ** 2
    assert float(interactive_loss(p, t, w, lam, eps=0.0)) == pytest.approx((k0 + k1) / 2,
                                                                          rel=1e-12)


def test_interactive_loss_reductions():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 4, 5, 6)))
    probs = torch.softmax(logits, dim=1)
    target = one_hot(torch.from_numpy(rng.integers(0, 3, size=(2, 4, 5, 6))), 3).double()
    weight = torch.from_numpy(rng.choice([0.0, 1.0, 3.0], size=(2, 4, 5, 6)))
    # w = 1 and lam = 0: exactly the soft Dice loss.
    ones = torch.ones(2, 4, 5, 6, dtype=torch.float64)
    assert float(interactive_loss(probs, target, ones, 0.0)) == pytest.approx(
        float(soft_dice_loss(probs, target)), rel=1e-12)
    # lam = 0: the weighted Dice, computed here by hand with NumPy.
    p, t, w = probs.numpy(), target.numpy(), weight.numpy()
    terms = [-(2 * np.sum(w[n] * p[n, k] * t[n, k]) + 1e-6) / (p[n, k].sum() + t[n, k].sum()
                                                              + 1e-6)
             for n in range(2) for k in range(3)]
    assert float(interactive_loss(probs, target, weight, 0.0)) == pytest.approx(
        np.mean(terms), rel=1e-10)
    # (N, K, ...) and (N, 1, ...) weights broadcast the same way as (N, ...).
    a = interactive_loss(probs, target, weight, 0.3)
    b = interactive_loss(probs, target, weight[:, None].expand(-1, 3, -1, -1, -1), 0.3)
    c = interactive_loss(probs, target, weight[:, None], 0.3)
    assert float(a) == pytest.approx(float(b), rel=1e-12) == pytest.approx(float(c), rel=1e-12)


def test_interactive_loss_volume_term_with_empty_class_is_finite():
    probs = torch.tensor([[[0.8, 0.9, 0.7], [0.2, 0.1, 0.3]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    w = torch.ones(1, 3, dtype=torch.float64)
    lam = 2.0
    k0 = -(2 * 2.4 + 1e-6) / (2.4 + 3 + 1e-6) + lam * ((3 - 2.4) / 3) ** 2
    k1 = -(0 + 1e-6) / (0.6 + 0 + 1e-6) + lam * (0.6 / 1.0) ** 2  # floor of one voxel
    assert float(interactive_loss(probs, target, w, lam)) == pytest.approx((k0 + k1) / 2,
                                                                          rel=1e-9)


def test_perfect_prediction_minimises_interactive_loss():
    t = one_hot(torch.tensor([[0, 1, 1, 0, 1]]), 2).double()
    w = torch.ones(1, 5, dtype=torch.float64)
    assert float(interactive_loss(t, t, w, lam=1.0)) == pytest.approx(-1.0, abs=1e-12)
    assert float(interactive_loss(0.8 * t + 0.1, t, w, lam=1.0)) > -1.0 + 1e-3


def _np_tanimoto_ce(logits, labels, smooth, wt, wc):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    n, k = logits.shape[:2]
    coeffs = []
    ce_terms = []
    for i in range(n):
        for c in range(k):
            t = (labels[i] == c).astype(float)
            pt = np.sum(p[i, c] * t)
            coeffs.append((pt + smooth) / (np.sum(p[i, c] ** 2) + np.sum(t ** 2) - pt + smooth))
        for idx in np.ndindex(labels[i].shape):
            ce_terms.append(-math.log(p[(i, labels[i][idx]) + idx]))
    return wt * (1 - np.mean(coeffs)) + wc * np.mean(ce_terms)


def test_tanimoto_ce_hand_computed():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 3, 3, 4))
    labels = rng.integers(0, 3, size=(2, 3, 4))
    expected = _np_tanimoto_ce(logits, labels, 1e-5, 0.6, 0.4)
    got = tanimoto_ce_loss(torch.from_numpy(logits), torch.from_numpy(labels))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    got_ch = tanimoto_ce_loss(torch.from_numpy(logits), torch.from_numpy(labels)[:, None])
    assert float(got_ch) == pytest.approx(expected, rel=1e-10)
    # Weights are used as a weighted sum: (1, 0) is the pure Tanimoto loss.
    pure = tanimoto_ce_loss(torch.from_numpy(logits), torch.from_numpy(labels), w_tanimoto=1.0,
                            w_ce=0.0)
    assert float(pure) == pytest.approx(_np_tanimoto_ce(logits, labels, 1e-5, 1.0, 0.0),
                                        rel=1e-10)


def test_tanimoto_ce_tiny_by_hand():
    # Two voxels, two classes, labels [1, 0]; logits give p1 = [0.75, 0.25] exactly.
    lg = math.log(3.0)
    logits = torch.tensor([[[0.0, lg], [lg, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 0]])
    # class 1: P=[.75,.25], T=[1,0]: PT=.75, P^2=.625, T^2=1 -> .75/(.875)
    # class 0: P=[.25,.75], T=[0,1]: same by symmetry.  CE = -ln(.75)
    tan = 0.75 / (0.625 + 1 - 0.75)
    expected = 0.6 * (1 - tan) + 0.4 * -math.log(0.75)
    assert float(tanimoto_ce_loss(logits, labels, smooth=0.0)) == pytest.approx(expected,
                                                                              rel=1e-12)


def test_tanimoto_ce_perfect_confident_prediction_is_near_zero():
    labels = torch.tensor([[[0, 1], [2, 1]]])
    logits = 50.0 * one_hot(labels, 3).double()
    assert 0.0 <= float(tanimoto_ce_loss(logits, labels)) < 1e-12


@pytest.mark.parametrize("which", ["dice", "interactive", "tanimoto"])
def test_gradients_are_finite_even_with_empty_classes(which):
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, 5, requires_grad=True)
    labels = torch.zeros(2, 3, 4, 5, dtype=torch.long)  # foreground absent everywhere
    target = one_hot(labels, 2)
    if which == "dice":
        loss = soft_dice_loss(torch.softmax(logits, 1), target)
    elif which == "interactive":
        loss = interactive_loss(torch.softmax(logits, 1), target, torch.ones(2, 3, 4, 5), 1.0)
    else:
        loss = tanimoto_ce_loss(logits, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_errors():
    p, t = _pair()
    with pytest.raises(InputError, match="same shape"):
        soft_dice_loss(p, t[:, :, :3])
    with pytest.raises(InputError, match="floating point"):
        soft_dice_loss(p, t.long())
    with pytest.raises(InputError, match=r"\(N, K, \*spatial\)"):
        soft_dice_loss(p[0], t[0])
    with pytest.raises(InputError, match="does not broadcast"):
        interactive_loss(p, t, torch.ones(1, 3), 0.1)
    with pytest.raises(InputError, match="weights must be >= 0"):
        interactive_loss(p, t, -torch.ones(1, 4), 0.1)
    with pytest.raises(InputError, match="lam must be >= 0"):
        interactive_loss(p, t, torch.ones(1, 4), -1.0)
    with pytest.raises(InputError, match=r"labels must lie in 0\.\.1"):
        tanimoto_ce_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 1, 2, 0]]))
    with pytest.raises(InputError, match="must be \\(N, \\*spatial\\)"):
        tanimoto_ce_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 1, 1]]))
    with pytest.raises(InputError, match="integer tensor"):
        one_hot(torch.zeros(3), 2)


def test_scribble_cross_entropy_averages_over_the_scribbled_voxels_only():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 5.0], [0.0, 1.0, 1.0, -5.0]]])  # (1, 2, 4 voxels)
    labels = torch.tensor([[0, 1, 0, 1]])
    scribbled = torch.tensor([[True, True, False, False]])
    # voxel 0: -log softmax(2, 0)[0]; voxel 1: -log softmax(0, 1)[1]; voxels 2-3 ignored
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert float(scribble_cross_entropy(logits, labels, scribbled)) == pytest.approx(expected)
    # the worst voxel (3) is not scribbled: it does not count
    other = logits.clone()
    other[0, :, 3] = torch.tensor([9.0, -9.0])
    assert float(scribble_cross_entropy(other, labels, scribbled)) == pytest.approx(expected)


def test_scribble_cross_entropy_without_scribbles_is_zero_and_differentiable():
    logits = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(1, 3, 4, 4, dtype=torch.long)
    loss = scribble_cross_entropy(logits, labels, torch.zeros(1, 3, 4, 4, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None
    with pytest.raises(InputError, match="scribble_cross_entropy"):
        scribble_cross_entropy(logits, labels[:, :2], torch.zeros(1, 2, 4, 4, dtype=torch.bool))
