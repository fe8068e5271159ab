"""Signs that the automatic box is wrong, measured where it misses and where it works.

Usage::

    python benchmarks/bench_autobox_check.py [--parts real,synthetic] [--threads 1]

Real CTs (``../shared/data``): NIH PANCREAS_0002 (expert pancreas mask: box recall, DSC) and
3D-IRCADb 1.7 and 1.17 (no pancreas mask). Synthetic cases where the box works: the bundled
sample and the last 5 BTCV-synthetic cases of ``load_training_cases(..., seed=2020)``. For
each it prints the signs of :func:`iunet_nb.systems.autobox.check_box` (detector peak and
mean probability, box sizes in mm, mask volume, z border, how far the settled box moved),
the final mask's volume in the settled box, and the reasons the default limits give.

``variants`` (issue 25's last row): PANCREAS_0002 transformed, each with the expert mask
carried along: ``upper abdomen`` (the slices from 60 mm above the pancreas's top to 30 mm
below its bottom: a scan that stops under the pancreas), ``extended FOV`` (padded by 64
voxels of air, -1000 HU, on each in-plane side: a 640 x 640 field), ``slices 3 mm`` / ``slices
5 mm`` (``bench_real.thick_slices``). Prints the same signs, the settled box's recall and its
volume against the expert box's.
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
from iunet_nb.model.preprocess import Box
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
    if "variants" in parts:
        yield from _variants()
    if "synthetic" in parts:
        yield ("sample", *load_sample())
        btcv, _ = load_training_cases(f"btcv-synth:{DATA / 'btcv_labels'}", seed=2020)
        for i, (ct, m) in enumerate(btcv[-5:]):
            yield f"btcv-synth {i}", ct, m


def _variants():
    import sys

    from iunet_nb.io.volume import Geometry, Volume

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_real import thick_slices

    nih = DATA / "nih_pancreas_ct" / "PANCREAS_0002"
    ct, ref = read_image(nih / "dicom"), read_mask(nih / "label0002.nii.gz")
    g = ct.geometry

    def cut(vol: Volume, z0: int, z1: int, pad: int = 0, fill: float = 0.0) -> Volume:
        arr = np.asarray(vol.array)[z0:z1]
        if pad:
            arr = np.pad(arr, ((0, 0), (pad, pad), (pad, pad)), constant_values=fill)
        origin = g.index_to_physical((z0, -pad, -pad))   # the new first voxel's centre
        return Volume(arr, Geometry(g.spacing_mm, tuple(float(v) for v in origin), g.direction),
                      dict(vol.meta))

    z = np.nonzero(np.asarray(ref.array).any(axis=(1, 2)))[0]
    dz = g.spacing_mm[0]
    # "above" is +z in LPS: does the array's z axis run that way?
    up = g.index_to_physical((1, 0, 0))[2] > g.index_to_physical((0, 0, 0))[2]
    lo = int(z.min() - (30 if up else 60) / dz)
    hi = int(z.max() + 1 + (60 if up else 30) / dz)
    lo, hi = max(lo, 0), min(hi, ct.shape[0])
    yield "PANCREAS_0002 upper abdomen", cut(ct, lo, hi), cut(ref, lo, hi)
    n = ct.shape[0]
    yield ("PANCREAS_0002 extended FOV", cut(ct, 0, n, 64, -1000.0),
           cut(ref, 0, n, 64, 0))
    for t in (3, 5):
        yield f"PANCREAS_0002 slices {t} mm", thick_slices(ct, t), thick_slices(ref, t, mask=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="real,synthetic",
                    help="comma-separated: real, variants, synthetic")
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
            expert = Box.from_mask(np.asarray(ref.array))
            row["volume_vs_expert_box"] = round(
                float(np.prod(check.box.size)) / float(np.prod(expert.size)), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
