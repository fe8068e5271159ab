#!/usr/bin/env python
"""Write the bundled synthetic sample: iunet_nb/assets/sample_ct.nii.gz, sample_pancreas.nii.gz
and sample.json.

The sample is made from the procedural phantom (:func:`iunet_nb.synth.phantom.make_phantom`), not
from a BTCV label map (those are research-only and must not be redistributed). Deterministic:
the same seed and generator version give the same files. Usage::

    python scripts/make_sample.py [--seed 20240601] [--out iunet_nb/assets]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from iunet_nb.io._atomic import atomic_path
from iunet_nb.synth.generator import GENERATOR_VERSION
from iunet_nb.synth.phantom import make_phantom

SEED = 20240601
SHAPE_ZYX = (56, 192, 192)
SPACING_MM = (2.5, 1.8, 1.8)

logger = logging.getLogger("make_sample")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "iunet_nb" / "assets")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ct, mask = make_phantom(args.seed, shape_zyx=SHAPE_ZYX, spacing_mm=SPACING_MM)
    ct16 = np.clip(np.rint(ct.array), -1024, 3071).astype(np.int16)
    ml = float(mask.array.sum() * np.prod(SPACING_MM) / 1000.0)
    for arr, name in ((ct16, "sample_ct.nii.gz"), (mask.array.astype(np.uint8), "sample_pancreas.nii.gz")):
        with atomic_path(args.out / name) as tmp:
            sitk.WriteImage(ct.geometry.apply_to(sitk.GetImageFromArray(arr)), str(tmp),
                            useCompression=True)
            tmp.chmod(0o644)   # package data: readable by everyone
    card = {"seed": args.seed, "generator_version": GENERATOR_VERSION,
            "source": "iunet_nb.synth.phantom.make_phantom (procedural phantom; no patient or BTCV data)",
            "shape_zyx": list(SHAPE_ZYX), "spacing_mm": list(SPACING_MM),
            "origin_mm": list(ct.geometry.origin_mm), "pancreas_ml": round(ml, 3),
            "ct_dtype": "int16 HU (rounded, clipped to [-1024, 3071])",
            "mask_dtype": "uint8 {0, 1}",
            "made_by": "scripts/make_sample.py"}
    with atomic_path(args.out / "sample.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o644)
    size = sum((args.out / n).stat().st_size for n in ("sample_ct.nii.gz", "sample_pancreas.nii.gz"))
    logger.info("wrote %s: pancreas %.1f mL, %.2f MB", args.out, ml, size / 1e6)


if __name__ == "__main__":
    main()
