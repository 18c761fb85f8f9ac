"""The demo's report: assembled from each evaluation's report.json, written as Markdown, plots and the
README block (`ceed demo --report-only` redraws them from report.json)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ceed_vla.atomic import atomic_write_text
from ceed_vla.sim.metrics import episode_outcomes, paired_outcomes
from ceed_vla.sim.report import DelayCurves, delay_table_markdown, plot_success_vs_delay

from .profiles import DemoProfile
from .stages import DemoPaths

REPORT_KEYS = (
    "success_rate",
    "success_ci95",
    "episodes",
    "ms_per_chunk_p50",
    "ms_per_chunk_p95",
    "iterations_per_chunk",
    "tokens_per_chunk",
    "actions_per_s",
    "speedup_vs_ar",
    "speedup_range",
    "ms_per_chunk_interleaved",
    "forwards_per_chunk",
    "paired_vs_teacher_ar",
    "seconds_to_success",
    "held_fraction",
    "late_chunks",
    "jerk",
)


def mode_row(eval_report: dict[str, Any]) -> dict[str, Any]:
    overall = eval_report["overall"]
    settings = eval_report.get("settings", {})
    return {
        # how a planned-ahead row predicted its start states (reports from before the choice: kinematic)
        "forward_model": settings.get("forward_model", "kinematic") if settings.get("plan_ahead") else None,
        "success_rate": overall["success_rate"],
        "success_ci95": overall["success_ci95"],
        "episodes": overall["episodes"],
        "ms_per_chunk_p50": overall.get("chunk_ms_p50"),
        "ms_per_chunk_p95": overall.get("chunk_ms_p95"),
        "iterations_per_chunk": overall.get("iterations_per_chunk"),
        "tokens_per_chunk": overall.get("tokens_per_chunk"),
        "actions_per_s": overall.get("actions_per_s"),
        "held_fraction": overall.get("held_fraction"),
        "late_chunks": overall.get("late_chunks"),
        "held_steps": overall.get("held_steps"),
        "jerk": overall.get("jerk"),
        "forced_steps_per_chunk": overall.get("forced_steps_per_chunk"),
        "seconds_to_success": overall.get("mean_seconds_to_success"),
        "iterations_per_chunk_warm": overall.get("iterations_per_chunk_warm"),
        "iterations_per_chunk_cold": overall.get("iterations_per_chunk_cold"),
        "per_task": {t: r["success_rate"] for t, r in eval_report["per_task"].items()},
        "chunk_iterations": [
            x for e in eval_report.get("episodes", []) for x in e.get("iterations_per_chunk", [])
        ],
    }


def _eval_report(paths: DemoPaths, mode: str) -> dict[str, Any]:
    return json.loads((paths.eval_dir(mode) / "report.json").read_text())


def build_report(
    profile: DemoProfile, paths: DemoPaths, summary: dict[str, dict], commit: str | None = None
) -> dict[str, Any]:
    """commit: the code the stages ran with (taken when the run started); default: HEAD now."""
    speed = _speed_record(paths)
    evals = {mode.name: _eval_report(paths, mode.name) for mode in profile.modes()}
    reference = episode_outcomes(evals["teacher_ar"])
    modes: dict[str, Any] = {}
    for mode in profile.modes():
        described = asdict(mode) | {"decoder": mode.decoder}
        described |= {"scheduling": mode.scheduling} if mode.clock != "paused" else {}
        modes[mode.name] = {
            **mode_row(evals[mode.name]),
            **speed_columns(speed, mode.decoder),
            # a = teacher AR, b = this mode, on the same (task, seed) episodes
            "paired_vs_teacher_ar": paired_outcomes(reference, episode_outcomes(evals[mode.name])),
            "mode": described,
        }
    missing = [(n, k) for n, r in modes.items() for k in REPORT_KEYS if k not in r]
    if missing:
        raise RuntimeError(f"report rows lack keys: {missing}")
    return {
        "profile": profile.name,
        "config": asdict(profile),
        "modes": modes,
        "stages": summary,
        "machine": machine_info(),
        "git_commit": commit or git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "speed": {k: speed[k] for k in ("reference", "rounds", "samples", "threads", "runs", "run_length")},
    }


def _speed_record(paths: DemoPaths) -> dict[str, Any]:
    path = paths.speed
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the demo's speed stage writes it (`ceed bench speed`)")
    return json.loads(path.read_text())


def speed_columns(speed: dict[str, Any], decoder: str) -> dict[str, Any]:
    """A row's speed, from the one interleaved measurement of every decoder (never from the row's own
    evaluation, whose timing is minutes apart from the others')."""
    if decoder not in speed["entries"]:
        raise KeyError(f"the speed record has no decoder {decoder!r} (it has {sorted(speed['entries'])})")
    s = speed["entries"][decoder]
    return {
        "ms_per_chunk_interleaved": s["ms_p50"],
        "speedup_vs_ar": s["speedup_vs_reference"],
        "speedup_range": [s["speedup_min"], s["speedup_max"]],
        "forwards_per_chunk": s["forward_passes_per_chunk"],
    }


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _recorded_seconds(stage: dict) -> float:
    """What a stage took when it ran (reports written before this was recorded give this run's)."""
    return stage.get("recorded_seconds", stage["seconds"])


