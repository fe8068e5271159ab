"""Benchmark the seed papers' systems at reduced CPU scale on synthetic CT from BTCV label maps.

Usage (from the repository root)::

    python benchmarks/bench_systems.py zhou --k 3 --fold 0 --out /tmp/bench_zhou.json
    python benchmarks/bench_systems.py roth --k 3 --fold 0
    python benchmarks/bench_systems.py kloenne --k 3 --fold 0

Each BTCV label map ``i`` (sorted) becomes a synthetic portal-venous CT with
:func:`iunet_nb.synth.generator.synthesize_ct` seeded ``i``; the CTs are cached as ``.npy`` in
``--cache`` (default ``/tmp/iunet_nb_btcv_synth``; never inside the repository). Folds come
from :func:`iunet_nb.io.datasets.make_folds` (seeded), the metrics from
:func:`iunet_nb.model.evaluate.evaluate_case`, the same code the iUnet cross-validation uses.
For Zhou the script also reports how often :func:`iunet_nb.systems.detect_box` contains the
whole pancreas (tight box, and with iUnet's 5 % crop margin).

Runs single-threaded (``torch.set_num_threads(1)``): on 2 shared cores extra intra-op
threads only contend.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from iunet_nb import synth
from iunet_nb.io import images as io
from iunet_nb.io.datasets import BTCV_LABELS, find_cases, make_folds
from iunet_nb.io.volume import Volume
from iunet_nb.model.checkpoint import machine_description
from iunet_nb.model.evaluate import evaluate_case, summarize
from iunet_nb.model.preprocess import PreprocessConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "btcv_labels"


def load_btcv_synth(root: Path, cache: Path, limit: int | None) -> list[tuple[str, Volume, Volume]]:
    """``(case_id, synthetic CT, label map)`` per BTCV label map, CT cached as .npy."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i, case in enumerate(find_cases(root, "pancreas", layout="btcv")[:limit]):
        labels = io.read_label_map(case.label_path)
        path = cache / f"{case.case_id}_seed{i}.npy"
        if path.exists():
            ct = Volume(np.load(path), labels.geometry)
        else:
            ct = synth.synthesize_ct(labels, rng=i)
            np.save(path, ct.array)
        out.append((case.case_id, ct, labels))
    return out


def split(cases: list, k: int, fold: int, seed: int) -> tuple[list, list]:
    folds = make_folds([c[0] for c in cases], k=k, seed=seed)
    test_ids = set(folds[fold]["test"])
    return ([c for c in cases if c[0] not in test_ids], [c for c in cases if c[0] in test_ids])


def bench_zhou(train_cases, test_cases, args) -> dict:
    from iunet_nb.systems.autobox import box_recall, detect_box
    from iunet_nb.systems.zhou import ZhouConfig, predict_zhou, train_zhou

    pancreas = BTCV_LABELS["pancreas"]
    cfg = ZhouConfig.reduced(seed=args.seed, **json.loads(args.overrides or "{}"))
    pairs = [(ct, lab.with_array((lab.array == pancreas).astype(np.uint8)))
             for _, ct, lab in train_cases]
    result = train_zhou(pairs, cfg, args.model_dir, progress=False,
                        data_description=f"btcv-synth, {len(pairs)} cases")
    rows, boxes = [], []
    margin = PreprocessConfig()
    for cid, ct, lab in test_cases:
        ref = (lab.array == pancreas).astype(np.uint8)
        t0 = time.perf_counter()
        pred = predict_zhou(ct, result.model)
        seconds = time.perf_counter() - t0
        for stage, mask in (("coarse", pred.coarse_mask.array),
                            ("coarse-to-fine", pred.mask.array)):
            rows.append({"case": cid, "method": f"zhou {stage}", "predict_s": round(seconds, 2),
                         "iterations": pred.iterations,
                         **evaluate_case(mask, ref, ct.spacing_mm)})
        coarse_prob = result.model.organ_probability(ct)
        for stage, prob in (("coarse", coarse_prob), ("fine", pred.probability)):
            for threshold in (0.5, 0.3, 0.1):
                for margin_vox in (0, 5, 10):
                    try:
                        box = detect_box(ct, lambda v, p=prob: p, threshold=threshold,
                                         margin_mm=margin_vox * min(ct.spacing_mm))
                    except Exception as exc:  # noqa: BLE001 - record a miss, keep going
                        boxes.append({"case": cid, "stage": stage, "threshold": threshold,
                                      "margin_vox": margin_vox, "found": False,
                                      "error": str(exc)})
                        continue
                    wide = box.expand(margin.margin_zyx(ct.shape)).clip(ct.shape)
                    boxes.append({"case": cid, "stage": stage, "threshold": threshold,
                                  "margin_vox": margin_vox, "found": True,
                                  "recall_tight": round(box_recall(box, ref), 4),
                                  "recall_iunet_margin": round(box_recall(wide, ref), 4),
                                  "box_size": list(box.size),
                                  "ref_size": (np.ptp(np.argwhere(ref), axis=0) + 1).tolist()})
    return {"config": cfg.to_dict(), "train_time_s": result.train_time_s, "rows": rows,
            "boxes": boxes}


