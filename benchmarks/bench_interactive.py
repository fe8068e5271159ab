"""Interactive benchmarks: refine-round latency and the robot comparison of correction methods.

Usage::

    python benchmarks/bench_interactive.py timing [--threads 2] [--repeats 5] [--model M.pt]
    python benchmarks/bench_interactive.py compare --cases phantom --model M.pt [--rounds 5]
    python benchmarks/bench_interactive.py compare --cases ircadb:liver --model LIVER.pt
    python benchmarks/bench_interactive.py sweep --cases phantom --model M.pt   # (e) candidates

``timing`` (on a synthetic pancreas phantom, 48 x 128 x 128 voxels of 2.5 x 1.5 x 1.5 mm):

* one refine round (robot stroke in -> new full-resolution mask out, ``Session.add_scribble``
  + ``Session.refine``) median at 24 x 64 x 64 with ``RefineConfig()`` defaults;
* the same with ``cached_encoder=False``, interleaved in the same run, as a ratio;
* the same with ``scribble_ce=0`` (eq. 3 alone), interleaved, as a ratio;
* the same without the confidence gate, and with ``edge_weight=0`` (the probability
  thresholded alone, no edge snapping), interleaved, as ratios;
* the same at a 48 x 128 x 128 working size;
* one robot round per method of :data:`iunet_nb.studies.compare.METHODS` (median apply time).

Timings do not depend on the weights: without ``--model`` the bundled model is used when it
exists, else a random 16-base iUnet.

``compare`` runs :func:`iunet_nb.studies.compare.compare_methods` and prints the summary as a
markdown table; ``sweep`` runs refinement variants (lambda, iterations, lr, keep/reset
weights, forcing scribbles) for choosing the improved default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from iunet_nb.errors import CheckpointError
from iunet_nb.interactive.robot import RobotConfig, plan_stroke
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.model.checkpoint import (
    ModelCard,
    load_bundled_model,
    load_model,
    machine_description,
)
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import Box, PreprocessConfig
from iunet_nb.studies.compare import (
    METHODS,
    CompareCase,
    FullFineTuneNet,
    Method,
    compare_methods,
)
from iunet_nb.synth.phantom import make_phantom


def _model(path: str | None) -> tuple[torch.nn.Module, ModelCard, str]:
    if path and Path(path).name.startswith("checkpoint"):
        # a training checkpoint (iunet_nb.model.train): rebuild from its sidecar's TrainConfig
        import json

        from iunet_nb.model.train import TrainConfig

        side = json.loads(Path(path).with_suffix(".json").read_text())
        cfg = TrainConfig.from_dict(side["config"])
        model = build_network(cfg.net)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
        card = ModelCard(net=cfg.net, preprocess=cfg.preprocess, structure=cfg.structure,
                         iterations=int(side["iteration"]))
        return model.eval(), card, f"{path} (iteration {side['iteration']})"
    if path:
        model, card = load_model(path)
        return model, card, path
    try:
        model, card = load_bundled_model("cpu")
        return model, card, "bundled"
    except CheckpointError:
        torch.manual_seed(0)
        card = ModelCard(net=NetConfig(base_channels=16), preprocess=PreprocessConfig())
        return build_network(card.net).eval(), card, "random 16-base iUnet"


def _with_size(card: ModelCard, size: tuple[int, int, int]) -> ModelCard:
    return dataclasses.replace(card, preprocess=dataclasses.replace(card.preprocess,
                                                                    size_zyx=size))


def _round_times(ct, ref, model, card, cfg: RefineConfig, repeats: int,
                 apply=None) -> list[float]:
    """Wall times of robot rounds (plan excluded): stroke in -> full-resolution mask out."""
    box = Box.from_mask(ref.array)
    net = model
    with Session(ct, net, card, box, config=cfg) as s:
        s.predict()
        times = []
        rng = np.random.default_rng(0)
        robot = RobotConfig()
        for k in range(repeats + 1):
            stroke = plan_stroke(s.mask.array, ref.array, ct.spacing_mm, robot, rng)
            if stroke is None:
                break
            t0 = time.perf_counter()
            if apply is None:
                stroke.apply_scribble(s)
                s.refine()
            else:
                apply(s, stroke)
            if k:  # the first round is a warm-up (numba JIT, allocator)
                times.append(time.perf_counter() - t0)
    return times


def _fmt(times: list[float]) -> str:
    return (f"{statistics.median(times) * 1e3:.0f} ms (min {min(times) * 1e3:.0f}, "
            f"max {max(times) * 1e3:.0f}, n={len(times)})")


def cmd_timing(args: argparse.Namespace) -> None:
    from iunet_nb.studies.compare import _apply_for

    model, card, which = _model(args.model)
    ct, ref = make_phantom(1000)
    cfg = RefineConfig(device="cpu")
    print(f"machine: {machine_description()}; model: {which}; phantom 1000 "
          f"{ct.shape} at {ct.spacing_mm} mm")
    print("| what | median |\n| --- | --- |")
    cached, naive, no_term, no_gate, no_edges = [], [], [], [], []
    for _ in range(2):  # interleave the default, naive, no-scribble-term, no-gate, no-edge rounds
        cached += _round_times(ct, ref, model, card, cfg, args.repeats)
        naive += _round_times(ct, ref, model, card,
                              dataclasses.replace(cfg, cached_encoder=False), args.repeats)
        no_term += _round_times(ct, ref, model, card, dataclasses.replace(cfg, scribble_ce=0.0),
                                args.repeats)
        no_gate += _round_times(ct, ref, model, card,
                                dataclasses.replace(cfg, confidence_gate=False), args.repeats)
        no_edges += _round_times(ct, ref, model, card, dataclasses.replace(cfg, edge_weight=0.0),
                                 args.repeats)
    print(f"| refine round 24x64x64, defaults ({cfg.iterations} it, cached encoder) | "
          f"{_fmt(cached)} |")
    print(f"| refine round 24x64x64, naive (no encoder cache) | {_fmt(naive)} |")
    print(f"| cached / naive (same run) | {statistics.median(cached) / statistics.median(naive):.2f} |")
    print(f"| refine round 24x64x64, without the scribble cross-entropy | {_fmt(no_term)} |")
    print(f"| defaults / without the term (same run) | "
          f"{statistics.median(cached) / statistics.median(no_term):.2f} |")
    print(f"| refine round 24x64x64, without the confidence gate | {_fmt(no_gate)} |")
    print(f"| defaults / without the gate (same run) | "
          f"{statistics.median(cached) / statistics.median(no_gate):.2f} |")
    print(f"| refine round 24x64x64, without edge snapping (edge_weight 0) | {_fmt(no_edges)} |")
    print(f"| defaults / without edge snapping (same run) | "
          f"{statistics.median(cached) / statistics.median(no_edges):.2f} |")
    large = _round_times(ct, ref, model, _with_size(card, (48, 128, 128)), cfg,
                         max(2, args.repeats // 2))
    print(f"| refine round 48x128x128, defaults | {_fmt(large)} |")
    for name, method in METHODS.items():
        net = FullFineTuneNet(model) if method.full_network else model
        t = _round_times(ct, ref, net, card, dataclasses.replace(method.refine, device="cpu"),
                         args.repeats, _apply_for(method))
        print(f"| robot round, method {name} | {_fmt(t)} |")


def _cases(spec: str, n: int) -> list[CompareCase]:
    if spec == "phantom":
        out = []
        for i in range(n):
            ct, ref = make_phantom(1000 + i)
            out.append(CompareCase(f"phantom{1000 + i}", ct, ref))
        return out
    if spec.startswith("btcv-synth:"):
        from iunet_nb.model.train import load_training_cases

        root, structure = spec.split(":", 1)[1].rsplit(":", 1)
        cases, _ = load_training_cases(f"btcv-synth:{root}", structure=structure, seed=500)
        return [CompareCase(f"btcv{i}", ct, m) for i, (ct, m) in enumerate(cases[-n:])]
    if spec.startswith("ircadb:"):
        from iunet_nb.io.datasets import find_cases

        root = Path(__file__).resolve().parents[2] / "shared" / "data" / "ircadb"
        out = []
        for case in find_cases(root, structure=spec.split(":", 1)[1], layout="ircadb")[:n]:
            ct, ref = case.load()
            out.append(CompareCase(f"ircadb{case.case_id}-{spec.split(':')[1]}", ct, ref))
        return out
    raise SystemExit(f"unknown --cases {spec!r}")


def _print_summary(summary, rounds: int) -> None:
    cols = [f"mean_dsc_r{k}" for k in range(rounds + 1)]
    print("| method | " + " | ".join(f"r{k}" for k in range(rounds + 1))
          + " | AUC | mean never drops | cases never drop | r->0.90 | s/round |")
    print("| --- " * (rounds + 7) + "|")
    for _, row in summary.iterrows():
        vals = " | ".join(f"{row[c]:.3f}" for c in cols)
        print(f"| {row['method']} | {vals} | {row['auc']:.3f} | {row['monotone_mean']} | "
              f"{row['monotone_cases']:.2f} | {row['rounds_to_0.90']} | "
              f"{row['apply_s_median']:.2f} |")


def cmd_compare(args: argparse.Namespace, methods=None) -> None:
    model, card, which = _model(args.model)
    cases = _cases(args.cases, args.n)
    extra = {k: v for k, v in (("radius_mm", args.radius_mm),
                               ("stroke_length_mm", args.length_mm)) if v is not None}
    robot = RobotConfig.preset(args.skill, rounds=args.rounds, seed=args.seed,
                               fit_brush=args.fit_brush, **extra)
    methods = methods or [m for m in args.methods.split(",")]
    t0 = time.perf_counter()
    result = compare_methods(cases, model, card, robot, methods, progress=False)
    print(f"\n{args.cases}: {len(cases)} cases, model {which}, robot {args.skill} "
          f"(radius {robot.radius_mm} mm, stroke {robot.stroke_length_mm} mm, seed "
          f"{args.seed}{', aims where its brush fits' if robot.fit_brush else ''}), "
          f"{time.perf_counter() - t0:.0f} s; {machine_description()}")
    _print_summary(result.summary, args.rounds)
    if args.csv:
        result.table.to_csv(args.csv, index=False)


def cmd_sweep(args: argparse.Namespace) -> None:
    base = RefineConfig()
    variants = {
        "default": base,
        "lam0.1": dataclasses.replace(base, lam=0.1),
        "it3": dataclasses.replace(base, iterations=3),
        "it10": dataclasses.replace(base, iterations=10),
        "it10_lr3e-2": dataclasses.replace(base, iterations=10, lr=3e-2),
        "lr3e-3": dataclasses.replace(base, lr=3e-3),
        "keep": dataclasses.replace(base, keep_weights_between_rounds=True),
        "thr0.1": dataclasses.replace(base, threshold=0.1),
        "noforce": dataclasses.replace(base, force_scribbles=False),
    }
    names = args.methods.split(",") if args.methods != "all" else list(variants)
    methods = [Method(n, "refine", variants[n], description=n) for n in names]
    cmd_compare(args, methods)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--repeats", type=int, default=5)
    t.add_argument("--model", default=None)
    for name in ("compare", "sweep"):
        c = sub.add_parser(name)
        c.add_argument("--cases", default="phantom",
                       help="phantom | ircadb:liver | ircadb:spleen | btcv-synth:<dir>:<organ>")
        c.add_argument("--n", type=int, default=3)
        c.add_argument("--model", default=None)
        c.add_argument("--rounds", type=int, default=5)
        c.add_argument("--skill", default="expert")
        c.add_argument("--seed", type=int, default=0)
        c.add_argument("--methods", default=",".join(METHODS) if name == "compare" else "all")
        c.add_argument("--csv", default=None)
        c.add_argument("--radius-mm", type=float, default=None, help="robot brush radius")
        c.add_argument("--length-mm", type=float, default=None, help="robot stroke length")
        c.add_argument("--fit-brush", action="store_true",
                       help="robot aims only at error its brush fits in (RobotConfig.fit_brush)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    {"timing": cmd_timing, "compare": cmd_compare, "sweep": cmd_sweep}[args.cmd](args)


if __name__ == "__main__":
    main()
