"""Locality and weight-keeping sweep of the Session refinement on real CT (issue 5).

Usage::

    python benchmarks/sweep_locality.py ircadb:spleen SPLEEN_MODEL.pt local15,local30,unlimited_keep
    python benchmarks/sweep_locality.py ircadb:liver LIVER_MODEL.pt local15,local15_keep

Variants (all RefineConfig() defaults except what the name says): ``local<N>``: changes kept
within N mm of the new strokes; ``unlimited``: anywhere in the crop (still one-way);
``_keep``: the interactive layers' weights are kept between rounds; ``_it10``: 10 iterations;
``_lr3``: lr 3e-3. Prints the mean DSC per round and every case's curve; writes the per-round
table to runs/robot/.
"""
import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_interactive import _cases, _model, _print_summary  # noqa: E402

from iunet_nb.interactive.robot import RobotConfig  # noqa: E402
from iunet_nb.interactive.session import RefineConfig  # noqa: E402
from iunet_nb.studies.compare import Method, compare_methods  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             epilog=__doc__.split("\n\n", 1)[1])
ap.add_argument("spec", help="cases, e.g. ircadb:spleen (bench_interactive's case specs)")
ap.add_argument("model", help="model.pt with its card")
ap.add_argument("variants", help="comma-separated variant names (below)")
args = ap.parse_args()
torch.set_num_threads(1)
logging.basicConfig(level=logging.WARNING)
spec, model_path, names = args.spec, args.model, args.variants.split(",")
base = RefineConfig()
variants = {
    "local15": base,
    "local30": dataclasses.replace(base, local_mm=30.0),
    "local60": dataclasses.replace(base, local_mm=60.0),
    "unlimited_oneway": dataclasses.replace(base, local_mm=None),
    "local30_keep": dataclasses.replace(base, local_mm=30.0, keep_weights_between_rounds=True),
    "local15_keep": dataclasses.replace(base, keep_weights_between_rounds=True),
    "local60_keep": dataclasses.replace(base, local_mm=60.0, keep_weights_between_rounds=True),
    "unlimited_keep": dataclasses.replace(base, local_mm=None, keep_weights_between_rounds=True),
    "local30_keep_it10": dataclasses.replace(base, local_mm=30.0, iterations=10, keep_weights_between_rounds=True),
    "local30_keep_lr3": dataclasses.replace(base, local_mm=30.0, lr=3e-3, keep_weights_between_rounds=True),
}
unknown = [n for n in names if n not in variants]
if unknown:
    ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(variants)}")
model, card, which = _model(model_path)
cases = _cases(spec, 3)
robot = RobotConfig.preset("expert", rounds=5, seed=0)
methods = [Method(n, "refine", variants[n], description=n) for n in names]
t0 = time.perf_counter()
res = compare_methods(cases, model, card, robot, methods, progress=False)
print(spec, which, f"{time.perf_counter()-t0:.0f}s")
_print_summary(res.summary, 5)
out = Path(__file__).resolve().parents[1] / "runs" / "robot"
out.mkdir(parents=True, exist_ok=True)
res.table.to_csv(out / f"sweep_{spec.replace(':','_')}_{len(names)}_{names[0]}.csv", index=False)
for (m, c), g in res.table.groupby(["method", "case_id"]):
    print(m, c, [round(v, 3) for v in g.sort_values("round")["dsc"]])
