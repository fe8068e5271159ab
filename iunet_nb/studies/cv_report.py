"""The statistics and the report of a cross-validation (Experiment 1).

:func:`cv_tables` turns the per-case rows of :func:`iunet_nb.studies.crossval.merge_folds` into
the per-method summary, a table shaped like the paper's Table 1 (with its numbers beside
ours, :data:`PAPER_TABLE1`) and pairwise Wilcoxon signed-rank tests
(:func:`paired_wilcoxon`, paired by case); :func:`plot_cv` draws DSC per method;
:func:`write_cv_report` writes them all (CSV, Markdown, JSON, PNG) into the output folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io._atomic import atomic_path, atomic_write_text
from ..systems.cv import SYSTEM_NAMES, SYSTEMS

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["METHOD_NAMES", "PAPER_TABLE1", "CVTables", "cv_tables", "paired_wilcoxon",
           "plot_cv", "write_cv_report"]

logger = logging.getLogger(__name__)

#: Display names of the architectures, as the paper's Table 1 calls them.
METHOD_NAMES: dict[str, str] = {
    "iunet": "iUnet",
    "cicek": "3D U-Net (Cicek et al.)",
    "dilated_fcn": "iFCN (dilated FCN)",
    **SYSTEM_NAMES,
}
#: The paper's Experiment 1 results on D1 (90 CTs, 5-fold): DSC % as (mean, sd).
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "cicek": (75.3, 8.1),
    "dilated_fcn": (72.3, 11.4),
    "iunet": (78.1, 8.7),
}
_EXACT_MAX_N = 50        # scipy's own limit for the exact null distribution
_PERMUTATION_MAX_N = 16  # 2**16 sign flips: exhaustive permutation test when |d| has ties


def paired_wilcoxon(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of paired samples, with its caveats spelled out.

    * Pairs with a NaN are dropped.
    * Zero differences are dropped (Wilcoxon's original convention, ``zero_method="wilcox"``);
      ``n_used`` counts what is left. Differences are rounded to 12 decimals first so that
      floating-point noise does not break ties.
    * Without ties among ``|d|`` the p-value is exact for ``n_used <= 50`` (the signed-rank
      null distribution), else the normal approximation.
    * With ties the exact table does not apply: for ``n_used <= 16`` the p-value is an exact
      permutation p-value over all ``2**n`` sign flips (scipy ``PermutationMethod``), above
      that the tie-corrected normal approximation.
    * The smallest two-sided p-value ``n_used`` pairs can give is ``2 / 2**n_used`` (all
      differences of one sign), reported as ``min_p``: with fewer than 6 pairs p < 0.05 is
      impossible, whatever the data.
    * With no non-zero difference the test is undefined: ``p_value`` is NaN.

    Args:
        x: first measurements (e.g. DSC of method A per case).
        y: second measurements, paired with ``x`` (same length, same order).

    Returns:
        ``{"n_pairs", "n_used", "statistic", "p_value", "method", "min_p", "median_diff",
        "note"}`` with Python scalars (``median_diff`` is the median of ``x - y``).

    Raises:
        InputError: ``x`` and ``y`` differ in length.
    """
    from scipy import stats

    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if a.shape != b.shape:
        raise InputError(f"paired samples must have the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = np.round(a[keep] - b[keep], 12)
    n_pairs = int(d.size)
    nz = d[d != 0]
    n = int(nz.size)
    result: dict[str, Any] = {"n_pairs": n_pairs, "n_used": n, "statistic": math.nan,
                              "p_value": math.nan, "method": "", "min_p": math.nan,
                              "median_diff": float(np.median(d)) if n_pairs else math.nan,
                              "note": ""}
    if n == 0:
        result["note"] = ("no non-zero paired difference" if n_pairs else "no complete pair") + \
            ": the test is undefined"
        return result
    ties = np.unique(np.abs(nz)).size < n
    if not ties and n <= _EXACT_MAX_N:
        method: Any = "exact"
    elif ties and n <= _PERMUTATION_MAX_N:
        method = stats.PermutationMethod(n_resamples=np.inf)
    else:
        method = "asymptotic"
    res = stats.wilcoxon(nz, zero_method="wilcox", alternative="two-sided", method=method)
    notes = []
    if n < n_pairs:
        notes.append(f"{n_pairs - n} zero difference(s) dropped")
    if ties:
        notes.append("ties among |differences|")
    min_p = min(1.0, 2.0 / 2.0 ** n)
    if min_p >= 0.05:
        notes.append(f"{n} pair(s) cannot reach p < 0.05 (smallest possible p = {min_p:.3g})")
    result.update(statistic=float(res.statistic), p_value=float(res.pvalue),
                  method=method if isinstance(method, str) else "permutation (exhaustive)",
                  min_p=min_p, note="; ".join(notes))
    return result


@dataclass
class CVTables:
    """The results of a cross-validation, as tables.

    Attributes:
        per_case: one row per (architecture, case): fold, metrics, timings.
        dsc: case x method table of DSC (fractions), one column per architecture.
        summary: per method: n, mean, sd, median, min, max of DSC (fractions).
        table1: shaped like the paper's Table 1: method, DSC (%) mean +- sd, p vs baseline,
            and the paper's value on D1 for reference.
        wilcoxon: every pair of methods (paired by case): statistics of :func:`paired_wilcoxon`.
        baseline: the architecture the Table 1 p-values compare against.
        comparison: per method: box (``"reference"`` or ``"none"``), structure, n, DSC mean
            +- sd and median (%), training compute and mean seconds per fold, and the
            paper's own number for reference (its data, not ours).
    """

    per_case: pd.DataFrame
    dsc: pd.DataFrame
    summary: pd.DataFrame
    table1: pd.DataFrame
    wilcoxon: pd.DataFrame
    baseline: str
    comparison: pd.DataFrame | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN become None)."""
        return _json_ready({
            "baseline": self.baseline,
            "summary": self.summary.reset_index().to_dict(orient="records"),
            "table1": self.table1.to_dict(orient="records"),
            "wilcoxon": self.wilcoxon.to_dict(orient="records"),
            "dsc_per_case": self.dsc.reset_index().to_dict(orient="records"),
            "comparison": ([] if self.comparison is None
                           else self.comparison.to_dict(orient="records")),
        })


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _format_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def cv_tables(per_case: pd.DataFrame, baseline: str = "iunet",
              metric: str = "dice") -> CVTables:
    """Per-method summary, Table 1 and pairwise Wilcoxon tests from the per-case rows.

    Only cases that every method segmented enter the paired tests (a case missing for one
    method is dropped from the tests with a warning); the summary uses every row.

    Args:
        per_case: rows with ``architecture``, ``case_id`` and ``metric`` (from
            :func:`merge_folds`).
        baseline: the architecture Table 1 compares the others with.
        metric: the column to compare (default DSC).

    Raises:
        InputError: no rows, missing columns, or ``baseline`` not among the methods.
    """
    needed = {"architecture", "case_id", metric}
    if per_case.empty or not needed <= set(per_case.columns):
        raise InputError(f"cv_tables needs rows with columns {sorted(needed)}, got "
                         f"{list(per_case.columns)} ({len(per_case)} rows)")
    methods = [m for m in METHOD_NAMES if m in set(per_case["architecture"])] + sorted(
        set(per_case["architecture"]) - set(METHOD_NAMES))
    if baseline not in methods:
        raise InputError(f"baseline {baseline!r} is not among the methods {methods}")
    wide = per_case.pivot_table(index="case_id", columns="architecture", values=metric,
                                aggfunc="first")[methods]
    complete = wide.dropna()
    if len(complete) < len(wide):
        logger.warning("%d case(s) lack a result for some method; they are left out of the "
                       "paired tests", len(wide) - len(complete))
    rows = []
    for m in methods:
        v = wide[m].dropna().to_numpy(dtype=float)
        rows.append({"method": m, "n": int(v.size), "mean": float(v.mean()),
                     "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
                     "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())})
    summary = pd.DataFrame(rows).set_index("method")
    pairs = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            pairs.append({"method_a": a, "method_b": b,
                          **paired_wilcoxon(complete[a], complete[b])})
    wilcoxon = pd.DataFrame(pairs, columns=["method_a", "method_b", "n_pairs", "n_used",
                                            "statistic", "p_value", "method", "min_p",
                                            "median_diff", "note"])
    t1 = []
    for m in methods:
        s = summary.loc[m]
        if m == baseline:
            p, note = math.nan, "baseline"
        else:
            w = paired_wilcoxon(complete[m], complete[baseline])
            p, note = w["p_value"], w["note"]
        paper = PAPER_TABLE1.get(m)
        info = _method_info(per_case, m)
        t1.append({"Method": METHOD_NAMES.get(m, m), "architecture": m, "n": int(s["n"]),
                   "DSC (%)": f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"
                   if math.isfinite(s["sd"]) else f"{100 * s['mean']:.1f}",
                   "box": info["box"],
                   "mean_pct": 100 * s["mean"], "sd_pct": 100 * s["sd"],
                   f"p vs {METHOD_NAMES.get(baseline, baseline)}": _format_p(p), "p_value": p,
                   "paper D1 DSC (%)": f"{paper[0]:.1f} ± {paper[1]:.1f}" if paper else "",
                   "note": note})
    return CVTables(per_case=per_case, dsc=wide, summary=summary, table1=pd.DataFrame(t1),
                    wilcoxon=wilcoxon, baseline=baseline,
                    comparison=_comparison(per_case, summary, methods, metric))


def _method_info(per_case: pd.DataFrame, method: str) -> dict[str, Any]:
    """box / structure / compute / mean training seconds per fold of one method's rows.

    Rows written before these columns existed (fold CSVs of an older version) hold only
    architectures, which were all tested inside the reference box.
    """
    rows = per_case[per_case["architecture"] == method]

    def first(column: str, default: str) -> str:
        if column not in rows.columns:
            return default
        values = rows[column].dropna()
        return str(values.iloc[0]) if len(values) else default

    per_fold = (rows.groupby("fold")["train_s"].first() if {"fold", "train_s"} <= set(rows.columns)
                else pd.Series(dtype=float))
    return {"box": first("box", "none" if method in SYSTEMS else "reference"),
            "structure": first("structure", ""), "compute": first("compute", ""),
            "train_s": float(per_fold.mean()) if len(per_fold) else math.nan,
            "folds": int(per_fold.size)}


def _comparison(per_case: pd.DataFrame, summary: pd.DataFrame, methods: Sequence[str],
                metric: str) -> pd.DataFrame:
    from ..systems.cv import PAPER_RESULTS

    rows = []
    for m in methods:
        info, s = _method_info(per_case, m), summary.loc[m]
        scale = 100.0 if metric == "dice" else 1.0
        paper = PAPER_TABLE1.get(m)
        pancreas = info["structure"].lower() in ("", "pancreas", "11")  # D1 is pancreas
        paper_text = (f"{paper[0]:.1f} ± {paper[1]:.1f} (D1 pancreas, 90 CTs)"
                      if paper and pancreas
                      else PAPER_RESULTS.get(m, {}).get(info["structure"], ""))
        name = "DSC" if metric == "dice" else metric
        unit = " (%)" if metric == "dice" else ""
        rows.append({
            "Method": METHOD_NAMES.get(m, m), "architecture": m, "box": info["box"],
            "structure": info["structure"], "n": int(s["n"]),
            f"{name} mean ± sd{unit}":
                f"{scale * s['mean']:.1f} ± {scale * s['sd']:.1f}" if math.isfinite(s["sd"])
                else f"{scale * s['mean']:.1f}",
            f"median{unit}": f"{scale * float(s['median']):.1f}",
            "training per fold": info["compute"],
            "train s per fold": round(info["train_s"], 1) if math.isfinite(info["train_s"])
            else math.nan,
            "folds": info["folds"], "paper (their data)": paper_text})
    return pd.DataFrame(rows)


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("" if not math.isfinite(v) else f"{v:.4g}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_cv(per_case: pd.DataFrame, path: str | os.PathLike | None = None,
            metric: str = "dice", title: str = "") -> Figure:
    """Violin + box plot of ``metric`` per method, with every case as a dot.

    Args:
        per_case: rows with ``architecture`` and ``metric``.
        path: PNG to write (atomically); None to only return the figure.
        metric: column to plot (DSC by default, shown in %).
        title: figure title.
    """
    from matplotlib.figure import Figure

    methods = [m for m in METHOD_NAMES if m in set(per_case["architecture"])] + sorted(
        set(per_case["architecture"]) - set(METHOD_NAMES))
    scale = 100.0 if metric == "dice" else 1.0
    data = [per_case.loc[per_case["architecture"] == m, metric].to_numpy(float) * scale
            for m in methods]
    fig = Figure(figsize=(1.8 + 1.8 * len(methods), 4.2))
    ax = fig.subplots()
    pos = np.arange(1, len(methods) + 1)
    if all(v.size > 1 and np.ptp(v) > 0 for v in data):
        parts = ax.violinplot(data, positions=pos, showextrema=False, widths=0.8)
        for body in parts["bodies"]:
            body.set_alpha(0.3)
    ax.boxplot(data, positions=pos, widths=0.25, showfliers=False)
    rng = np.random.default_rng(0)  # jitter only: the same picture every time
    for p, v in zip(pos, data):
        ax.scatter(p + rng.uniform(-0.08, 0.08, v.size), v, s=12, alpha=0.7, zorder=3)
    ax.set_xticks(pos, [METHOD_NAMES.get(m, m) for m in methods])
    ax.set_ylabel("DSC (%)" if metric == "dice" else metric)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    return fig


def write_cv_report(tables: CVTables, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the tables (CSV, Markdown, JSON) and the DSC plot (PNG) into ``out_dir``.

    Returns:
        ``{name: path}`` of what was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, df, index in (("dsc_per_case", tables.dsc, True), ("summary", tables.summary, True),
                            ("table1", tables.table1, False), ("wilcoxon", tables.wilcoxon, False)):
        path = out / f"{name}.csv"
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=index)
        files[name] = path
    shown = tables.table1.drop(columns=["architecture", "mean_pct", "sd_pct", "p_value"])
    files["table1_md"] = out / "table1.md"
    atomic_write_text(files["table1_md"], _markdown_table(shown))
    if tables.comparison is not None:
        files["comparison"] = out / "comparison.csv"
        with atomic_path(files["comparison"]) as tmp:
            tables.comparison.to_csv(tmp, index=False)
        files["comparison_md"] = out / "comparison.md"
        atomic_write_text(files["comparison_md"],
                          _markdown_table(tables.comparison.drop(columns=["architecture"])))
    files["json"] = out / "results.json"
    atomic_write_text(files["json"], json.dumps(tables.to_dict(), indent=2) + "\n")
    files["plot"] = out / "dsc_plot.png"
    plot_cv(tables.per_case, files["plot"], title="Cross-validation: DSC per case")
    logger.info("cross-validation report written to %s", out)
    return files
