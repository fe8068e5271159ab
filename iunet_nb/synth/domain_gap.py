"""Domain gap: train on synthetic CT, test on held-out synthetic CT and on real CT.

An iUnet is trained on synthetic CT (:func:`iunet_nb.synth.generator.synthesize_ct`) made from the BTCV
label maps of one structure, all but ``n_val`` of them; the ``n_val`` held-out synthetic cases
give the synthetic-to-synthetic DSC, and the real 3D-IRCADb-01 CTs with a mask of that
structure give the synthetic-to-real DSC. Both use the box from the reference mask (the
paper's Experiment 1 protocol), so the two numbers differ only by the images.

Orientation: the BTCV label maps are read with their true direction
(:data:`iunet_nb.io.datasets.BTCV_DIRECTION`; their header mirrors x) and
:mod:`iunet_nb.model.preprocess` works on the patient axes, so the synthetic training cases and the
real DICOM CTs reach the network in the same (LPS) orientation without any step here.

Example:
    >>> table = domain_gap("liver", "data/btcv_labels", "data/ircadb",
    ...                    train_config=TrainConfig(iterations=200), n_val=5, seed=0,
    ...                    out_dir="runs/domain_gap/liver")            # doctest: +SKIP
    >>> table.groupby("domain")["dsc"].mean()                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError, InputError
from ..io._atomic import atomic_write_text
from ..io.datasets import BTCV_DIRECTION
from ..io.volume import Volume
from ..model.evaluate import dice
from ..model.predict import make_box, segment
from ..model.preprocess import reorient_to_lps
from ..model.train import TrainConfig, load_training_cases, prepare_cases, train
from .generator import SynthConfig

__all__ = ["BTCV_DIRECTION", "COLUMNS", "domain_gap", "domain_gap_from_cases", "evaluate_cases",
           "reorient_lps"]

logger = logging.getLogger(__name__)

#: Columns of the table :func:`domain_gap` returns (one row per test case).
COLUMNS = ("structure", "domain", "case_id", "dsc", "pred_voxels", "ref_voxels")


def reorient_lps(volume: Volume) -> Volume:
    """The same image with its array reordered/flipped to the identity (LPS) direction.

    :func:`iunet_nb.model.preprocess.reorient_to_lps` (exact transpose and flips; physical positions
    unchanged). Not needed before training or prediction, whose working grid is already in
    LPS order; useful to *show* slices of differently stored volumes in one orientation.

    Args:
        volume: any axis-aligned Volume.

    Returns:
        ``volume`` itself when its direction is already the identity, else a reoriented copy
        (same dtype and meta).
    """
    return reorient_to_lps(volume)


def evaluate_cases(model: torch.nn.Module, cases: Sequence[tuple[Volume, Volume]],
                   case_ids: Sequence[str], *, train_config: TrainConfig, domain: str,
                   ) -> pd.DataFrame:
    """DSC of ``model`` on each case, with the box from the case's reference mask.

    Args:
        model: a trained network (as :func:`iunet_nb.model.train.train` returns).
        cases: ``(CT in HU, reference mask uint8 {0, 1})`` pairs on the same grid.
        case_ids: one name per case.
        train_config: the training config (its ``preprocess`` and ``structure`` are used).
        domain: label of the test set, e.g. ``"synthetic"`` or ``"real"``.

    Returns:
        DataFrame with :data:`COLUMNS`; ``pred_voxels``/``ref_voxels`` count foreground voxels.

    Raises:
        InputError: ``cases`` and ``case_ids`` differ in length.
    """
    if len(cases) != len(case_ids):
        raise InputError(f"{len(cases)} cases but {len(case_ids)} case ids; give one id per case")
    rows = []
    for (ct, ref), cid in zip(cases, case_ids):
        pred = segment(ct, model, make_box(ct, reference=ref), train_config.preprocess)
        rows.append({"structure": train_config.structure, "domain": domain, "case_id": str(cid),
                     "dsc": dice(pred.array, ref.array),
                     "pred_voxels": int(np.count_nonzero(pred.array)),
                     "ref_voxels": int(np.count_nonzero(ref.array))})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def domain_gap_from_cases(synthetic: Sequence[tuple[Volume, Volume]], synthetic_ids: Sequence[str],
                          real: Sequence[tuple[Volume, Volume]], real_ids: Sequence[str], *,
                          train_config: TrainConfig, n_val: int,
                          out_dir: str | os.PathLike | None = None,
                          data_description: str = "", progress: bool = False) -> pd.DataFrame:
    """Train on all but the last ``n_val`` synthetic cases; DSC on those and on the real cases.

    Args:
        synthetic: synthetic ``(CT, mask)`` pairs; the last ``n_val`` are held out.
        synthetic_ids: one name per synthetic case.
        real: real ``(CT, mask)`` pairs (never trained on).
        real_ids: one name per real case.
        train_config: the training run's settings (``seed`` seeds the weights and batches).
        n_val: number of held-out synthetic cases, ``1 <= n_val < len(synthetic)``.
        out_dir: training checkpoints and the model go here (resumed if present), and the
            table is written to ``out_dir/domain_gap_<structure>.csv``; None writes nothing.
        data_description: recorded in the model card.
        progress: show a training progress bar.

    Returns:
        DataFrame with :data:`COLUMNS`: the ``n_val`` synthetic rows (``domain="synthetic"``)
        then the real rows (``domain="real"``).

    Raises:
        ConfigError: ``n_val`` out of range.
        InputError: ids and cases differ in length, or a case has an empty mask.
    """
    if not isinstance(n_val, int) or isinstance(n_val, bool) or not 1 <= n_val < len(synthetic):
        raise ConfigError(f"n_val must be an integer from 1 to {len(synthetic) - 1} (the number of "
                          f"synthetic cases minus one, to leave one to train on), got {n_val!r}")
    if len(synthetic) != len(synthetic_ids):
        raise InputError(f"{len(synthetic)} synthetic cases but {len(synthetic_ids)} ids")
    train_cases, val_cases = list(synthetic[:-n_val]), list(synthetic[-n_val:])
    images, masks = prepare_cases(train_cases, train_config.preprocess)
    out = Path(out_dir) if out_dir is not None else None
    result = train(images, masks, train_config, None if out is None else out / "train",
                   resume=out is not None, progress=progress, data_description=data_description)
    table = pd.concat([
        evaluate_cases(result.model, val_cases, list(synthetic_ids[-n_val:]),
                       train_config=train_config, domain="synthetic"),
        evaluate_cases(result.model, list(real), list(real_ids),
                       train_config=train_config, domain="real"),
    ], ignore_index=True)
    if out is not None:
        csv = out / f"domain_gap_{train_config.structure}.csv"
        atomic_write_text(csv, table.to_csv(index=False, float_format="%.4f"))
        logger.info("domain gap table written to %s", csv)
    return table


def domain_gap(structure: str, btcv_folder: str | os.PathLike, ircadb_folder: str | os.PathLike,
               *, train_config: TrainConfig | None = None, n_val: int = 5, seed: int = 0,
               out_dir: str | os.PathLike | None = None, limit: int | None = None,
               progress: bool = False, reorient: bool = True,
               btcv_direction: Sequence[float] | None = BTCV_DIRECTION,
               liver_spleen_contact: float = 0.0,
               liver_cover_mm: tuple[float, float] | None = None,
               synth_config: SynthConfig | None = None) -> pd.DataFrame:
    """Synthetic-to-synthetic and synthetic-to-real DSC of an iUnet trained on BTCV-synthetic CT.

    Args:
        structure: organ name known to both data sets, e.g. ``"liver"`` or ``"spleen"``.
        btcv_folder: BTCV label maps (``0001.nii.gz`` ... or ``label/label0001.nii.gz``).
        ircadb_folder: 3D-IRCADb-01 patients (``<patient>/PATIENT_DICOM``, ``MASKS_DICOM.zip``);
            patients without a mask of ``structure`` are skipped.
        train_config: training settings (None: :class:`TrainConfig` defaults); its
            ``structure`` is set to ``structure``.
        n_val: number of BTCV label maps held out (the last ones in sorted order).
        seed: case ``i`` of the BTCV maps is synthesised with seed ``seed + i``.
        out_dir: checkpoints, model and ``domain_gap_<structure>.csv`` (see
            :func:`domain_gap_from_cases`).
        limit: use only the first ``limit`` BTCV label maps (None: all).
        progress: show a training progress bar.
        reorient: store every CT and mask in LPS array order (:func:`reorient_lps`) before
            training and testing. Since the preprocessing's working grid is in LPS order
            anyway, this does not change what the network sees (the working arrays agree to
            float rounding of the smoothing); it is kept for callers that pass it.
        btcv_direction: the direction the BTCV maps are read with instead of their header's
            (default :data:`BTCV_DIRECTION`, their true orientation); None trusts the header,
            which mirrors the synthetic anatomy left-right relative to the real CT.
        liver_spleen_contact: probability that a *training* map's liver is grown until it
            touches the spleen (:func:`iunet_nb.synth.phantom.grow_liver_to_spleen`); the held-out
            synthetic cases keep their anatomy. Default 0 (off).
        liver_cover_mm: with ``liver_spleen_contact``, how far (range in mm) the grown liver
            spreads over the spleen's surface from the contact (None: the bridge alone).
        synth_config: the generator's parameter ranges for training and held-out synthetic
            cases alike (None: :class:`iunet_nb.synth.generator.SynthConfig` defaults).

    Returns:
        DataFrame with :data:`COLUMNS`, one row per held-out synthetic case and per real case.

    Raises:
        InputError: a folder is missing or has no case of ``structure``.
        ConfigError: ``n_val`` or ``limit`` out of range.
    """
    from ..io import datasets

    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 2):
        raise ConfigError(f"limit must be None or an integer >= 2 (BTCV maps to use), got {limit!r}")
    cfg = dataclasses.replace(train_config or TrainConfig(), structure=str(structure))
    direction = None if btcv_direction is None else tuple(float(d) for d in btcv_direction)
    btcv_ids = [c.case_id for c in datasets.find_cases(btcv_folder, structure, layout="btcv",
                                                       btcv_direction=direction)]
    btcv_ids = btcv_ids[:limit]
    n_train = len(btcv_ids) - n_val
    synthetic, desc = load_training_cases(f"btcv-synth:{btcv_folder}", structure=structure,
                                          limit=limit, seed=seed, btcv_direction=direction,
                                          liver_spleen_contact=liver_spleen_contact,
                                          liver_cover_mm=liver_cover_mm,
                                          augment_first=n_train, synth_config=synth_config)
    real_found = datasets.find_cases(ircadb_folder, structure, layout="ircadb")
    real = []
    for case in real_found:
        ct, mask = case.load()
        assert ct is not None  # ircadb cases always have an image
        real.append((ct, mask))
    if reorient:
        synthetic = [(reorient_lps(c), reorient_lps(m)) for c, m in synthetic]
        real = [(reorient_lps(c), reorient_lps(m)) for c, m in real]
    return domain_gap_from_cases(
        synthetic, btcv_ids, real, [c.case_id for c in real_found], train_config=cfg,
        n_val=n_val, out_dir=out_dir, data_description=f"{desc} (last {n_val} held out)",
        progress=progress)
