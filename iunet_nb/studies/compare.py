"""One harness, one robot, one table: how much does each correction method gain per round?

Methods (:data:`METHODS`; every one is driven by the same :func:`iunet_nb.interactive.robot.run_robot`
strokes through the Session's public calls, so a method differs only in what a round does
with the stroke):

* ``"paint"`` (a): the stroke is painted into the mask (``Session.paint``, the manual
  mode); no network, no training.
* ``"paper"`` (b): the paper's iUnet refinement (:data:`PAPER_CONFIG`): last layer + one
  bottleneck layer trained on eq. 3 with lambda :data:`PAPER_LAMBDA`, image-driven geodesic
  band (threshold 0.2), the output is the network's mask anywhere in the crop (scribbles
  *not* forced into it), weights kept between rounds.
* ``"full"`` (c): eq. 3 (lambda 0) with the image-driven band, changes anywhere in the crop,
  lr 1e-3, but the whole network is fine-tuned (:class:`FullFineTuneNet` exposes every
  parameter as "interactive"; the Session is unchanged).
* ``"random_walker"`` (d): the classical peer, Grady's random walker
  (:func:`random_walker_probability`, a SciPy implementation: scikit-image is not a
  dependency) on the preprocessed working grid, seeded by the scribbles and by the current
  mask away from its border and from the scribbles; what the walker changes is written
  into the session with ``Session.paint(points=...)``.
* ``"improved"`` (e): the Session's refinement with :data:`IMPROVED_CONFIG` (chosen by
  measurement, see ``benchmarks/interactive_results.md``): Euclidean band, lr 1e-3, a
  cross-entropy term on the scribbled voxels (``RefineConfig.scribble_ce``), and the
  Session keeps only the changes within :data:`IMPROVED_LOCAL_MM` of the new stroke and in
  its direction (``RefineConfig.local_mm``, ``RefineConfig.one_way``).
* ``"session_default"``: the refinement with the Session's current ``RefineConfig()``
  (since the measured settings became the defaults, the same as ``"improved"``).

:func:`compare_methods` runs every method on every case from the same initial prediction
and returns a long per-round table and a per-method summary (mean DSC per round, AUC,
rounds to DSC 0.85/0.90, whether the mean DSC never decreases).

Example:
    >>> cases = [CompareCase("p1", ct, ref)]                              # doctest: +SKIP
    >>> result = compare_methods(cases, model, card, RobotConfig(rounds=5))  # doctest: +SKIP
    >>> print(result.summary.to_markdown())                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, sparse
from scipy.sparse.linalg import cg

from ..errors import ConfigError, InputError
from ..interactive.refine import RefineConfig
from ..interactive.robot import RobotConfig, Stroke, run_robot, summarize_rounds
from ..interactive.session import Session
from ..io.volume import Volume
from ..model.checkpoint import ModelCard
from ..model.nets import EncodedFeatures, SegmentationNet
from ..model.preprocess import Box, crop_mask, preprocess_image, restore_probabilities

__all__ = [
    "IMPROVED_CONFIG",
    "IMPROVED_LOCAL_MM",
    "METHODS",
    "PAPER_CONFIG",
    "PAPER_LAMBDA",
    "CompareCase",
    "CompareResult",
    "FullFineTuneNet",
    "Method",
    "compare_methods",
    "random_walker_probability",
    "random_walker_round",
]

logger = logging.getLogger(__name__)

#: lambda of eq. 3 used for the paper's method (the paper does not give its value; 1.0 gives
#: the volume term the same weight as the Dice term at a 100 % volume error).
PAPER_LAMBDA = 1.0
#: The paper's refinement: eq. 3 with lambda, the image-driven geodesic band (GeodisTK
#: lambda 1) at threshold 0.2, scribble weight 3, last + bottleneck layers, cumulative
#: weights, Adam lr 1e-2 (the Session's former default; the paper gives none), the network's
#: mask as the output anywhere in the crop (no locality, both directions, scribbles not
#: forced). Every field that differs from ``RefineConfig()`` is set explicitly so that this
#: preset does not move when the Session's defaults do.
PAPER_CONFIG = RefineConfig(lam=PAPER_LAMBDA, threshold=0.2, scribble_weight=3.0,
                            geodesic_lam=1.0, lr=1e-2, local_mm=None, one_way=False,
                            force_scribbles=False, keep_weights_between_rounds=True,
                            scribble_ce=0.0, confidence_gate=False, edge_weight=0.0)
#: Changes of a refinement farther than this from the new stroke are discarded (mm).
IMPROVED_LOCAL_MM = 15.0
#: The measured improvement (benchmarks/interactive_results.md), now the Session's defaults:
#: the uncertain band from the Euclidean distance (``geodesic_lam=0``; with the image-driven
#: distance the band swallows most of the organ and the network drifts), a gentler Adam step
#: (lr 1e-3), changes kept only within :data:`IMPROVED_LOCAL_MM` of the new stroke and in
#: its direction (a foreground stroke only adds, a background stroke only removes),
#: scribbles forced, and a cross-entropy term on the scribbled voxels added to eq. 3 (weight
#: 1.0) so that a stroke teaches the network more than its own voxels. Spelled out so that it
#: does not move with the defaults; the Session's defaults have since added the confidence
#: gate (``RefineConfig.confidence_gate``) and the boundary placed on the CT's edges
#: (``RefineConfig.edge_weight``), which ``"session_default"`` measures.
IMPROVED_CONFIG = RefineConfig(lam=0.0, geodesic_lam=0.0, lr=1e-3, local_mm=IMPROVED_LOCAL_MM,
                               one_way=True, force_scribbles=True, scribble_ce=1.0,
                               confidence_gate=False, edge_weight=0.0)
_KINDS = ("paint", "refine", "random_walker")


@dataclass(frozen=True)
class Method:
    """One correction method of the comparison.

    Args:
        name: short name (table key).
        kind: ``"paint"``, ``"refine"`` or ``"random_walker"``.
        refine: the Session's config (all kinds: also used for the initial prediction).
        full_network: fine-tune every parameter (``kind="refine"`` only).
        description: one line for the table.
    """

    name: str
    kind: str
    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)
    full_network: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"Method.kind must be one of {list(_KINDS)}, got {self.kind!r}")
        if self.full_network and self.kind != "refine":
            raise ConfigError("full_network applies to kind='refine' only")
        if not isinstance(self.refine, RefineConfig):
            raise ConfigError(f"Method.refine must be a RefineConfig, got "
                              f"{type(self.refine).__name__}")


METHODS: dict[str, Method] = {
    "paint": Method("paint", "paint", description="(a) strokes painted into the mask, no training"),
    "paper": Method("paper", "refine", PAPER_CONFIG,
                    description=f"(b) iUnet: last + bottleneck layer, eq. 3 lambda "
                                f"{PAPER_LAMBDA}, threshold 0.2, network mask"),
    "full": Method("full", "refine",
                   RefineConfig(lr=1e-3, geodesic_lam=1.0, local_mm=None, one_way=False,
                                scribble_ce=0.0, confidence_gate=False, edge_weight=0.0),
                   full_network=True,
                   description="(c) whole network fine-tuned (lr 1e-3, image-driven band, "
                               "changes anywhere in the crop)"),
    "random_walker": Method("random_walker", "random_walker",
                            description="(d) random walker (Grady) seeded by scribbles + mask"),
    "improved": Method("improved", "refine", IMPROVED_CONFIG,
                       description="(e) Euclidean band, lr 1e-3, scribble cross-entropy, "
                                   f"one-way changes kept within {IMPROVED_LOCAL_MM:.0f} mm of "
                                   "the stroke (Session)"),
    "session_default": Method("session_default", "refine", RefineConfig(),
                              description="Session's RefineConfig() defaults as committed"),
}


@dataclass(frozen=True)
class CompareCase:
    """One case of the comparison.

    Args:
        case_id: identifier.
        ct: the CT in HU.
        reference: its reference mask (same grid).
        box: the structure's box; None: the reference's bounding box (the paper's setting).
    """

    case_id: str
    ct: Volume
    reference: Volume
    box: Box | None = None


@dataclass
class CompareResult:
    """Per-round rows of every (case, method) and the per-method summary.

    Args:
        table: long table: ``case_id``, ``method``, ``round``, ``dsc``, ``hd95_mm``,
            ``nsd_2mm``, ``apply_s`` (+ the robot's stroke columns).
        summary: one row per method: ``mean_dsc_r<k>`` for each round k, ``auc`` (of the mean
            curve), ``monotone_mean`` (mean DSC never decreases), ``monotone_cases`` (fraction
            of cases whose own curve never decreases), ``rounds_to_0.85`` / ``rounds_to_0.90``
            (of the mean curve), ``cases_ge_0.90_r5``, ``apply_s_median``, ``description``.
    """

    table: pd.DataFrame
    summary: pd.DataFrame


# ----------------------------------------------------------------------------------------------
# (c) full-network fine-tuning through the unchanged Session
# ----------------------------------------------------------------------------------------------
class FullFineTuneNet(SegmentationNet):
    """Wraps a network so that a Session refinement trains *all* of its parameters.

    ``interactive_parameters`` returns every parameter of the inner network; the "frozen
    encoder" is the identity (it caches the input), and ``decode_trainable`` runs the whole
    inner network, so ``fine_tune``'s cached path trains everything. Batch-norm running
    statistics stay frozen (the Session refines in eval mode).

    Args:
        inner: the network to wrap (used as is, not copied; the Session copies it).
    """

    def __init__(self, inner: SegmentationNet) -> None:
        super().__init__(inner.cfg)
        self.inner = inner

    def _encode(self, x: torch.Tensor) -> EncodedFeatures:
        return EncodedFeatures(skips=(), h=x)

    def _decode(self, state: EncodedFeatures) -> torch.Tensor:
        return self.inner(state.h)

    def interactive_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.inner.parameters())


# ----------------------------------------------------------------------------------------------
# (d) random walker
# ----------------------------------------------------------------------------------------------
def random_walker_probability(image: np.ndarray, seeds: np.ndarray,
                              spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), *,
                              beta: float = 130.0, tol: float = 1e-4,
                              max_iterations: int = 500) -> np.ndarray:
    """Foreground probability of Grady's random walker (2006) on a 3D image.

    Graph: 6-neighbour grid; edge weight ``exp(-beta / (10 * std(image)) * (dI)^2 / s)``
    with ``s`` the edge length in units of the smallest spacing (as scikit-image's
    ``random_walker`` scales by spacing); the probability of reaching a foreground seed
    first solves ``L_U x = -B m`` for the unseeded voxels (conjugate gradients, Jacobi
    preconditioner).

    Args:
        image: float ``(z, y, x)``.
        seeds: uint8 ``(z, y, x)``: 0 unseeded, 1 foreground, 2 background.
        spacing_mm: ``(z, y, x)`` voxel size.
        beta: edge sensitivity (scikit-image's default 130).
        tol: relative tolerance of the solver.
        max_iterations: solver iterations.

    Returns:
        float32 ``(z, y, x)`` probability in [0, 1] (1 on foreground seeds, 0 on background).

    Raises:
        InputError: shapes differ, or no foreground or no background seed.
    """
    image = np.asarray(image, dtype=np.float64)
    seeds = np.asarray(seeds)
    if image.shape != seeds.shape or image.ndim != 3:
        raise InputError(f"image {image.shape} and seeds {seeds.shape} must be the same 3D shape")
    fg, bg = seeds == 1, seeds == 2
    if not fg.any() or not bg.any():
        raise InputError("the random walker needs foreground and background seeds")
    n = image.size
    std = float(image.std()) or 1.0
    b = beta / (10.0 * std)
    smin = min(float(s) for s in spacing_mm)
    idx = np.arange(n).reshape(image.shape)
    rows, cols, vals = [], [], []
    for axis in range(3):
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[axis], sl_b[axis] = slice(None, -1), slice(1, None)
        d = image[tuple(sl_b)] - image[tuple(sl_a)]
        w = np.exp(-b * d * d / (float(spacing_mm[axis]) / smin)) + 1e-8
        rows.append(idx[tuple(sl_a)].ravel())
        cols.append(idx[tuple(sl_b)].ravel())
        vals.append(w.ravel())
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    w = sparse.coo_matrix((np.concatenate([v, v]), (np.concatenate([r, c]),
                                                    np.concatenate([c, r]))), shape=(n, n)).tocsr()
    degree = np.asarray(w.sum(axis=1)).ravel()
    lap = (sparse.diags(degree) - w).tocsr()
    seeded = (fg | bg).ravel()
    free = np.flatnonzero(~seeded)
    marked = np.flatnonzero(seeded)
    m = fg.ravel()[marked].astype(np.float64)
    out = np.zeros(n, dtype=np.float64)
    out[fg.ravel()] = 1.0
    if free.size:
        a = lap[free][:, free]
        rhs = -(lap[free][:, marked] @ m)
        precond = sparse.diags(1.0 / a.diagonal())
        x, info = cg(a, rhs, rtol=tol, maxiter=max_iterations, M=precond)
        if info > 0:
            logger.debug("random walker: CG stopped after %d iterations (tol %g)", info, tol)
        out[free] = np.clip(x, 0.0, 1.0)
    return out.reshape(image.shape).astype(np.float32)


def random_walker_round(session: Session, stroke: Stroke, *, border_mm: float = 4.0,
                        scribble_reach_mm: float = 25.0, beta: float = 130.0) -> int:
    """One round of the random-walker peer on a Session (public calls only).

    Adds the stroke as a scribble (``add_scribble``), runs :func:`random_walker_probability`
    on the session's working grid (the card's preprocessing of the box) with seeds: every
    scribble voxel with its label; the current mask's voxels farther than ``border_mm`` from
    its border (inside: foreground, outside: background), except within
    ``scribble_reach_mm`` of a scribble of the other label, where the walker decides. Only
    what the walker changes on the working grid (thresholded at 0.5, resampled back to the
    CT grid, thresholded at 0.5) is applied, so the mask keeps its CT-grid detail where
    the walker agrees; scribbles are forced to their label. Changes go through
    ``Session.paint`` with exact voxel points (undoable like any manual edit).

    Returns:
        the number of mask voxels changed.
    """
    stroke.apply_scribble(session)
    box = session.box
    if box is None:
        raise InputError("the session has no box; predict(box) first")
    x, record = preprocess_image(session.volume, box, session.card.preprocess)
    spacing = record.working_geometry(session.volume.geometry).spacing_mm
    mask_full = session.mask.array
    scrib_full = session.scribbles.array
    mask_w = crop_mask(mask_full, record) >= 0.5
    scrib_w = np.zeros(record.size_zyx, dtype=np.uint8)
    idx = np.flatnonzero(scrib_full)
    zyx = np.stack(np.unravel_index(idx, scrib_full.shape), axis=1)
    w = np.rint(record.original_to_working_index(zyx)).astype(np.int64)
    inside = np.all((w >= 0) & (w < np.asarray(record.size_zyx)), axis=1)
    labels = scrib_full.ravel()[idx]
    for label in (1, 2):
        sel = w[inside & (labels == label)]
        scrib_w[sel[:, 0], sel[:, 1], sel[:, 2]] = label
    dist_in = ndimage.distance_transform_edt(mask_w, sampling=spacing)
    dist_out = ndimage.distance_transform_edt(~mask_w, sampling=spacing)

    def near(label: int) -> np.ndarray:
        if not (scrib_w == label).any():
            return np.zeros_like(mask_w)
        return ndimage.distance_transform_edt(scrib_w != label, sampling=spacing) <= \
            scribble_reach_mm

    seeds = np.zeros(record.size_zyx, dtype=np.uint8)
    seeds[(dist_in > border_mm) & ~near(2)] = 1
    seeds[(dist_out > border_mm) & ~near(1)] = 2
    seeds[scrib_w == 1] = 1
    seeds[scrib_w == 2] = 2
    if not (seeds == 1).any() or not (seeds == 2).any():
        prob = (mask_w | (scrib_w == 1)) & (scrib_w != 2)
        prob = prob.astype(np.float32)
    else:
        prob = random_walker_probability(x, seeds, spacing, beta=beta)
    # apply only what the walker changed on the working grid, so the mask keeps its CT-grid
    # detail wherever the walker agrees with it
    walk = prob >= 0.5
    grow = restore_probabilities((walk & ~mask_w).astype(np.float32), record) >= 0.5
    shrink = restore_probabilities((~walk & mask_w).astype(np.float32), record) >= 0.5
    new = mask_full.copy()
    new[grow] = 1
    new[shrink] = 0
    new[scrib_full == 1] = 1
    new[scrib_full == 2] = 0
    added = np.argwhere((new == 1) & (mask_full == 0))
    removed = np.argwhere((new == 0) & (mask_full == 1))
    changed = 0
    if len(added):
        changed += session.paint(1, points=added)
    if len(removed):
        changed += session.paint(0, points=removed)
    return changed


# ----------------------------------------------------------------------------------------------
# The harness
# ----------------------------------------------------------------------------------------------
def _apply_for(method: Method) -> Callable[[Session, Stroke], Any] | None:
    if method.kind == "paint":
        return lambda s, st: st.apply_paint(s)
    if method.kind == "random_walker":
        return random_walker_round
    return None  # add_scribble + refine (the Session's own locality and one-way rules)


def _summary(table: pd.DataFrame, methods: Sequence[Method], rounds: int) -> pd.DataFrame:
    rows = []
    for method in methods:
        sub = table[table["method"] == method.name]
        if sub.empty:
            continue
        curves = []
        monotone = []
        for _, case in sub.groupby("case_id", sort=False):
            dsc = case.sort_values("round")["dsc"].tolist()
            dsc = (dsc + [dsc[-1]] * (rounds + 1 - len(dsc)))[:rounds + 1]
            curves.append(dsc)
            monotone.append(summarize_rounds(dsc, rounds)["monotone"])
        mean_curve = np.mean(np.array(curves), axis=0)
        s = summarize_rounds(mean_curve.tolist(), rounds)
        row: dict[str, Any] = {"method": method.name}
        row.update({f"mean_dsc_r{k}": float(v) for k, v in enumerate(mean_curve)})
        k5 = min(5, rounds)
        row.update({"auc": s["auc"], "monotone_mean": s["monotone"],
                    "monotone_cases": float(np.mean(monotone)),
                    "rounds_to_0.85": s["rounds_to_0.85"], "rounds_to_0.90": s["rounds_to_0.90"],
                    f"cases_ge_0.90_r{k5}": int(sum(c[k5] >= 0.90 for c in curves)),
                    "n_cases": len(curves),
                    "apply_s_median": float(sub.loc[sub["round"] > 0, "apply_s"].median()),
                    "description": method.description})
        rows.append(row)
    return pd.DataFrame(rows)


def compare_methods(cases: Sequence[CompareCase], model: SegmentationNet, card: ModelCard,
                    robot: RobotConfig | None = None,
                    methods: Sequence[Method | str] = tuple(METHODS), *,
                    device: str = "cpu", progress: bool = False) -> CompareResult:
    """Run the robot with every method on every case; one long table and a summary.

    Every (case, method) run starts from a fresh Session with the same weights and box, so
    the initial prediction (round 0) is the same for every method that shares the
    preprocessing, and the robot's seed is the same (its strokes differ only where the masks
    differ).

    Args:
        cases: the cases.
        model: the trained 2-class network.
        card: its model card.
        robot: the robot's config (rounds, brush, seed).
        methods: :class:`Method` objects or names of :data:`METHODS`.
        device: torch device of the sessions.
        progress: tqdm progress over (case, method) runs.

    Returns:
        :class:`CompareResult`.

    Raises:
        ConfigError: an unknown method name. InputError: no cases.
    """
    from tqdm.auto import tqdm

    robot = RobotConfig() if robot is None else robot
    resolved = []
    for m in methods:
        if isinstance(m, str):
            if m not in METHODS:
                raise ConfigError(f"unknown method {m!r}; known: {list(METHODS)}")
            m = METHODS[m]
        resolved.append(m)
    if not cases:
        raise InputError("compare_methods needs at least one case")
    frames = []
    runs = [(c, m) for c in cases for m in resolved]
    for case, method in tqdm(runs, desc="Compare", unit="run", disable=not progress):
        box = case.box if case.box is not None else Box.from_mask(case.reference.array)
        net: SegmentationNet = FullFineTuneNet(model) if method.full_network else model
        cfg = dataclasses.replace(method.refine, device=device)
        t0 = time.perf_counter()
        with Session(case.ct, net, card, box, config=cfg, case_id=case.case_id,
                     reader_id=f"robot-{method.name}") as session:
            result = run_robot(session, case.reference, robot, apply=_apply_for(method),
                               predict=True)
        logger.info("%s / %s: DSC %s in %.1f s", case.case_id, method.name,
                    [round(v, 3) for v in result.table["dsc"]], time.perf_counter() - t0)
        frame = result.table.copy()
        frame.insert(0, "method", method.name)
        frame.insert(0, "case_id", case.case_id)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return CompareResult(table=table, summary=_summary(table, resolved, robot.rounds))
