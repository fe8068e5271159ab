"""Experiment 2, the reader study: its one-page report.

:func:`write_study_report` writes the summary of a :class:`~iunet_nb.studies.analysis.StudyResult`
(``summary.md``, ``summary.html`` and the figure ``study_plot.png`` of :func:`plot_study`:
time and DSC per method) and its tables (CSV and ``stats.json``), every file atomically.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..io._atomic import atomic_path, atomic_write_text
from .analysis import StudyResult
from .cv_report import _markdown_table
from .design import METHODS

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_study", "write_study_report"]

logger = logging.getLogger(__name__)


def _panel(ax: Any, groups: list[np.ndarray], labels: list[str], ylabel: str) -> None:
    pos = np.arange(1, len(groups) + 1)
    shown = [g if g.size else np.array([np.nan]) for g in groups]
    if all(g.size > 1 and np.ptp(g) > 0 for g in groups):
        parts = ax.violinplot(shown, positions=pos, showextrema=False, widths=0.8)
        for body in parts["bodies"]:
            body.set_alpha(0.3)
    ax.boxplot([g[np.isfinite(g)] for g in shown], positions=pos, widths=0.25, showfliers=False)
    rng = np.random.default_rng(0)  # jitter only
    for p, g in zip(pos, groups):
        ax.scatter(p + rng.uniform(-0.08, 0.08, g.size), g, s=14, alpha=0.7, zorder=3)
    ax.set_xticks(pos, labels)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def plot_study(result: StudyResult, path: str | os.PathLike | None = None) -> Figure:
    """Violin + box plots of time (min) and DSC (%) per method, every task as a dot."""
    from matplotlib.figure import Figure

    methods = [m for m in METHODS if m in set(result.times["method"])]
    fig = Figure(figsize=(9, 4))
    ax_t, ax_d = fig.subplots(1, 2)
    t = result.times[result.times["complete"].astype(bool)]
    _panel(ax_t, [t.loc[t["method"] == m, "time_min"].to_numpy(float) for m in methods],
           methods, "time per case (min)")
    ax_t.set_title("Time")
    if result.dsc is not None and len(result.dsc):
        _panel(ax_d, [100 * result.dsc.loc[result.dsc["method"] == m, "dsc"].to_numpy(float)
                      for m in methods], methods, "DSC (%)")
        ax_d.set_title("DSC vs reference")
    else:
        ax_d.set_axis_off()
        ax_d.text(0.5, 0.5, "no DSC available", ha="center", va="center")
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    return fig


def _fmt(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) \
        else f"{v:.{digits}f}"


def _summary_markdown(result: StudyResult, plot_name: str) -> str:
    s = result.stats
    lines = ["# Reader study: manual vs interactive segmentation", ""]
    rows = []
    for m, e in s["per_method"].items():
        rows.append({"method": m, "tasks timed": e["n_tasks"],
                     "median time (min)": _fmt(_div(e["median_time_s"], 60), 2),
                     "mean time (min)": _fmt(_div(e["mean_time_s"], 60), 2),
                     "DSC mean ± sd (%)": (f"{_fmt(_mul(e.get('mean_dsc'), 100))} ± "
                                           f"{_fmt(_mul(e.get('sd_dsc'), 100))}")
                     if "mean_dsc" in e else "n/a"})
    lines += [_markdown_table(pd.DataFrame(rows)), ""]
    wt, wd = s["wilcoxon_time"], s.get("wilcoxon_dsc")
    lines.append(f"- Median time reduction (interactive vs manual): "
                 f"**{_fmt(s['median_time_reduction_pct'])} %** (paired median "
                 f"{_fmt(s['paired_median_time_reduction_pct'])} %); the paper: 48.4 %.")
    lines.append(f"- Wilcoxon signed-rank, time: p = {_fmt(wt['p_value'], 4)} "
                 f"({wt['n_used']} pairs by {wt['paired_by']}; {wt['method'] or 'not run'})"
                 + (f"; {wt['note']}" if wt["note"] else "") + ".")
    if wd is not None:
        lines.append(f"- Wilcoxon signed-rank, DSC: p = {_fmt(wd['p_value'], 4)} "
                     f"({wd['n_used']} pairs by {wd['paired_by']})"
                     + (f"; {wd['note']}" if wd["note"] else "") + ".")
    lines.append("")
    if result.interobserver is not None and len(result.interobserver):
        lines += ["## Inter-observer DSC (mean over shared cases)", "",
                  _markdown_table(result.interobserver.reset_index()), ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [
        ("- Time: manual from the first annotation, interactive from the initial segmentation, "
         "to the last save (the paper's definitions)."), "",
        f"![time and DSC per method]({plot_name})", ""]
    return "\n".join(lines)


def _div(v: Any, d: float) -> float:
    return v / d if isinstance(v, (int, float)) and v is not None else math.nan


def _mul(v: Any, d: float) -> float:
    return v * d if isinstance(v, (int, float)) and v is not None else math.nan


def write_study_report(result: StudyResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """The one-page summary (``summary.md``, ``summary.html``, ``study_plot.png``) and the
    tables (``times.csv``, ``dsc.csv``, ``interobserver.csv``, ``interobserver_pairs.csv``,
    ``stats.json``) in ``out_dir``.

    Returns:
        ``{name: path}`` of what was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def csv(name: str, df: pd.DataFrame | None, index: bool = False) -> None:
        if df is not None:
            files[name] = out / f"{name}.csv"
            with atomic_path(files[name]) as tmp:
                df.to_csv(tmp, index=index)

    csv("times", result.times)
    csv("dsc", result.dsc)
    csv("interobserver", result.interobserver, index=True)
    csv("interobserver_pairs", result.interobserver_pairs)
    files["stats"] = out / "stats.json"
    atomic_write_text(files["stats"], json.dumps({**result.stats, "notes": result.notes},
                                                 indent=2) + "\n")
    files["plot"] = out / "study_plot.png"
    plot_study(result, files["plot"])
    md = _summary_markdown(result, files["plot"].name)
    files["markdown"] = out / "summary.md"
    atomic_write_text(files["markdown"], md)
    files["html"] = out / "summary.html"
    atomic_write_text(files["html"], _html_page(result, files["plot"].name))
    logger.info("study summary written to %s", out)
    return files


def _html_page(result: StudyResult, plot_name: str) -> str:
    s = result.stats
    per_method = pd.DataFrame(s["per_method"]).T
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>Reader study</title>",
             ("<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
              "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px}"
              "</style></head><body>"),
             "<h1>Reader study: manual vs interactive segmentation</h1>",
             per_method.to_html(float_format=lambda v: f"{v:.3f}"),
             (f"<p>Median time reduction (interactive vs manual): "
              f"<b>{_fmt(s['median_time_reduction_pct'])} %</b> (paper: 48.4 %). "
              f"Wilcoxon p (time) = {_fmt(s['wilcoxon_time']['p_value'], 4)}, paired by "
              f"{html.escape(s['wilcoxon_time']['paired_by'])}.</p>")]
    if result.interobserver is not None and len(result.interobserver):
        parts += ["<h2>Inter-observer DSC</h2>",
                  result.interobserver.to_html(float_format=lambda v: f"{v:.3f}")]
    parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in result.notes]
    parts += ["</ul>", f"<img src='{html.escape(plot_name)}' alt='time and DSC per method'>",
              "</body></html>"]
    return "\n".join(parts) + "\n"
