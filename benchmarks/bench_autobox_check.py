"""Signs that the automatic box is wrong, measured where it misses and where it works.

Usage::

    python benchmarks/bench_autobox_check.py [--parts real,synthetic] [--threads 1]

Real CTs (``../shared/data``): NIH PANCREAS_0002 (expert pancreas mask: box recall, DSC) and
3D-IRCADb 1.7 and 1.17 (no pancreas mask). Synthetic cases where the box works: the bundled
sample and the last 5 BTCV-synthetic cases of ``load_training_cases(..., seed=2020)``. For
each it prints the signs of :func:`iunet_nb.systems.autobox.check_box` (detector peak and
mean probability, box sizes in mm, mask volume, z border, how far the settled box moved),
the final mask's volume in the settled box, and the reasons the default limits give.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from iunet_nb.io.images import read_image, read_mask
from iunet_nb.model.checkpoint import load_bundled_model
from iunet_nb.model.evaluate import dice
from iunet_nb.model.predict import segment
from iunet_nb.model.train import load_training_cases
from iunet_nb.synth.generator import load_sample
from iunet_nb.systems.autobox import box_recall, find_box

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _cases(parts: set[str]):
    if "real" in parts:
        nih = DATA / "nih_pancreas_ct" / "PANCREAS_0002"
        yield "PANCREAS_0002", read_image(nih / "dicom"), read_mask(nih / "label0002.nii.gz")
        for p in ("1.7", "1.17"):
            yield f"3D-IRCADb {p}", read_image(DATA / "ircadb" / p / "PATIENT_DICOM"), None
    if "synthetic" in parts:
        yield ("sample", *load_sample())
        btcv, _ = load_training_cases(f"btcv-synth:{DATA / 'btcv_labels'}", seed=2020)
        for i, (ct, m) in enumerate(btcv[-5:]):
            yield f"btcv-synth {i}", ct, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="real,synthetic")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--detector", default=None, help="Zhou model.pt (default: the bundled one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    model, card = load_bundled_model()
    detector = None
    if args.detector:
        from iunet_nb.systems import load_zhou

        detector = load_zhou(args.detector)
    rows = []
    for name, ct, ref in _cases(set(args.parts.split(","))):
        t0 = time.perf_counter()

        def seg(b, ct=ct):
            return segment(ct, model, b, card.preprocess).array

        check = find_box(ct, seg, detector=detector)
        final = seg(check.box)
        row = {"case": name, "shape": list(ct.shape),
               "spacing_mm": [round(s, 3) for s in ct.spacing_mm], **check.to_dict(),
               "final_ml": round(float(final.sum()) * float(np.prod(ct.spacing_mm)) / 1000, 1),
               "s": round(time.perf_counter() - t0, 1)}
        if ref is not None:
            row["recall"] = round(box_recall(check.box, ref.array), 3)
            row["detected_recall"] = round(box_recall(check.detected, ref.array), 3)
            row["dsc"] = round(dice(final, ref.array), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
