"""The papers' systems on real CT (issue 27): Roth, Zhou, Kloenne, Cicek 3D U-Net, dilated FCN.

Usage (from the repository root)::

    python benchmarks/bench_systems_real.py [--roth PATH] [--zhou PATH] [--kloenne PATH ...]
        [--cicek PATH] [--dilated PATH] [--systems roth,zhou,kloenne,cicek,dilated,iunet]
        [--out runs/bench_systems_real]

Each system is measured with the weights it has: a path given on the command line, else the
shipped asset (``iunet_nb/assets``: ``roth_multiorgan.pt``, ``zhou_pancreas.pt`` (the
coarse-to-fine system; ``--zhou iunet_nb/assets/zhou_pancreas_detector.pt`` measures the box
detector, its coarse stage alone), ``kloenne_liver.pt``, ``cicek_pancreas.pt``,
``dilated_pancreas.pt``), else the row says
``untrained`` and carries no number. Cases (``../shared/data``; read with the helpers of
``bench_real.py``):

* **Roth** (automatic, one prediction per CT): 3D-IRCADb 1.7 liver, spleen, right and left
  kidney; 3D-IRCADb 1.17 liver; NIH PANCREAS_0002 pancreas. The kidneys are not among the
  paper's seven organs (issue 27 adds them); a model without them gets a row that says so.
* **Zhou** (automatic): PANCREAS_0002, the coarse fusion (S0) and the coarse-to-fine result.
* **Kloenne** (automatic): the 3D-IRCADb livers (1.7, 1.17) at their own 1.6 mm slices and
  with 2 and 3 consecutive slices averaged into one (3.2 and 4.8 mm slices, the thick-slice
  reconstruction of ``bench_real.thick_slices``; the reference averaged alike).
* **3D-IRCADb 1.7's liver, twice** (Roth and Kloenne): its ``liver`` mask leaves out a
  669 mL tumour that grows from the liver (the two masks share 230 voxels), while 1.17's
  ``liver`` mask holds both its tumours, as the LiTS challenge's liver label holds every
  tumour. Each 1.7 liver row is followed by one against ``liver`` + ``tumor`` (the organ
  drawn the way 1.17 draws it); the rows against the mask as published stay the headline.
* **Cicek 3D U-Net, dilated FCN** and, for the comparison the issue asks for, the bundled
  **iUnet**: PANCREAS_0002 with the box from the expert mask (the paper's Experiment 1).

PANCREAS_0002 is a validation case: no system here is trained on it. Writes
``results.json`` and prints a Markdown table (system, case, structure, DSC, precision,
recall, HD95, goal) for ``benchmarks/RESULTS.md``; with ``--figures`` also one PNG per row
in ``figures/`` (three slices through the reference's centre, the prediction red, the
reference green; ``iunet_nb.plots.plot_overview``). The figures show licensed CT (3D-IRCADb
is CC BY-NC-ND): keep them local, do not commit them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_real import IRCADB, NIH, _ircadb, thick_slices
from iunet_nb.errors import CheckpointError
from iunet_nb.io.images import read_dicom_mask_series, read_image, read_mask
from iunet_nb.io.volume import Volume
from iunet_nb.model.checkpoint import load_bundled_model, load_model, machine_description
from iunet_nb.model.evaluate import evaluate_case
from iunet_nb.model.predict import make_box, segment

ASSETS = Path(__file__).resolve().parents[1] / "iunet_nb" / "assets"
DEFAULTS = {"roth": "roth_multiorgan.pt", "zhou": "zhou_pancreas.pt",
            "kloenne": "kloenne_liver.pt", "cicek": "cicek_pancreas.pt",
            "dilated": "dilated_pancreas.pt"}
GOALS = {("roth", "liver"): 0.90, ("roth", "spleen"): 0.85, ("roth", "rightkidney"): 0.85,
         ("roth", "leftkidney"): 0.85, ("roth", "pancreas"): 0.60, ("zhou", "pancreas"): 0.65,
         ("kloenne", "liver"): 0.90}
SYSTEMS = ("roth", "zhou", "kloenne", "cicek", "dilated", "iunet")
_NAMES = {"rightkidney": "kidney (right)", "leftkidney": "kidney (left)"}
WITH_TUMOUR = "liver + tumour"


def _ircadb_liver_with_tumour(liver: Volume) -> Volume:
    """3D-IRCADb 1.7's ``liver`` mask united with its ``tumor`` mask (see the module notes)."""
    tumour = read_dicom_mask_series(IRCADB / "1.7" / "MASKS_DICOM.zip", "tumor")
    return Volume(((liver.array != 0) | (tumour.array != 0)).astype(np.uint8), liver.geometry,
                  {"source": "3D-IRCADb 1.7 liver | tumor"})