def bench_roth(train_cases, test_cases, args) -> dict:
    from iunet_nb.systems.autobox import box_recall, detect_box
    from iunet_nb.systems.roth import (
        BTCV_TO_ROTH,
        ROTH_ORGANS,
        RothConfig,
        predict_roth,
        train_roth,
    )

    cfg = RothConfig.reduced(seed=args.seed, **json.loads(args.overrides or "{}"))
    result = train_roth([(ct, lab) for _, ct, lab in train_cases], cfg, args.model_dir,
                        progress=False, data_description=f"btcv-synth, {len(train_cases)} cases")
    rows, boxes = [], []
    margin = PreprocessConfig()
    for cid, ct, lab in test_cases:
        t0 = time.perf_counter()
        pred = predict_roth(ct, result.model)
        seconds = time.perf_counter() - t0
        for organ in ROTH_ORGANS:
            ref = np.isin(lab.array, BTCV_TO_ROTH[organ]).astype(np.uint8)
            if not ref.any():
                continue
            rows.append({"case": cid, "method": f"roth {organ}", "predict_s": round(seconds, 2),
                         **evaluate_case(pred.organ_mask(organ).array, ref, ct.spacing_mm)})
        ref = (lab.array == BTCV_LABELS["pancreas"]).astype(np.uint8)
        prob = result.model.organ_probability(ct, organ="pancreas")
        for threshold in (0.5, 0.3, 0.1):
            for margin_vox in (0, 5, 10):
                try:
                    box = detect_box(ct, lambda v, p=prob: p, threshold=threshold,
                                     margin_mm=margin_vox * min(ct.spacing_mm))
                except Exception as exc:  # noqa: BLE001
                    boxes.append({"case": cid, "stage": "roth", "threshold": threshold,
                                  "margin_vox": margin_vox, "found": False, "error": str(exc)})
                    continue
                wide = box.expand(margin.margin_zyx(ct.shape)).clip(ct.shape)
                boxes.append({"case": cid, "stage": "roth", "threshold": threshold,
                              "margin_vox": margin_vox, "found": True,
                              "recall_tight": round(box_recall(box, ref), 4),
                              "recall_iunet_margin": round(box_recall(wide, ref), 4),
                              "box_size": list(box.size)})
    return {"config": cfg.to_dict(), "train_time_s": result.train_time_s, "rows": rows,
            "boxes": boxes}


