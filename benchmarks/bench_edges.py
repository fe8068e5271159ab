"""Cost of placing the boundary on the CT's edges (:func:`iunet_nb.interactive.edges.snap_to_edges`).

For each crop: the probability restored to the crop and thresholded (the plain mask) against
the same plus :func:`snap_to_edges`, median of ``--repeats``, and their ratio in the same
run; with a reference, the DSC of both.

Crops: the bundled sample with the bundled pancreas iUnet (always), and, when
``../shared/data`` is there, the real 3D-IRCADb spleen (1.7) and livers (1.17, 1.7) in the
box of their reference mask. No liver or spleen model is shipped, so on those the
"probability" is the reference mask resampled through the 24 x 64 x 64 working grid and back
(grown by 2 voxels first: a smooth band about 2 mm outside the edge, as a network gives at
that grid): the timing depends on the crop's size and the band, not on the network. Its DSC
is not a result.

Run:  python benchmarks/bench_edges.py [--repeats 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_preprocess import _median_ms  # benchmarks/ is on sys.path when run
from scipy import ndimage

from iunet_nb.demo import load_sample
from iunet_nb.interactive.edges import EDGE_WEIGHT, snap_to_edges
from iunet_nb.model.checkpoint import load_bundled_model, machine_description
from iunet_nb.model.evaluate import dice
from iunet_nb.model.predict import _working_probabilities, make_box
from iunet_nb.model.preprocess import crop_mask, preprocess_image, restore_crop_probabilities

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _row(name: str, prob_working: np.ndarray, record, ct, ref, repeats: int) -> None:
    crop = record.crop.slices
    hu, spacing = ct.array[crop], ct.spacing_mm

    def plain() -> np.ndarray:
        return restore_crop_probabilities(prob_working, record) >= 0.5

    def snapped() -> np.ndarray:
        return snap_to_edges(restore_crop_probabilities(prob_working, record), hu, spacing)

    t_plain, t_snap = _median_ms(plain, repeats), _median_ms(snapped, repeats)
    r = ref.array[crop] != 0
    print(f"| {name} | {tuple(r.shape)} | {t_plain:.1f} | {t_snap:.1f} | {t_snap / t_plain:.1f} | "
          f"{dice(plain(), r):.3f} -> {dice(snapped(), r):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine_description()}; edge weight {EDGE_WEIGHT}")
    print("| crop | voxels (z, y, x) | threshold ms | + snap ms | ratio | DSC plain -> snapped |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    model, card = load_bundled_model("cpu")
    ct, ref = load_sample()
    prob, record = _working_probabilities(model, ct, make_box(ct, reference=ref),
                                          card.preprocess, "cpu")
    _row("bundled sample, bundled iUnet", prob, record, ct, ref, args.repeats)
    if not (SHARED / "ircadb").is_dir():
        print(f"(no {SHARED / 'ircadb'}: real crops skipped)")
        return
    from iunet_nb.io.datasets import find_cases

    for organ in ("spleen", "liver"):
        for case in find_cases(SHARED / "ircadb", structure=organ, layout="ircadb"):
            ct, ref = case.load()
            _, record = preprocess_image(ct, make_box(ct, reference=ref), card.preprocess)
            grown = ndimage.binary_dilation(ref.array[record.crop.slices] != 0, iterations=2)
            full = np.zeros(ref.shape, dtype=np.uint8)
            full[record.crop.slices] = grown
            # the working-grid mask of a 2-voxel-grown reference: a network-like band
            working = crop_mask(full, record).astype(np.float32)
            _row(f"3D-IRCADb {case.case_id} {organ} (reference through the grid)", working,
                 record, ct, ref, args.repeats)


if __name__ == "__main__":
    main()