def _weights(system: str, given: str | None) -> Path | None:
    path = Path(given) if given else ASSETS / DEFAULTS[system]
    return path if path.is_file() else None


#: where ``--figures`` writes a PNG per row (None: no figures)
FIGURES: Path | None = None
#: figure names written by this run (two rows of one case and structure: Zhou's S0 and result)
_FIGURE_NAMES: Counter[str] = Counter()


def _figure(system: str, case: str, structure: str, ct: Volume, pred: np.ndarray,
            ref: Volume, dice: float) -> None:
    from iunet_nb.plots import plot_overview

    name = "_".join(f"{system} {case} {structure}".replace("+", "and").replace("(", "")
                    .replace(")", "").split()).replace(".", "-")
    _FIGURE_NAMES[name] += 1
    n = _FIGURE_NAMES[name]
    path = FIGURES / (f"{name}.png" if n == 1 else f"{name}_{n}.png")
    centre = np.argwhere(ref.array != 0).mean(0).round().astype(int).tolist()
    fig = plot_overview(ct, ct.with_array(pred.astype(np.uint8)), ref, path, center=centre,
                        title=f"{system}, {case}, {structure}: DSC {dice:.3f} "
                              "(red: prediction, green: reference)")
    import matplotlib.pyplot as plt

    plt.close(fig)


def _row(system: str, case: str, structure: str, pred: np.ndarray | None, ref: Volume,
         seconds: float | None, note: str = "", goal: float | None = None,
         ct: Volume | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"system": system, "case": case, "structure": structure,
                           "goal": goal, "note": note, "seconds": seconds}
    if pred is not None:
        m = evaluate_case(pred, ref.array != 0, ref.spacing_mm)
        row.update({k: round(float(m[k]), 4) for k in ("dice", "precision", "recall",
                                                      "hd95_mm")})
        row["met"] = None if goal is None else bool(m["dice"] >= goal)
        if FIGURES is not None and ct is not None:
            _figure(system, case, structure, ct, pred, ref, float(m["dice"]))
    print(" | ".join(str(row.get(k, "")) for k in ("system", "case", "structure", "dice",
                                                    "note")), flush=True)
    return row


def _untrained(system: str, cases: list[tuple[str, str]], why: str,
               goal: float | None = None) -> list[dict[str, Any]]:
    return [{"system": system, "case": case, "structure": _NAMES.get(s, s),
             "goal": GOALS.get((system, s), goal), "note": why, "seconds": None}
            for case, s in cases]


