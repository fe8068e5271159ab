#!/usr/bin/env python
"""Measure the domain gap: iUnet trained on BTCV-synthetic CT, tested on synthetic and real CT.

Writes ``<out>/<structure>/domain_gap_<structure>.csv`` (one row per test case: structure,
domain, case_id, dsc, pred_voxels, ref_voxels) and the run's config; training resumes from
``<out>/<structure>/train/checkpoint.pt`` when run again.

    python scripts/run_domain_gap.py liver --iterations 200 --batch 4 --lr 1e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import torch

from iunet_nb.io._atomic import atomic_write_text
from iunet_nb.model.augment import AugmentConfig
from iunet_nb.model.nets import NetConfig
from iunet_nb.model.preprocess import PreprocessConfig
from iunet_nb.model.train import TrainConfig
from iunet_nb.synth.domain_gap import domain_gap
from iunet_nb.synth.generator import SynthConfig

logger = logging.getLogger("run_domain_gap")
_SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("structure", help="organ in both data sets, e.g. liver or spleen")
    ap.add_argument("--btcv", default=str(_SHARED / "btcv_labels"))
    ap.add_argument("--ircadb", default=str(_SHARED / "ircadb"))
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--val", type=int, default=5, help="BTCV label maps held out")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N BTCV maps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--no-reorient", action="store_true",
                    help="keep the stored array order (BTCV and DICOM then differ by an x/y flip)")
    ap.add_argument("--aug-noise-hu", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="training noise sigma range in HU (default: AugmentConfig's, 0..3)")
    ap.add_argument("--liver-spleen-contact", type=float, default=0.0, metavar="P",
                    help="probability that a training map's liver is grown to touch the spleen "
                         "(iunet_nb.synth.phantom.grow_liver_to_spleen; held-out maps unchanged)")
    ap.add_argument("--liver-cover", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="with --liver-spleen-contact: spread the grown liver over the spleen's "
                         "surface LOW-HIGH mm from the contact (default: the bridge alone)")
    ap.add_argument("--fat-hu", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="range of the generator's fat HU (default: SynthConfig's, -105 -80)")
    ap.add_argument("--organ-contact", type=float, default=None, metavar="F",
                    help="SynthConfig.organ_contact_fraction: soft tissue against the organs "
                         "(default: SynthConfig's, 0.25; 0 gives generator 2.0)")
    ap.add_argument("--liver-lesions", type=float, default=None, metavar="F",
                    help="SynthConfig.liver_lesion_fraction: share of cases whose liver holds "
                         "hypodense lesions inside its label (default: SynthConfig's, 0)")
    ap.add_argument("--ema-decay", type=float, default=None,
                    help="moving average of the weights (default: TrainConfig.ema_decay; 0: off)")
    ap.add_argument("--out", default="runs/domain_gap")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    augment = (AugmentConfig() if args.aug_noise_hu is None
               else AugmentConfig(noise_sigma_hu=tuple(args.aug_noise_hu)))
    cfg = TrainConfig(net=NetConfig(base_channels=args.base_channels), augment=augment,
                      preprocess=PreprocessConfig(size_zyx=(24, 64, 64)),
                      iterations=args.iterations, batch_size=args.batch, lr=args.lr,
                      seed=args.seed, checkpoint_every=25, structure=args.structure,
                      **({} if args.ema_decay is None else {"ema_decay": args.ema_decay}))
    out = Path(args.out) / args.structure
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "run_config.json", cfg.to_json())
    synth_changes: dict[str, object] = {}
    if args.fat_hu is not None:
        synth_changes["fat_hu"] = tuple(args.fat_hu)
    if args.organ_contact is not None:
        synth_changes["organ_contact_fraction"] = args.organ_contact
    if args.liver_lesions is not None:
        synth_changes["liver_lesion_fraction"] = args.liver_lesions
    synth_config = dataclasses.replace(SynthConfig(), **synth_changes)
    atomic_write_text(out / "synth_config.json", synth_config.to_json())   # the record, always
    t0 = time.perf_counter()
    table = domain_gap(args.structure, args.btcv, args.ircadb, train_config=cfg, n_val=args.val,
                       seed=args.seed, out_dir=out, limit=args.limit, progress=True,
                       reorient=not args.no_reorient,
                       liver_spleen_contact=args.liver_spleen_contact,
                       liver_cover_mm=None if args.liver_cover is None else tuple(args.liver_cover),
                       synth_config=synth_config)
    logger.info("done in %.0f s", time.perf_counter() - t0)
    print(table.to_string(index=False))
    print(table.groupby("domain")["dsc"].agg(["mean", "std", "count"]).to_string())


if __name__ == "__main__":
    main()
