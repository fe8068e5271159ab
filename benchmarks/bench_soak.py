"""Soak test: the simulated annotator does 200 refine rounds on one session.

Checks, round by round, that a long interactive session stays healthy:

* **memory bounded**: the process's resident set (``VmRSS`` from ``/proc/self/status``)
  stops growing after warm-up;
* **latency flat**: the time of one round (scribble + refine + autosave) does not creep up;
* **undo history within its bound**: ``Session.history_nbytes`` never exceeds
  ``RefineConfig.max_history_mb`` (set small here so the bound is actually reached);
* **autosave folder bounded**: dropped history entries' files are deleted.

A small network so it runs in a few minutes on a loaded 2-core CPU: the iUnet with
``base_channels=8`` on a 16 x 32 x 32 working grid, 5 Adam steps per round, an untrained
(seeded) network so that the robot always finds an error to correct. The CT is a synthetic
48 x 96 x 96 ellipsoid "organ" with noise, anisotropic spacing.

Usage::

    python benchmarks/bench_soak.py                  # 200 rounds, prints the table
    python benchmarks/bench_soak.py --rounds 50 --history-mb 2 --json soak.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iunet_nb.interactive.robot import RobotConfig, run_robot
from iunet_nb.interactive.session import RefineConfig, Session
from iunet_nb.io.volume import Geometry, Volume
from iunet_nb.memory import format_bytes, peak_rss_bytes, rss_bytes
from iunet_nb.model.checkpoint import ModelCard, machine_description
from iunet_nb.model.nets import NetConfig, build_network
from iunet_nb.model.preprocess import Box, PreprocessConfig


def _case(shape=(48, 96, 96), seed: int = 0) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    c = [n / 2 for n in shape]
    r = ((zz - c[0]) / 12) ** 2 + ((yy - c[1]) / 22) ** 2 + ((xx - c[2]) / 30) ** 2
    # a lobulated organ: the robot keeps finding something to correct
    r += 0.25 * np.sin(yy / 5.0) * np.cos(xx / 7.0)
    ref = (r <= 1.0).astype(np.uint8)
    ct = np.where(ref > 0, 110.0, -40.0) + rng.normal(0, 25, shape)
    geometry = Geometry(spacing_mm=(2.5, 0.8, 0.8), origin_mm=(-40.0, -40.0, 100.0))
    return Volume(ct.astype(np.float32), geometry), Volume(ref, geometry)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(rounds: int = 200, history_mb: float = 4.0, threads: int = 1,
        folder: Path | None = None) -> dict:
    """Run the soak; returns per-round records and a summary."""
    torch.set_num_threads(threads)
    ct, ref = _case()
    card = ModelCard(net=NetConfig(base_channels=8),
                     preprocess=PreprocessConfig(size_zyx=(16, 32, 32)))
    torch.manual_seed(0)
    model = build_network(card.net).eval()
    cfg = RefineConfig(device="cpu", iterations=5, max_history_mb=history_mb)
    tmp = tempfile.TemporaryDirectory(prefix="iunet_soak_") if folder is None else None
    where = Path(tmp.name) / "session" if tmp is not None else folder
    session = Session(ct, model, card, Box.from_mask(ref.array), config=cfg, folder=where,
                      case_id="soak", reader_id="robot")
    records: list[dict] = []
    bound = history_mb * 2 ** 20

    def apply(s: Session, stroke) -> None:
        t0 = time.perf_counter()
        stroke.apply_scribble(s)
        s.refine()
        dt = time.perf_counter() - t0
        records.append({"round": len(records) + 1, "round_s": dt, "rss": rss_bytes() or 0,
                        "history_bytes": s.history_nbytes, "undo_entries": len(s.history),
                        "folder_bytes": _folder_bytes(where)})
        if s.history_nbytes > bound:
            raise AssertionError(f"history {s.history_nbytes} B over its bound {bound} B")

    t0 = time.perf_counter()
    result = run_robot(session, ref, RobotConfig(rounds=rounds, think_model="none", seed=1),
                       apply=apply)
    wall = time.perf_counter() - t0
    n_events = len(session.events)
    session.close()
    dsc = [float(v) for v in result.table["dsc"]]
    if tmp is not None:
        tmp.cleanup()
    return {"records": records, "dsc": dsc, "wall_s": wall, "n_events": n_events,
            "rounds_done": len(records), "history_bound_bytes": bound,
            "peak_rss": peak_rss_bytes(), "machine": machine_description(),
            "network": "iUnet base_channels=8, working grid 16x32x32, 5 Adam steps/round",
            "ct": f"{ct.shape} voxels, spacing {ct.spacing_mm} mm"}


def summarise(out: dict, window: int = 20) -> str:
    recs = out["records"]
    header = (f"{'rounds':>9} {'median s':>9} {'p90 s':>7} {'RSS':>10} {'history':>10} "
              f"{'undo':>5} {'folder':>10} {'DSC':>6}")
    lines = [header]
    for start in range(0, len(recs), window):
        chunk = recs[start:start + window]
        times = sorted(r["round_s"] for r in chunk)
        last = chunk[-1]
        lines.append(
            f"{chunk[0]['round']:>4}-{last['round']:<4} {statistics.median(times):>9.3f} "
            f"{times[int(0.9 * (len(times) - 1))]:>7.3f} {format_bytes(last['rss']):>10} "
            f"{format_bytes(last['history_bytes']):>10} {last['undo_entries']:>5} "
            f"{format_bytes(last['folder_bytes']):>10} {out['dsc'][last['round']]:>6.3f}")
    n = len(recs)
    if n >= 2 * window:
        first = statistics.median(r["round_s"] for r in recs[window:2 * window])
        final = statistics.median(r["round_s"] for r in recs[-window:])
        rss_warm = recs[window - 1]["rss"]
        rss_end = recs[-1]["rss"]
        lines.append(
            f"latency: median {first:.3f} s (rounds {window + 1}-{2 * window}) -> {final:.3f} s "
            f"(last {window}), ratio {final / first:.2f}")
        lines.append(f"RSS after round {window}: {format_bytes(rss_warm)}, at the end: "
                     f"{format_bytes(rss_end)} ({(rss_end - rss_warm) / 2 ** 20:+.1f} MiB); "
                     f"peak {format_bytes(out['peak_rss'])}")
    hist = max(r["history_bytes"] for r in recs)
    lines.append(f"history: max {format_bytes(hist)} of a {format_bytes(out['history_bound_bytes'])}"
                 f" bound; undo entries at the end {recs[-1]['undo_entries']}; folder "
                 f"max {format_bytes(max(r['folder_bytes'] for r in recs))}")
    lines.append(f"{out['rounds_done']} rounds in {out['wall_s']:.0f} s, {out['n_events']} events; "
                 f"{out['network']}; CT {out['ct']}; {out['machine']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--history-mb", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the raw records here")
    args = p.parse_args(argv)
    out = run(args.rounds, args.history_mb, args.threads)
    print(summarise(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
