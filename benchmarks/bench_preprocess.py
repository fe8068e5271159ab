"""Benchmark: iUnet preprocessing and its inverse on a 512 x 512 x 119 CT.

Times each stage (median of ``--repeats`` runs, milliseconds) of
:func:`iunet_nb.model.preprocess.preprocess_image` and :func:`restore_mask` for a random int16 CT in
HU with a box of ~150 x 100 x 40 voxels (x, y, z), and compares smoothing only the padded
crop with smoothing the whole volume. Also times :func:`iunet_nb.model.evaluate.evaluate_case` on
512 x 512 x 150 masks of a pancreas-sized object.

Run:  python benchmarks/bench_preprocess.py [--repeats 5] [--size 24 64 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
from scipy import ndimage

from iunet_nb.model.evaluate import evaluate_case
from iunet_nb.model.preprocess import (Box, PreprocessConfig, _resample, _smooth_crop, crop_mask,
                                 preprocess_image, restore_mask, restore_probabilities)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=3, default=(24, 64, 64), metavar=("D", "H", "W"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (119, 512, 512)
    ct = rng.integers(-1024, 1500, size=shape, dtype=np.int16)
    box = Box((40, 200, 180), (80, 300, 330))  # 40 x 100 x 150 voxels (z, y, x)
    cfg = PreprocessConfig(size_zyx=tuple(args.size))
    low, high = cfg.hu_window
    crop = box.expand(cfg.margin_zyx(shape)).clip(shape)
    r = args.repeats

    stages: dict[str, float] = {}
    stages["smooth (padded crop)"] = _median_ms(lambda: _smooth_crop(ct, crop, cfg.sigma_vox), r)
    smoothed = _smooth_crop(ct, crop, cfg.sigma_vox)

    def window() -> np.ndarray:
        w = np.clip(smoothed, low, high)
        return (w - low) * np.float32(2.0 / (high - low)) - np.float32(1.0)

    stages["clip + rescale"] = _median_ms(window, r)
    windowed = window()
    stages["resample to working grid"] = _median_ms(lambda: _resample(windowed, cfg.size_zyx), r)
    stages["preprocess_image (all forward)"] = _median_ms(lambda: preprocess_image(ct, box, cfg), r)
    x, record = preprocess_image(ct, box, cfg)
    prob = rng.random(cfg.size_zyx, dtype=np.float32)
    stages["restore_probabilities (inverse)"] = _median_ms(
        lambda: restore_probabilities(prob, record), r)
    stages["restore_mask (inverse + threshold)"] = _median_ms(lambda: restore_mask(prob, record), r)
    mask = np.zeros(shape, np.uint8)
    mask[box.slices] = 1
    stages["crop_mask"] = _median_ms(lambda: crop_mask(mask, record), r)
    total = stages["preprocess_image (all forward)"] + stages["restore_mask (inverse + threshold)"]

    whole = _median_ms(lambda: ndimage.gaussian_filter(ct.astype(np.float32), cfg.sigma_vox,
                                                       mode="nearest"), max(1, min(r, 3)))

    print(f"CT {shape} int16, box {box.size} (z, y, x), crop {record.crop.size}, "
          f"working grid {cfg.size_zyx}; median of {r} runs")
    for name, ms in stages.items():
        print(f"  {name:<38s} {ms:9.1f} ms")
    print(f"  {'total (forward + restore_mask)':<38s} {total:9.1f} ms")
    print(f"  {'smooth whole volume (for comparison)':<38s} {whole:9.1f} ms "
          f"-> {whole / stages['smooth (padded crop)']:.0f}x the padded-crop smoothing")

    # evaluate_case on full-size masks of a pancreas-sized object
    eshape = (150, 512, 512)
    ref = np.zeros(eshape, np.uint8)
    ref[60:72, 220:260, 150:330] = 1
    pred = np.roll(ref, (1, 3, -4), axis=(0, 1, 2))
    ms = _median_ms(lambda: evaluate_case(pred, ref, (2.5, 0.8, 0.8)), max(1, min(r, 3)))
    print(f"  {'evaluate_case 512x512x150 masks':<38s} {ms:9.1f} ms")


if __name__ == "__main__":
    main()
