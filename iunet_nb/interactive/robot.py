"""The simulated annotator ("robot"): corrects a :class:`~iunet_nb.interactive.session.Session` like a person.

Each round the robot looks at the session's current mask and a reference mask, and does
what a careful reader does:

1. find the largest error region: the biggest 3D connected component (26-connectivity) of
   the false negatives (missed organ) or of the false positives (leak), by volume;
2. find the view (axial, coronal, sagittal) and the slice on which that region is largest
   (area in mm^2, so the slice spacing does not favour a view);
3. draw one stroke inside the region on that slice, along its medial axis: foreground inside
   missed organ, background inside a leak, with the configured brush radius (mm), stroke
   length (mm) and seeded jitter (mm);
4. call the same public methods a person's widget calls: ``session.add_scribble(...)`` then
   ``session.refine()`` (or another *apply* step, see :func:`run_robot`);
5. record DSC, HD95 and NSD at 2 mm (:func:`iunet_nb.model.evaluate.evaluate_case`), the wall time
   of the apply step and a simulated think time.

Medial axis. scikit-image's ``skeletonize`` is not a dependency (and a one-pixel skeleton
is not what we need anyway): the stroke should follow the *ridge of the distance transform*,
the centres of the largest discs that fit in the region, because that is where a brush of
a given radius stays inside the region longest. :func:`medial_axis_2d` computes that ridge
from ``scipy.ndimage.distance_transform_edt`` (spacing-aware): a pixel is on the ridge when
its distance to the background is a local maximum along at least one of the four pixel
directions (>= both neighbours, > at least one, so a flat run along the ridge does not
widen it). The stroke starts at the pixel with the largest clearance and runs along the
ridge (shortest paths on the 8-connected ridge graph, ``scipy.sparse.csgraph.dijkstra``) up
to half the stroke length into two different branches.

Staying inside. A person shrinks the brush in a thin region; so does the robot: the brush
radius is reduced (x 0.7 per step) until every painted voxel, computed with the Session's
own :func:`~iunet_nb.interactive.session.stroke_to_voxels`, lies inside the error region. Jittered
points that leave the region fall back to their medial-axis position; if even the thinnest
brush would spill, the robot places the medial-axis voxels themselves (``points=``). So a
robot scribble never carries a wrong label.

Example:
    >>> s = Session(ct, model, card, box, config=RefineConfig())       # doctest: +SKIP
    >>> result = run_robot(s, reference, RobotConfig.preset("expert", rounds=5))  # doctest: +SKIP
    >>> result.table[["round", "dsc", "hd95_mm", "nsd_2mm"]]           # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from .._config import JsonConfig
from ..errors import ConfigError, InputError, SessionError
from ..io.volume import Volume
from ..model.evaluate import evaluate_case
from .session import Session
from .strokes import VIEWS, stroke_to_voxels

__all__ = [
    "SKILLS",
    "RobotConfig",
    "RobotResult",
    "Stroke",
    "add_cli",
    "find_largest_error",
    "medial_axis_2d",
    "plan_stroke",
    "run_robot",
    "summarize_rounds",
]

#: Skill presets: values :meth:`RobotConfig.preset` fills in (an expert draws longer, thinner,
#: steadier strokes and decides faster).
SKILLS: dict[str, dict[str, float]] = {
    "expert": {"radius_mm": 2.0, "stroke_length_mm": 40.0, "jitter_mm": 0.5,
               "think_median_s": 4.0, "think_sigma": 0.4},
    "novice": {"radius_mm": 4.0, "stroke_length_mm": 20.0, "jitter_mm": 2.0,
               "think_median_s": 9.0, "think_sigma": 0.7},
}
_THINK_MODELS = ("lognormal", "none")
_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
# the four pixel directions of the ridge test (and their opposites)
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))
_SHRINK = 0.7


# ----------------------------------------------------------------------------------------------
# Config and results
# ----------------------------------------------------------------------------------------------
def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


@dataclass(frozen=True)
class RobotConfig(JsonConfig):
    """How the simulated annotator draws, and for how long.

    Args:
        version: format version of this config (1).
        rounds: correction rounds (one stroke + one apply step each), >= 1.
        radius_mm: brush radius in mm (> 0); shrunk in regions too thin for it.
        stroke_length_mm: stroke length along the medial axis in mm (> 0).
        jitter_mm: standard deviation of the hand's jitter, mm, added independently to each
            stroke point along each slice axis (>= 0; 0 = exactly on the medial axis).
        views: views the robot may draw on (any of ``"axial"``, ``"coronal"``,
            ``"sagittal"``); the region's largest cross-section among them is used.
        think_model: ``"lognormal"`` (think time per stroke ~ lognormal with median
            ``think_median_s`` and log-sd ``think_sigma``) or ``"none"`` (0 s). The think
            time is simulated, not slept: it is for the simulated reader study.
        think_median_s: median think time per stroke in s (> 0).
        think_sigma: log-standard deviation of the think time (>= 0).
        skill: ``"expert"``, ``"novice"`` (set by :meth:`preset`) or ``"custom"``.
        min_error_voxels: stop when the largest error region has fewer voxels (>= 1).
        fit_brush: aim only at error that a ball of the brush's radius fits in (the error
            opened by ``radius_mm``, see :func:`find_largest_error`); when none is that
            thick, at the largest region as usual. A reader does not paint into a
            disagreement thinner than the brush, such as the 1-2 mm shell a model leaves
            around a real organ, which as one 26-connected component otherwise outweighs
            a compact missed chunk. Default False (the largest region, as the issue and
            the earlier benchmarks have it); measured in
            ``benchmarks/interactive_results.md`` (the confidence-gate section): it helps every real
            case and lowers the synthetic phantoms, a choice of reader model.
        seed: seeds the jitter and the think times (same seed, same strokes).

    Raises:
        ConfigError: a value is out of range or of the wrong type.
    """

    version: int = 1
    rounds: int = 10
    radius_mm: float = 2.0
    stroke_length_mm: float = 40.0
    jitter_mm: float = 0.5
    views: tuple[str, ...] = ("axial", "coronal", "sagittal")
    think_model: str = "lognormal"
    think_median_s: float = 4.0
    think_sigma: float = 0.4
    skill: str = "expert"
    min_error_voxels: int = 1
    fit_brush: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError(f"RobotConfig version {self.version} is not supported (this "
                              "iunet_nb reads version 1)")
        for name, low in (("rounds", 1), ("min_error_voxels", 1), ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                raise ConfigError(f"RobotConfig.{name} must be an integer >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name, positive in (("radius_mm", True), ("stroke_length_mm", True),
                               ("jitter_mm", False), ("think_median_s", True),
                               ("think_sigma", False)):
            v = getattr(self, name)
            ok = _is_real(v) and math.isfinite(float(v)) and (v > 0 if positive else v >= 0)
            if not ok:
                raise ConfigError(f"RobotConfig.{name} must be a finite number "
                                  f"{'> 0' if positive else '>= 0'}, got {v!r}")
            object.__setattr__(self, name, float(v))
        views = (self.views,) if isinstance(self.views, str) else tuple(self.views)
        if not views or any(v not in VIEWS for v in views) or len(set(views)) != len(views):
            raise ConfigError(f"RobotConfig.views must be distinct views among {list(VIEWS)}, "
                              f"got {self.views!r}")
        object.__setattr__(self, "views", views)
        if not isinstance(self.fit_brush, bool):
            raise ConfigError(f"RobotConfig.fit_brush must be true or false, got "
                              f"{self.fit_brush!r}")
        if self.think_model not in _THINK_MODELS:
            raise ConfigError(f"RobotConfig.think_model must be one of {list(_THINK_MODELS)}, "
                              f"got {self.think_model!r}")
        if self.skill not in (*SKILLS, "custom"):
            raise ConfigError(f"RobotConfig.skill must be one of {[*SKILLS, 'custom']}, got "
                              f"{self.skill!r}; use RobotConfig.preset(skill) for a preset")

    @classmethod
    def preset(cls, skill: str = "expert", **overrides: Any) -> RobotConfig:
        """A config with the preset values of ``skill`` (see :data:`SKILLS`), then ``overrides``.

        Raises:
            ConfigError: unknown skill or a bad override.
        """
        if skill not in SKILLS:
            raise ConfigError(f"unknown skill {skill!r}; presets are {list(SKILLS)}")
        return cls(**{**SKILLS[skill], "skill": skill, **overrides})


@dataclass(frozen=True)
class Stroke:
    """One planned robot stroke (what it will pass to the Session).

    Args:
        label: ``"fg"`` (inside missed organ) or ``"bg"`` (inside a leak).
        error: ``"fn"`` or ``"fp"``: the kind of error region it corrects.
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        slice_index: slice of that view.
        points: float ``(N, 2)`` ``(row, col)`` polyline on the slice (after jitter), or the
            medial-axis pixels when ``use_points`` is True.
        radius_mm: brush radius used (after shrinking); 0 with ``use_points``.
        voxels: int64 sorted flat indices ``(z, y, x)`` the stroke paints on the CT grid.
        use_points: the brush could not fit; ``voxels`` are placed as exact points.
        region_voxels: voxels of the 3D error region.
        region_slice_voxels: voxels of the region on the chosen slice.
        length_mm: length of the stroke along its medial-axis path, mm.
    """

    label: str
    error: str
    view: str
    slice_index: int
    points: np.ndarray
    radius_mm: float
    voxels: np.ndarray
    use_points: bool
    region_voxels: int
    region_slice_voxels: int
    length_mm: float

    def apply_scribble(self, session: Session) -> int:
        """``session.add_scribble`` with this stroke (a person's call); returns the id."""
        if self.use_points:
            return session.add_scribble(self.label, points=self._points_zyx(session.volume.shape))
        return session.add_scribble(self.label, self.points.tolist(), view=self.view,
                                    slice_index=self.slice_index, radius_mm=self.radius_mm)

    def apply_paint(self, session: Session) -> int:
        """``session.paint`` with this stroke (manual mode: 1 for fg, 0 for bg); voxels changed."""
        value = 1 if self.label == "fg" else 0
        if self.use_points:
            return session.paint(value, points=self._points_zyx(session.volume.shape))
        return session.paint(value, self.points.tolist(), view=self.view,
                             slice_index=self.slice_index, radius_mm=self.radius_mm)

    def _points_zyx(self, shape: Sequence[int]) -> np.ndarray:
        return np.stack(np.unravel_index(self.voxels, tuple(shape)), axis=1)


@dataclass
class RobotResult:
    """What :func:`run_robot` measured.

    Args:
        table: one row per round; round 0 is the mask before any stroke. Columns: ``round``,
            ``dsc``, ``hd95_mm``, ``nsd_2mm``, ``precision``, ``recall``, ``apply_s`` (wall
            time of the apply step, e.g. add_scribble + refine), ``think_s`` (simulated),
            ``elapsed_s`` (cumulative think + apply), ``error``, ``label``, ``view``,
            ``slice_index``, ``radius_mm``, ``length_mm``, ``n_stroke_voxels``,
            ``region_voxels``.
        summary: see :func:`summarize_rounds`.
        strokes: the strokes drawn, in order.
        config: the robot's config.
    """

    table: pd.DataFrame
    summary: dict[str, Any]
    strokes: list[Stroke]
    config: RobotConfig


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------
def find_largest_error(mask: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float],
                       views: Sequence[str] = tuple(VIEWS), *, fit_radius_mm: float | None = None,
                       ) -> tuple[str, np.ndarray, str, int] | None:
    """The largest 3D error region and the view/slice where its cross-section is largest.

    Args:
        mask: uint8/bool ``(z, y, x)`` current segmentation.
        reference: uint8/bool ``(z, y, x)`` reference on the same grid.
        spacing_mm: ``(z, y, x)`` voxel size (cross-section areas are compared in mm^2).
        views: views allowed.
        fit_radius_mm: when given, the false negatives and false positives are first opened
            by a ball of this radius (the voxels within it of a voxel whose distance to the
            correct voxels exceeds it: where such a ball fits), so thin error does not count;
            when nothing is left of either, the unopened error is used.

    Returns:
        ``(error, region, view, slice_index)``: ``"fn"`` or ``"fp"``, the region as a bool
        ``(z, y, x)`` array (26-connected component; ties go to the false negatives), the view
        and its slice; or None when the masks agree.

    Raises:
        InputError: shapes differ.
    """
    m, r = np.asarray(mask) != 0, np.asarray(reference) != 0
    if m.shape != r.shape:
        raise InputError(f"mask shape {m.shape} != reference shape {r.shape}")
    errors = (("fn", r & ~m), ("fp", m & ~r))
    if fit_radius_mm is not None:
        opened = [(e, _opened(w, spacing_mm, fit_radius_mm)) for e, w in errors]
        if any(w.any() for _, w in opened):
            errors = tuple(opened)
    best: tuple[int, str, np.ndarray] | None = None
    for error, wrong in errors:
        if not wrong.any():
            continue
        labels, _ = ndimage.label(wrong, structure=_FULL)
        sizes = np.bincount(labels.ravel())[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), error, labels == k + 1)
    if best is None:
        return None
    _, error, region = best
    sp = [float(s) for s in spacing_mm]
    choice: tuple[float, str, int] | None = None
    for view in views:
        axis, (ra, ca) = VIEWS[view]
        other = tuple(a for a in range(3) if a != axis)
        areas = region.sum(axis=other) * sp[ra] * sp[ca]
        k = int(np.argmax(areas))
        if choice is None or areas[k] > choice[0] + 1e-9:
            choice = (float(areas[k]), view, k)
    assert choice is not None
    return error, region, choice[1], choice[2]


