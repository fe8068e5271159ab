"""The interactive engine: one headless :class:`Session` per CT that everything drives.

A session holds one CT, a private copy of a segmentation network, a box, the current mask,
the user's scribbles, an undo/redo history, an autosave folder and an event log. The
widgets, the CLI, notebooks, the tests and the simulated annotator all call the same
methods, so anything a person can do a script can do too::

    s = Session(ct, model, card, box, folder="sessions/case07", case_id="case07")
    s.predict()                                            # initial mask on the CT grid
    s.add_scribble("fg", [(40, 50), (44, 58)], view="axial", slice_index=61, radius_mm=3)
    s.refine()                                             # iUnet interactive mode
    s.undo(); s.redo()
    s.export("case07_pancreas.nii.gz")

This module holds :class:`Session` itself: its actions, the orchestration of a refine round
(snapshots under the lock, the worker thread, superseding, commit) and the event log. The
parts that need no session live beside it, and the public ones are re-exported here:

* :mod:`iunet_nb.interactive.strokes`: the view conventions (:data:`VIEWS`; every array is
  ``(z, y, x)``, a 2D point on a slice is ``(row, col)`` in array indices) and
  :func:`stroke_to_voxels`, the brush;
* :mod:`iunet_nb.interactive.refine`: :func:`~iunet_nb.interactive.refine.refine_step` (one refine round as a
  function of its inputs), :class:`RefineConfig`, :func:`fine_tune` and the refinement maths
  (target, weight map, locality), with the paper's method and the measured deviations from
  it;
* :mod:`iunet_nb.interactive._history`: the undo/redo entries and their ``.npz`` storage.

The autosave folder (its layout, writing, loading, crash repair) is
:mod:`iunet_nb.interactive.autosave`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from ..errors import ConfigError, InputError, SessionError
from ..io.volume import Volume, check_ct_spacing
from ..memory import check_memory, estimate_preprocess_bytes, estimate_session_bytes
from ..model.checkpoint import ModelCard, select_device
from ..model.nets import EncodedFeatures, SegmentationNet
from ..model.preprocess import (
    Box,
    CropRecord,
    _is_int,
    crop_mask,
    preprocess_image,
    restore_probabilities,
)
from ._history import _Diff, _Entry, _Scribble
from .autosave import (
    AutosaveFolder,
    Snapshot,
    array_hash,
    check_export_target,
    model_hash,
    read_events,
    read_folder,
    repair_after_crash,
    utc_now,
)
from .edges import smooth_hu
from .locking import FolderLock
from .refine import (
    NetworkOutput,
    RefineConfig,
    RefineInput,
    _stroke_direction,
    fine_tune,
    network_output,
    refine_dtype,
    refine_step,
    warm_up,
)
from .strokes import (
    _BG,
    _FG,
    VIEWS,
    _as_points,
    _check_view,
    _parse_label,
    _points_to_voxels,
    check_scribble_size,
    stroke_to_voxels,
)

__all__ = [
    "VIEWS",
    "RefineConfig",
    "Session",
    "fine_tune",
    "stroke_to_voxels",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Session
# ----------------------------------------------------------------------------------------------
class Session:
    """One interactive segmentation of one CT (headless; thread-safe).

    Args:
        volume: the CT in HU, ``(z, y, x)`` with its geometry.
        model: a trained :class:`~iunet_nb.model.nets.SegmentationNet` with 2 classes (background,
            structure). The session works on a deep copy; the caller's model never changes.
        card: the model's :class:`~iunet_nb.model.checkpoint.ModelCard` (its ``preprocess`` config
            is the pipeline the model was trained with).
        box: the structure's voxel box on ``volume`` (before the card's margin). None: give
            it later to :meth:`predict`; without any box :meth:`predict` follows
            ``config.box_fallback`` (by default, for a pancreas model, the bundled automatic
            detector's box, re-boxed once around the network's own mask in it).
        config: refinement and session settings.
        folder: autosave folder (created; must not already hold a session: resume one with
            :meth:`load`). None: nothing is written, events stay in :attr:`events`. The
            folder stays locked against other processes until :meth:`close`.
        case_id: case identifier for the event log.
        reader_id: reader (annotator) identifier for the event log.
        session_id: identifier of this session; default a new ``uuid4().hex``.
        reference: a reference mask on the CT's grid; when given, every event records the
            DSC of the current mask against it.

    Raises:
        SessionError: the folder already holds a session or is open in another process; the
            model is not a 2-class ``SegmentationNet``.
        InputError / GeometryError: box outside the image, reference on another grid.

    Thread safety: every public method takes one re-entrant lock. :meth:`refine` and
    :meth:`refine_async` compute outside the lock on snapshots and commit under it only if no
    other action happened meanwhile. Any state-changing action (scribble, erase, paint,
    predict, reset, undo, redo, another refine) *supersedes* a refine in flight: it stops at
    its next iteration and changes nothing (no mask change, no history entry, no event, the
    session's network untouched, since the computation trains a private copy).
    """

    # -- construction ------------------------------------------------------------------------
    def __init__(self, volume: Volume, model: SegmentationNet, card: ModelCard,
                 box: Box | None = None, *, config: RefineConfig | None = None,
                 folder: str | os.PathLike | None = None, case_id: str = "",
                 reader_id: str = "", session_id: str | None = None,
                 reference: Volume | None = None) -> None:
        self._setup(volume, model, card, box, config or RefineConfig(), case_id, reader_id,
                    session_id or uuid.uuid4().hex, reference)
        if folder is not None:
            folder = Path(folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file of that name, a read-only or full file system
                raise SessionError(f"cannot use {folder} as the session folder "
                                   f"({exc.strerror or exc}); give a folder you can write to"
                                   ) from exc
            lock = FolderLock(folder)  # SessionError when open elsewhere
            if (folder / "state.json").exists():
                lock.release()
                raise SessionError(f"{folder} already holds a session (state.json); resume it "
                                   "with Session.load(folder, volume, model, card) or choose "
                                   "another folder")
            self._store = AutosaveFolder(folder, lock)
            self._folder = folder
        try:
            with self._lock:
                t0 = time.perf_counter()
                autosave_s = self._autosave()
                self._log("open", t0, {"shape": list(volume.shape), "box": _box_dict(self._box),
                                       "config": self._config.to_dict(),
                                       "autosave_s": autosave_s})
        except BaseException:
            self._release_folder()
            raise

    def _setup(self, volume: Volume, model: Any, card: ModelCard, box: Box | None,
               config: RefineConfig, case_id: str, reader_id: str, session_id: str,
               reference: Volume | None) -> None:
        if not isinstance(volume, Volume):
            raise InputError(f"volume must be an iunet_nb Volume (CT in HU with its geometry), "
                             f"got {type(volume).__name__}; read one with iunet_nb.io.images.read_image")
        if not isinstance(model, SegmentationNet):
            raise SessionError(f"the model must be an iunet_nb SegmentationNet (build_network or "
                               f"load_model), got {type(model).__name__}")
        if model.cfg.n_classes != 2:
            raise SessionError(f"interactive sessions segment one structure: the model must have "
                               f"2 classes (background, structure), it has {model.cfg.n_classes}")
        if not isinstance(card, ModelCard):
            raise SessionError(f"card must be a ModelCard, got {type(card).__name__}")
        if not isinstance(config, RefineConfig):
            raise ConfigError(f"config must be a RefineConfig, got {type(config).__name__}")
        if box is not None:
            box.validate(volume.shape)
        check_ct_spacing(volume.geometry)
        check_memory(estimate_session_bytes(volume.shape),
                     f"an interactive session on a CT of {volume.shape} voxels (z, y, x)")
        if reference is not None:
            from ..io.images import check_same_grid
            check_same_grid(volume, reference, "reference")
            if not np.any(reference.array):
                raise InputError("the reference mask is empty; DSC against it is undefined")
        warm_up()  # the first refine round would otherwise pay torch's optimiser set-up
        self._lock = threading.RLock()
        self._volume = volume
        self._card = card
        self._config = config
        self._device = select_device(config.device)
        self._model_hash = model_hash(model)
        self._model: SegmentationNet = copy.deepcopy(model).to(self._device).eval()
        self._model.freeze_for_refinement()
        names = {id(p): n for n, p in self._model.named_parameters()}
        self._param_names = [names[id(p)] for p in self._model.interactive_parameters()]
        self._initial_params = self._get_params()
        self._ct_hash = array_hash(volume)
        self._case_id, self._reader_id, self._session_id = str(case_id), str(reader_id), session_id
        self._reference_idx = (None if reference is None
                               else np.flatnonzero(reference.array))
        self._box = box
        self._box_check: Any = None  # the automatic box's BoxCheck (systems.autobox), if used
        self._predicted = False
        self._refine_round = 0
        # scribbles with id >= this were added since the last refine (local_mm, one_way)
        self._refined_below = 0
        self._mask = np.zeros(volume.shape, dtype=np.uint8)
        self._scribbles = np.zeros(volume.shape, dtype=np.uint8)
        self._registry: dict[int, _Scribble] = {}
        self._next_id = 1
        self._prob: np.ndarray | None = None
        self._undo: list[_Entry] = []
        self._redo: list[_Entry] = []
        self._events: list[dict[str, Any]] = []
        self._folder: Path | None = None
        self._store: AutosaveFolder | None = None
        self._working: tuple[Box, np.ndarray, CropRecord] | None = None
        # (box, the HU of its crop smoothed for edges.snap_to_edges)
        self._smoothed_hu: tuple[Box, np.ndarray] | None = None
        self._encoded: tuple[Box, EncodedFeatures] | None = None
        # (box, the output of self._prob or of the last prediction in that box): _output
        self._last_output: tuple[Box, NetworkOutput] | None = None
        # (box, the output of the loaded weights there): where refine rounds start from
        # without keep_weights_between_rounds
        self._initial_output: tuple[Box, NetworkOutput] | None = None
        self._generation = 0
        self._pending: set[concurrent.futures.Future] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    # -- read-only state ------------------------------------------------------------------------
    @property
    def volume(self) -> Volume:
        """The CT this session segments."""
        return self._volume

    @property
    def mask(self) -> Volume:
        """A copy of the current mask, uint8 {0, 1} ``(z, y, x)`` in the CT's geometry."""
        with self._lock:
            return Volume(self._mask.copy(), self._volume.geometry, {"session_id": self._session_id})

    @property
    def scribbles(self) -> Volume:
        """A copy of the scribble map, uint8 ``(z, y, x)``: 0 none, 1 foreground, 2 background."""
        with self._lock:
            return Volume(self._scribbles.copy(), self._volume.geometry)

    def slice_of(self, layer: str, view: str, slice_index: int) -> np.ndarray:
        """A copy of one 2D slice ``(row, col)`` of ``"mask"``, ``"scribbles"`` or ``"image"``."""
        layers = {"mask": self._mask, "scribbles": self._scribbles, "image": self._volume.array}
        if layer not in layers:
            raise InputError(f"unknown layer {layer!r}; use one of {list(layers)}")
        with self._lock:
            axis, _, _, k = _check_view(view, slice_index, self._volume.shape)
            return np.take(layers[layer], k, axis=axis).copy()

    @property
    def box(self) -> Box | None:
        """The current box (None until one is given)."""
        return self._box

    @property
    def box_check(self) -> Any:
        """The :class:`~iunet_nb.systems.autobox.BoxCheck` of the automatic box the last
        :meth:`predict` used (its ``unsure`` and ``reasons`` say whether to trust it); None when
        that predict was given a box or used none from the detector."""
        return self._box_check

    @property
    def config(self) -> RefineConfig:
        return self._config

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def folder(self) -> Path | None:
        return self._folder

    @property
    def refine_round(self) -> int:
        """Number of committed refinements since the last predict/reset (seeds the next one)."""
        return self._refine_round

    @property
    def scribble_ids(self) -> list[int]:
        """Ids of the current scribbles, oldest first."""
        with self._lock:
            return sorted(self._registry)

    def scribble_info(self, scribble_id: int) -> dict[str, Any]:
        """Label, voxel count, view, slice and radius of one scribble."""
        with self._lock:
            s = self._get_scribble(scribble_id)
            return {"id": s.id, "label": s.label, "n_voxels": int(s.indices.size), **s.info}

    @property
    def events(self) -> list[dict[str, Any]]:
        """A copy of the event log (also in ``events.jsonl`` when there is a folder)."""
        with self._lock:
            return [dict(e) for e in self._events]

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def history_nbytes(self) -> int:
        """Bytes held by the undo and redo history (bounded by ``config.max_history_mb``)."""
        with self._lock:
            return sum(e.nbytes for e in self._undo) + sum(e.nbytes for e in self._redo)

    @property
    def history(self) -> list[str]:
        """Action names on the undo stack, oldest first."""
        with self._lock:
            return [e.action for e in self._undo]

    def probabilities(self) -> Volume:
        """The last network output on the CT grid, float32 ``(z, y, x)`` (0 outside the crop).

        Raises:
            SessionError: nothing predicted yet.
        """
        with self._lock:
            if self._prob is None or self._box is None:
                raise SessionError("no prediction yet: call predict() first")
            _, _, record = self._working_grid(self._box)
            return Volume(restore_probabilities(self._prob, record), self._volume.geometry)

    # -- actions: prediction ---------------------------------------------------------------------
    def _fallback_box(self) -> Box:
        """The box :meth:`predict` uses when none was given (``config.box_fallback``)."""
        fallback = self._config.box_fallback
        if fallback == "whole":
            return Box((0, 0, 0), self._volume.shape)
        if fallback == "detector" and self._card.structure == "pancreas":
            from ..systems.autobox import find_box

            self._box_check = find_box(self._volume, self._mask_in)
            if self._box_check.unsure:
                logger.warning("the automatic box is probably wrong (%s): check the mask, or "
                               "draw a box and pass it to predict(box)",
                               self._box_check.summary())
            return self._box_check.box
        why = ("there is no automatic detector for "
               f"'{self._card.structure}'" if fallback == "detector" else "no box was given")
        raise SessionError(
            f"no box: {why}. Draw a box around the structure and pass it to predict(box) (or "
            "Session(..., box=...)); iunet_nb.model.predict.make_box builds one from voxel or "
            "physical corners. RefineConfig(box_fallback='whole') uses the whole image instead")

    def predict(self, box: Box | None = None) -> Volume:
        """Segment the structure in the box with the network's current weights.

        The whole mask is replaced by the thresholded, resampled prediction (0 outside the
        crop); scribbles present are then forced (``config.force_scribbles``). Undoable.

        Args:
            box: a new box (replaces the session's); None keeps the current one.

        Returns:
            the mask (a copy), uint8 ``(z, y, x)`` in the CT's geometry.

        Raises:
            SessionError: no box given anywhere and ``config.box_fallback == "error"``.
            InputError: the box lies outside the image.
        """
        with self._lock:
            t0 = time.perf_counter()
            self._begin_change()
            self._box_check = None
            if box is not None:
                box.validate(self._volume.shape)
            elif self._box is None:
                box = self._fallback_box()
            new_box = box if box is not None else self._box
            assert new_box is not None
            prob = self._forward(new_box)
            output = self._output(prob, new_box)
            if self._params_are_initial():
                self._initial_output = (new_box, output)
            full = output.mask
            new_mask = np.zeros_like(self._mask)
            _, _, record = self._working_grid(new_box)
            new_mask[record.crop.slices] = full
            self._force(new_mask)
            entry = _Entry(uuid.uuid4().hex, "predict", {"box": new_box.to_dict()},
                           mask=_Diff.between(self._mask, new_mask),
                           prob_before=self._prob, prob_after=prob,
                           state_before=self._scalars(),
                           state_after={**self._scalars(), "box": new_box.to_dict(),
                                        "predicted": True, "refine_round": 0,
                                        "refined_below": 0})
            self._apply(entry, forward=True)
            auto = {} if self._box_check is None else {"auto_box": self._box_check.to_dict()}
            self._commit(entry, t0, {"box": new_box.to_dict(),
                                     "n_mask_voxels": int(np.count_nonzero(self._mask)), **auto})
            return self.mask

    def reset(self, *, keep_scribbles: bool = False) -> Volume:
        """Back to the initial prediction: original weights, their mask, no scribbles. Undoable.

        Args:
            keep_scribbles: keep the scribbles (they are then forced into the mask).

        Raises:
            SessionError: nothing predicted yet.
        """
        with self._lock:
            t0 = time.perf_counter()
            self._begin_change()
            self._require_prediction("reset")
            assert self._box is not None
            current = self._get_params()
            self._set_params(self._initial_params)
            try:
                prob = self._forward(self._box)
            finally:
                self._set_params(current)
            before_scrib: dict[int, _Scribble | None] = {}
            after_scrib: dict[int, _Scribble | None] = {}
            if not keep_scribbles:
                before_scrib = dict(self._registry)
                after_scrib = {sid: None for sid in self._registry}
            new_mask = np.zeros_like(self._mask)
            _, _, record = self._working_grid(self._box)
            output = self._output(prob, self._box)
            self._initial_output = (self._box, output)
            new_mask[record.crop.slices] = output.mask
            self._force(new_mask, keep=keep_scribbles)
            entry = _Entry(uuid.uuid4().hex, "reset", {"keep_scribbles": keep_scribbles},
                           mask=_Diff.between(self._mask, new_mask),
                           scribbles_before=before_scrib, scribbles_after=after_scrib,
                           params_before=current, params_after=self._initial_params,
                           prob_before=self._prob, prob_after=prob,
                           state_before=self._scalars(),
                           state_after={**self._scalars(), "refine_round": 0,
                                        "refined_below": 0})
            self._apply(entry, forward=True)
            self._commit(entry, t0, {"keep_scribbles": keep_scribbles})
            return self.mask

    # -- actions: scribbles ------------------------------------------------------------------------
    def add_scribble(self, label: int | str, stroke: Sequence[Sequence[float]] | None = None, *,
                     view: str = "axial", slice_index: int | None = None,
                     radius_mm: float | None = None, radius_vox: float | None = None,
                     points: Sequence[Sequence[int]] | np.ndarray | None = None) -> int:
        """Add a foreground or background scribble; returns its id. Undoable.

        Either a ``stroke`` on one slice of a view (a polyline of ``(row, col)`` points,
        painted with a disc brush, see :func:`stroke_to_voxels`) or ``points``: exact voxel
        indices ``(N, 3)`` ``(z, y, x)``. Scribbles live on the CT grid; where two overlap the
        newer one wins. Adding a scribble supersedes a refinement in flight.

        Args:
            label: 1 / ``"fg"`` (foreground) or 2 / ``"bg"`` (background).
            stroke: ``(N, 2)`` points ``(row, col)`` on the slice.
            view: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (for ``stroke``).
            slice_index: slice of the view (for ``stroke``).
            radius_mm: brush radius in mm; or ``radius_vox`` in voxels (default 0.5 voxel).
            points: exact voxels instead of a stroke.

        Returns:
            the new scribble's id (int, never reused in this session).

        Raises:
            InputError: bad label, view, slice, radius, an empty or off-image stroke, both
                or neither of ``stroke`` and ``points``; a stroke of more than 10,000 points,
                more than 10^6 ``points``, or a brush sweeping more than 10^8 voxels (caps far
                above a hand-drawn stroke, :func:`iunet_nb.interactive.strokes.check_scribble_size`),
                refused before any work.
        """
        with self._lock:
            t0 = time.perf_counter()
            value = _parse_label(label, for_mask=False)
            indices, info = self._brush(stroke, points, view, slice_index, radius_mm, radius_vox)
            self._begin_change()
            sid = self._next_id
            scribble = _Scribble(sid, value, indices, info)
            entry = _Entry(uuid.uuid4().hex, "scribble", {"id": sid, "label": value, **info},
                           scribbles_before={sid: None}, scribbles_after={sid: scribble},
                           state_before=self._scalars(),
                           state_after={**self._scalars(), "next_id": sid + 1})
            self._apply(entry, forward=True)
            self._commit(entry, t0, {"id": sid, "label": value, "n_voxels": int(indices.size),
                                     **info})
            return sid

    def erase_scribble(self, scribble_id: int) -> None:
        """Remove one scribble by id. Undoable.

        Raises:
            InputError: no scribble with that id.
        """
        with self._lock:
            t0 = time.perf_counter()
            s = self._get_scribble(scribble_id)
            self._begin_change()
            entry = _Entry(uuid.uuid4().hex, "erase", {"id": s.id},
                           scribbles_before={s.id: s}, scribbles_after={s.id: None},
                           state_before=self._scalars(), state_after=self._scalars())
            self._apply(entry, forward=True)
            self._commit(entry, t0, {"id": s.id, "n_voxels": int(s.indices.size)})

    def erase_scribbles(self, stroke: Sequence[Sequence[float]], view: str, slice_index: int, *,
                        radius_mm: float | None = None, radius_vox: float | None = None) -> int:
        """Erase scribble voxels under a brush stroke (any scribble); returns voxels erased.

        Scribbles left without voxels are removed. Undoable (when something was erased).

        Raises:
            InputError: as :func:`stroke_to_voxels`.
        """
        with self._lock:
            t0 = time.perf_counter()
            brush, info = self._brush(stroke, None, view, slice_index, radius_mm, radius_vox)
            self._begin_change()
            before: dict[int, _Scribble | None] = {}
            after: dict[int, _Scribble | None] = {}
            n_erased = 0
            for sid, s in self._registry.items():
                hit = np.isin(s.indices, brush, assume_unique=True)
                if hit.any():
                    before[sid] = s
                    left = s.indices[~hit]
                    after[sid] = _Scribble(sid, s.label, left, s.info) if left.size else None
            if before:
                old = self._scribbles.ravel()[brush]
                n_erased = int(np.count_nonzero(old))
                entry = _Entry(uuid.uuid4().hex, "erase", {"stroke": True, **info},
                               scribbles_before=before, scribbles_after=after,
                               state_before=self._scalars(), state_after=self._scalars())
                self._apply(entry, forward=True)
                self._commit(entry, t0, {"ids": sorted(before), "n_erased": n_erased, **info})
            else:
                self._log("erase", t0, {"ids": [], "n_erased": 0, **info})
            return n_erased

    # -- actions: manual editing ------------------------------------------------------------------
    def paint(self, label: int | str, stroke: Sequence[Sequence[float]] | None = None, *,
              view: str = "axial", slice_index: int | None = None,
              radius_mm: float | None = None, radius_vox: float | None = None,
              points: Sequence[Sequence[int]] | np.ndarray | None = None) -> int:
        """Paint (label 1) or erase (label 0) directly on the mask: the paper's manual mode.

        Same brush as :meth:`add_scribble`; the network is not involved. Undoable.

        Returns:
            the number of mask voxels changed.
        """
        with self._lock:
            t0 = time.perf_counter()
            value = _parse_label(label, for_mask=True)
            indices, info = self._brush(stroke, points, view, slice_index, radius_mm, radius_vox)
            self._begin_change()
            old = self._mask.ravel()[indices]
            diff = _Diff.make(indices, old, np.full_like(old, value))
            entry = _Entry(uuid.uuid4().hex, "paint", {"label": value, **info}, mask=diff,
                           state_before=self._scalars(), state_after=self._scalars())
            if diff.n:
                self._apply(entry, forward=True)
                self._commit(entry, t0, {"label": value, "n_changed": diff.n, **info})
            else:
                self._log("paint", t0, {"label": value, "n_changed": 0, **info})
            return diff.n

    # -- actions: refinement ----------------------------------------------------------------------
    def refine(self) -> Volume:
        """One round of iUnet interactive refinement; blocks until done. Undoable.

        Steps: the target is the current mask on the working grid (crop, resample, >= 0.5)
        with the scribble voxels (mapped to their nearest working voxel; background wins
        where both land) set to their label; the weight map comes from
        :func:`~iunet_nb.interactive.geodesic.scribble_weight_map` on the preprocessed image with the
        working grid's spacing; :func:`fine_tune` trains the two interactive layers of a copy
        of the session's network (from the previous round's weights, or from the loaded ones
        when ``keep_weights_between_rounds`` is False) under ``torch.manual_seed(seed +
        refine_round)``; the new probabilities are resampled to the crop on the CT grid and
        thresholded. Inside the crop the mask takes the new values, except that changes
        farther than ``config.local_mm`` from the scribbles added since the previous refine
        are discarded, and with ``config.one_way`` so are changes against those scribbles'
        direction (all foreground: only additions kept; all background: only removals;
        mixed: both), with ``config.confidence_gate`` changes at voxels the network held
        more surely than the new strokes (see :class:`RefineConfig`), and with
        ``config.new_changes_only`` changes the previous network output already had, and
        with ``config.geodesic_sides`` removals off the background strokes' geodesic side;
        outside the crop (where only manual painting can have put voxels)
        the mask is kept. New foreground strokes the network held confidently as background,
        more than 5 mm from the mask, add their geodesic region (the stroke fill,
        ``config.fill_below``). Finally scribble voxels are forced to their label
        (``force_scribbles``). The refine event records the new scribbles' ids, the
        number of changes discarded (``n_reverted``), the voxels filled (``n_filled``) and
        the new strokes' median prior and (foreground strokes) distance from the mask.

        Returns:
            the new mask (a copy).

        Raises:
            SessionError: nothing predicted yet; no scribbles; no scribble inside the crop;
                the refinement was superseded by another action (from another thread).
        """
        job = self._start_refine()
        result = self._run_refine(job, None)
        if result is None:
            raise SessionError("this refinement was superseded by a newer action and was "
                               "discarded; call refine() again")
        return result

    def refine_async(self) -> concurrent.futures.Future:
        """Start a refinement on the session's worker thread and return at once.

        The future's result is the new mask (:class:`Volume`). A newer action (a scribble, a
        new ``refine_async``, ...) or :meth:`cancel` supersedes it: it stops at its next
        iteration, changes nothing, and the future is cancelled. The future stays pending
        while it computes and ``cancel()`` on it works until it commits.

        Raises:
            SessionError: as :meth:`refine` (checked now, before any work); session closed.
        """
        job = self._start_refine()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._pending.add(future)
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="iunet-refine")
            executor = self._executor

        def work() -> None:
            try:
                result = self._run_refine(job, future)
            except BaseException as exc:
                logger.exception("asynchronous refinement failed")
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    if not future.cancelled():
                        future.set_exception(exc)
            else:
                if result is None:
                    future.cancel()
                else:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_result(result)
            finally:
                with self._lock:
                    self._pending.discard(future)

        executor.submit(work)
        return future

    def cancel(self) -> None:
        """Supersede any refinement in flight (it changes nothing)."""
        with self._lock:
            self._supersede()

    def close(self) -> None:
        """Cancel refinements in flight, shut the worker thread down and unlock the folder.

        Idempotent. After closing, the session still answers (mask, events) but no longer
        writes its folder: an action that would autosave raises :class:`SessionError`.
        """
        with self._lock:
            self._supersede()
            executor, self._executor = self._executor, None
            self._closed = True
        if executor is not None:
            executor.shutdown(wait=True)
        with self._lock:
            self._release_folder()

    def _release_folder(self) -> None:
        """Give the folder lock up (another process may then open the session)."""
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- undo / redo -------------------------------------------------------------------------------
    def undo(self) -> Volume:
        """Undo the last action (scribble, erase, paint, predict, refine, reset).

        Returns:
            the mask after undoing (a copy).

        Raises:
            SessionError: nothing to undo.
        """
        return self._undo_redo(undo=True)

    def redo(self) -> Volume:
        """Redo the last undone action.

        Raises:
            SessionError: nothing to redo (or a new action cleared the redo history).
        """
        return self._undo_redo(undo=False)

    def _undo_redo(self, undo: bool) -> Volume:
        with self._lock:
            t0 = time.perf_counter()
            source, target = (self._undo, self._redo) if undo else (self._redo, self._undo)
            if not source:
                raise SessionError("nothing to undo" if undo else
                                   "nothing to redo (a new action clears the redo history)")
            self._begin_change()
            entry = source.pop()
            self._apply(entry, forward=not undo)
            target.append(entry)
            autosave_s = self._autosave()
            self._log("undo" if undo else "redo", t0, {"action": entry.action, "uid": entry.uid,
                                                       "autosave_s": autosave_s})
            return self.mask

    # -- export and save ----------------------------------------------------------------------------
    def export(self, path: str | os.PathLike) -> Path:
        """Write the mask in the CT's geometry, atomically.

        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``: see :func:`iunet_nb.io.images.write_mask`.
        ``.dcm``: a DICOM Segmentation referencing the CT series
        (:func:`iunet_nb.io.dicomseg.write_dicom_seg`; the CT must have been read from DICOM,
        the structure named by the model card, the reader id as content creator).

        Returns:
            the path written.

        Raises:
            InputError: unsupported extension; ``.dcm`` for a CT not read from DICOM, an
                empty mask or highdicom not installed.
        """
        from ..io.dicomseg import DICOM_SEG_EXTENSIONS, write_dicom_seg
        from ..io.images import write_mask

        check_export_target(self._folder, self._volume.meta.get("source"), path)
        with self._lock:
            t0 = time.perf_counter()
            mask = Volume(self._mask, self._volume.geometry)
            if str(path).lower().endswith(DICOM_SEG_EXTENSIONS):
                out = write_dicom_seg(mask, self._volume, path, structure=self._card.structure,
                                      content_creator_name=self._reader_id or None)
                fmt = "dicom-seg"
            else:
                out = write_mask(mask, path)
                fmt = "mask"
            self._log("export", t0, {"path": str(out), "format": fmt})
            return Path(out)

    def save(self) -> None:
        """Autosave now (it happens after every action anyway) and log a ``save`` event.

        Raises:
            SessionError: the session has no folder.
        """
        with self._lock:
            if self._folder is None:
                raise SessionError("this session has no folder; create it with "
                                   "Session(..., folder=...) to save")
            t0 = time.perf_counter()
            assert self._store is not None
            self._store.mark("mask", "scribbles", "params", "prob")
            autosave_s = self._autosave()
            self._log("save", t0, {"autosave_s": autosave_s})

    # ============================================================================================
    # internals
    # ============================================================================================
    def _require_prediction(self, what: str) -> None:
        if not self._predicted or self._box is None:
            raise SessionError(f"cannot {what} before the initial segmentation: call predict() "
                               "first")

    def _begin_change(self) -> None:
        """Before a state change: refuse it on a closed session with a folder, then supersede
        refinements in flight (lock held)."""
        if self._store is not None:
            self._store.io()  # raises SessionError once closed
        self._supersede()

    def _supersede(self) -> None:
        """Make every refinement in flight obsolete (lock held)."""
        self._generation += 1
        for f in list(self._pending):
            f.cancel()

    def _scalars(self) -> dict[str, Any]:
        return {"box": _box_dict(self._box), "predicted": self._predicted,
                "refine_round": self._refine_round, "next_id": self._next_id,
                "refined_below": self._refined_below}

    def _get_scribble(self, scribble_id: Any) -> _Scribble:
        if not _is_int(scribble_id) or int(scribble_id) not in self._registry:
            raise InputError(f"no scribble with id {scribble_id!r}; current ids: "
                             f"{sorted(self._registry)}")
        return self._registry[int(scribble_id)]

    def _brush(self, stroke: Any, points: Any, view: str, slice_index: Any,
               radius_mm: float | None, radius_vox: float | None,
               ) -> tuple[np.ndarray, dict[str, Any]]:
        shape = self._volume.shape
        if (stroke is None) == (points is None):
            raise InputError("give either a stroke (with view and slice_index) or points "
                             "(voxel indices z, y, x), not both and not neither")
        if slice_index is not None or points is not None:
            check_scribble_size(shape, self._volume.spacing_mm, stroke, points, view=view,
                                slice_index=slice_index, radius_mm=radius_mm,
                                radius_vox=radius_vox)
        if points is not None:
            if radius_mm is not None or radius_vox is not None:
                raise InputError("points are painted exactly; a brush radius applies to strokes")
            idx = _points_to_voxels(shape, points)
            return idx, {"kind": "points", "n_points": len(np.atleast_2d(points))}
        if slice_index is None:
            raise InputError(f"a stroke needs the slice_index of the {view!r} slice it is on")
        idx = stroke_to_voxels(shape, self._volume.spacing_mm, stroke, view, slice_index,
                               radius_mm=radius_mm, radius_vox=radius_vox)
        info = {"kind": "stroke", "view": view, "slice_index": int(slice_index),
                "radius_mm": radius_mm, "radius_vox": radius_vox,
                "n_points": len(_as_points(stroke, 2, "stroke"))}
        return idx, info

    # -- state changes (lock held) ------------------------------------------------------------------
    def _apply(self, entry: _Entry, forward: bool) -> None:
        """Move the state across ``entry`` (forward = do/redo, backward = undo)."""
        if entry.mask is not None and entry.mask.n:
            entry.mask.apply(self._mask, forward)
            self._mark("mask")
        scribs = entry.scribbles_after if forward else entry.scribbles_before
        if scribs:
            for sid, s in scribs.items():
                if s is None:
                    self._registry.pop(sid, None)
                else:
                    self._registry[sid] = s
            self._replay_scribbles()
            self._mark("scribbles")
        params = entry.params_after if forward else entry.params_before
        if params is not None:
            self._set_params(params)
            self._mark("params")
        if entry.prob_after is not None or entry.prob_before is not None:
            self._prob = entry.prob_after if forward else entry.prob_before
            self._mark("prob")
        state = entry.state_after if forward else entry.state_before
        if state:
            self._box = Box.from_dict(state["box"]) if state["box"] is not None else None
            self._predicted = bool(state["predicted"])
            self._refine_round = int(state["refine_round"])
            self._next_id = max(self._next_id, int(state["next_id"]))
            self._refined_below = int(state.get("refined_below", 0))

    def _replay_scribbles(self) -> None:
        arr = np.zeros(self._volume.shape, dtype=np.uint8)
        flat = arr.ravel()
        for sid in sorted(self._registry):
            s = self._registry[sid]
            flat[s.indices] = s.label
        self._scribbles = arr

    def _force(self, mask: np.ndarray, keep: bool = True) -> None:
        """Set scribble voxels to their label in ``mask`` (no-op when not keep or not enabled)."""
        if not self._config.force_scribbles or not keep or not self._registry:
            return
        idx = np.unique(np.concatenate([s.indices for s in self._registry.values()]))
        mask.ravel()[idx] = (self._scribbles.ravel()[idx] == _FG).astype(np.uint8)

    def _commit(self, entry: _Entry, t0: float, details: dict[str, Any]) -> None:
        """Push an applied entry on the undo stack, bound the history, autosave, log."""
        self._undo.append(entry)
        self._redo.clear()
        self._bound_history()
        details = {**details, "autosave_s": self._autosave()}
        self._log(entry.action, t0, details)

    def _bound_history(self) -> None:
        limit = self._config.max_history_mb * 2 ** 20
        total = sum(e.nbytes for e in self._undo) + sum(e.nbytes for e in self._redo)
        while total > limit and len(self._undo) > 1:
            dropped = self._undo.pop(0)
            total -= dropped.nbytes
            logger.debug("history over %.1f MiB: dropped the oldest entry (%s)",
                         self._config.max_history_mb, dropped.action)

    # -- network ---------------------------------------------------------------------------------
    def _get_params(self, model: SegmentationNet | None = None) -> dict[str, np.ndarray]:
        model = self._model if model is None else model
        return {n: p.detach().cpu().numpy().copy()
                for n, p in zip(self._param_names, model.interactive_parameters())}

    def _set_params(self, params: dict[str, np.ndarray], model: SegmentationNet | None = None,
                    ) -> None:
        model = self._model if model is None else model
        with torch.no_grad():
            for n, p in zip(self._param_names, model.interactive_parameters()):
                p.copy_(torch.from_numpy(np.asarray(params[n])).to(p.device))

    def _working_grid(self, box: Box) -> tuple[Box, np.ndarray, CropRecord]:
        """(box, preprocessed image, record), cached for the last box."""
        if self._working is None or self._working[0] != box:
            cfg = self._card.preprocess
            crop = box.expand(cfg.margin_zyx(self._volume.shape)).clip(self._volume.shape)
            check_memory(estimate_preprocess_bytes(crop.size, cfg.size_zyx),
                         f"preprocessing the crop of {crop.size} voxels (z, y, x)",
                         hint="draw a tighter box around the structure, or downsample the CT")
            x, record = preprocess_image(self._volume, box, cfg)
            self._working = (box, x, record)
            self._encoded = None
        return self._working

    def _forward(self, box: Box) -> np.ndarray:
        _, x, _ = self._working_grid(box)
        try:
            return self._forward_on_device(x)
        except torch.cuda.OutOfMemoryError as exc:
            self._fall_back_to_cpu("predict", exc)
            return self._forward_on_device(x)

    def _forward_on_device(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x))[None, None].to(self._device)
            return torch.softmax(self._model(t), dim=1)[0, 1].float().cpu().numpy()

    def _mask_in(self, box: Box) -> np.ndarray:
        """The network's mask in ``box`` on the whole CT grid (no scribbles, nothing stored)."""
        _, _, record = self._working_grid(box)
        mask = np.zeros(self._volume.shape, np.uint8)
        mask[record.crop.slices] = self._output(self._forward(box), box).mask
        return mask

    def _output(self, prob: np.ndarray, box: Box) -> NetworkOutput:
        """``prob`` (working grid) restored to the crop and cut (:func:`network_output`).

        The last one is kept: a refine round starts from it (its prior and the previous
        network's mask) and produces the next.
        """
        cached = self._last_output
        if cached is not None and cached[0] == box and cached[1].prob is prob:
            return cached[1]
        _, _, record = self._working_grid(box)
        hu, smoothed = self._edge_inputs(box)
        out = network_output(prob, record, hu, self._volume.spacing_mm, self._config,
                             smoothed_hu=smoothed)
        self._last_output = (box, out)  # one assignment: a worker thread reads it whole
        return out

    def _start_output(self, box: Box, previous: NetworkOutput | None) -> NetworkOutput | None:
        """The output of the network a refine round in ``box`` starts from, if known."""
        if self._config.keep_weights_between_rounds:
            return previous
        known = self._initial_output
        return known[1] if known is not None and known[0] == box else None

    def _params_are_initial(self) -> bool:
        return all(np.array_equal(v, self._initial_params[n])
                   for n, v in self._get_params().items())

    def _edge_inputs(self, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        """The HU of the crop and, with ``config.edge_weight``, its smoothed copy (cached)."""
        _, _, record = self._working_grid(box)
        hu = self._volume.array[record.crop.slices]
        if self._config.edge_weight <= 0:
            return hu, None
        cached = self._smoothed_hu
        if cached is None or cached[0] != box:
            cached = (box, smooth_hu(hu, self._volume.spacing_mm))
            self._smoothed_hu = cached  # one assignment: a worker thread reads it whole
        return hu, cached[1]

    # -- refinement machinery ---------------------------------------------------------------------
    def _start_refine(self) -> dict[str, Any]:
        """Check the preconditions and take the snapshots, under the lock."""
        with self._lock:
            if self._closed:
                raise SessionError("the session is closed")
            self._require_prediction("refine")
            if not self._registry:
                raise SessionError("refine needs at least one scribble: add a foreground "
                                   "scribble inside missed organ or a background scribble "
                                   "inside a leak (add_scribble), then refine")
            self._begin_change()
            assert self._box is not None
            box, x, record = self._working_grid(self._box)
            crop = record.crop
            scrib_w = self._scribbles_on_working_grid(record)
            if not scrib_w.any():
                raise SessionError(
                    f"none of the {len(self._registry)} scribble(s) lies inside the crop "
                    f"{crop.to_dict()} (the box plus margin) that the network sees; draw "
                    "inside the box, or predict(box=...) with a box that covers the scribbles")
            start = (self._get_params() if self._config.keep_weights_between_rounds
                     else self._initial_params)
            model = copy.deepcopy(self._model)
            self._set_params(start, model)
            encoded = self._encoded[1] if (self._encoded and self._encoded[0] == box) else None
            new_ids = ([sid for sid in sorted(self._registry) if sid >= self._refined_below]
                       or sorted(self._registry))
            direction = _stroke_direction({self._registry[sid].label for sid in new_ids})
            new_idx = np.unique(np.concatenate([self._registry[sid].indices for sid in new_ids]))
            new_w = np.zeros(record.size_zyx, dtype=bool)
            w, inside = self._to_working_grid(record, new_idx)
            new_w[tuple(w[inside].T)] = True
            # every action supersedes a refine in flight, so the mask cannot change before
            # this round commits: the snapshot is the mask the round changes
            mask = self._mask[crop.slices].copy()
            return {"generation": self._generation, "box": box, "x": x, "record": record,
                    "mask": mask,
                    "mask_working": (crop_mask(mask, _local_record(record)) >= 0.5
                                     ).astype(np.uint8),
                    "scribbles": scrib_w, "model": model,
                    "params_before": self._get_params(), "encoded": encoded,
                    "round": self._refine_round, "new_ids": new_ids, "new_idx": new_idx,
                    "new_working": new_w, "direction": direction, "next_id": self._next_id,
                    "prob_prev": self._prob, "t0": time.perf_counter()}

    def _scribbles_on_working_grid(self, record: CropRecord) -> np.ndarray:
        """uint8 working-grid scribbles: each CT scribble voxel -> nearest working voxel."""
        out = np.zeros(record.size_zyx, dtype=np.uint8)
        if not self._registry:
            return out
        idx = np.unique(np.concatenate([s.indices for s in self._registry.values()]))
        labels = self._scribbles.ravel()[idx]  # the visible label (newest scribble wins)
        w, inside = self._to_working_grid(record, idx)
        for label in (_FG, _BG):  # background written last: it wins where both land
            sel = w[inside & (labels == label)]
            out[sel[:, 0], sel[:, 1], sel[:, 2]] = label
        return out

    def _to_working_grid(self, record: CropRecord, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest working-grid voxel ``(n, 3)`` of each flat CT index, and which lie inside."""
        zyx = np.stack(np.unravel_index(idx, self._volume.shape), axis=1)
        w = np.rint(record.original_to_working_index(zyx)).astype(np.int64)
        return w, np.all((w >= 0) & (w < np.asarray(record.size_zyx)), axis=1)

    def _run_refine(self, job: dict[str, Any], future: concurrent.futures.Future | None,
                    ) -> Volume | None:
        """Compute outside the lock (:func:`refine_step`); commit under it unless superseded.

        None if superseded.
        """
        gen = job["generation"]
        cfg = self._config

        def stale() -> bool:
            return self._generation != gen or (future is not None and future.cancelled())

        t_compute = time.perf_counter()
        if stale():
            return None
        box, record = job["box"], job["record"]
        hu, smoothed = self._edge_inputs(box)
        previous = None if job["prob_prev"] is None else self._output(job["prob_prev"], box)
        inp = RefineInput(
            image=job["x"], record=record, ct_shape=self._volume.shape,
            ct_spacing_mm=self._volume.spacing_mm,
            working_spacing_mm=record.working_geometry(self._volume.geometry).spacing_mm,
            hu=hu, smoothed_hu=smoothed, mask=job["mask"], mask_working=job["mask_working"],
            scribbles=job["scribbles"], new_strokes=job["new_working"], new_idx=job["new_idx"],
            direction=job["direction"], previous=previous,
            start=self._start_output(box, previous))
        seed = cfg.seed + job["round"]
        try:
            result = refine_step(job["model"], inp, cfg, seed=seed, encoded=job["encoded"],
                                 should_stop=stale)
        except torch.cuda.OutOfMemoryError as exc:
            self._fall_back_to_cpu("refine", exc)
            job["model"].to(self._device)
            result = refine_step(job["model"], inp, cfg, seed=seed, should_stop=stale)
        if result is None:
            logger.debug("refinement superseded; discarded")
            return None
        compute_s = time.perf_counter() - t_compute
        with self._lock:
            if stale():
                return None
            if future is not None and not future.set_running_or_notify_cancel():
                return None
            new_params = self._get_params(job["model"])
            new_mask = self._mask.copy()
            new_mask[record.crop.slices] = result.mask
            self._force(new_mask)
            if result.encoded is not None:
                self._encoded = (box, result.encoded)
            self._last_output = (box, result.output)
            entry = _Entry(uuid.uuid4().hex, "refine", {"round": job["round"], "seed": seed},
                           mask=_Diff.between(self._mask, new_mask, record.crop),
                           params_before=job["params_before"], params_after=new_params,
                           prob_before=self._prob, prob_after=result.output.prob,
                           state_before=self._scalars(),
                           state_after={**self._scalars(), "refine_round": job["round"] + 1,
                                        "refined_below": job["next_id"]})
            self._apply(entry, forward=True)
            self._commit(entry, job["t0"], {
                "round": job["round"], "seed": seed, "iterations": len(result.losses),
                "extra_iterations": cfg.extra_iterations,
                "precision": str(refine_dtype(self._model, record.size_zyx, cfg, self._device)
                                 or torch.float32).removeprefix("torch."),
                "losses": [round(v, 6) for v in result.losses],
                "compute_s": round(compute_s, 4),
                "n_changed": entry.mask.n if entry.mask else 0,
                "new_scribbles": job["new_ids"], "n_reverted": result.n_reverted,
                "fill_below": cfg.fill_below, "n_filled": result.n_filled,
                "geodesic_sides": result.geodesic_sides,
                "stroke_prior_median": result.stroke_prior,
                "stroke_mask_mm": result.stroke_mask_mm,
                "local_mm": cfg.local_mm, "one_way": cfg.one_way,
                "confidence_gate": cfg.confidence_gate, "new_changes_only": cfg.new_changes_only,
                "n_scribble_working": int(np.count_nonzero(job["scribbles"])),
                "n_uncertain_working": result.n_uncertain, "async": future is not None})
            return self.mask

    def _fall_back_to_cpu(self, what: str, exc: BaseException) -> None:
        """After a CUDA out-of-memory error: move the network to the CPU and carry on there."""
        with self._lock:
            previous = str(self._device)
            logger.warning(
                "the GPU ran out of memory during %s (%s); the session continues on the CPU "
                "(slower). To use the GPU again, free GPU memory (close other sessions or "
                "notebooks) and reopen the session", what, str(exc).splitlines()[0][:200])
            self._device = torch.device("cpu")
            self._model.to(self._device)
            self._encoded = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._log("device_fallback", time.perf_counter(),
                      {"from": previous, "to": "cpu", "during": what,
                       "reason": "CUDA out of memory"})

    # -- event log ---------------------------------------------------------------------------------
    def _log(self, event: str, t0: float, details: dict[str, Any]) -> dict[str, Any]:
        dsc = None
        if self._reference_idx is not None:
            inter = np.count_nonzero(self._mask.ravel()[self._reference_idx])
            denom = np.count_nonzero(self._mask) + self._reference_idx.size
            dsc = round(2.0 * inter / denom, 6)
        record = {"seq": len(self._events), "t_monotonic": time.monotonic(), "t_wall": utc_now(),
                  "session_id": self._session_id, "case_id": self._case_id,
                  "reader_id": self._reader_id, "event": event,
                  "duration_s": round(time.perf_counter() - t0, 6), "dsc": dsc,
                  "n_scribble_voxels": int(np.count_nonzero(self._scribbles)),
                  "details": _jsonable(details)}
        self._events.append(record)
        if self._store is not None:
            self._store.append_event(record)
        return record

    # -- autosave ----------------------------------------------------------------------------------
    def _mark(self, component: str) -> None:
        if self._store is not None:
            self._store.mark(component)

    def _autosave(self) -> float | None:
        """Write what changed, then the manifest; returns seconds (None without a folder)."""
        if self._store is None:
            return None
        return self._store.save(Snapshot(
            session_id=self._session_id, case_id=self._case_id, reader_id=self._reader_id,
            volume=self._volume, ct_hash=self._ct_hash, model_hash=self._model_hash,
            config=self._config, card=self._card, mask=self._mask, registry=self._registry,
            params=self._get_params, prob=self._prob, undo=self._undo, redo=self._redo,
            state={**self._scalars(), "n_events": len(self._events)}))

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | os.PathLike, volume: Volume, model: SegmentationNet,
             card: ModelCard, *, reference: Volume | None = None, device: str | None = None,
             use_previous: bool = False) -> Session:
        """Resume a session from its autosave folder with the identical state.

        Restores the mask, scribbles, trained parameters, last probabilities, undo/redo
        history, box, refine round and event log, so the next :meth:`refine` gives the same
        result as it would have in the original session (same seed, same weights). Nothing
        in the folder is modified unless the load succeeds (it then logs a ``load`` event).

        The folder is locked (:class:`~iunet_nb.interactive.locking.FolderLock`) until :meth:`close`:
        another process that opens it gets a :class:`SessionError` naming this one. A lock
        left by a process that died (a killed kernel) is taken over with a warning, and what
        its crash left half-written (an event line, temporary files) is cleaned up; the
        autosaved state itself is always whole (files are written atomically, the manifest
        last).

        Args:
            folder: the session folder.
            volume: the same CT (checked by a hash of its voxels and geometry).
            model: the same network weights the session was created with (checked by hash).
            card: the model's card (its network and preprocessing must match the saved one).
            reference: optional reference mask for DSC in the event log.
            device: override the saved ``config.device``.
            use_previous: load ``state.prev.json`` (the state one action earlier) instead,
                e.g. when the latest autosave is damaged.

        Raises:
            SessionError: no session in the folder; a missing, truncated or corrupt file (the
                message names it); another CT or other weights than the saved session's; the
                session is open in another process.
        """
        folder = Path(folder)
        manifest_name = "state.prev.json" if use_previous else "state.json"
        path = folder / manifest_name
        hint = ("; the previous state is intact: load it with use_previous=True"
                if not use_previous and (folder / "state.prev.json").is_file() else "")
        if not path.is_file():
            raise SessionError(f"{path} does not exist: {folder} holds no saved session")
        lock = FolderLock(folder)  # SessionError when open in another process
        try:
            return cls._load_locked(folder, lock, path, manifest_name, hint, volume, model,
                                    card, reference, device)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _load_locked(cls, folder: Path, lock: FolderLock, path: Path, manifest_name: str,
                     hint: str, volume: Volume, model: SegmentationNet, card: ModelCard,
                     reference: Volume | None, device: str | None) -> Session:
        saved = read_folder(folder, path, hint, volume, model, card, device)
        manifest, state = saved.manifest, saved.manifest["state"]
        self = cls.__new__(cls)
        self._setup(volume, model, card, None, saved.config, manifest["case_id"],
                    manifest["reader_id"], manifest["session_id"], reference)
        self._store = AutosaveFolder(folder, lock, saved)
        repair_after_crash(folder)
        with self._lock:
            self._mask = saved.mask
            self._registry = saved.registry
            self._replay_scribbles()
            self._set_params(saved.params)
            self._prob = saved.prob
            self._box = Box.from_dict(state["box"]) if state["box"] is not None else None
            self._predicted = bool(state["predicted"])
            self._refine_round = int(state["refine_round"])
            self._next_id = int(state["next_id"])
            self._refined_below = int(state.get("refined_below", 0))
            self._undo, self._redo = saved.undo, saved.redo
            self._events = read_events(folder / "events.jsonl")
            self._folder = folder
            t0 = time.perf_counter()
            autosave_s = self._autosave()
            self._log("load", t0, {"manifest": manifest_name, "autosave_s": autosave_s})
        return self


def _local_record(record: CropRecord) -> CropRecord:
    """A record whose 'original image' is just the crop: restores/crops the crop region only
    (with the same reorientation to the working grid's LPS order)."""
    size = record.crop.size
    return CropRecord(size, Box((0, 0, 0), size), Box((0, 0, 0), size), record.size_zyx,
                      axes_zyx=record.axes_zyx, flip_zyx=record.flip_zyx)


def _box_dict(box: Box | None) -> dict[str, list[int]] | None:
    return None if box is None else box.to_dict()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
