"""One round of interactive refinement, as a function of its inputs.

:func:`refine_step` is the whole round: from the working image, the current mask, the
strokes and a network (a :class:`RefineInput` of snapshots) to the new probabilities and the
new mask of the crop (a :class:`RefineResult`). :class:`~iunet_nb.interactive.session.Session` only
orchestrates around it: snapshots under its lock, threads and superseding, history,
autosave and the event log. The parts: :class:`RefineConfig` (the settings of refinement and
of the session around it), :func:`fine_tune` (the iUnet interactive training loop on one
image), :func:`network_output` (working-grid probabilities to a mask of the crop), the
target with the scribbles burnt in, the voxel weight map, the locality of a refinement's
changes (near the new scribbles, in their direction, within the network's confidence), the
stroke fill and the background strokes' geodesic side.

Refinement (Boers et al. 2020, sections 2.5-2.6): all network weights are frozen except the
last layer and one bottleneck layer (``SegmentationNet.interactive_parameters``); the target
is the current mask on the working grid with every scribble voxel set to its label; the
weight map is 1, 3 on scribbles and 0 where the normalised geodesic distance to a scribble
is below 0.2 (:func:`iunet_nb.interactive.geodesic.scribble_weight_map`); the loss is eq. 3
(:func:`iunet_nb.model.losses.interactive_loss`); ``iterations`` Adam steps run on this one image
in eval mode, the frozen encoder evaluated once (``encode_frozen``) and only the trainable
tail at each step (``decode_trainable``).

Deviations from the paper (defaults; measured in ``benchmarks/interactive_results.md``, where
the paper's refinement took a good initial mask to an empty one within 3-4 simulated
rounds): the uncertain band uses the Euclidean distance (``geodesic_lam=0``), Adam's step is
1e-3, and a refinement's mask changes are kept only within ``local_mm`` (15 mm) of the
scribbles added since the previous refine and only in their direction (``one_way``: a
foreground stroke only adds, a background stroke only removes) and not at voxels the
network held more surely than the strokes (``confidence_gate``), and a cross-entropy term
on the scribbled voxels (``scribble_ce``) is added to eq. 3 so that a stroke teaches the
network more than its own voxels. ``RefineConfig(geodesic_lam=1.0, lr=1e-2, local_mm=None,
one_way=False, confidence_gate=False, scribble_ce=0.0)`` restores the paper's behaviour
(``iunet_nb.studies.compare.PAPER_CONFIG`` also sets its lambda and unforced scribbles).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .._config import JsonConfig
from ..errors import ConfigError
from ..model.checkpoint import PRECISIONS, autocast_dtype
from ..model.losses import interactive_loss, scribble_cross_entropy
from ..model.nets import EncodedFeatures, SegmentationNet
from ..model.preprocess import Box, CropRecord, _is_int, _is_real, restore_crop_probabilities
from .edges import EDGE_WEIGHT, snap_to_edges
from .geodesic import NORMALISATIONS, scribble_weight_map
from .strokes import _BG, _FG

__all__ = ["NetworkOutput", "RefineConfig", "RefineInput", "RefineResult", "background_side",
           "confidently_contradicted", "fine_tune", "network_output", "refine_step",
           "stroke_fill"]

logger = logging.getLogger(__name__)

_BOX_FALLBACKS = ("detector", "error", "whole")


@dataclass(frozen=True)
class RefineConfig(JsonConfig):
    """Settings of interactive refinement and of the session around it.

    Paper values where the paper gives one; the others were chosen by measurement
    (``benchmarks/bench_session.py``, ``benchmarks/bench_interactive.py``; numbers in
    ``benchmarks/RESULTS.md`` and ``benchmarks/interactive_results.md``). The defaults
    deviate from the paper in ``geodesic_lam``, ``local_mm`` and ``one_way`` because its
    refinement, measured with the simulated annotator on trained weights, lowered the DSC
    of a good initial mask round after round; the paper's settings are
    ``iunet_nb.studies.compare.PAPER_CONFIG``.

    Args:
        version: format version of this config (1).
        iterations: Adam steps per refine round. The paper says "a few"; 5 keeps one round
            under 1 s on 2 CPU cores at 24 x 64 x 64 with the 16-base iUnet.
        lr: Adam learning rate of the refinement (the paper gives 1e-4 for baseline training
            only). Default 1e-3, measured with the simulated annotator on trained weights
            (``benchmarks/interactive_results.md``): with ``local_mm``/``one_way`` below,
            1e-3 gave the best mean DSC on 2 synthetic pancreases (0.906 -> 0.916 after 3
            rounds, vs 0.914 at 1e-2); without locality keep 1e-2 or lower.
        lam: lambda of eq. 3 (volume term), not given in the paper. Default 0: measured on the
            same scenario, every lambda >= 0.05 made the probability at *foreground*
            scribbles go down (0.363 -> 0.338 at lambda 0.05, lr 1e-2), because the target
            (current mask + scribbles) holds far less foreground than the prediction and the
            volume term, normalised by sum(T), then dominates the Adam step: the paper's
            "under-segments after refinement". Set it > 0 to keep the paper's loss.
        threshold: geodesic threshold of the uncertain band (0.2, the paper's value), on the
            distance normalised by ``normalisation``.
        normalisation: ``"max"`` (distance / its maximum over the working grid; default),
            ``"diagonal"`` or ``"none"``; see :func:`iunet_nb.interactive.geodesic.scribble_weight_map`.
        geodesic_lam: image weight of the geodesic distance in [0, 1] (GeodisTK's lambda;
            1.0 = purely intensity-driven, so the uncertain band follows the organ's edges;
            0.0 = Euclidean). Default 0.0, measured: with the image-driven distance the
            uncertain band (weight 0) covers most of a homogeneous organ and eq. 3 then
            lowers the loss by switching the band off, so the mask shrinks round after round
            (pancreas, 3 robot rounds: mean DSC 0.780 -> 0.555 with 1.0, 0.780 -> 0.810
            with 0.0). The paper's choice (1.0) is in ``iunet_nb.studies.compare.PAPER_CONFIG``.
        geodesic_iterations: raster-scan passes of the geodesic distance (GeodisTK's usual 4).
        scribble_weight: loss weight of scribble voxels (3, the paper's value).
        scribble_ce: weight of a cross-entropy term averaged over the scribbled voxels,
            added to eq. 3 (:func:`iunet_nb.model.losses.scribble_cross_entropy`; 0 = the paper's
            loss alone). In eq. 3 a stroke of a few working voxels weighs 3 against tens of
            thousands of weight-1 voxels, and 5 Adam steps moved the prediction at little
            more than the stroke itself (real liver 1.7, foreground stroke in a 205 000-voxel
            missed region: 311 voxels changed, about what the forced stroke paints; with
            the term 28 534). Default 1.0, measured with the robot (5 rounds,
            ``benchmarks/interactive_results.md``): mean DSC of 6 synthetic
            pancreas phantoms 0.949 -> 0.956 (0.953 without the term), real livers 1.17 and
            1.7 0.876 -> 0.887 (0.877 without), real spleen 0.848 -> 0.856 (0.857 without);
            with the term a larger ``lr`` (3e-3) lowered the DSC in some rounds (phantoms
            0.949 -> 0.920 after round 1), and weight 3.0 gave the spleen the same numbers.
        keep_weights_between_rounds: True: each round starts from the previous round's
            weights (cumulative, as in the paper's flowchart); False (default): from the loaded
            weights, trained afresh on the current mask and all scribbles. Measured with the
            bundled model and the simulated annotator on 6 phantoms (5 rounds): mean DSC 0.942
            -> 0.948 with False, 0.942 -> 0.942 with True (benchmarks/interactive_results.md).
        cached_encoder: evaluate the frozen front of the network once per image and only the
            trainable tail at each step (same result as the naive path, faster).
        local_mm: keep a refinement's mask changes only within this Euclidean distance (mm,
            voxel centre to voxel centre, on the CT grid) of the voxels of the scribbles
            added since the previous refine; farther changes are discarded, so a correction
            stays where the user drew and the rest of the mask, already accepted, does not
            drift. None: changes are kept anywhere in the crop (the paper's behaviour).
            After :meth:`~iunet_nb.interactive.session.Session.predict` or
            :meth:`~iunet_nb.interactive.session.Session.reset`, and when no scribble was added since
            the previous refine, every current scribble counts as new. Default
            15 mm, measured (``benchmarks/interactive_results.md``, robot, 5 rounds): the
            only setting whose mean DSC never decreased on any case (synthetic pancreas
            0.915 -> 0.929 with 15 mm, one-way, lr 1e-3; 30 mm dropped on 1 of 2 cases;
            no locality lost 0.1-0.4 DSC).
        one_way: when the new scribbles are all foreground, a refinement may only add voxels
            to the mask (0 -> 1); all background, only remove them (1 -> 0); mixed, both.
            With ``local_mm`` a change is kept only when it passes both. False: both
            directions (the paper's behaviour). Default True (measured with ``local_mm``).
        confidence_gate: when the new scribbles are all background, a refinement may not
            change a voxel the network held more surely than every voxel of those strokes;
            all foreground, less surely than every stroke voxel (mixed: no gate). Sureness
            is the foreground probability of the network the refinement starts from (with
            the default ``keep_weights_between_rounds=False``, the loaded weights: the
            prediction's map), except where the current mask disagrees with it: an earlier
            correction decided there, and the voxel counts as certain. A stroke says "what
            is like this is wrong", not "what the network is surer of is wrong too".
            Default True, measured (robot, 5 rounds, ``benchmarks/interactive_results.md``):
            real right kidney 0.868 -> 0.871 without, 0.868 -> 0.899 with (a background
            stroke on the fat edge, prior 0.56, had removed 5 059 voxels of parenchyma held
            at 1.00, 10 mm away), left kidney 0.919 -> 0.921; livers, spleens and phantoms
            within 0.001 of the ungated final DSC. Costs ~3 % of a refine round.
        new_changes_only: keep only changes at voxels where the previous network output (of
            the last predict or refine) agreed with the current mask: a change an earlier
            network already wanted, and that locality held back then, is not released when
            a later stroke comes within ``local_mm``. Default False, measured with the
            gate: real right kidney 0.899 -> 0.904 (largest drop 0.022 -> 0.0015), left
            0.921, spleen 1.7 0.886 -> 0.885, livers 0.927 / 0.892, phantoms 0.958 -> 0.957
            with a 0.0001 drop of the mean in round 5.
        extra_iterations: up to this many Adam steps after ``iterations`` while fewer than
            half of the voxels of the strokes added since the previous refine are predicted
            with their own label (the network has not yet taken them in: a region it holds
            confidently wrong). 0: exactly ``iterations`` steps. Default 0, measured (robot,
            5 rounds, ``benchmarks/interactive_results.md``, section on ``extra_iterations``
            of 2026-11-28): with 10, real spleens 0.888 / 0.897 / 0.861 -> 0.899 / 0.904 / 0.877 and livers up by
            0.002, but the left kidney's curve drops by 0.020 once, phantoms end 0.001 lower
            and a round takes 4 s instead of 1.5-2 s on the real cases.
        fill_below: the stroke fill (:func:`stroke_fill`): when the new strokes are all
            foreground and the network the refinement starts from holds their voxels
            confidently as background (median foreground probability below ``fill_below``),
            the region the strokes claim by geodesic distance on the working image is added
            to the mask in that round, beside what the fine-tuned network adds. The event log
            records the new strokes' median prior and (foreground) distance from the mask.
            Measured with the robot (10 rounds; ``benchmarks/RESULTS.md``): the pancreas model on the
            unseen real 3D-IRCADb 1.7 organs, spleen 0.793 -> 0.90, kidneys 0.045 / 0.020
            -> 0.92-0.93, liver 0.764 -> 0.886. On NIH PANCREAS_0002 a fill can leak into
            bowel of the gland's density: with the 2026-11 bundled model, margin 1 and no
            ``geodesic_sides``, 10 rounds ended at 0.597 against 0.659 without the fill.
            The fill needs the strokes' median voxel farther than :data:`FILL_REACH_MM`
            (5 mm, about two working voxels) from the mask: of the fills measured with the
            robot and the 2026-12 model, every one from strokes 3.7-4.4 mm from the mask
            lowered the DSC (real kidneys 0.865 -> 0.843 and 0.908 -> 0.878, spleen 0.884 ->
            0.875) and every one from 5.0-18.9 mm raised it (kidneys, spleen by 0.06-0.73;
            PANCREAS_0002 0.651 -> 0.690); requiring ``local_mm`` (15 mm) lost the spleen's
            first fill (10.4 mm, 0.22 -> 0.88). A network that is
            confidently wrong over a whole region (a structure it was never trained on, a
            gland it misses) cannot be moved by a few Adam steps of its last layers: measured
            with the pancreas model on real 3D-IRCADb 1.7 (robot, 10 rounds), right kidney
            0.001 -> 0.045 and spleen 0.223 -> 0.793 without the fill
            (``benchmarks/RESULTS.md``, real CT). 0: off (the paper's refinement alone).
        geodesic_sides: when the new strokes are all background, a refinement may remove
            only voxels geodesically nearer to the background strokes than to the foreground
            strokes and to the current mask farther than ``local_mm`` from the new strokes
            (:func:`background_side`): a background stroke on a leak takes the leak, not the
            organ across the edge, even where the fine-tuned network holds both as
            background (as it does for a region the stroke fill added: measured with the
            pancreas model on the real right kidney, robot, a background stroke on the
            fill's leak took the DSC from 0.912 to 0.811 without it).
        force_scribbles: after predict/refine, scribble voxels are set to their label in the
            output mask (foreground 1, background 0), on the CT grid, so what the user drew is
            always honoured even where the network disagrees.
        mask_threshold: foreground probability threshold of the mask (on the CT grid, after
            resampling the probabilities).
        edge_weight: weight of the CT's intensities in placing the mask's boundary
            (:func:`iunet_nb.interactive.edges.snap_to_edges`: the resampled probability is the prior,
            the HU histograms inside and around the mask the evidence), for the predicted
            mask and every refinement's. 0: the probability thresholded alone (the paper's).
            Default 0.5, measured (``docs/realism.md``, section 9;
            ``benchmarks/interactive_results.md``, 2026-11-28): real spleen start DSC
            0.883 / 0.874 / 0.863 -> 0.910 / 0.897 / 0.883 and after 5 robot rounds 0.900 /
            0.894 / 0.884 -> 0.932 / 0.922 / 0.896, never dropping; livers 0.915 / 0.898 ->
            0.927 / 0.925 (5 rounds: 0.928 / 0.926); held-out BTCV-synthetic pancreas 0.822
            -> 0.850 (5 rounds: 0.832 -> 0.869; the 400-iteration bundled model); procedural phantoms 0.944 -> 0.935 (the
            snapping grows into duodenal and gastric wall of pancreas HU; 5 rounds on three:
            0.952 -> 0.944).
            A refine round costs 2 % more (735 vs 720 ms).
        box_fallback: what :meth:`~iunet_nb.interactive.session.Session.predict` does without a box:
            ``"detector"``
            (default) finds one with the bundled automatic-box detector (the coarse stage of
            Zhou et al., :func:`iunet_nb.systems.autobox.detect_box`), then replaces it by
            the box of the network's own mask in it
            (:func:`~iunet_nb.systems.autobox.settle_box`: on the bundled sample box recall
            0.797 -> 0.985, DSC 0.931 -> 0.956, 0.955 with the reference box); pancreas
            models only, else it raises like
            ``"error"``; ``"error"`` raises
            :class:`~iunet_nb.errors.SessionError` asking
            for a box (the models were trained on organ boxes and give poor masks on a whole
            CT); ``"whole"`` uses the whole image.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        precision: arithmetic of the refinement's network passes (the Adam steps and the
            prediction after them; the automatic mask and the frozen encoder stay float32):
            ``"auto"`` (default) bfloat16 autocast on a CPU with bfloat16 in hardware
            (AVX512-BF16 or AMX, :func:`iunet_nb.model.checkpoint.native_bfloat16`), float32
            elsewhere; ``"float32"``; ``"bfloat16"``. Measured on a 2-core AMD EPYC with
            AVX512-BF16 (``benchmarks/RESULTS.md``): the trainable tail's forward and backward
            at 32 x 64 x 64 0.24 s -> 0.07 s, a refine round on NIH PANCREAS_0002 1.5 s ->
            0.5 s (1 thread); the robot's 10 rounds on PANCREAS_0002 and on the unseen real
            3D-IRCADb organs end at the same DSC as in float32 (within 0.001). The event log
            records the precision each round used.
        seed: base seed; round ``k`` runs under ``torch.manual_seed(seed + k)``.
        max_history_mb: bound on the undo/redo history in memory (MiB); the oldest entries
            are dropped beyond it (the newest entry is always kept). A refine entry of the
            16-base iUnet at 24 x 64 x 64 takes about 4 MiB (two copies of the 0.44 M
            trainable parameters plus two probability maps); a stroke a few kB.

    Raises:
        ConfigError: a value is out of range or of the wrong type.
    """

    version: int = 1
    iterations: int = 5
    lr: float = 1e-3
    lam: float = 0.0
    threshold: float = 0.2
    normalisation: str = "max"
    geodesic_lam: float = 0.0
    geodesic_iterations: int = 4
    scribble_weight: float = 3.0
    scribble_ce: float = 1.0
    keep_weights_between_rounds: bool = False
    cached_encoder: bool = True
    local_mm: float | None = 15.0
    one_way: bool = True
    confidence_gate: bool = True
    new_changes_only: bool = False
    extra_iterations: int = 0
    fill_below: float = 0.1
    geodesic_sides: bool = True
    force_scribbles: bool = True
    mask_threshold: float = 0.5
    edge_weight: float = EDGE_WEIGHT
    box_fallback: str = "detector"
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    max_history_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError(f"RefineConfig version {self.version} is not supported (this "
                              "iunet_nb reads version 1)")
        for name, low in (("iterations", 1), ("geodesic_iterations", 1), ("seed", 0),
                          ("extra_iterations", 0)):
            v = getattr(self, name)
            if not _is_int(v) or v < low:
                raise ConfigError(f"RefineConfig.{name} must be an integer >= {low}, got {v!r}")
        for name, low, high, open_low in (("lr", 0.0, math.inf, True), ("lam", 0.0, math.inf, False),
                                          ("threshold", 0.0, math.inf, False),
                                          ("geodesic_lam", 0.0, 1.0, False),
                                          ("scribble_weight", 0.0, math.inf, False),
                                          ("scribble_ce", 0.0, math.inf, False),
                                          ("mask_threshold", 0.0, 1.0, True),
                                          ("fill_below", 0.0, 0.5, False),
                                          ("edge_weight", 0.0, math.inf, False),
                                          ("max_history_mb", 0.0, math.inf, False)):
            v = getattr(self, name)
            ok = _is_real(v) and math.isfinite(float(v)) and low <= v <= high
            if ok and open_low and v == low:
                ok = False
            if not ok:
                rng = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
                raise ConfigError(f"RefineConfig.{name} must be a finite number in {rng}, "
                                  f"got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"RefineConfig.normalisation must be one of {list(NORMALISATIONS)}, "
                              f"got {self.normalisation!r}")
        if self.box_fallback not in _BOX_FALLBACKS:
            raise ConfigError(f"RefineConfig.box_fallback must be one of {list(_BOX_FALLBACKS)}, "
                              f"got {self.box_fallback!r}")
        if self.local_mm is not None:
            v = self.local_mm
            if not (_is_real(v) and math.isfinite(float(v)) and v > 0):
                raise ConfigError(f"RefineConfig.local_mm must be a finite distance > 0 in mm, "
                                  f"or None to keep changes anywhere in the crop, got {v!r}")
            object.__setattr__(self, "local_mm", float(v))
        for name in ("keep_weights_between_rounds", "cached_encoder", "force_scribbles",
                     "geodesic_sides",
                     "one_way", "confidence_gate", "new_changes_only"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"RefineConfig.{name} must be true or false, "
                                  f"got {getattr(self, name)!r}")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu")
                                                     or self.device.startswith("cuda")):
            raise ConfigError(f"RefineConfig.device must be 'auto', 'cpu' or 'cuda[:n]', "
                              f"got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"RefineConfig.precision must be one of {list(PRECISIONS)}, "
                              f"got {self.precision!r}")



_warmed = threading.Event()


def warm_up() -> None:
    """Pay torch's one-time optimiser set-up now, on a background thread (once per process).

    The first ``torch.optim.Adam`` of a process imports ``torch._dynamo`` (1.3 s measured on
    a 2-core EPYC, torch 2.x): without this the user's first refine round is the slow one.
    """
    if _warmed.is_set():
        return
    _warmed.set()

    def work() -> None:
        try:
            torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        except Exception:  # noqa: BLE001 - only a speed-up; fine_tune reports real errors
            logger.debug("optimiser warm-up failed", exc_info=True)

    threading.Thread(target=work, name="iunet-warm-up", daemon=True).start()


def refine_dtype(model: SegmentationNet, size_zyx: Sequence[int], config: RefineConfig,
                 device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a refine round on a working grid of ``size_zyx`` (None: float32):
    ``config.precision`` on ``device``, float32 where the grid is too small for bfloat16
    (:func:`iunet_nb.model.checkpoint.autocast_dtype`)."""
    return autocast_dtype(device, config.precision, deepest_zyx=model.deepest_zyx(size_zyx))


def fine_tune(model: SegmentationNet, image: np.ndarray, target: np.ndarray,
              weight: np.ndarray, config: RefineConfig, *,
              scribbles: np.ndarray | None = None,
              encoded: EncodedFeatures | None = None,
              should_stop: Callable[[], bool] | None = None,
              agree_on: np.ndarray | None = None,
              ) -> tuple[np.ndarray, list[float], EncodedFeatures | None] | None:
    """The iUnet interactive training loop on one image; updates ``model`` in place.

    Freezes all but ``model.interactive_parameters()``, puts the model in eval mode (batch
    norm uses and keeps its running statistics) and runs ``config.iterations`` Adam steps
    (``config.lr``; then up to ``config.extra_iterations`` more while the strokes
    ``agree_on`` are not yet mostly predicted with their label) on eq. 3 (``config.lam``)
    with the voxel weights ``weight``, plus ``config.scribble_ce`` times the cross-entropy on
    the ``scribbles`` voxels (:func:`iunet_nb.model.losses.scribble_cross_entropy`); then predicts
    once more with the updated weights.

    Args:
        model: the network to update (a private copy; its device is used).
        image: preprocessed image, float32 ``(D, H, W)`` on the working grid.
        target: uint8 ``(D, H, W)`` {0, 1}: current mask with the scribbles burnt in.
        weight: float32 ``(D, H, W)`` voxel weights (1 / 3 on scribbles / 0 uncertain).
        config: iterations, lr, lam, scribble_ce, cached_encoder.
        scribbles: uint8 ``(D, H, W)`` on the working grid, non-zero where the user drew
            (their labels are ``target``'s there); None: no scribble term.
        encoded: features of ``image`` from ``model.encode_frozen`` (reused when given and
            ``config.cached_encoder``).
        should_stop: called before every step; when it returns True the loop stops and
            the function returns None (the model is then half-trained: discard it).
        agree_on: bool ``(D, H, W)``: the voxels (the newest strokes) of which at least half
            must be predicted with their ``target`` label before ``config.extra_iterations``
            stop early; None: every ``scribbles`` voxel.

    Returns:
        ``(prob, losses, encoded, start_prob)``: float32 ``(D, H, W)`` foreground
        probability after the last step, the loss before each step, the encoder cache (None
        on the naive path) and the probability before the first step (the network as the
        refinement found it); or None when ``should_stop`` stopped it.
    """
    dev = next(model.parameters()).device
    model.eval()
    params = model.freeze_for_refinement()
    optimiser = torch.optim.Adam(params, lr=config.lr)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(dev)
    t = torch.from_numpy(np.ascontiguousarray(target).astype(np.int64)).to(dev)
    t1 = (t == 1).to(torch.float32)
    target_oh = torch.stack([1.0 - t1, t1])[None]
    w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))[None].to(dev)
    scribbled = (None if scribbles is None or config.scribble_ce == 0
                 or not np.any(scribbles) else
                 torch.from_numpy(np.ascontiguousarray(scribbles) != 0)[None].to(dev))
    # the voxels extra_iterations wait for, and the labels they must take
    watch = agree_on if agree_on is not None and np.any(agree_on) else scribbles
    watched = (None if not config.extra_iterations or watch is None or not np.any(watch) else
               torch.from_numpy(np.ascontiguousarray(watch) != 0)[None].to(dev))
    watched_labels = None if watched is None else t[None][watched]
    if config.cached_encoder:
        if encoded is None:
            encoded = model.encode_frozen(x)
        forward: Callable[[], torch.Tensor] = lambda: model.decode_trainable(encoded)
    else:
        encoded = None
        forward = lambda: model(x)
    low = refine_dtype(model, image.shape, config, dev)

    def run() -> torch.Tensor:
        if low is None:
            return forward()
        with torch.autocast(dev.type, dtype=low):
            return forward().float()
    losses = []
    start_prob = None
    for step in range(config.iterations + config.extra_iterations):
        if should_stop is not None and should_stop():
            return None
        logits = run()
        if start_prob is None:
            start_prob = torch.softmax(logits.detach(), dim=1)[0, 1].float().cpu().numpy()
        if step >= config.iterations:
            if watched is None:
                break
            agree = logits.detach().argmax(dim=1)[watched] == watched_labels
            if float(agree.float().mean()) >= 0.5:
                break
        loss = interactive_loss(torch.softmax(logits, dim=1), target_oh, w, config.lam)
        if scribbled is not None:
            loss = loss + config.scribble_ce * scribble_cross_entropy(logits, t[None], scribbled)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    if should_stop is not None and should_stop():
        return None
    with torch.no_grad():
        prob = torch.softmax(run(), dim=1)[0, 1].float().cpu().numpy()
    return prob, losses, encoded, start_prob


def _near_scribbles(shape: Sequence[int], spacing_mm: Sequence[float], seeds: np.ndarray,
                    region: Box, distance_mm: float) -> np.ndarray:
    """Voxels of ``region`` within ``distance_mm`` (Euclidean, mm) of any ``seeds`` voxel.

    The distance transform runs only on the seeds' bounding box grown by ``distance_mm``,
    intersected with ``region`` and grown once more (every seed that can be that close to a
    voxel of the result lies inside), so its cost does not grow with the crop.

    Args:
        shape: image shape ``(z, y, x)``.
        spacing_mm: voxel size ``(z, y, x)``.
        seeds: int64 flat indices into ``shape`` (may be empty).
        region: the voxels to classify (the crop).
        distance_mm: the distance (> 0).

    Returns:
        bool array of ``region.size``.
    """
    out = np.zeros(region.size, dtype=bool)
    if seeds.size == 0:
        return out
    shape_a = np.asarray(shape)
    margin = np.ceil(distance_mm / np.asarray(spacing_mm, dtype=float)).astype(np.int64)
    zyx = np.stack(np.unravel_index(seeds, tuple(shape)), axis=1)
    lo = np.maximum(np.maximum(zyx.min(0) - margin, region.lo_zyx), 0)
    hi = np.minimum(np.minimum(zyx.max(0) + margin + 1, region.hi_zyx), shape_a)
    if np.any(hi <= lo):
        return out
    d_lo, d_hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, shape_a)
    inside = np.all((zyx >= d_lo) & (zyx < d_hi), axis=1)
    free = np.ones(tuple(d_hi - d_lo), dtype=bool)
    free[tuple((zyx[inside] - d_lo).T)] = False
    dist = ndimage.distance_transform_edt(free, sampling=tuple(float(v) for v in spacing_mm))
    sub = tuple(slice(int(a - b), int(c - b)) for a, b, c in zip(lo, d_lo, hi))
    dst = tuple(slice(int(a - r), int(c - r)) for a, c, r in zip(lo, hi, region.lo_zyx))
    out[dst] = dist[sub] <= distance_mm + 1e-9
    return out


def _beyond_stroke_confidence(prior: np.ndarray, mask: np.ndarray, seeds: np.ndarray,
                              shape: Sequence[int], region: Box, direction: int,
                              threshold: float = 0.5) -> np.ndarray:
    """Voxels of ``region`` held more surely than every voxel the new strokes marked.

    The sureness of a voxel is ``prior``, the foreground probability of the network the
    refinement started from, except where the current ``mask`` disagrees with it (at
    ``threshold``): there an earlier correction decided, and the voxel counts as certain (1
    inside the mask, 0 outside). For background strokes (``direction`` -1) the result is
    the voxels surer than the surest stroke voxel: the user said "what is like this is not
    organ", not "what is surer than this is not organ either". For foreground strokes (+1),
    the voxels less sure than the least sure stroke voxel. Measured on the real right
    kidney (``benchmarks/interactive_results.md``): a background stroke on the fat edge
    (prior 0.56) removed 5 059 voxels of parenchyma held at 1.00, 10 mm away.

    Args:
        prior: float ``region.size`` probabilities.
        mask: uint8 ``region.size`` current mask {0, 1}.
        seeds: int64 flat indices into ``shape`` of the new strokes' voxels.
        shape: image shape ``(z, y, x)``.
        region: the crop ``prior`` and ``mask`` cover.
        direction: -1 (background strokes) or +1 (foreground strokes).
        threshold: the probability at which the network's mask is cut.

    Returns:
        bool array of ``region.size``; all False when no seed lies in ``region``.
    """
    zyx = np.stack(np.unravel_index(seeds, tuple(shape)), axis=1) - np.asarray(region.lo_zyx)
    inside = np.all((zyx >= 0) & (zyx < np.asarray(region.size)), axis=1)
    if not inside.any():
        return np.zeros(prior.shape, dtype=bool)
    held = mask.astype(bool)
    sure = np.where(held != (prior >= threshold), held.astype(np.float32), prior)
    on_strokes = sure[tuple(zyx[inside].T)]
    if direction < 0:
        return sure > on_strokes.max()
    return sure < on_strokes.min()


def _restrict_changes(before: np.ndarray, after: np.ndarray, allowed: np.ndarray | None,
                      direction: int) -> tuple[np.ndarray, int]:
    """Keep the changes ``before -> after`` that are ``allowed`` and go in ``direction``.

    Args:
        before, after: uint8 {0, 1} masks of the same shape.
        allowed: bool mask of voxels that may change; None: all.
        direction: +1 only 0 -> 1, -1 only 1 -> 0, 0 both.

    Returns:
        ``(mask, n_reverted)``: the restricted uint8 mask and the number of changes discarded.
    """
    changed = before != after
    keep = changed.copy()
    if allowed is not None:
        keep &= allowed
    if direction > 0:
        keep &= after == 1
    elif direction < 0:
        keep &= after == 0
    out = np.where(keep, after, before).astype(np.uint8)
    return out, int(np.count_nonzero(changed & ~keep))



def _refine_target(mask: np.ndarray, scribbles: np.ndarray) -> np.ndarray:
    """The training target: ``mask`` with every scribble voxel set to its label.

    Args:
        mask: uint8 ``(D, H, W)`` {0, 1}, the current mask on the working grid.
        scribbles: uint8 ``(D, H, W)`` on the same grid: 0 none, 1 foreground, 2 background.

    Returns:
        uint8 ``(D, H, W)`` {0, 1}, a new array (``mask`` is not changed).
    """
    target = mask.copy()
    target[scribbles == _FG] = 1
    target[scribbles == _BG] = 0
    return target


def _refine_weights(image: np.ndarray, scribbles: np.ndarray, spacing_mm: Sequence[float],
                    config: RefineConfig) -> np.ndarray:
    """Eq. 3's voxel weights with ``config``'s band settings.

    Args:
        image: preprocessed image, float32 ``(D, H, W)`` on the working grid.
        scribbles: uint8 ``(D, H, W)``: 0 none, 1 foreground, 2 background.
        spacing_mm: the working grid's voxel size ``(z, y, x)`` in mm.
        config: ``threshold``, ``scribble_weight``, ``geodesic_lam``,
            ``geodesic_iterations`` and ``normalisation``.

    Returns:
        float32 ``(D, H, W)``: 1, ``scribble_weight`` on scribbles, 0 in the uncertain band
        (:func:`iunet_nb.interactive.geodesic.scribble_weight_map`).
    """
    return scribble_weight_map(image, scribbles, spacing_mm, threshold=config.threshold,
                               scribble_weight=config.scribble_weight,
                               lam=config.geodesic_lam, iterations=config.geodesic_iterations,
                               normalisation=config.normalisation)  # type: ignore[arg-type]


def _stroke_direction(labels: set[int]) -> int:
    """The direction a refinement may change the mask in (``one_way``) for scribble labels.

    Returns:
        +1 when every label is foreground (only 0 -> 1 kept), -1 when every label is
        background (only 1 -> 0), 0 otherwise (both ways).
    """
    return 1 if labels == {_FG} else -1 if labels == {_BG} else 0


def confidently_contradicted(start_prob: np.ndarray, new_strokes: np.ndarray, direction: int,
                             below: float) -> bool:
    """Whether the network holds the new strokes' voxels confidently the other way.

    Args:
        start_prob: float ``(D, H, W)`` foreground probability of the network the refinement
            starts from, on the working grid.
        new_strokes: bool ``(D, H, W)``: the working voxels of the strokes added since the
            previous refine.
        direction: +1 (all new strokes foreground), -1 (all background); 0 (mixed) is never
            a contradiction.
        below: the confidence: the median probability at the strokes must be below it (+1)
            or above ``1 - below`` (-1). 0: never.
    """
    if below <= 0 or direction == 0 or not np.any(new_strokes):
        return False
    median = float(np.median(start_prob[new_strokes]))
    return median < below if direction > 0 else median > 1.0 - below


FILL_MARGIN = 0.6
"""The stroke fill's margin (:func:`stroke_fill`), measured there."""

FILL_REACH_MM = 5.0
"""The stroke fill is for strokes whose median voxel lies farther than this from the mask
(see ``RefineConfig.fill_below``); nearer, a stroke corrects the mask's border, which the
network's refinement does."""


def stroke_distance_mm(mask: np.ndarray, strokes: np.ndarray,
                       spacing_mm: Sequence[float]) -> float:
    """Median distance (mm) of the ``strokes`` voxels from the nearest ``mask`` voxel
    (infinity for an empty mask)."""
    if not mask.any():
        return math.inf
    far = ndimage.distance_transform_edt(~mask.astype(bool), sampling=tuple(spacing_mm))
    return float(np.median(far[strokes]))


def _connected_to(region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The connected parts (6-connectivity) of ``region`` that hold a ``seeds`` voxel."""
    labels, _ = ndimage.label(region)
    keep = np.unique(labels[seeds & region])
    return np.isin(labels, keep[keep > 0])


def stroke_fill(image: np.ndarray, scribbles: np.ndarray, new_strokes: np.ndarray,
                spacing_mm: Sequence[float], *, margin: float = FILL_MARGIN, lam: float = 1.0,
                iterations: int = 4) -> np.ndarray:
    """The region new foreground strokes claim by geodesic distance (GeoS, Criminisi et al. 2008).

    A voxel joins the fill when its geodesic distance on the image to the foreground strokes
    is under ``margin`` times its distance to the background seeds (``lam`` 1: a path costs
    the intensity differences it crosses, so it flows through a homogeneous organ and stops
    at its edges). The background seeds are the background strokes and the working grid's
    outer layer, which lies in the crop margin outside the user's box and so is background
    by the box's definition. The result is the part connected to the new strokes. Measured
    on the working grid of real 3D-IRCADb 1.7 organs (the box from the expert mask, one
    stroke along the organ's core on its largest slice, no network), margin 1 (the nearer
    seed set wins) / 0.6 / 0.4: spleen 0.864 / 0.903 / 0.860 DSC, right kidney 0.887 /
    0.889 / 0.812, left kidney 0.898 / 0.898 / 0.816, liver 0.866 / 0.887 / 0.820; NIH
    PANCREAS_0002 0.443 / 0.470 / 0.409, its fill 1.32 / 0.59 / 0.37 times the gland (the
    gland borders bowel and vessels of its own density, where the two distances are close:
    the margin keeps the fill out of such ambiguous ground).
    Background strokes get no fill: removing the region a background stroke claimed against
    the foreground strokes took true organ with it (real spleen 0.876 -> 0.697 in one round);
    :func:`background_side` only restricts what the network's refinement removes.

    Args:
        image: preprocessed image, float32 ``(D, H, W)`` on the working grid.
        scribbles: uint8 ``(D, H, W)``: 0 none, 1 foreground, 2 background (all strokes).
        new_strokes: bool ``(D, H, W)``: the working voxels of the foreground strokes added
            since the previous refine.
        spacing_mm: the working grid's voxel size ``(z, y, x)``.
        margin: in (0, 1]: how much nearer to the strokes than to the background a voxel
            must be.
        lam, iterations: of :func:`iunet_nb.interactive.geodesic.geodesic_distance`.

    Returns:
        bool ``(D, H, W)``: the voxels to add.
    """
    from .geodesic import geodesic_distance

    fg = scribbles == _FG
    other = scribbles == _BG
    other[[0, -1]] = True
    other[:, [0, -1]] = True
    other[:, :, [0, -1]] = True
    other &= ~fg
    if not fg.any():
        return np.zeros(image.shape, dtype=bool)
    region = (geodesic_distance(image, fg, spacing_mm, lam=lam, iterations=iterations)
              < margin * geodesic_distance(image, other, spacing_mm, lam=lam,
                                           iterations=iterations))
    return _connected_to(region, new_strokes)


def background_side(image: np.ndarray, scribbles: np.ndarray, spacing_mm: Sequence[float], *,
                    keep: np.ndarray | None = None, lam: float = 1.0,
                    iterations: int = 4) -> np.ndarray | None:
    """Voxels geodesically nearer to the background strokes than to what the mask keeps.

    The other side's seeds are the foreground strokes and ``keep``: the current mask away
    from the new strokes (the user corrects where they draw; the mask elsewhere stands).

    Args:
        image: preprocessed image, float32 ``(D, H, W)`` on the working grid.
        scribbles: uint8 ``(D, H, W)``: 0 none, 1 foreground, 2 background.
        spacing_mm: the working grid's voxel size ``(z, y, x)``.
        keep: bool ``(D, H, W)`` more seeds of the foreground side, or None.
        lam, iterations: of :func:`iunet_nb.interactive.geodesic.geodesic_distance`.

    Returns:
        bool ``(D, H, W)``, or None when there is no background stroke or nothing on the
        other side (no restriction).
    """
    from .geodesic import geodesic_distance

    fg, bg = scribbles == _FG, scribbles == _BG
    if keep is not None:
        fg = (fg | keep) & ~bg
    if not fg.any() or not bg.any():
        return None
    return (geodesic_distance(image, bg, spacing_mm, lam=lam, iterations=iterations)
            < geodesic_distance(image, fg, spacing_mm, lam=lam, iterations=iterations))


# -- one refine round ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkOutput:
    """A network output on the working grid and what it is on the CT grid's crop.

    The refine round needs the previous output three ways (the prior of the confidence gate,
    the mask ``new_changes_only`` compares with, the start of the next round), so the
    :class:`~iunet_nb.interactive.session.Session` keeps the last one instead of restoring it again
    (about 0.1 s a round on a 512 x 512 CT).

    Attributes:
        prob: float32 ``(D, H, W)`` foreground probability on the working grid.
        restored: float32 probabilities resampled to the crop (CT resolution).
        mask: uint8 {0, 1} mask of the crop: ``restored`` thresholded, the boundary placed on
            the CT's edges (``RefineConfig.edge_weight``, :func:`iunet_nb.interactive.edges.snap_to_edges`).
    """

    prob: np.ndarray
    restored: np.ndarray
    mask: np.ndarray


def network_output(prob: np.ndarray, record: CropRecord, hu: np.ndarray,
                   spacing_mm: Sequence[float], config: RefineConfig, *,
                   smoothed_hu: np.ndarray | None = None) -> NetworkOutput:
    """Restore working-grid probabilities ``prob`` to the crop of ``record`` and cut the mask.

    Args:
        prob: float32 ``(D, H, W)`` on the working grid.
        record: the crop and its working grid.
        hu: the CT's HU in the crop.
        spacing_mm: the CT's voxel size ``(z, y, x)``.
        config: ``edge_weight`` and ``mask_threshold``.
        smoothed_hu: :func:`iunet_nb.interactive.edges.smooth_hu` of ``hu`` when the caller keeps it.
    """
    restored = restore_crop_probabilities(prob, record)
    mask = snap_to_edges(restored, hu, spacing_mm, weight=config.edge_weight,
                         threshold=config.mask_threshold, smoothed_hu=smoothed_hu)
    return NetworkOutput(prob, restored, mask.astype(np.uint8))


@dataclass(frozen=True)
class RefineInput:
    """What one refine round reads: snapshots of the session's state, nothing shared.

    Attributes:
        image: float32 ``(D, H, W)``, the preprocessed crop on the working grid.
        record: the crop on the CT grid and its working grid.
        ct_shape, ct_spacing_mm: the CT's shape and voxel size ``(z, y, x)``.
        working_spacing_mm: the working grid's voxel size (``record.working_geometry``).
        hu: the CT's HU in the crop; ``smoothed_hu`` its smoothed copy (or None).
        mask: uint8 {0, 1}, the current mask in the crop (CT resolution).
        mask_working: uint8 {0, 1}, the current mask on the working grid.
        scribbles: uint8 ``(D, H, W)``: every scribble on the working grid (0 none, 1
            foreground, 2 background; background wins where both land).
        new_strokes: bool ``(D, H, W)``: the working voxels of the scribbles added since the
            previous refine.
        new_idx: int64 flat CT indices of those scribbles' voxels.
        direction: +1 all new scribbles foreground, -1 all background, 0 mixed.
        previous: the network output the current mask came from (None before any).
        start: the output of the network the round starts from, when the caller has it
            (checked against the round's own start probabilities; None: restored here).
    """

    image: np.ndarray
    record: CropRecord
    ct_shape: tuple[int, int, int]
    ct_spacing_mm: tuple[float, float, float]
    working_spacing_mm: tuple[float, float, float]
    hu: np.ndarray
    smoothed_hu: np.ndarray | None
    mask: np.ndarray
    mask_working: np.ndarray
    scribbles: np.ndarray
    new_strokes: np.ndarray
    new_idx: np.ndarray
    direction: int
    previous: NetworkOutput | None
    start: NetworkOutput | None = None


@dataclass(frozen=True)
class RefineResult:
    """The outcome of :func:`refine_step`.

    Attributes:
        output: the refined network's output.
        mask: uint8 {0, 1}, the new mask of the crop (scribbles not yet forced: the session
            owns them).
        losses: the loss before each Adam step.
        encoded: the frozen encoder's features (reusable while the box stays), or None.
        n_reverted: network changes discarded by the locality rules.
        n_filled: voxels the stroke fill added.
        n_uncertain: working voxels of weight 0 (the uncertain band).
        geodesic_sides: whether removals were held to the background strokes' side.
        stroke_prior: median start probability at the new strokes (None: none inside).
        stroke_mask_mm: median distance of new foreground strokes from the mask (None: not
            measured).
    """

    output: NetworkOutput
    mask: np.ndarray
    losses: list[float]
    encoded: EncodedFeatures | None
    n_reverted: int
    n_filled: int
    n_uncertain: int
    geodesic_sides: bool
    stroke_prior: float | None
    stroke_mask_mm: float | None


def refine_step(model: SegmentationNet, inp: RefineInput, config: RefineConfig, *, seed: int,
                encoded: EncodedFeatures | None = None,
                should_stop: Callable[[], bool] | None = None) -> RefineResult | None:
    """One round of iUnet interactive refinement, a function of its inputs.

    Fine-tunes ``model`` in place (give a private copy) on the target (the current mask with
    the scribbles burnt in) with eq. 3's weights, under ``torch.manual_seed(seed)``; restores
    the new probabilities to the crop; then decides which changes the mask takes (see
    :class:`RefineConfig`): only within ``local_mm`` of the new strokes, only in their
    direction (``one_way``), not where the network was surer than the strokes
    (``confidence_gate``), not where the previous network already disagreed
    (``new_changes_only``), removals only on the background strokes' geodesic side
    (``geodesic_sides``); new foreground strokes that the network held confidently as
    background, far from the mask, add their geodesic region (``fill_below``).

    Args:
        model: the network to fine-tune (its device is used).
        inp: the round's inputs.
        config: the refinement settings.
        seed: the random seed of the fine-tuning.
        encoded: the frozen encoder's features of ``inp.image`` (reused when given).
        should_stop: polled between steps; True stops the round (returns None).

    Returns:
        the result, or None when ``should_stop`` stopped it.
    """
    record = inp.record
    spacing = inp.working_spacing_mm
    weight = _refine_weights(inp.image, inp.scribbles, spacing, config)
    target = _refine_target(inp.mask_working, inp.scribbles)
    dev = next(model.parameters()).device
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        out = fine_tune(model, inp.image, target, weight, config, scribbles=inp.scribbles,
                        encoded=encoded, should_stop=should_stop, agree_on=inp.new_strokes)
    if out is None:
        return None
    prob, losses, encoded, start_prob = out
    output = network_output(prob, record, inp.hu, inp.ct_spacing_mm, config,
                            smoothed_hu=inp.smoothed_hu)
    new_strokes = inp.new_strokes.any()
    direction = inp.direction

    allowed = (None if config.local_mm is None else
               _near_scribbles(inp.ct_shape, inp.ct_spacing_mm, inp.new_idx, record.crop,
                               config.local_mm))
    if config.new_changes_only and inp.previous is not None:
        # what the previous network wanted: changes it already made, and locality held
        # back, are not released by a later stroke that comes within reach
        fresh = (inp.previous.mask == 1) == (inp.mask == 1)
        allowed = fresh if allowed is None else allowed & fresh
    if config.confidence_gate and direction != 0:
        # the network the round started from (the loaded weights, or with
        # keep_weights_between_rounds the previous round's), usually restored already
        prior = (inp.start.restored if inp.start is not None
                 and np.array_equal(start_prob, inp.start.prob)
                 else restore_crop_probabilities(start_prob, record))
        beyond = _beyond_stroke_confidence(prior, inp.mask, inp.new_idx, inp.ct_shape,
                                           record.crop, direction, config.mask_threshold)
        allowed = ~beyond if allowed is None else allowed & ~beyond
    side = None
    if config.geodesic_sides and direction < 0:
        keep = None   # the mask away from the new strokes stands
        if config.local_mm is not None and new_strokes:
            keep = inp.mask_working.astype(bool) & (ndimage.distance_transform_edt(
                ~inp.new_strokes, sampling=spacing) > config.local_mm)
        side = background_side(inp.image, inp.scribbles, spacing, keep=keep)
    if side is not None:
        # a background stroke removes only what lies on its side
        on_side = restore_crop_probabilities(side.astype(np.float32), record) >= 0.5
        allowed = on_side if allowed is None else allowed & on_side
    mask, n_reverted = _restrict_changes(inp.mask, output.mask, allowed,
                                         direction if config.one_way else 0)

    reach = (stroke_distance_mm(inp.mask_working, inp.new_strokes, spacing)
             if direction > 0 and new_strokes else math.inf)
    n_filled = 0
    if (direction > 0 and reach > FILL_REACH_MM
            and confidently_contradicted(start_prob, inp.new_strokes, 1, config.fill_below)):
        region = stroke_fill(inp.image, inp.scribbles, inp.new_strokes, spacing)
        if region.any():
            fill = restore_crop_probabilities(region.astype(np.float32), record) >= 0.5
            n_filled = int(np.count_nonzero(mask[fill] == 0))
            mask[fill] = 1
    return RefineResult(
        output=output, mask=mask, losses=losses, encoded=encoded, n_reverted=n_reverted,
        n_filled=n_filled, n_uncertain=int(np.count_nonzero(weight == 0)),
        geodesic_sides=side is not None,
        stroke_prior=float(np.median(start_prob[inp.new_strokes])) if new_strokes else None,
        stroke_mask_mm=None if math.isinf(reach) else round(reach, 2))
