#!/usr/bin/env python
"""Retrain the bundled automatic-box detector: the coarse stage of Zhou et al. (seed 004).

Only the three coarse view models are trained (the fine models get a single step: the Session
uses the fused coarse probabilities to place the iUnet box, :func:`iunet_nb.systems.detect_box`).
Reduced CPU scale (4 mm voxels, 8 base channels, 2000 steps per view), from scratch (no
ImageNet weights). Data: synthetic CT from the BTCV label maps plus procedural phantoms (seeds
disjoint from the bundled sample's). Checked on the bundled sample: the detected box must
contain the whole reference pancreas.

    python scripts/train_bundled_detector.py --btcv ../shared/data/btcv_labels
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from iunet_nb.checkpoint import bundled_detector_path, file_sha256
from iunet_nb.preprocess import Box
from iunet_nb.synth import load_sample
from iunet_nb.systems import ZhouConfig, detect_box, train_zhou
from iunet_nb.systems.autobox import box_recall
from iunet_nb.train import load_training_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--btcv", default=str(Path(__file__).resolve().parents[2] / "shared/data/btcv_labels"))
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=2000, help="coarse steps per view")
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--work", default="runs/detector")
    ap.add_argument("--out", default=str(bundled_detector_path()))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    btcv, btcv_desc = load_training_cases(f"btcv-synth:{args.btcv}", seed=args.seed)
    phantoms, ph_desc = load_training_cases(f"phantom:{args.phantoms}", seed=args.seed + 1000)
    cfg = ZhouConfig.reduced(seed=args.seed, coarse_iterations=args.iterations, fine_iterations=1)
    result = train_zhou(btcv + phantoms, cfg, args.work,
                        data_description=f"box detector (coarse stage only): {btcv_desc}; {ph_desc}")
    for suffix in (".pt", ".json"):  # the shipped copy: weights + card side by side
        shutil.copyfile(Path(args.work) / f"model{suffix}", Path(args.out).with_suffix(suffix))
    ct, ref = load_sample()
    box = detect_box(ct, result.model)
    print(json.dumps({"sample_box": box.to_dict(), "reference_box": Box.from_mask(ref.array).to_dict(),
                      "recall": box_recall(box, ref.array), "sha256": file_sha256(args.out)}, indent=2))


if __name__ == "__main__":
    main()
