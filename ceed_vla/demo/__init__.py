"""`ceed demo`: the whole product on the embedded default, top to bottom.

    record -> teacher -> collect -> distill [-> collect_r2 -> distill_r2 ...] -> eval_* -> report

Every stage is one `ceed` job run as a subprocess, so each can also be run by hand with the command
the log prints. Finished stages are skipped on a rerun; a changed profile reruns what depends on it
(`ceed_vla.pipeline`). Two profiles: `quick` (a newcomer's first look) and `full` (the data and
training the reported numbers need); their measured times are in docs/demo.md.

The parts: `profiles` (data), `stages` (the pipeline, read top to bottom), `report` (report.json,
Markdown, plots, README block). This module is the job: its arguments and the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from ceed_vla.atomic import atomic_write_json
from ceed_vla.pipeline import Pipeline, StageError

from .profiles import PROFILES, DemoProfile, EvalMode
from .report import (
    README_BEGIN,
    README_END,
    REPORT_KEYS,
    build_report,
    git_commit,
    mode_order,
    readme_markers,
    report_markdown,
    update_readme,
    write_plots,
    write_views,
)
from .stages import DemoPaths, StageCommand, build_stages

__all__ = [
    "PROFILES",
    "README_BEGIN",
    "README_END",
    "REPORT_KEYS",
    "DemoPaths",
    "DemoProfile",
    "EvalMode",
    "StageCommand",
    "build_report",
    "build_stages",
    "configure_parser",
    "git_commit",
    "main",
    "mode_order",
    "readme_markers",
    "report_markdown",
    "update_readme",
    "write_plots",
]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="stage outputs (default: outputs/demo/PROFILE)"
    )
    parser.add_argument(
        "--reports", type=Path, default=None, help="report folder (default: reports/demo[/PROFILE])"
    )
    parser.add_argument("--only", default=None, help="comma-separated stage names to run (others untouched)")
    parser.add_argument("--force", default="", help="comma-separated stage names to rerun even if finished")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for training stages")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: redraw the plots and Markdown (and --readme) from the existing report.json",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help=f"also put the table and main plot into this file between {README_BEGIN} and {README_END} "
        "(profile `quick`) or the demo-report-PROFILE markers",
    )


def _rewrite_from_report(reports: Path, readme: Path | None) -> int:
    path = reports / "report.json"
    if not path.exists():
        print(
            f"ceed demo: error: {path} does not exist; run `ceed demo` without --report-only first",
            file=sys.stderr,
        )
        return 2
    write_views(json.loads(path.read_text()), reports, readme)
    print(
        f"rewrote {reports / 'report.md'} and plots from {path}" + (f"; updated {readme}" if readme else "")
    )
    return 0


def main(args: argparse.Namespace) -> int:
    profile = PROFILES[args.profile]
    if args.threads:
        profile = replace(profile, threads=args.threads)
    work = args.workdir or Path("outputs/demo") / profile.name
    reports = args.reports or (
        Path("reports/demo") if profile.name == "quick" else Path("reports") / profile.name
    )
    paths = DemoPaths(work=work, reports=reports)
    if args.report_only:
        return _rewrite_from_report(reports, args.readme)
    stages = build_stages(profile, paths)
    names = [s.name for s in stages]
    only = [s for s in (args.only or "").split(",") if s]
    force = [s for s in args.force.split(",") if s]
    unknown = [s for s in only + force if s not in names]
    if unknown:
        print(
            f"ceed demo: error: unknown stage(s) {unknown}; stages are: {', '.join(names)}", file=sys.stderr
        )
        return 2
    t0 = time.perf_counter()
    commit = git_commit()  # the code the stages run with, even if HEAD moves during a long run
    try:
        summary = Pipeline(work, stages).run(only=only or None, force=force)
    except StageError as err:
        print(f"ceed demo: error: {err}", file=sys.stderr)
        return 1
    if only:
        return 0
    report = build_report(profile, paths, summary, commit=commit)
    report["wall_seconds"] = time.perf_counter() - t0
    reports.mkdir(parents=True, exist_ok=True)
    atomic_write_json(reports / "report.json", report)
    print(write_views(report, reports, args.readme))
    print(
        f"wrote {reports / 'report.json'}, report.md and plots"
        + (f"; updated {args.readme}" if args.readme else "")
    )
    return 0
