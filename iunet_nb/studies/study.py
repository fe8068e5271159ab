"""Experiment 2: the reader study — its design, and the analysis of its event logs.

The front door of the reader study: every public name is importable from here, and the
command line ``iunet-nb study design`` / ``iunet-nb study analyse`` lives here. The code
is in three modules:

* :mod:`iunet_nb.studies.design`: the paper's crossover design (:func:`design_study`), the
  plan file (:class:`StudyPlan`, :class:`StudyTask`) and the checks of ids and parameters;
* :mod:`iunet_nb.studies.analysis`: the event logs (:func:`load_event_logs`), time per case
  (:func:`case_times`), final masks, consensus and DSC, manual vs interactive
  (:func:`compare_methods`) and the whole analysis (:func:`analyse_study`);
* :mod:`iunet_nb.studies.report`: the one-page summary (:func:`write_study_report`,
  :func:`plot_study`).
"""

from __future__ import annotations

import argparse
from typing import Any

from .analysis import (
    _CONSENSUS,
    END_EVENTS,
    START_EVENTS,
    StudyResult,
    analyse_study,
    case_times,
    compare_methods,
    consensus,
    dsc_table,
    interobserver_dsc,
    load_event_logs,
    load_final_masks,
    validate_analysis_parameters,
)
from .design import (
    METHODS,
    StudyPlan,
    StudyTask,
    design_study,
    validate_design_parameters,
    validate_id,
)
from .report import _summary_markdown, plot_study, write_study_report

__all__ = [
    "END_EVENTS",
    "METHODS",
    "START_EVENTS",
    "StudyPlan",
    "StudyResult",
    "StudyTask",
    "add_cli",
    "analyse_study",
    "case_times",
    "compare_methods",
    "consensus",
    "design_study",
    "dsc_table",
    "interobserver_dsc",
    "load_event_logs",
    "load_final_masks",
    "plot_study",
    "validate_analysis_parameters",
    "validate_design_parameters",
    "validate_id",
    "write_study_report",
]


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _cmd_design(args: argparse.Namespace) -> int:
    plan = design_study(args.readers, args.cases, args.subsets, tuple(args.methods), args.seed)
    plan.to_json(args.out)
    print(plan.overview().to_string())
    print(f"plan written to {args.out}")
    return 0


def _cmd_analyse(args: argparse.Namespace) -> int:
    result = analyse_study(args.study, args.plan, consensus_method=args.consensus,
                           interobserver_method=args.interobserver_method)
    files = write_study_report(result, args.out or args.study)
    print(_summary_markdown(result, files["plot"].name))
    print(f"summary written to {files['markdown']}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``iunet-nb study design`` and ``iunet-nb study analyse`` on ``subparsers``."""
    p = subparsers.add_parser("study", help="reader study (Experiment 2): design and analysis")
    sub = p.add_subparsers(dest="study_command", required=True)
    d = sub.add_parser("design", help="write a crossover study plan (JSON)")
    d.add_argument("--readers", nargs="+", required=True, help="reader ids")
    d.add_argument("--cases", nargs="+", required=True, help="case ids")
    d.add_argument("--subsets", type=int, default=2)
    d.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True, help="plan file (e.g. study/plan.json)")
    d.set_defaults(func=_cmd_design)
    a = sub.add_parser("analyse", aliases=["analyze"], help="analyse a study folder's logs")
    a.add_argument("study", help="study folder (session folders <reader>/<method>/<case>)")
    a.add_argument("--plan", default=None, help="plan file (default STUDY/plan.json)")
    a.add_argument("--consensus", default="majority", choices=list(_CONSENSUS))
    a.add_argument("--interobserver-method", default=None, choices=list(METHODS))
    a.add_argument("--out", default=None, help="report folder (default: the study folder)")
    a.set_defaults(func=_cmd_analyse)