def bench_kloenne(train_cases, test_cases, args) -> dict:
    from iunet_nb.systems.kloenne import KloenneConfig, predict_kloenne, select_top_k, train_kloenne

    pancreas = BTCV_LABELS["pancreas"]
    pairs = [(ct, lab.with_array((lab.array == pancreas).astype(np.uint8)))
             for _, ct, lab in train_cases]
    val = pairs[-3:]
    fit = pairs[:-3]
    results, train_s, configs = [], 0.0, []
    overrides = json.loads(args.overrides or "{}")
    # 3D steps cost ~1.4 s on one core (2D: ~0.09 s), so the 3D MS-D Net gets 100 steps.
    kinds = [{"arch": "unet", "dims": 2}, {"arch": "msd", "dims": 2},
             {"arch": "msd", "dims": 3, "iterations": 100}]
    for kind in kinds:
        cfg = KloenneConfig.reduced(seed=args.seed, **{**kind, **overrides})
        configs.append(cfg.to_dict())
        r = train_kloenne(fit, cfg, None, validation=val, progress=False,
                          data_description=f"btcv-synth, {len(fit)} cases")
        results.append(r)
        train_s += r.train_time_s
    rows = []
    members = [(r.model.config.kind, r.model) for r in results]
    members.append(("ensemble top-1 per kind", select_top_k(results, k=1)))
    for cid, ct, lab in test_cases:
        ref = (lab.array == pancreas).astype(np.uint8)
        zs = np.flatnonzero(ref.any(axis=(1, 2)))
        for name, model in members:
            t0 = time.perf_counter()
            mask = predict_kloenne(ct, model)
            rows.append({"case": cid, "method": f"kloenne {name}",
                         "predict_s": round(time.perf_counter() - t0, 2),
                         **evaluate_case(mask.array, ref, ct.spacing_mm)})
            # the seed's test phase: only slices with the organ (oracle slice range)
            inside = mask.array.copy()
            inside[:zs[0]] = 0
            inside[zs[-1] + 1:] = 0
            rows.append({"case": cid, "method": f"kloenne {name}, organ slices (oracle)",
                         **evaluate_case(inside, ref, ct.spacing_mm)})
    return {"configs": configs, "train_time_s": round(train_s, 1), "rows": rows,
            "validation_dsc": {r.model.config.kind: r.validation_dsc for r in results}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", choices=["zhou", "roth", "kloenne"])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cache", type=Path, default=Path("/tmp/iunet_nb_btcv_synth"))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overrides", default=None, help="JSON dict of config overrides")
    p.add_argument("--model-dir", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if not args.data.is_dir():
        print(f"no BTCV label maps at {args.data}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    cases = load_btcv_synth(args.data, args.cache, args.limit)
    train_cases, test_cases = split(cases, args.k, args.fold, args.seed)
    bench = {"zhou": bench_zhou, "roth": bench_roth, "kloenne": bench_kloenne}
    out = bench[args.system](train_cases, test_cases, args)
    out.update(system=args.system, machine=machine_description(), k=args.k, fold=args.fold,
               n_train=len(train_cases), n_test=len(test_cases),
               total_s=round(time.perf_counter() - t0, 1))
    for method in dict.fromkeys(r["method"] for r in out["rows"]):
        table = summarize([r for r in out["rows"] if r["method"] == method])
        print(f"{method}: " + ", ".join(
            f"{m} {table.loc[m, 'mean']:.3f} +- {table.loc[m, 'sd']:.3f}"
            for m in ("dice", "hd95_mm") if m in table.index)
            + f" (min DSC {table.loc['dice', 'min']:.3f}, n={int(table.loc['dice', 'n'])})")
    if out.get("boxes"):
        for stage in dict.fromkeys(r["stage"] for r in out["boxes"]):
            for threshold in (0.5, 0.3, 0.1):
                for margin_vox in (0, 5, 10):
                    b = [r for r in out["boxes"] if r["stage"] == stage
                         and r["threshold"] == threshold and r["margin_vox"] == margin_vox]
                    whole = sum(r.get("recall_tight", 0) == 1.0 for r in b)
                    wide = sum(r.get("recall_iunet_margin", 0) == 1.0 for r in b)
                    rec = [r.get("recall_tight", 0.0) for r in b]
                    print(f"auto box ({stage}, p>={threshold}, +{margin_vox} vox): whole organ "
                          f"inside {whole}/{len(b)} (box), {wide}/{len(b)} (with iUnet's 5% "
                          f"margin); voxel recall mean {np.mean(rec):.3f}, min {np.min(rec):.3f}")
    print(f"train {out.get('train_time_s')} s, total {out['total_s']} s on {out['machine']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