def run_roth(path: Path | None) -> list[dict[str, Any]]:
    from iunet_nb.systems.cv import roth_organ
    from iunet_nb.systems.roth import load_roth, predict_roth

    plan = [("3D-IRCADb 1.7", "liver"), ("3D-IRCADb 1.7", "spleen"),
            ("3D-IRCADb 1.7", "rightkidney"), ("3D-IRCADb 1.7", "leftkidney"),
            ("3D-IRCADb 1.17", "liver"), ("PANCREAS_0002", "pancreas")]
    if path is None:
        return _untrained("roth", plan, "untrained (no weights)")
    model = load_roth(path)
    rows = []
    cts: dict[str, tuple[Volume, Any, float]] = {}
    for case, organ in plan:
        name = _NAMES.get(organ, organ)
        output = roth_organ(organ)          # 3D-IRCADb folder name -> Roth output
        if output not in model.config.organs:
            ref = read_dicom_mask_series(IRCADB / "1.7" / "MASKS_DICOM.zip", organ)
            rows.append(_row("roth", case, name, None, ref, None,
                             f"no output: the model's organs are {list(model.config.organs)}",
                             GOALS[("roth", organ)]))
            continue
        if case not in cts:
            ct = read_image(NIH / "dicom") if case == "PANCREAS_0002" else \
                read_image(IRCADB / case.split()[-1] / "PATIENT_DICOM")
            t0 = time.perf_counter()
            pred = predict_roth(ct, model)
            cts[case] = (ct, pred, round(time.perf_counter() - t0, 1))
        ct, pred, seconds = cts[case]
        ref = read_mask(NIH / "label0002.nii.gz") if case == "PANCREAS_0002" else \
            read_dicom_mask_series(IRCADB / case.split()[-1] / "MASKS_DICOM.zip", organ)
        rows.append(_row("roth", case, name, pred.organ_mask(output).array, ref, seconds,
                         path.name, GOALS[("roth", organ)], ct))
        if case == "3D-IRCADb 1.7" and organ == "liver":
            rows.append(_row("roth", case, WITH_TUMOUR, pred.organ_mask(organ).array,
                             _ircadb_liver_with_tumour(ref), seconds, path.name,
                             GOALS[("roth", organ)], ct))
    return rows


def run_zhou(path: Path | None) -> list[dict[str, Any]]:
    from iunet_nb.systems.zhou import load_zhou, predict_zhou

    if path is None:
        return _untrained("zhou", [("PANCREAS_0002", "pancreas")], "untrained (no weights)")
    model = load_zhou(path)
    card = json.loads(path.with_suffix(".json").read_text())
    fine_trained = card["config"]["fine_iterations"] > 1
    ct, ref = read_image(NIH / "dicom"), read_mask(NIH / "label0002.nii.gz")
    t0 = time.perf_counter()
    pred = predict_zhou(ct, model, fine=True)
    seconds = round(time.perf_counter() - t0, 1)
    goal = GOALS[("zhou", "pancreas")]
    fine_note = (f"coarse-to-fine, {pred.iterations} iterations" if fine_trained else
                 f"coarse-to-fine, {pred.iterations} iterations; the shipped fine models are "
                 f"untrained ({card['config']['fine_iterations']} step)")
    return [_row("zhou", "PANCREAS_0002", "pancreas", pred.coarse_mask.array, ref, seconds,
                 f"coarse fusion S0 ({path.name})", goal, ct),
            _row("zhou", "PANCREAS_0002", "pancreas", pred.mask.array, ref, seconds, fine_note,
                 goal, ct)]


def run_kloenne(paths: list[Path]) -> list[dict[str, Any]]:
    from iunet_nb.systems.kloenne import KloenneEnsemble, load_kloenne, predict_kloenne

    plan = [(f"3D-IRCADb {p} {label}", "liver") for p in ("1.7", "1.17")
            for label in ("1.6 mm", "3.2 mm", "4.8 mm")]
    if not paths:
        return _untrained("kloenne", plan, "untrained (no weights)")
    members = [load_kloenne(p) for p in paths]
    model = members[0] if len(members) == 1 else KloenneEnsemble(members)
    rows = []
    goal = GOALS[("kloenne", "liver")]
    for patient in ("1.7", "1.17"):
        ct, ref = _ircadb(patient, "liver")
        refs = {"liver": ref} | ({WITH_TUMOUR: _ircadb_liver_with_tumour(ref)}
                                 if patient == "1.7" else {})
        for k, label in ((1, "1.6 mm"), (2, "3.2 mm"), (3, "4.8 mm")):
            c = ct if k == 1 else thick_slices(ct, k)
            t0 = time.perf_counter()
            pred = predict_kloenne(c, model)
            seconds = round(time.perf_counter() - t0, 1)
            for structure, r in refs.items():
                r = r if k == 1 else thick_slices(r, k, mask=True)
                rows.append(_row("kloenne", f"3D-IRCADb {patient} {label}", structure,
                                 pred.array, r, seconds, goal=goal, ct=c))
    return rows


