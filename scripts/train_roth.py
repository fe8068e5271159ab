#!/usr/bin/env python
"""Train Roth et al.'s multi-organ 3D FCN (``iunet_nb.systems.roth``) on synthetic CT.

Training data: each of the 30 BTCV label maps (``../shared/data/btcv_labels``) synthesised
``--syntheses`` times (seed ``seed + 100 * (j + 1) + i`` for synthesis ``j`` of map ``i``), each
time in a contrast phase drawn from ``--phases`` (draws from ``seed + 7``) with
``iunet_nb.synth.phases.phase_config`` and, with ``--wide-quality``, wide noise, blur and
slice-thickness ranges: the same domain randomisation as ``train.randomised_cases`` (which
keeps one label; Roth needs the whole label map, so the cases are made here). Real CT is never
used: ``benchmarks/bench_systems_real.py`` measures the result on 3D-IRCADb 1.7 / 1.17 and
NIH PANCREAS_0002.

The CPU configuration (the default) is :meth:`RothConfig.reduced` with 4 levels (1.19 M
parameters) and 32 x 48 x 48 patches at 4 mm (a 128 x 192 x 192 mm field, enough to hold the
liver, stomach and spleen together), Adam lr 3e-3 falling to 3e-5 along a half cosine, the
Dice summed over the batch plus cross-entropy; everything runs on one thread. Why not the
seed's loss and rate: with Adam lr 1e-2 falling to 1e-4 and the per-subvolume Dice alone,
3000 steps (36.5 CPU min, 2026-12-07) ended in "background everywhere" (training loss -0.75
of -1, every organ empty on real and synthetic CT, batch-norm variances up to 2e7): a class
absent from a patch scores a perfect Dice only when none of it is predicted, so on 4 mm
patches that hold one or two organs predicting none wins. The same command scales on a GPU (``device`` is CUDA when there
is one): give the seed's network and patches, e.g. ``--base-channels 32 --patch 64x64x64
--voxel-mm 2 --iterations 50000``.

The cases are synthesised when ``train_roth`` reads them (one at a time), so memory stays at
the working-grid copies. Every ``--save-every`` steps ``snapshot.pt`` (+ card) is written in
``--out``; the result is ``model.pt`` + ``model.json`` + ``losses.json`` there, and with
``--ship`` also ``iunet_nb/assets/roth_multiorgan.pt`` + ``.json``.

The shipped ``iunet_nb/assets/roth_multiorgan.pt`` of 2026-12-07 is this command's default
run (2000 steps, 26.6 CPU min of one thread) trained on from its own weights five times
(3000, 2500, 5000, 2000 and 3000 steps with ``--init-from PREVIOUS/model.pt --lr 1e-3
--lr-final 1e-5``; 17,500 steps, 232.6 CPU min in all); the first four runs had the seed's
seven organs, the last one added the kidneys (``--init-from`` carries the shared output rows,
the kidneys' start fresh). Its card holds its real-CT figures.

Usage::

    nice -n 10 python scripts/train_roth.py --out runs/roth --ship
    nice -n 10 python scripts/train_roth.py --init-from runs/roth/model.pt --iterations 3000 \
        --lr 1e-3 --lr-final 1e-5 --out runs/roth5000 --ship     # and so on
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from iunet_nb import synth
from iunet_nb.io import datasets
from iunet_nb.io.volume import Volume
from iunet_nb.model.train import parse_phases
from iunet_nb.systems._common import TrainingRun
from iunet_nb.systems.cv import roth_organ
from iunet_nb.systems.roth import RothConfig, train_roth

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "iunet_nb" / "assets" / "roth_multiorgan.pt"


#: 3D-IRCADb mask names -> BTCV label values (the table train_roth maps to Roth's organs).
#: The liver is its mask as drawn: 1.17's holds its tumours, 1.7's leaves its tumour out, so
#: that stays background.
IRCADB_TO_BTCV = {"artery": 8, "venoussystem": 9, "portalvein": 10, "liver": 6, "spleen": 1,
                  "rightkidney": 2, "leftkidney": 3}


def ircadb_case(folder: Path) -> tuple[Volume, Volume, tuple[str, ...]]:
    """A 3D-IRCADb patient: (CT, BTCV-valued label map of its masks, the Roth organs it does
    not draw, for ``train_roth(unlabelled=)``)."""
    import zipfile

    from iunet_nb.io.images import read_dicom_mask_series, read_image

    ct = read_image(folder / "PATIENT_DICOM")
    with zipfile.ZipFile(folder / "MASKS_DICOM.zip") as z:
        have = {n.split("/")[1] for n in z.namelist() if n.count("/") > 1}
    labels = np.zeros(ct.shape, np.uint8)
    for name, value in IRCADB_TO_BTCV.items():      # vessels first: organs drawn over them
        if name in have:
            mask = read_dicom_mask_series(folder / "MASKS_DICOM.zip", name).array != 0
            labels[mask] = value
    unlabelled = ("stomach", "gallbladder", "pancreas") + tuple(
        roth_organ(name) for name in ("spleen", "rightkidney", "leftkidney") if name not in have)
    return ct, Volume(labels, ct.geometry, {"source": f"3D-IRCADb {folder.name} masks"}), \
        unlabelled


class SynthCases(Sequence):
    """``(synthetic CT, BTCV label map)`` pairs made on demand (see the module docstring),
    then ``real`` cases (CT, label map) as they are."""

    def __init__(self, btcv: Path, syntheses: int, seed: int, phases: str, wide_quality: bool,
                 limit: int | None = None,
                 real: Sequence[tuple[Volume, Volume]] = ()) -> None:
        self.maps = datasets.find_cases(btcv, "pancreas", layout="btcv")[:limit]
        if not self.maps:
            raise SystemExit(f"no BTCV label maps under {btcv}")
        names, p = parse_phases(phases)
        rng = np.random.default_rng(seed + 7)
        self.jobs = [(i, j, names[rng.choice(len(names), p=p)])
                     for j in range(syntheses) for i in range(len(self.maps))]
        self.seed, self.wide_quality, self.real = seed, wide_quality, list(real)

    def __len__(self) -> int:
        return len(self.jobs) + len(self.real)

    def __getitem__(self, k: int) -> tuple[Volume, Volume]:  # type: ignore[override]
        if k >= len(self.jobs):
            return self.real[k - len(self.jobs)]
        i, j, phase = self.jobs[k]
        labels = self.maps[i].read_labels()
        cfg = synth.phase_config(phase, wide_quality=self.wide_quality)
        ct = synth.synthesize_ct(labels, rng=self.seed + 100 * (j + 1) + i, config=cfg)
        return ct, labels

    def phase_counts(self) -> dict[str, int]:
        return dict(Counter(job[2] for job in self.jobs))   # in order of first draw


def _triple(text: str) -> tuple[int, int, int]:
    parts = [int(v) for v in text.lower().split("x")]
    return (parts * 3)[:3] if len(parts) == 1 else tuple(parts)  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--btcv", default=str(ROOT.parent / "shared" / "data" / "btcv_labels"))
    ap.add_argument("--out", default="runs/roth")
    ap.add_argument("--syntheses", type=int, default=3, help="syntheses per label map")
    ap.add_argument("--maps", type=int, default=None, help="use the first N maps (a smoke test)")
    ap.add_argument("--phases", default="portal_venous:0.4,arterial:0.2,delayed:0.2,"
                                        "non_contrast:0.2")
    ap.add_argument("--wide-quality", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-final", type=float, default=3e-5)
    ap.add_argument("--dice-over-batch", action=argparse.BooleanOptionalAction, default=True,
                    help="sum each class's Dice over the batch (RothConfig.dice_over_batch)")
    ap.add_argument("--ce-weight", type=float, default=1.0,
                    help="cross-entropy added to the Dice loss (RothConfig.ce_weight)")
    ap.add_argument("--voxel-mm", type=float, default=4.0)
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patch", default="32x48x48", help="DxHxW training subvolume")
    ap.add_argument("--batch-size", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--init-from", default=None,
                    help="start from this saved Roth model's weights (e.g. the shipped one; "
                         "same network and input settings), with a fresh schedule")
    ap.add_argument("--ircadb", default=None,
                    help="also train on this real 3D-IRCADb patient folder (its masks of "
                         "liver, spleen and vessels; the organs it does not draw by the "
                         "marginal loss)")
    ap.add_argument("--real-repeat", type=int, default=45,
                    help="how many times the real case is listed among the synthetic ones")
    ap.add_argument("--ship", action="store_true", help=f"copy the result to {ASSET}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    patch = _triple(args.patch)
    scale = max(patch) / 32.0   # the reduced config's deformation and shift, scaled with the patch
    config = RothConfig.reduced(
        voxel_mm=(args.voxel_mm,) * 3, base_channels=args.base_channels, depth=args.depth,
        patch_size=patch, batch_size=args.batch_size, iterations=args.iterations, lr=args.lr,
        lr_final=args.lr_final, dice_over_batch=args.dice_over_batch,
        ce_weight=args.ce_weight, bspline_spacing=int(round(12 * scale)),
        bspline_max_disp=2.0 * scale, translation_vox=8.0 * scale,
        tile_z=max(32, patch[0]), seed=args.seed)
    real, unlabelled, real_note = [], None, "no real CT"
    if args.ircadb:
        ct, labels, missing = ircadb_case(Path(args.ircadb))
        real = [(ct, labels)] * args.real_repeat
        real_note = (f"real 3D-IRCADb {Path(args.ircadb).name} listed {args.real_repeat} times "
                     f"(masks of liver, spleen and vessels; {', '.join(missing)} unlabelled, "
                     f"marginal loss)")
    cases = SynthCases(Path(args.btcv), args.syntheses, args.seed, args.phases,
                       args.wide_quality, args.maps, real)
    if real:
        unlabelled = [()] * len(cases.jobs) + [missing] * len(real)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = (f"synthetic CT from {len(cases.maps)} BTCV label maps "
            f"({cases.maps[0].case_id}..{cases.maps[-1].case_id}), {args.syntheses} syntheses "
            f"each (seeds {args.seed}+100(j+1)+i), contrast phases {cases.phase_counts()} "
            f"(synth.phase_config, wide_quality={args.wide_quality}); {real_note}")
    if args.init_from:
        data += f"; started from {Path(args.init_from).name}"
    run = TrainingRun(out, "scripts/train_roth.py " + " ".join(sys.argv[1:]), data,
                      args.threads, args.save_every)
    result = train_roth(cases, config, None, progress=True, data_description=data,
                        on_step=run.on_step(config.iterations), init_from=args.init_from,
                        unlabelled=unlabelled)
    run.finish(result.model, result.losses, config.iterations, len(cases),
               ship_to=ASSET if args.ship else None)


if __name__ == "__main__":
    main()