def _opened(wrong: np.ndarray, spacing_mm: Sequence[float], radius_mm: float) -> np.ndarray:
    """Morphological opening of ``wrong`` by a ball of ``radius_mm`` (spacing-aware).

    Computed on the bounding box of ``wrong`` grown by one voxel more than the radius, so
    the cost follows the error, not the CT.
    """
    out = np.zeros(wrong.shape, dtype=bool)
    idx = np.nonzero(wrong)
    if idx[0].size == 0:
        return out
    sp = np.asarray([float(v) for v in spacing_mm])
    grow = np.ceil(radius_mm / sp).astype(int) + 1
    lo = np.maximum(np.array([i.min() for i in idx]) - grow, 0)
    hi = np.minimum(np.array([i.max() for i in idx]) + grow + 1, wrong.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = wrong[box]
    core = ndimage.distance_transform_edt(sub, sampling=sp) > radius_mm
    if core.any():
        out[box] = sub & (ndimage.distance_transform_edt(~core, sampling=sp) <= radius_mm)
    return out


def medial_axis_2d(region: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0),
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge of the distance transform of a 2D region (its discrete medial axis).

    Args:
        region: bool ``(rows, cols)``.
        spacing_mm: pixel size ``(row, col)`` in mm.

    Returns:
        ``(ridge, clearance)``: bool ``(rows, cols)`` ridge pixels (a subset of the region;
        never empty for a non-empty region) and float ``(rows, cols)`` distance in mm from
        each region pixel's centre to the nearest background pixel centre (0 outside).
    """
    region = np.asarray(region, dtype=bool)
    padded = np.pad(region, 1)
    dt = ndimage.distance_transform_edt(padded, sampling=[float(s) for s in spacing_mm])
    ridge = np.zeros_like(padded)
    inner = dt[1:-1, 1:-1]
    for dr, dc in _DIRECTIONS:
        a = dt[1 + dr:dt.shape[0] - 1 + dr, 1 + dc:dt.shape[1] - 1 + dc]
        b = dt[1 - dr:dt.shape[0] - 1 - dr, 1 - dc:dt.shape[1] - 1 - dc]
        ridge[1:-1, 1:-1] |= (inner >= a) & (inner >= b) & ((inner > a) | (inner > b))
    ridge = ridge[1:-1, 1:-1] & region
    if region.any() and not ridge.any():  # pragma: no cover - a maximum always exists
        ridge.flat[int(np.argmax(inner))] = True
    return ridge, inner.astype(float)


def _ridge_path(ridge: np.ndarray, clearance: np.ndarray, spacing: tuple[float, float],
                length_mm: float) -> tuple[np.ndarray, float]:
    """Pixels ``(N, 2)`` of a path along the ridge through its widest point, and its length."""
    nodes = np.argwhere(ridge)
    index = -np.ones(ridge.shape, dtype=np.int64)
    index[tuple(nodes.T)] = np.arange(len(nodes))
    rows, cols, weights = [], [], []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shifted = nodes + (dr, dc)
        ok = ((shifted[:, 0] < ridge.shape[0]) & (shifted[:, 1] >= 0)
              & (shifted[:, 1] < ridge.shape[1]))
        src, dst = np.flatnonzero(ok), index[tuple(shifted[ok].T)]
        keep = dst >= 0
        rows.append(src[keep])
        cols.append(dst[keep])
        weights.append(np.full(int(keep.sum()), math.hypot(dr * spacing[0], dc * spacing[1])))
    n = len(nodes)
    graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(n, n)).tocsr()
    node_clear = clearance[tuple(nodes.T)]
    # start in the middle of the widest part (the plateau of largest clearance)
    top = np.flatnonzero(node_clear >= node_clear.max() - 1e-6)
    centre = nodes[top].mean(axis=0)
    start = int(top[np.argmin(((nodes[top] - centre) ** 2).sum(axis=1))])
    dist, pred = dijkstra(graph, directed=False, indices=start, return_predecessors=True)
    half = length_mm / 2.0
    reach = np.isfinite(dist) & (dist <= half + 1e-9)

    def path_to(node: int) -> list[int]:
        out = [node]
        while out[-1] != start:
            out.append(int(pred[out[-1]]))
        return out[::-1]  # start ... node

    def branch(node: int) -> int:
        p = path_to(node)
        return p[1] if len(p) > 1 else -1

    cand = np.flatnonzero(reach)

    def score(c: int) -> tuple[float, float, int]:
        # farthest first (to 0.5 mm), then the widest (stays in the organ's bulk), then index
        return (round(float(dist[c]) * 2) / 2, float(node_clear[c]), -c)

    a = max((int(c) for c in cand), key=score)
    first = path_to(a)
    b_branch = branch(a)
    others = [int(c) for c in cand if c != start and branch(int(c)) != b_branch]
    path = first
    total = float(dist[a])
    if others:
        b = max(others, key=score)
        path = path_to(b)[::-1] + first[1:]
        total += float(dist[b])
    return nodes[path].astype(float), total


def plan_stroke(mask: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float],
                config: RobotConfig, rng: np.random.Generator | int | None = None,
                ) -> Stroke | None:
    """Plan the next stroke: inside the largest error region, on its largest slice.

    Args:
        mask: uint8 ``(z, y, x)`` current segmentation.
        reference: uint8 ``(z, y, x)`` reference on the same grid.
        spacing_mm: ``(z, y, x)`` voxel size in mm.
        config: radius, length, jitter, views, ``min_error_voxels``.
        rng: seed or Generator for the jitter.

    Returns:
        The :class:`Stroke` (every voxel it paints lies inside the error region), or None
        when the largest error region has fewer than ``config.min_error_voxels`` voxels.

    Raises:
        InputError: shapes differ.
    """
    rng = np.random.default_rng(rng)
    found = find_largest_error(mask, reference, spacing_mm, config.views,
                               fit_radius_mm=config.radius_mm if config.fit_brush else None)
    if found is None:
        return None
    error, region, view, k = found
    n_region = int(region.sum())
    if n_region < config.min_error_voxels:
        return None
    shape = region.shape
    axis, (ra, ca) = VIEWS[view]
    sp2 = (float(spacing_mm[ra]), float(spacing_mm[ca]))
    plane = np.take(region, k, axis=axis)
    lab2, n2 = ndimage.label(plane, structure=np.ones((3, 3), bool))
    if n2 > 1:
        plane = lab2 == 1 + int(np.argmax(np.bincount(lab2.ravel())[1:]))
    ridge, clearance = medial_axis_2d(plane, sp2)
    # keep the stroke in the wide part: ridge pixels with at least half the largest clearance
    # (or the brush radius, whichever is smaller)
    wide = ridge & (clearance >= min(config.radius_mm, 0.5 * float(clearance.max())))
    path, length = _ridge_path(wide, clearance, sp2, config.stroke_length_mm)
    points = path.copy()
    if config.jitter_mm > 0 and len(points):
        points = points + rng.normal(0.0, config.jitter_mm, size=points.shape) / np.array(sp2)
        points = np.clip(points, 0.0, np.array(plane.shape, dtype=float) - 1.0)
        near = np.clip(np.rint(points), 0, np.array(plane.shape) - 1).astype(np.int64)
        off = ~plane[near[:, 0], near[:, 1]]
        points[off] = path[off]  # a point that left the region goes back to the axis
    label = "fg" if error == "fn" else "bg"
    region_flat = region.ravel()
    radius = config.radius_mm
    min_radius = 0.25 * min(sp2)
    while radius >= min_radius:
        vox = stroke_to_voxels(shape, spacing_mm, points, view, k, radius_mm=radius)
        if vox.size and region_flat[vox].all():
            return Stroke(label, error, view, k, points, float(radius), vox, False, n_region,
                          int(plane.sum()), float(length))
        radius *= _SHRINK
    # even a thin brush spills: place the medial-axis voxels themselves
    idx = [None, None, None]
    pix = path.astype(np.int64)
    idx[axis] = np.full(len(pix), k, dtype=np.int64)
    idx[ra], idx[ca] = pix[:, 0], pix[:, 1]
    vox = np.unique(np.ravel_multi_index(tuple(idx), shape)).astype(np.int64)
    return Stroke(label, error, view, k, path, 0.0, vox, True, n_region, int(plane.sum()),
                  float(length))


def summarize_rounds(dsc: Sequence[float], rounds: int | None = None,
                     thresholds: Sequence[float] = (0.85, 0.90)) -> dict[str, Any]:
    """Summary of a DSC-per-round curve.

    Args:
        dsc: DSC after round 0 (initial), 1, 2, ...
        rounds: length of the curve to summarise; a curve that stopped early (no error left)
            is extended with its last value (a finished reader stays finished). Default:
            ``len(dsc) - 1``.
        thresholds: DSC levels for ``rounds_to_<level>``.

    Returns:
        ``{"auc": ..., "dsc_initial": ..., "dsc_final": ..., "monotone": ...,
        "rounds_to_0.85": ..., "rounds_to_0.90": ...}``: ``auc`` is the trapezoidal area under
        DSC over rounds 0..N divided by N (so it lies in [0, 1]; with N = 0 it is the initial
        DSC); ``rounds_to_x`` the first round whose DSC is >= x (0 = already at the start;
        None = never); ``monotone`` True when DSC never decreased from one round to the next.

    Raises:
        InputError: an empty curve.
    """
    values = [float(v) for v in dsc]
    if not values:
        raise InputError("summarize_rounds needs at least the initial DSC")
    n = len(values) - 1 if rounds is None else int(rounds)
    values = (values + [values[-1]] * max(0, n + 1 - len(values)))[:n + 1]
    auc = float(np.trapezoid(values) / n) if n > 0 else values[0]
    out: dict[str, Any] = {"auc": auc, "dsc_initial": values[0], "dsc_final": values[-1],
                           "monotone": bool(all(b >= a - 1e-12 for a, b in
                                                itertools.pairwise(values)))}
    for t in thresholds:
        hit = next((i for i, v in enumerate(values) if v >= t), None)
        out[f"rounds_to_{t:.2f}"] = hit
    return out


# ----------------------------------------------------------------------------------------------
# Driving a Session
# ----------------------------------------------------------------------------------------------
def _scribble_and_refine(session: Session, stroke: Stroke) -> None:
    stroke.apply_scribble(session)
    session.refine()


def _metrics(mask: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    m = evaluate_case(mask, reference, spacing, tolerance_mm=2.0)
    return {"dsc": m["dice"], "hd95_mm": m["hd95_mm"], "nsd_2mm": m["surface_dice"],
            "precision": m["precision"], "recall": m["recall"]}


def run_robot(session: Session, reference: Volume, config: RobotConfig | None = None, *,
              apply: Callable[[Session, Stroke], Any] | None = None,
              predict: bool | None = None, progress: bool = False) -> RobotResult:
    """Correct ``session`` for ``config.rounds`` rounds the way a person would.

    Args:
        session: an open session (its box set). It is driven only through public calls.
        reference: the reference mask on the session's CT grid (non-empty).
        config: the robot's settings (default :class:`RobotConfig` ()).
        apply: what one round does with the planned stroke; default: ``add_scribble`` then
            ``refine()`` (the interactive mode). ``lambda s, st: st.apply_paint(s)`` is the
            manual mode (no network). The wall time of this call is ``apply_s``.
        predict: call ``session.predict()`` first. None: only when the session has not
            predicted yet.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`RobotResult` (per-round table, summary, strokes). Rounds stop early when no
        error region of ``config.min_error_voxels`` voxels is left.

    Raises:
        InputError / GeometryError: the reference is empty or not on the CT's grid.
        SessionError: the session cannot predict (no box) or refine.
    """
    from tqdm.auto import tqdm

    from ..io.images import check_same_grid

    config = RobotConfig() if config is None else config
    if not isinstance(config, RobotConfig):
        raise ConfigError(f"config must be a RobotConfig, got {type(config).__name__}")
    if not isinstance(reference, Volume):
        raise InputError(f"reference must be a Volume (mask with geometry), got "
                         f"{type(reference).__name__}; read one with iunet_nb.io.images.read_mask")
    check_same_grid(session.volume, reference, "reference")
    ref = np.asarray(reference.array) != 0
    if not ref.any():
        raise InputError("the reference mask is empty: the robot has nothing to aim at")
    apply = _scribble_and_refine if apply is None else apply
    if predict is None:
        try:
            session.probabilities()
            predict = False
        except SessionError:
            predict = True
    spacing = session.volume.spacing_mm
    rng = np.random.default_rng(config.seed)
    t0 = time.perf_counter()
    if predict:
        session.predict()
    mask = session.mask.array
    row0: dict[str, Any] = {"round": 0, **_metrics(mask, ref, spacing),
                            "apply_s": time.perf_counter() - t0 if predict else 0.0,
                            "think_s": 0.0}
    rows = [row0]
    strokes: list[Stroke] = []
    elapsed = 0.0
    for r in tqdm(range(1, config.rounds + 1), desc="Robot", unit="round", disable=not progress):
        stroke_rng, think_rng = rng.spawn(2)
        stroke = plan_stroke(mask, ref, spacing, config, stroke_rng)
        if stroke is None:
            break
        think = (float(np.exp(math.log(config.think_median_s)
                              + config.think_sigma * think_rng.standard_normal()))
                 if config.think_model == "lognormal" else 0.0)
        t1 = time.perf_counter()
        apply(session, stroke)
        apply_s = time.perf_counter() - t1
        elapsed += think + apply_s
        mask = session.mask.array
        strokes.append(stroke)
        rows.append({"round": r, **_metrics(mask, ref, spacing), "apply_s": apply_s,
                     "think_s": think, "elapsed_s": elapsed, "error": stroke.error,
                     "label": stroke.label, "view": stroke.view,
                     "slice_index": stroke.slice_index, "radius_mm": stroke.radius_mm,
                     "length_mm": stroke.length_mm, "n_stroke_voxels": int(stroke.voxels.size),
                     "region_voxels": stroke.region_voxels})
    rows[0]["elapsed_s"] = 0.0
    columns = ["round", "dsc", "hd95_mm", "nsd_2mm", "precision", "recall", "apply_s",
               "think_s", "elapsed_s", "error", "label", "view", "slice_index", "radius_mm",
               "length_mm", "n_stroke_voxels", "region_voxels"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    summary = summarize_rounds(table["dsc"].tolist(), config.rounds)
    summary.update({"rounds_done": len(rows) - 1, "hd95_final_mm": float(table["hd95_mm"].iloc[-1]),
                    "nsd_final": float(table["nsd_2mm"].iloc[-1]),
                    "apply_s_median": (float(table["apply_s"].iloc[1:].median())
                                       if len(rows) > 1 else None),
                    "elapsed_s": elapsed})
    return RobotResult(table=table, summary=summary, strokes=strokes, config=config)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _cmd_annotate_robot(args: argparse.Namespace) -> int:
    from ..io.images import read_image, read_mask
    from ..model.checkpoint import load_bundled_model, load_model
    from ..model.predict import make_box
    from .refine import RefineConfig

    ct = read_image(args.ct)
    reference = read_mask(args.reference)
    model, card = load_model(args.model) if args.model else load_bundled_model()
    box = make_box(ct, voxel=args.box, reference=None if args.box else reference)
    refine_cfg = (RefineConfig.from_json(args.refine_config) if args.refine_config
                  else RefineConfig())
    if args.device:
        refine_cfg = dataclasses.replace(refine_cfg, device=args.device)
    overrides = {k: v for k, v in (("radius_mm", args.radius_mm),
                                   ("stroke_length_mm", args.stroke_length_mm),
                                   ("jitter_mm", args.jitter_mm)) if v is not None}
    robot_cfg = RobotConfig.preset(args.skill, rounds=args.rounds, seed=args.seed,
                                   fit_brush=args.fit_brush, **overrides)
    with Session(ct, model, card, box, config=refine_cfg, folder=args.session,
                 case_id=args.case_id or str(args.ct), reader_id=f"robot-{args.skill}",
                 reference=reference) as session:
        apply = (lambda s, st: st.apply_paint(s)) if args.manual else None
        result = run_robot(session, reference, robot_cfg, apply=apply, predict=True)
    cols = ["round", "dsc", "hd95_mm", "nsd_2mm", "apply_s", "think_s", "error", "view",
            "slice_index", "radius_mm"]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(result.table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    s = result.summary
    print(f"AUC(DSC per round) {s['auc']:.3f}; rounds to DSC 0.85: {s['rounds_to_0.85']}; "
          f"to 0.90: {s['rounds_to_0.90']}; DSC never decreased: {s['monotone']}")
    if args.csv:
        from ..io._atomic import atomic_write_text

        atomic_write_text(args.csv, result.table.to_csv(index=False))
        print(f"per-round table written to {args.csv}")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``annotate-robot`` to an ``argparse`` subparsers object; returns its parser.

    ``iunet-nb annotate-robot CT --reference REF --rounds 10`` runs the robot on a Session of
    the CT (box: the reference's bounding box unless ``--box`` is given, as in the paper's
    Experiment 1) and prints the per-round table and its summary.
    """
    p = subparsers.add_parser(
        "annotate-robot", help="simulated annotator: scribble + refine rounds against a "
                               "reference; prints DSC/HD95/NSD per round")
    p.add_argument("ct", help="CT: NIfTI, NRRD, MHA, a DICOM folder or a .zip of one")
    p.add_argument("--reference", required=True, help="reference mask on the CT's grid")
    p.add_argument("--rounds", type=int, default=10, help="correction rounds (default 10)")
    p.add_argument("--model", default=None, help="model.pt with its model.json (default: bundled)")
    p.add_argument("--box", type=int, nargs=6, metavar=("Z0", "Y0", "X0", "Z1", "Y1", "X1"),
                   default=None, help="voxel box (default: the reference's bounding box)")
    p.add_argument("--skill", default="expert", choices=sorted(SKILLS),
                   help="robot preset (default expert)")
    p.add_argument("--radius-mm", type=float, default=None, help="override the brush radius")
    p.add_argument("--stroke-length-mm", type=float, default=None,
                   help="override the stroke length")
    p.add_argument("--jitter-mm", type=float, default=None, help="override the jitter")
    p.add_argument("--fit-brush", action="store_true",
                   help="aim only at error the brush fits in (RobotConfig.fit_brush)")
    p.add_argument("--seed", type=int, default=0, help="robot seed (jitter, think times)")
    p.add_argument("--refine-config", default=None, help="RefineConfig JSON file")
    p.add_argument("--manual", action="store_true",
                   help="paint the strokes into the mask instead of refining (manual mode)")
    p.add_argument("--session", default=None, help="autosave folder for the session")
    p.add_argument("--case-id", default=None, help="case id for the event log")
    p.add_argument("--csv", default=None, help="also write the per-round table as CSV")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.set_defaults(func=_cmd_annotate_robot)
    return p
