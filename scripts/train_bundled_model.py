#!/usr/bin/env python
"""Retrain the pretrained pancreas iUnet shipped in ``iunet_nb/assets``.

Training data: synthetic CT made from the BTCV label maps (all but the validation maps), each
map synthesised ``--syntheses`` times with its own seed and a contrast phase drawn from
``--phases`` (``iunet_nb.synth.phases.phase_config``: organ and vessel HU of the unenhanced,
arterial, portal-venous or delayed phase) and, with ``--wide-quality``, wide noise, blur and
slice-thickness ranges; plus procedural phantoms (seeds disjoint from the bundled sample's),
phases drawn alike. The idea is SynthSeg's domain randomisation: a network that has seen many
appearances of the same anatomy leans on shape and context, which real CT shares with the
synthetic, rather than on the generator's exact look, which it does not.

Validation: the held-out BTCV maps synthesised once each in the default (portal-venous)
config with the seeds the earlier bundled models used (``seed + index``), and the bundled
sample, box from the reference mask (the paper's Experiment 1 protocol). Real CT is never
used here: NIH PANCREAS_0002 is measured afterwards by ``benchmarks/bench_real.py``.

The shipped model of 2026-12-07 was made by fine-tuning the 2026-11-29 one (commit 338e340's
``iunet_nb/assets/iunet_pancreas.pt``, itself ``--stages 1200:24x64x64,1500:32x64x64`` from
scratch with one portal-venous synthesis per map) for 500 iterations::

    git show 338e340:iunet_nb/assets/iunet_pancreas.pt > runs/2026-11-29.pt
    git show 338e340:iunet_nb/assets/iunet_pancreas.json > runs/2026-11-29.json
    python scripts/train_bundled_model.py --btcv ../shared/data/btcv_labels \\
        --init-from runs/2026-11-29.pt --stages 500:32x64x64

Training runs in stages (``--stages``, ``ITERATIONS:DxHxW`` each continuing the previous,
iterations counted from the start; progressive resizing, ``train(continue_from=)``). Each
stage has its folder under ``--work`` and resumes there after an interruption.
``--init-from`` starts the first stage from an existing model's weights (fine-tuning).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from iunet_nb import synth
from iunet_nb.io import datasets
from iunet_nb.model.augment import AugmentConfig
from iunet_nb.model.checkpoint import bundled_model_path, code_version, save_model
from iunet_nb.model.evaluate import dice
from iunet_nb.model.nets import NetConfig
from iunet_nb.model.predict import make_box, segment
from iunet_nb.model.preprocess import PreprocessConfig
from iunet_nb.model.train import (TrainConfig, load_training_cases, parse_phases, prepare_cases,
                                  randomised_cases, train)
from iunet_nb.synth.generator import load_sample
from iunet_nb.io.volume import Volume


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--btcv", default=str(Path(__file__).resolve().parents[2] / "shared/data/btcv_labels"))
    ap.add_argument("--stages", default="500:32x64x64",
                    help="comma-separated ITERATIONS:DxHxW, each continuing the previous "
                         "(iterations counted from the start)")
    ap.add_argument("--init-from", default=None,
                    help="start from this model's weights (e.g. the bundled one)")
    ap.add_argument("--syntheses", type=int, default=4, help="syntheses per training map")
    ap.add_argument("--phases", default="portal_venous:0.4,arterial:0.2,delayed:0.2,non_contrast:0.2",
                    help="contrast phases and their weights")
    ap.add_argument("--wide-quality", action=argparse.BooleanOptionalAction, default=True,
                    help="wide noise / blur / slice-thickness ranges (synth.phase_config)")
    ap.add_argument("--antialias", type=float, default=0.5,
                    help="PreprocessConfig.antialias of the model (0: the paper's smoothing)")
    ap.add_argument("--scale", type=float, default=0.0,
                    help="AugmentConfig.scale: zoom each axis by 1 +- this (0: off)")
    ap.add_argument("--elastic", type=float, default=0.0,
                    help="AugmentConfig.elastic_vox: smooth random displacement (voxels, 0: off)")
    ap.add_argument("--arch", default="iunet", choices=["iunet", "cicek", "dilated_fcn"],
                    help="the network (cicek / dilated_fcn: the papers' box-from-mask peers on "
                         "the same data; give --out and --work of their own)")
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "auto"],
                    help="TrainConfig.precision (auto: bfloat16 on a CPU that has it, "
                         "about 2-3x faster there; default float32)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pancreas-lobulation", type=float, default=0.0,
                    help="SynthConfig.pancreas_lobulation_fraction: the chance that a case's "
                         "pancreas has fat between its lobules (0: off)")
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--val", type=int, default=5, help="BTCV maps held out for validation")
    ap.add_argument("--limit", type=int, default=None, help="use at most this many maps (tests)")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--work", default="runs/bundled")
    ap.add_argument("--out", default=str(bundled_model_path()))
    args = ap.parse_args()
    if args.arch != "iunet" and Path(args.out).resolve() == bundled_model_path().resolve():
        raise SystemExit(f"--arch {args.arch}: give --out (the bundled iUnet's file is "
                         f"{bundled_model_path()})")
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(args.seed)

    maps = datasets.find_cases(args.btcv, structure="pancreas", layout="btcv")[:args.limit]
    train_maps = maps[:-args.val]
    stages = [(int(it), tuple(int(v) for v in size.split("x")))
              for it, size in (stage.split(":") for stage in args.stages.split(","))]
    phases = parse_phases(args.phases)
    counts: dict[str, int] = {}
    previous = None
    for n, (iterations, size) in enumerate(stages):
        pre = PreprocessConfig(size_zyx=size, antialias=args.antialias)
        augment = AugmentConfig(scale=args.scale, elastic_vox=args.elastic)
        cfg = TrainConfig(net=NetConfig(arch=args.arch, base_channels=16), preprocess=pre,
                          augment=augment,
                          iterations=iterations, batch_size=args.batch, lr=args.lr,
                          seed=args.seed, checkpoint_every=50, precision=args.precision)
        # the prepared cases depend only on the data arguments: kept beside the run, so a
        # resumed or repeated run skips the synthesis (10 min on 2 cores)
        key = json.dumps([args.btcv, args.limit, args.val, args.syntheses, args.phantoms,
                          args.seed, args.phases, args.wide_quality, pre.to_dict()]
                         + ([args.pancreas_lobulation] if args.pancreas_lobulation else []))
        cache = Path(args.work) / f"prepared-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        if cache.is_file():
            saved = torch.load(cache, weights_only=True)
            images, masks, counts = saved["images"], saved["masks"], dict(saved["counts"])
        else:
            counts.clear()
            images, masks = prepare_cases(
                randomised_cases(train_maps, args.syntheses, args.phantoms, args.seed, phases,
                                 args.wide_quality, counts,
                                 synth.SynthConfig(
                                     pancreas_lobulation_fraction=args.pancreas_lobulation)),
                cfg.preprocess)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"images": images, "masks": masks, "counts": counts}, cache)
        description = (
            f"synthetic CT (generator {synth.GENERATOR_VERSION}) from {len(train_maps)} BTCV "
            f"label maps ({train_maps[0].case_id}..{train_maps[-1].case_id}, the last "
            f"{args.val} maps held out), {args.syntheses} syntheses each, plus {args.phantoms} "
            f"procedural phantoms: {len(images)} cases; contrast phases drawn "
            f"{ {k: round(float(v), 2) for k, v in zip(*phases)} } (counts {counts})"
            + (", wide noise/blur/slice ranges" if args.wide_quality else "")
            + (f", lobulated pancreas in {args.pancreas_lobulation:.0%} of the cases"
               if args.pancreas_lobulation else "")
            + (f"; augmentation: zoom 1 +- {args.scale:g}, elastic {args.elastic:g} voxels"
               if args.scale or args.elastic else "")
            + f"; iterations up to {iterations} at working size {'x'.join(map(str, size))}"
            + (f", started from {Path(args.init_from).name}" if args.init_from and n == 0 else "")
            + f"; code {code_version()}")
        work = Path(args.work) / "x".join(map(str, size))
        result = train(images, masks, cfg, work, resume=True, continue_from=previous,
                       init_from=args.init_from if n == 0 and previous is None else None,
                       data_description=description)
        previous = work / "checkpoint.pt"

    val_cases, val_desc = load_training_cases(f"btcv-synth:{args.btcv}", seed=args.seed,
                                              limit=args.limit)
    val_cases = val_cases[-args.val:]

    def _dsc(ct: Volume, ref: Volume) -> float:
        pred = segment(ct, result.model, make_box(ct, reference=ref), cfg.preprocess)
        return dice(pred.array, ref.array)

    val = [_dsc(ct, ref) for ct, ref in val_cases]
    sample_dsc = _dsc(*load_sample())
    notes = (f"validation (synthetic): {args.val} held-out BTCV-synthetic cases (portal-venous "
             f"default generator, seeds {args.seed}+index) DSC {np.mean(val):.3f} +- "
             f"{np.std(val):.3f} (each: {[round(v, 3) for v in val]}); bundled sample DSC "
             f"{sample_dsc:.3f}; box from the reference mask, the boundary on the CT's edges "
             f"(segment's default); lr {args.lr} (paper 1e-4). Real CT: see real_validation.")
    card = dataclasses.replace(result.card, validation_dsc=round(float(sample_dsc), 4), notes=notes)
    save_model(result.model, card, args.out)
    print(json.dumps(card.to_dict(), indent=2))


if __name__ == "__main__":
    main()
