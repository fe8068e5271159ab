"""Segmentation losses: soft Dice (Milletari), the iUnet interactive loss, Tanimoto + CE.

Shapes: ``probs`` and ``target`` are float ``(N, K, *spatial)`` (``(N, K, D, H, W)`` for 3D,
but any number of spatial axes works); ``probs`` are softmax outputs over the ``K`` classes
(background included) and ``target`` is the one-hot reference of the same shape. All sums run
over the spatial axes of ONE item: every image in the batch gets its own Dice per class
(unless ``batch_dice=True``), and the loss is the mean over classes and items, as in eq. 2 of
Boers et al. 2020 (``L_total = 1/K sum_k L_k``).

Example:
    >>> t = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])            # (N=1, K=2, 2 voxels)
    >>> float(soft_dice_loss(t, t))
    -1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

__all__ = ["interactive_loss", "one_hot", "scribble_cross_entropy", "soft_dice_loss",
           "tanimoto_ce_loss"]


def _check_pair(probs: Tensor, target: Tensor, what: str) -> None:
    for name, t in (("probs", probs), ("target", target)):
        if not isinstance(t, Tensor):
            raise InputError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise InputError(f"{what}: {name} must be floating point, got {t.dtype}; "
                             "one-hot encode integer labels with iunet_nb.model.losses.one_hot")
    if probs.ndim < 3:
        raise InputError(f"{what}: expected (N, K, *spatial) tensors, got shape "
                         f"{tuple(probs.shape)}")
    if probs.shape != target.shape:
        raise InputError(f"{what}: probs {tuple(probs.shape)} and target {tuple(target.shape)} "
                         "must have the same shape (N, K, *spatial); one-hot encode the target")


def _spatial_dims(x: Tensor, batch_dice: bool) -> tuple[int, ...]:
    dims = tuple(range(2, x.ndim))
    return (0, *dims) if batch_dice else dims


def one_hot(labels: Tensor, n_classes: int) -> Tensor:
    """One-hot float32 ``(N, K, *spatial)`` from integer labels ``(N, *spatial)``.

    Raises:
        InputError: non-integer labels, or labels outside ``0 .. n_classes - 1``.
    """
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise InputError(f"labels must lie in 0..{n_classes - 1}, found "
                         f"{int(labels.min())}..{int(labels.max())}")
    oh = F.one_hot(labels.long(), n_classes)
    return oh.movedim(-1, 1).float()


def soft_dice_loss(probs: Tensor, target: Tensor, eps: float = 1e-6,
                   batch_dice: bool = False) -> Tensor:
    """Negative soft Dice (Milletari et al.; Boers et al. eqs. 1-2), mean over classes.

    Per item n and class k::

        L_nk = -(2 * sum(P * T) + eps) / (sum(P) + sum(T) + eps)

    summed over the voxels of item n, then averaged over n and k. ``eps`` keeps an empty
    class that is predicted empty at -1 (perfect) instead of 0/0. The minimum, -1, is reached
    by a perfect prediction.

    Args:
        probs: float ``(N, K, *spatial)``, softmax probabilities.
        target: float ``(N, K, *spatial)``, one-hot reference.
        eps: smoothing added to numerator and denominator.
        batch_dice: sum over the whole batch too (one Dice per class) instead of per item.

    Returns:
        scalar tensor in ``[-1, 0]``.

    Raises:
        InputError: shapes differ, not floating point, or fewer than 3 axes.
    """
    _check_pair(probs, target, "soft_dice_loss")
    dims = _spatial_dims(probs, batch_dice)
    inter = (probs * target).sum(dims)
    denom = probs.sum(dims) + target.sum(dims)
    return (-(2.0 * inter + eps) / (denom + eps)).mean()


def interactive_loss(probs: Tensor, target: Tensor, weight: Tensor, lam: float,
                     eps: float = 1e-6) -> Tensor:
    """The iUnet refinement loss (Boers et al. eq. 3), mean over classes and items.

    Per item and class k::

        L_k = -(2 * sum(w * P * T) + eps) / (sum(P) + sum(T) + eps)
              + lam * ((sum(T) - sum(P)) / max(sum(T), 1)) ** 2

    ``T`` is the updated target (the current segmentation with the scribbles burnt in) and
    ``w`` the weight map (1 by default, 3 on scribbles, 0 close to them). The volume term's
    denominator is floored at one voxel so a class that is empty in the target gives
    ``lam * sum(P)**2`` instead of infinity. With ``lam = 0`` this is a weighted soft Dice;
    with ``w = 1`` and ``lam = 0`` it equals :func:`soft_dice_loss`.

    Args:
        probs: float ``(N, K, *spatial)``, softmax probabilities.
        target: float ``(N, K, *spatial)``, one-hot updated target.
        weight: float, ``(N, *spatial)`` (the same map for every class) or anything that
            broadcasts to ``probs`` (e.g. ``(N, K, *spatial)`` or ``(N, 1, *spatial)``);
            non-negative.
        lam: weight of the volume term, >= 0.
        eps: smoothing of the Dice term, as in :func:`soft_dice_loss`.

    Returns:
        scalar tensor.

    Raises:
        InputError: bad shapes, a weight that does not broadcast, negative weights or lam.
    """
    _check_pair(probs, target, "interactive_loss")
    if not isinstance(weight, Tensor):
        raise InputError(f"interactive_loss: weight must be a torch.Tensor, got "
                         f"{type(weight).__name__}")
    if lam < 0:
        raise InputError(f"interactive_loss: lam must be >= 0, got {lam}")
    if weight.ndim == probs.ndim - 1 and weight.shape[0] == probs.shape[0]:
        weight = weight.unsqueeze(1)
    try:
        torch.broadcast_shapes(weight.shape, probs.shape)
    except RuntimeError as exc:
        raise InputError(f"interactive_loss: weight {tuple(weight.shape)} does not broadcast "
                         f"to probs {tuple(probs.shape)}; give (N, *spatial) or "
                         "(N, K, *spatial)") from exc
    if weight.numel() and float(weight.min()) < 0:
        raise InputError("interactive_loss: weights must be >= 0 "
                         f"(found {float(weight.min())})")
    dims = _spatial_dims(probs, False)
    inter = (weight * probs * target).sum(dims)
    sum_p = probs.sum(dims)
    sum_t = target.sum(dims)
    dice = -(2.0 * inter + eps) / (sum_p + sum_t + eps)
    volume = ((sum_t - sum_p) / sum_t.clamp_min(1.0)) ** 2
    return (dice + lam * volume).mean()


def scribble_cross_entropy(logits: Tensor, labels: Tensor, scribbled: Tensor) -> Tensor:
    """Cross-entropy averaged over the scribbled voxels only.

    Refinement adds this to eq. 3 (``RefineConfig.scribble_ce``): in the weighted soft Dice a
    stroke of a few working voxels weighs 3 against tens of thousands of weight-1 voxels, so
    a few Adam steps hardly change the prediction even at the stroke (measured on a real
    liver: a foreground stroke changed 311 voxels, about the stroke itself). Averaging over
    the scribbled voxels gives the strokes a fixed share of the loss whatever the organ's
    size.

    Args:
        logits: float ``(N, K, *spatial)``, raw network outputs.
        labels: integer ``(N, *spatial)``, the class of each voxel (read at scribbled voxels).
        scribbled: bool ``(N, *spatial)``, the voxels the user drew on.

    Returns:
        scalar tensor; 0 when nothing is scribbled.

    Raises:
        InputError: shapes do not match.
    """
    if logits.ndim < 3 or labels.shape != logits.shape[:1] + logits.shape[2:] \
            or scribbled.shape != labels.shape:
        raise InputError(f"scribble_cross_entropy: expected logits (N, K, *spatial) and labels "
                         f"and scribbled (N, *spatial), got {tuple(logits.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(scribbled.shape)}")
    if not bool(scribbled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.movedim(1, -1)[scribbled], labels[scribbled].long())


def tanimoto_ce_loss(logits: Tensor, target_index: Tensor, smooth: float = 1e-5,
                     w_tanimoto: float = 0.6, w_ce: float = 0.4) -> Tensor:
    """Tanimoto + cross-entropy loss of Kloenne et al. (seed 003).

    With ``P = softmax(logits)`` and ``T`` the one-hot target, per item and class::

        tanimoto_nk = (sum(P*T) + smooth) / (sum(P**2) + sum(T**2) - sum(P*T) + smooth)

    summed over the voxels of item n. The loss is::

        w_tanimoto * (1 - mean_nk tanimoto_nk) + w_ce * CE

    where CE is the voxel-mean categorical cross-entropy (``F.cross_entropy``). The paper's
    Algorithm 1 prints the weights as exponents; its text ("weighted by alpha = 0.6 and
    beta = 0.4") and the usual practice give this weighted sum. A perfect, fully confident
    prediction gives 0.

    Args:
        logits: float ``(N, K, *spatial)``, raw network outputs.
        target_index: integer ``(N, *spatial)`` or ``(N, 1, *spatial)``, labels in 0..K-1.
        smooth: smoothing added to the Tanimoto numerator and denominator.
        w_tanimoto: weight of the Tanimoto term.
        w_ce: weight of the cross-entropy term.

    Returns:
        scalar tensor, >= 0.

    Raises:
        InputError: shapes do not match, labels out of range or not integers.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.ndim < 3:
        raise InputError("tanimoto_ce_loss: logits must be a float tensor (N, K, *spatial), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(target_index, Tensor):
        raise InputError("tanimoto_ce_loss: target_index must be a torch.Tensor")
    if target_index.ndim == logits.ndim and target_index.shape[1] == 1:
        target_index = target_index[:, 0]
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target_index.shape) != expected:
        raise InputError(f"tanimoto_ce_loss: target_index {tuple(target_index.shape)} must be "
                         f"(N, *spatial) = {expected} for logits {tuple(logits.shape)}")
    k = logits.shape[1]
    target = one_hot(target_index, k).to(logits.dtype)
    probs = torch.softmax(logits, dim=1)
    dims = _spatial_dims(probs, False)
    pt = (probs * target).sum(dims)
    tanimoto = (pt + smooth) / ((probs ** 2).sum(dims) + (target ** 2).sum(dims) - pt + smooth)
    ce = F.cross_entropy(logits, target_index.long())
    return w_tanimoto * (1.0 - tanimoto.mean()) + w_ce * ce
