"""The automatic box: how often does it hold the whole organ, and what DSC does iUnet reach in it?

Usage::

    python benchmarks/bench_autobox.py [--detector runs/detector_lps/model.pt] [--phantoms 20]

Cases: the last 5 BTCV label maps as synthetic CT (held out from the bundled detector's and
iUnet's training; seeds as in ``scripts/train_bundled_detector.py``), ``--phantoms`` fresh
procedural phantoms (seeds 7021...) and the bundled sample. For each setting of
``detect_box``'s ``threshold`` and ``margin_mm`` it prints the containment count, the minimum
box recall, the box's size relative to the organ's own box, and the bundled iUnet's mean DSC
inside the detected box, next to the DSC with the reference box (the paper's protocol); then
the same after :func:`~iunet_nb.systems.autobox.settle_box` (the box of the iUnet's own mask
in the detected box, ``--passes`` times: what ``Session.predict()`` does without a box).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from iunet_nb.model.checkpoint import load_bundled_detector, load_bundled_model
from iunet_nb.model.evaluate import dice
from iunet_nb.model.predict import make_box, segment
from iunet_nb.model.preprocess import Box
from iunet_nb.model.train import load_training_cases
from iunet_nb.synth.generator import load_sample
from iunet_nb.systems import load_zhou
from iunet_nb.systems.autobox import box_recall, detect_box, settle_box

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "btcv_labels"


def _cases(n_phantoms: int, seed: int = 2021) -> list[tuple[str, object, object]]:
    out = []
    if SHARED.is_dir():
        btcv, _ = load_training_cases(f"btcv-synth:{SHARED}", seed=seed)
        out += [(f"btcv-val-{i}", ct, m) for i, (ct, m) in enumerate(btcv[-5:])]
    phantoms, _ = load_training_cases(f"phantom:{n_phantoms}", seed=seed + 5000)
    out += [(f"phantom-{i}", ct, m) for i, (ct, m) in enumerate(phantoms)]
    out.append(("sample", *load_sample()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default=None, help="Zhou model.pt (default: the bundled one)")
    ap.add_argument("--phantoms", type=int, default=20)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--margins-mm", type=float, nargs="+", default=[0.0, 5.0, 10.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--passes", type=int, default=1, help="settle_box passes (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    detector = load_zhou(args.detector) if args.detector else load_bundled_detector()
    model, card = load_bundled_model()
    cases = _cases(args.phantoms)
    groups = sorted({name.rsplit("-", 1)[0] if "-" in name else name for name, _, _ in cases})
    ref_dsc = {name: dice(segment(ct, model, make_box(ct, reference=m), card.preprocess).array,
                          m.array) for name, ct, m in cases}
    print(f"{len(cases)} cases; iUnet DSC with the reference box: " + ", ".join(
        f"{g} {np.mean([v for k, v in ref_dsc.items() if k.startswith(g)]):.3f}" for g in groups))
    print("| threshold | margin mm | group | contains | min recall | box / organ box | "
          f"DSC in auto box | detect s | settled ({args.passes} pass): contains | min recall | "
          "DSC |")
    print("| --- " * 11 + "|")
    for thr, margin in itertools.product(args.thresholds, args.margins_mm):
        rows = []
        for name, ct, m in cases:
            t0 = time.perf_counter()
            box = detect_box(ct, detector, threshold=thr, margin_mm=margin)
            dt = time.perf_counter() - t0
            pred = segment(ct, model, box, card.preprocess)
            settled = settle_box(   # its first pass is the mask in `box`: reuse it
                box, lambda b: (pred if b == box else segment(ct, model, b, card.preprocess)).array,
                passes=args.passes)
            pred_settled = segment(ct, model, settled, card.preprocess)
            rows.append((name, box_recall(box, m.array),
                         np.prod(box.size) / np.prod(Box.from_mask(m.array).size),
                         dice(pred.array, m.array), dt, box_recall(settled, m.array),
                         dice(pred_settled.array, m.array)))
        for g in groups:
            sel = [r for r in rows if r[0].startswith(g)]
            print(f"| {thr} | {margin:.0f} | {g} | {sum(r[1] == 1.0 for r in sel)}/{len(sel)} | "
                  f"{min(r[1] for r in sel):.3f} | {np.median([r[2] for r in sel]):.1f} | "
                  f"{np.mean([r[3] for r in sel]):.3f} | {np.median([r[4] for r in sel]):.2f} | "
                  f"{sum(r[5] == 1.0 for r in sel)}/{len(sel)} | {min(r[5] for r in sel):.3f} | "
                  f"{np.mean([r[6] for r in sel]):.3f} |")


if __name__ == "__main__":
    main()