def _earlier_attempts_words(stages: dict) -> str:
    """The stages that finished only at a later attempt, and what the unfinished ones took."""
    redone = {n: s for n, s in stages.items() if s.get("earlier_attempts")}
    if not redone:
        return ""
    return (
        " Unfinished earlier attempts (a failure or a stopped process; the stage resumed or reran), not in "
        "the figures above: "
        + ", ".join(
            f"{n} {s['earlier_attempts_seconds'] / 60:.1f} min in {s['earlier_attempts']}"
            for n, s in redone.items()
        )
        + "."
    )


def stage_minutes(report: dict) -> tuple[float, float]:
    """(minutes of stages run by this run, minutes of all stages as each recorded when it ran)."""
    stages = report["stages"].values()
    return sum(s["seconds"] for s in stages) / 60, sum(_recorded_seconds(s) for s in stages) / 60


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the checkout at `repo` (default: this package's), with "-dirty" when tracked code
    differs from it; None outside a git checkout."""
    repo = repo or Path(__file__).parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=repo,
            check=True,
        )
        # the demo's own outputs (reports/, the README block) do not make the code dirty
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":(top)",
                ":(top,exclude)reports",
                ":(top,exclude)README.md",
            ],
            capture_output=True,
            text=True,
            cwd=repo,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _mode_wordings(report: dict[str, Any]) -> dict[str, str]:
    """Modes whose instruction wording differs from the profile's."""
    default = report["config"].get("eval_instructions", "eval")
    return {
        name: r["mode"]["instructions"]
        for name, r in report["modes"].items()
        if r["mode"].get("instructions") not in (None, default)
    }


def mode_order(report: dict[str, Any]) -> list[str]:
    """The profile's own order of modes (JSON on disk has its keys sorted)."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in report["config"].items()}
    try:
        order = [m.name for m in DemoProfile(**config).modes()]
    except TypeError:  # a report written by another version of the profile
        order = []
    return [n for n in order if n in report["modes"]] + sorted(set(report["modes"]) - set(order))


def _paired_cells(paired: dict[str, Any] | None) -> str:
    """`both / only AR / only this / neither | p` (dashes for reports written before pairing)."""
    if not paired:
        return "- | -"
    return (
        f"{paired['both']} / {paired['only_a']} / {paired['only_b']} / {paired['neither']} "
        f"| {paired['mcnemar_p']:.3g}"
    )


def _held_cells(row: dict[str, Any]) -> str:
    """Real-time rows: the share of ticks held and the chunks that came too late; '-' when paused."""
    if row.get("held_fraction") is None:
        return "-"
    return f"{row['held_fraction']:.0%} / {_fmt(row.get('late_chunks'), 'd')}"


def _replan_sentence(execute_steps: int | None) -> str:
    if execute_steps is None:
        return " Each chunk is executed whole before the next observation."
    return (
        f" Each mode executes the first {execute_steps} actions of a chunk, then plans again from a new "
        "observation; the rest of the chunk, shifted, is the next initial Jacobi guess."
    )


def _is_delay_row(row: dict[str, Any]) -> bool:
    return row["mode"].get("delay_ticks") is not None


def _scheduling_note(row: dict[str, Any]) -> str:
    """How a real-time row scheduled: " (plan ahead)", " (prefix)" when chunks were decoded after a
    forced prefix, " (no prefix)" when neither; nothing for paused rows and reports from before them."""
    if row["mode"].get("plan_ahead"):
        return " (plan ahead)"
    if row["mode"].get("forced_prefix") is False:
        return " (no prefix)"
    return " (prefix)" if row.get("forced_steps_per_chunk") else ""


def main_table(report: dict[str, Any]) -> list[str]:
    """Every mode but the delay curve's points, as Markdown table lines."""
    lines = [
        "| mode | clock | success (95% CI) | episodes | s to success | ms/chunk | speedup vs AR (range) "
        "| forwards/chunk | iterations/chunk | ms/chunk in the episodes p50 / p95 | actions/s "
        "| held / late chunks | jerk | vs teacher AR: both / only AR / only this / neither | McNemar p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in mode_order(report):
        r = report["modes"][name]
        if _is_delay_row(r):
            continue
        lo, hi = r["success_ci95"]
        clock = r["mode"]["clock"] + _scheduling_note(r)
        lines.append(
            f"| {name} | {clock} | {r['success_rate']:.2f} ({lo:.2f}-{hi:.2f}) | {r['episodes']} "
            f"| {_fmt(r.get('seconds_to_success'), '.2f')} "
            f"| {_fmt(r.get('ms_per_chunk_interleaved'), '.1f')} | {_speedup_cell(r)} "
            f"| {_fmt(r.get('forwards_per_chunk'), '.2f')} | {_fmt(r['iterations_per_chunk'], '.2f')} "
            f"| {_fmt(r['ms_per_chunk_p50'], '.1f')} / {_fmt(r['ms_per_chunk_p95'], '.1f')} "
            f"| {_fmt(r['actions_per_s'], '.0f')} | {_held_cells(r)} | {_fmt(r.get('jerk'), '.4f')} "
            f"| {_paired_cells(r.get('paired_vs_teacher_ar'))} |"
        )
    return lines


def _speedup_cell(row: dict[str, Any]) -> str:
    if row.get("speedup_vs_ar") is None:
        return "-"
    spread = row.get("speedup_range")
    return f"{row['speedup_vs_ar']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def speed_sentence(report: dict[str, Any]) -> str:
    """How the speed columns were measured (empty for a report from before the speed stage)."""
    s = report.get("speed")
    if not s:
        return ""
    return (
        f" Speed columns: one interleaved run (`ceed bench speed`) in which every decoder of the table "
        f"decoded the same {s['samples']} recorded observations ({s['run_length']} consecutive frames of "
        f"{s['runs']} episodes, each decoder warm-started from its own previous chunk) {s['rounds']} times, "
        f"at {s['threads']} thread(s), the decoders' order rotated every round; ms/chunk is the median "
        "decode, the speedup the median over rounds of teacher AR's mean over this decoder's, with the "
        "range over rounds. Rows that differ only in clock or wording run the same decoder and share its "
        "speed. The evaluation's own timing (two workers side by side, each mode in its own stage) is "
        "the secondary column."
    )


CURVE_LABELS = {
    ("teacher_ar", "today"): "teacher AR, not planned ahead",
    ("teacher_ar", "plan_ahead"): "teacher AR, planned ahead",
    ("teacher_ar", "prefix"): "teacher AR, forced prefix",
    ("student_early_exit", "today"): "student early exit, not planned ahead",
    ("student_early_exit", "plan_ahead"): "student early exit, planned ahead",
    ("student_early_exit", "prefix"): "student early exit, forced prefix",
}


def _row_scheduling(row: dict[str, Any]) -> str:
    """`EvalMode.scheduling` as the report stored it; a report from before planning ahead stored none
    (its rows were today's scheduling or the forced prefix)."""
    mode = row["mode"]
    return mode.get("scheduling") or ("prefix" if mode.get("forced_prefix") else "today")


def delay_curves(report: dict[str, Any]) -> DelayCurves:
    """Success against delay from the delay rows; d = 0 is each decoder's paused row."""
    curves: DelayCurves = {}
    for (base, scheduling), label in CURVE_LABELS.items():
        points = {
            r["mode"]["delay_ticks"]: r
            for name, r in report["modes"].items()
            if _is_delay_row(r) and name.startswith(f"{base}_d") and _row_scheduling(r) == scheduling
        }
        if points and base in report["modes"]:
            curves[label] = {0: report["modes"][base], **dict(sorted(points.items()))}
    return curves


FORWARD_MODEL_WORDS = {
    "arm": "as the arm's own dynamics predict it: MuJoCo without contacts, `--forward-model arm`",
    "kinematic": "as the actions' translations summed predict it, `--forward-model kinematic`",
}


def _forward_model_words(report: dict[str, Any]) -> str:
    # a report from before the forward model was recorded planned ahead with the kinematic one
    models = sorted(
        {
            row.get("forward_model") or "kinematic"
            for row in report["modes"].values()
            if row.get("mode", {}).get("plan_ahead") or row.get("forward_model")
        }
    )
    return "; ".join(FORWARD_MODEL_WORDS[m] for m in models) or "no row planned ahead"


def _exact_executed_words(report: dict[str, Any]) -> str:
    rows = sorted(
        (r["mode"]["delay_ticks"], r["iterations_per_chunk"])
        for r in report["modes"].values()
        if _is_delay_row(r) and r["mode"].get("exact_steps")
    )
    if not rows:
        return ""
    cells = ", ".join(f"d = {d}: {_fmt(it, '.2f')}" for d, it in rows)
    return (
        " Past the replanning interval the student planned ahead runs d steps of each chunk before the "
        "next arrives, and decodes them exact (`--exact-executed`), at more iterations per chunk "
        f"({cells})."
    )


def delay_section(report: dict[str, Any]) -> list[str]:
    """The delay curve as Markdown lines (empty for a report without delay rows)."""
    curves = delay_curves(report)
    if not curves:
        return []
    return [
        "Success against delay (`ceed eval --delay-ticks d`: every policy call takes d control ticks of "
        "12.5 ms, whatever the machine; d = 0 is the paused row). Not planned ahead (`--no-plan-ahead`, the "
        "earlier scheduling) drops the chunk's first d actions and cross-fades the rest into the old plan; "
        "planning ahead (the default) commits the d queued "
        f"steps that run meanwhile and plans the chunk for the tick after them, from the state they lead to "
        f"({_forward_model_words(report)}); the forced prefix gives the decoder those steps as the chunk's first ones."
        f"{_exact_executed_words(report)} Cells: success (jerk, the mean "
        "|change of the command| between ticks).",
        "",
        *delay_table_markdown(curves, note_zero="paused").splitlines(),
        "",
        "![success against delay](success_vs_delay.png)",
    ]


def report_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# ceed demo — profile `{report['profile']}`",
        "",
        f"Commit `{report['git_commit']}`, {report['machine']['platform']}, "
        f"{report['machine']['cpu_count']} CPUs, torch {report['machine']['torch']}"
        + (f", {report['machine']['cuda']}" if report["machine"]["cuda"] else ", CPU only")
        + f". Tasks: {', '.join(report['config']['tasks'])}.",
        "",
        f"Every mode runs the same {report['config']['eval_episodes']} held-out episodes per task (seeds "
        "disjoint from the recording) with the instruction in the "
        + {"train": "training wording", "eval": "held-out wording (a paraphrase never trained on)"}[
            report["config"].get("eval_instructions", "eval")
        ]
        + "".join(
            f"; {name} gives the "
            + {"train": "training wording", "eval": "held-out paraphrase (never trained on)"}[wording]
            for name, wording in _mode_wordings(report).items()
        )
        + ". The paused clock waits for the policy (as papers report); the real-time clock keeps the "
        "simulation moving while the policy computes, scheduling chunks as the robot bridge does. "
        "Seconds to success are simulated (80 Hz control) over the episodes that succeed."
        + _replan_sentence(report["config"].get("execute_steps"))
        + speed_sentence(report),
        "",
        *main_table(report),
    ]
    delay = delay_section(report)
    if delay:
        lines += ["", *delay]
    this_run_s, all_s = stage_minutes(report)
    lines += [
        "",
        f"Stage time: {all_s:.1f} min for all stages, each as recorded when it ran; {this_run_s:.1f} min in "
        "this run (skipped stages count 0). Per stage, in minutes: "
        + ", ".join(f"{name} {_recorded_seconds(s) / 60:.1f}" for name, s in report["stages"].items())
        + "."
        + _earlier_attempts_words(report["stages"]),
        "",
    ]
    lines += [
        "![success vs decoding speed](pareto.png)",
        "",
        "![success per task](success_per_task.png)",
        "",
    ]
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    rows = {n: r for n, r in report["modes"].items() if r["mode"]["clock"] == "paused"}
    # speed from the interleaved measurement where the report has one, else the evaluations' own
    interleaved = bool(report.get("speed"))
    key = "speedup_vs_ar" if interleaved else "actions_per_s"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = sorted((r[key], name) for name, r in rows.items() if r.get(key) is not None)
    for i, (x, name) in enumerate(drawn):
        r = rows[name]
        lo, hi = r["success_ci95"]
        spread = r.get("speedup_range") if interleaved else None
        ax.errorbar(
            x,
            r["success_rate"],
            yerr=[[r["success_rate"] - lo], [hi - r["success_rate"]]],
            xerr=[[x - spread[0]], [spread[1] - x]] if spread else None,
            fmt="s" if r["mode"]["sweep"] else "o",
            capsize=3,
        )
        ax.annotate(
            name,
            (x, r["success_rate"]),
            textcoords="offset points",
            xytext=(4, 4 if i % 2 == 0 else -10),  # neighbours in speed alternate above and below
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_xlabel(
        "speedup per chunk vs teacher AR (one interleaved run; range over rounds; log)"
        if interleaved
        else "actions per second (policy compute only, log)"
    )
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Success vs decoding speed")
    ax.grid(alpha=0.3)
    save(fig, "pareto.png")

    tasks = list(report["config"]["tasks"])
    headline = [n for n, r in rows.items() if not r["mode"]["sweep"]]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(tasks) + 2), 4.2))
    width = 0.8 / max(1, len(headline))
    for i, name in enumerate(headline):
        vals = [rows[name]["per_task"].get(t) or 0.0 for t in tasks]
        ax.bar([j + i * width for j in range(len(tasks))], vals, width, label=name)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right", fontsize=8
    )
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("Success per task")
    save(fig, "success_per_task.png")

    curves = delay_curves(report)
    if curves:
        path = out / "success_vs_delay.png"
        dashed = tuple(label for (_, scheduling), label in CURVE_LABELS.items() if scheduling == "today")
        plot_success_vs_delay(curves, path, title="Success against delay (d ticks per call)", dashed=dashed)
        paths.append(path)

    decoded = {n: rows[n]["chunk_iterations"] for n in headline if rows[n].get("chunk_iterations")}
    if decoded:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        top = max(max(v) for v in decoded.values())
        bins = [b - 0.5 for b in range(1, int(top) + 3)]
        for name, iters in decoded.items():
            ax.hist(iters, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_xlabel("forward passes after prefill, per chunk")
        ax.set_ylabel("chunks")
        ax.set_title("Iterations per chunk")
        ax.legend(fontsize=7)
        save(fig, "iterations_hist.png")
    return paths


README_BEGIN = "<!-- demo-report:begin -->"
README_END = "<!-- demo-report:end -->"


def readme_markers(profile: str) -> tuple[str, str]:
    """The README block a profile's report goes into (`quick` keeps the original unnamed block)."""
    if profile == "quick":
        return README_BEGIN, README_END
    return f"<!-- demo-report-{profile}:begin -->", f"<!-- demo-report-{profile}:end -->"


def update_readme(readme: Path, report: dict[str, Any], reports: Path) -> None:
    """Replace the profile's generated block of `readme` with this report's table and main plot."""
    text = readme.read_text()
    begin, end = readme_markers(report["profile"])
    if begin not in text or end not in text:
        raise ValueError(f"{readme} has no {begin} ... {end} block to replace; add one")
    rel = os.path.relpath(reports, readme.parent)
    table = main_table(report)
    delay = [line for line in delay_section(report) if line.startswith("|")]
    if delay:
        table += ["", *delay, "", f"![success against delay]({rel}/success_vs_delay.png)"]
    block = [
        begin,
        f"Profile `{report['profile']}`, commit `{report['git_commit']}`, "
        f"{report['machine']['cpu_count']} CPUs{_eval_workers_note(report)}, "
        f"stages {stage_minutes(report)[1]:.0f} min "
        f"(this run {report['wall_seconds'] / 60:.0f} min; written by `ceed demo`; full report: "
        f"[{rel}/report.md]({rel}/report.md)).",
        "",
        *table,
        "",
        f"![success vs decoding speed]({rel}/pareto.png)",
        end,
    ]
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(readme, head + "\n".join(block) + tail)


def _eval_workers_note(report: dict[str, Any]) -> str:
    workers = report["config"].get("workers", 1)
    if workers == 1:
        return ""
    return f" (recording and evaluations in {workers} processes sharing them, every mode timed alike)"


def write_views(report: dict[str, Any], reports: Path, readme: Path | None) -> str:
    """What is drawn from report.json: the plots, report.md and the README block; returns the Markdown."""
    write_plots(report, reports)
    markdown = report_markdown(report)
    atomic_write_text(reports / "report.md", markdown)
    if readme:
        update_readme(readme, report, reports)
    return markdown