def run_boxed(system: str, path: Path | None, iunet_dice: float | None) -> list[dict[str, Any]]:
    """Cicek / dilated FCN / iUnet on PANCREAS_0002 with the box from the expert mask."""
    goal = None if system == "iunet" or iunet_dice is None else round(iunet_dice - 0.05, 4)
    if system != "iunet" and path is None:
        return _untrained(system, [("PANCREAS_0002 (box from mask)", "pancreas")],
                          "untrained (no weights)", goal)
    model, card = load_bundled_model() if system == "iunet" else load_model(path)
    ct, ref = read_image(NIH / "dicom"), read_mask(NIH / "label0002.nii.gz")
    t0 = time.perf_counter()
    mask = segment(ct, model, make_box(ct, reference=ref), card.preprocess)
    note = "bundled model" if system == "iunet" else path.name
    return [_row(system, "PANCREAS_0002 (box from mask)", "pancreas", mask.array, ref,
                 round(time.perf_counter() - t0, 1), note, goal, ct)]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | case | structure | DSC | precision | recall | HD95 mm | goal | note |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rows:
        num = (lambda k, f="{:.3f}": f.format(r[k]) if np.isfinite(r.get(k, np.nan)) else
               ("-" if k not in r else "empty"))
        goal = "-" if r.get("goal") is None else f">= {r['goal']:.2f}" + (
            "" if "met" not in r else (" met" if r["met"] else " missed"))
        lines.append(f"| {r['system']} | {r['case']} | {r['structure']} | {num('dice')} | "
                     f"{num('precision')} | {num('recall')} | {num('hd95_mm', '{:.1f}')} | "
                     f"{goal} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    for s in ("roth", "zhou", "cicek", "dilated"):
        ap.add_argument(f"--{s}", default=None, help=f"weights (default: assets/{DEFAULTS[s]})")
    ap.add_argument("--kloenne", nargs="*", default=None,
                    help="one model or the members of a stacked ensemble")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/bench_systems_real")
    ap.add_argument("--figures", action="store_true",
                    help="also write a PNG per row in OUT/figures (licensed CT: keep local)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if not NIH.is_dir():
        raise SystemExit("real data not found: this benchmark needs ../shared/data")
    chosen = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    global FIGURES
    if args.figures:
        FIGURES = Path(args.out) / "figures"
        FIGURES.mkdir(parents=True, exist_ok=True)
    weights = {s: _weights(s, getattr(args, s)) for s in ("roth", "zhou", "cicek", "dilated")}
    kloenne = [Path(p) for p in args.kloenne] if args.kloenne else \
        [p for p in [_weights("kloenne", None)] if p is not None]
    rows: list[dict[str, Any]] = []
    try:
        if "iunet" in chosen or {"cicek", "dilated"} & set(chosen):
            iunet = run_boxed("iunet", None, None)
            rows += iunet if "iunet" in chosen else []
            iunet_dice = iunet[0]["dice"]
        if "roth" in chosen:
            rows += run_roth(weights["roth"])
        if "zhou" in chosen:
            rows += run_zhou(weights["zhou"])
        if "kloenne" in chosen:
            rows += run_kloenne(kloenne)
        for s in ("cicek", "dilated"):
            if s in chosen:
                rows += run_boxed(s, weights[s], iunet_dice)
    except CheckpointError as exc:
        raise SystemExit(f"weights: {exc}") from exc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_description(), "torch_threads": args.threads,
              "weights": {k: str(v) if v else None for k, v in weights.items()}
              | {"kloenne": [str(p) for p in kloenne]}, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + markdown(rows))
    print(f"\nwritten: {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
