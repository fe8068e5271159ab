"""The main job on the bundled default: segment the sample CT, save, draw, score.

``iunet-nb demo`` runs :func:`run_demo`; the quickstart notebook walks through the same steps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .io._atomic import atomic_write_text
from .io.images import write_image, write_mask
from .model.checkpoint import load_bundled_model
from .model.evaluate import evaluate_case
from .model.predict import make_box, segment
from .plots import plot_overview
from .synth.generator import load_sample

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)


def run_demo(out_dir: str | os.PathLike = "iunet-nb-demo", device: str | None = None,
             ) -> dict[str, Any]:
    """Segment the bundled sample CT with the bundled iUnet and write the results.

    The box is the reference mask's bounding box, as in the paper's Experiment 1 (in the
    annotator the user draws it). Written to ``out_dir``: ``sample_ct.nii.gz`` (the CT),
    ``sample_ct_pancreas.nii.gz`` (the mask, in the CT's geometry: open both in ITK-SNAP or
    3D Slicer), ``sample_ct_reference.nii.gz``, ``overview.png`` and ``metrics.json``.

    Returns:
        The metrics (DSC, HD95, ...) plus timings and the output paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ct, reference = load_sample()
    model, card = load_bundled_model(device or "cpu")
    box = make_box(ct, reference=reference)
    t0 = time.perf_counter()
    mask = segment(ct, model, box, card.preprocess, device=device)
    seconds = time.perf_counter() - t0
    paths = {"ct": write_image(ct, out / "sample_ct.nii.gz"),
             "mask": write_mask(mask, out / "sample_ct_pancreas.nii.gz"),
             "reference": write_mask(reference, out / "sample_ct_reference.nii.gz")}
    metrics = evaluate_case(mask.array, reference.array, ct.spacing_mm)
    metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    plot_overview(ct, mask, reference, out / "overview.png",
                  title=f"bundled sample: iUnet DSC {metrics['dice']:.3f} (box from reference)")
    paths["overview"] = out / "overview.png"
    result: dict[str, Any] = {"metrics": metrics, "segment_s": round(seconds, 3),
                              "box": box.to_dict(), "model": card.to_dict(),
                              "files": {k: str(v) for k, v in paths.items()}}
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    return result
