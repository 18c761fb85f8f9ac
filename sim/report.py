"""The report of `ceed eval`: statistics over episodes, report.json, Markdown, the success plot and the
rollout media (GIF and frame strip)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ceed_vla.sim.env import CONTROL_HZ
from ceed_vla.sim.metrics import mean, percentile, wilson_interval

from ceed_vla.atomic import atomic_savefig, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from ceed_vla.sim.runner import EpisodeResult, EvalConfig


def summarise(episodes: list[EpisodeResult], clock: str) -> dict[str, Any]:
    """Success with a 95% Wilson interval, steps to success and speed over some episodes."""
    n = len(episodes)
    wins = sum(e.success for e in episodes)
    low, high = wilson_interval(wins, n)
    calls = [ms for e in episodes for ms in e.call_ms]
    decode_ms = [ms for e in episodes for ms in e.decode_ms]
    policy_s = sum(e.policy_seconds for e in episodes)
    env_s = sum(e.env_seconds for e in episodes)
    steps = sum(e.steps for e in episodes)
    wall = sum(e.wall_seconds for e in episodes)
    actions = sum(e.actions_from_policy for e in episodes)
    out: dict[str, Any] = {
        "episodes": n,
        "successes": wins,
        "success_rate": wins / n if n else None,
        "success_ci95": [low, high],
        # an episode ends at its first success, so its steps are the steps to success
        "mean_steps_to_success": mean([e.steps for e in episodes if e.success]),
        # what a user feels: simulated seconds from reset to success
        "mean_seconds_to_success": mean([e.steps / CONTROL_HZ for e in episodes if e.success]),
        "policy_calls": len(calls),
        "policy_ms_p50": percentile(calls, 50),
        "policy_ms_p95": percentile(calls, 95),
        "actions_per_s": actions / policy_s if policy_s > 0 else None,
        "env_steps_per_s": steps / env_s if env_s > 0 else None,
        "loop_hz": steps / wall if wall > 0 else None,
        # the same quantities under the names `lerobot-eval` reports them by
        "pc_success": 100.0 * wins / n if n else None,
        "avg_sum_reward": mean([e.reward_sum for e in episodes]),
        "avg_max_reward": mean([e.reward_max for e in episodes if e.steps]),
        "eval_s": wall,
        "eval_ep_s": wall / n if n else None,
    }
    if decode_ms:
        out["chunk_ms_p50"] = percentile(decode_ms, 50)
        out["chunk_ms_p95"] = percentile(decode_ms, 95)
        out["iterations_per_chunk"] = mean([x for e in episodes for x in e.decode_iterations])
        out["tokens_per_chunk"] = mean([x for e in episodes for x in e.decode_tokens])
        pairs = [(x, w) for e in episodes for x, w in zip(e.decode_iterations, e.decode_warm, strict=True)]
        # split by initial guess: a chunk with an earlier chunk to start from, and one without
        out["iterations_per_chunk_warm"] = mean([x for x, w in pairs if w])
        out["iterations_per_chunk_cold"] = mean([x for x, w in pairs if not w])
        out["warm_start_share"] = mean([float(w) for _, w in pairs])
    changes = sum(e.action_changes for e in episodes)
    # mean |change of the commanded action| between consecutive ticks (mean over its dimensions)
    out["jerk"] = sum(e.action_change_sum for e in episodes) / changes if changes else None
    if clock != "paused":
        out["held_steps"] = sum(e.held_steps for e in episodes)
        out["dropped_actions"] = sum(e.dropped_actions for e in episodes)
        out["held_fraction"] = out["held_steps"] / steps if steps else None
        out["late_chunks"] = sum(e.late_chunks for e in episodes)
        out["deadline_stops"] = sum(e.deadline_stops for e in episodes)
        forced = sum(e.forced_chunks for e in episodes)
        out["forced_chunks"] = forced
        out["forced_steps_per_chunk"] = sum(e.forced_steps for e in episodes) / forced if forced else None
        out["prefix_overrun_ticks"] = sum(e.prefix_overrun_ticks for e in episodes)
        out["planned_ahead_steps"] = sum(e.planned_ahead_steps for e in episodes)
    return out


def _plan_ahead_words(sched: dict[str, Any], settings: dict[str, Any]) -> str:
    if not sched.get("plan_ahead"):
        return "off"
    return f"on ({settings.get('forward_model', 'kinematic')} forward model)"


def build_report(
    config: EvalConfig, episodes: list[EpisodeResult], predict_kwargs: dict[str, Any]
) -> dict[str, Any]:
    per_task = {
        spec.name: summarise([e for e in episodes if e.task == spec.name], config.clock)
        for spec in config.specs
    }
    settings = {k: v for k, v in asdict(config).items() if k not in ("specs", "output")}
    settings["decoding"] = {k: _jsonable(v) for k, v in predict_kwargs.items()}
    return {
        "settings": settings,
        "overall": summarise(episodes, config.clock),
        "per_task": per_task,
        "episodes": [
            {
                "task": e.task,
                "seed": e.seed,
                "success": e.success,
                "steps": e.steps,
                "policy_calls": e.policy_calls,
                "iterations_per_chunk": e.decode_iterations,
                "warm_started": e.decode_warm,
                "held_steps": e.held_steps,
                "late_chunks": e.late_chunks,
                "forced_chunks": e.forced_chunks,
                "jerk": e.action_change_sum / e.action_changes if e.action_changes else None,
                "sum_reward": e.reward_sum,
            }
            for e in episodes
        ],
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def clock_label(settings: dict[str, Any]) -> str:
    """`paused`, `realtime`, `delay 2 ticks` or `delay 31.6 ms`."""
    if settings["clock"] != "delay":
        return settings["clock"]
    if settings.get("delay_ticks") is not None:
        return f"delay {settings['delay_ticks']} ticks"
    return f"delay {settings['delay_ms']:g} ms"


def report_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# Evaluation ({clock_label(s)} clock)",
        "",
        f"{s['episodes_per_task']} episodes per task, {s.get('split', 'eval')} seeds (run seed {s['seed']}), {s['image_size']} px, "
        f"horizon {s['max_episode_steps']} steps, {s['instructions']} instructions.",
        "",
        "| task | success | 95% CI | episodes | steps to success | policy ms p50 | p95 | actions/s | env steps/s "
        "| held ticks | late chunks | jerk |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [*report["per_task"].items(), ("**overall**", report["overall"])]
    for name, r in rows:
        low, high = r["success_ci95"]
        lines.append(
            f"| {name} | {r['success_rate']:.2f} | [{low:.2f}, {high:.2f}] | {r['episodes']} | "
            f"{_fmt(r['mean_steps_to_success'])} | {_fmt(r['policy_ms_p50'], '.2f')} | {_fmt(r['policy_ms_p95'], '.2f')} | "
            f"{_fmt(r['actions_per_s'], '.0f')} | {_fmt(r['env_steps_per_s'], '.0f')} | "
            f"{r.get('held_steps', 0)} | {r.get('late_chunks', 0)} | {_fmt(r.get('jerk'), '.4f')} |"
        )
    overall = report["overall"]
    if "chunk_ms_p50" in overall:
        lines += [
            "",
            f"Decoding: {overall['chunk_ms_p50']:.1f} ms per chunk (p50), {overall['chunk_ms_p95']:.1f} (p95), "
            f"{overall['iterations_per_chunk']:.2f} iterations, {overall['tokens_per_chunk']:.0f} tokens per chunk.",
        ]
    if "held_steps" in overall:
        lines += [
            "",
            f"Real-time clock: {overall['held_steps']} steps held while the policy computed "
            f"({overall['held_fraction']:.1%} of all steps), {overall['dropped_actions']} stale actions dropped, "
            f"{overall['late_chunks']} chunks arrived too late to use"
            + (
                f", {overall['deadline_stops']} decodes ended by their deadline."
                if overall.get("deadline_stops")
                else "."
            ),
        ]
    if overall.get("forced_chunks"):
        lines += [
            "",
            f"Forced prefix: {overall['forced_chunks']} chunks decoded after "
            f"{overall['forced_steps_per_chunk']:.2f} committed steps on average; "
            f"{overall['prefix_overrun_ticks']} ticks ran unforced steps before their chunk arrived.",
        ]
    if overall.get("planned_ahead_steps"):
        lines += [
            "",
            f"Planned ahead: {overall['planned_ahead_steps']} committed steps that chunks were planned after.",
        ]
    sched = s.get("scheduler")
    if sched and sched.get("exact_executed"):
        lines += [
            "",
            "Executed steps exact: each chunk's steps that run before the next one are the AR actions.",
        ]
    if sched and s["clock"] != "paused":
        lines += [
            "",
            f"Scheduler: blend {sched['blend_steps']} ticks, refill margin {sched['refill_margin_ticks']}, "
            f"planned ahead {_plan_ahead_words(sched, s)}, "
            f"forced prefix {'on' if sched['forced_prefix'] else 'off'} (latency quantile "
            f"{sched['latency_quantile']:g}, margin {sched['prefix_margin_ticks']}), decode deadline "
            f"{'on' if sched['decode_deadline'] else 'off'}, initial guess {sched['init']}.",
        ]
    return "\n".join(lines) + "\n"


def plot_success(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["per_task"])
    rates = [float(report["per_task"][n]["success_rate"]) for n in names]
    ci = [report["per_task"][n]["success_ci95"] for n in names]
    below = [max(0.0, r - lo) for r, (lo, _) in zip(rates, ci, strict=True)]
    above = [max(0.0, hi - r) for r, (_, hi) in zip(rates, ci, strict=True)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(names) + 1.5), 3.6))
    ax.bar(range(len(names)), rates, color="#4c72b0")
    ax.errorbar(range(len(names)), rates, yerr=[below, above], fmt="none", ecolor="black", capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    overall = report["overall"]["success_rate"]
    ax.set_title(f"{clock_label(report['settings'])} clock, overall {overall:.2f}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)


def write_report(report: dict[str, Any], output: Path) -> None:
    """`report.json`, `report.md` and `success.png` in `output`."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "report.json", json.dumps(report, indent=2))
    atomic_write_text(output / "report.md", report_markdown(report))
    plot_success(report, output / "success.png")


def save_rollout(result: EpisodeResult, frames: list[np.ndarray], directory: Path, strip: int = 8) -> Path:
    """`<task>_<seed>_<success|failure>.gif` (every planning frame) and `.png` (`strip` of them)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{result.task}_{result.seed}_{'success' if result.success else 'failure'}"
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    atomic_write_bytes(directory / f"{stem}.gif", buf.getvalue())
    picks = np.linspace(0, len(frames) - 1, num=min(strip, len(frames))).round().astype(int)
    row = np.concatenate([frames[i] for i in picks], axis=1)  # [H, strip * W, 3]
    buf = io.BytesIO()
    Image.fromarray(row).save(buf, format="PNG")
    atomic_write_bytes(directory / f"{stem}.png", buf.getvalue())
    return directory / f"{stem}.png"


DelayCurves = dict[str, dict[int, dict[str, Any]]]
"""mode label -> {delay d in ticks: a report's `overall` row (success_rate, success_ci95, ...)}."""


def delay_table_markdown(curves: DelayCurves, note_zero: str = "") -> str:
    """Success against delay: one row per mode, one column per d (every d any mode has), with the
    jerk beside it; `note_zero` says what d = 0 is (e.g. the paused rows)."""
    delays = sorted({d for rows in curves.values() for d in rows})
    head = "| mode | " + " | ".join(
        f"d = {d}" + (f" ({note_zero})" if d == 0 and note_zero else "") for d in delays
    )
    lines = [head + " |", "| --- |" + " --- |" * len(delays)]
    for label, rows in curves.items():
        cells = []
        for d in delays:
            r = rows.get(d)
            if r is None:
                cells.append("-")
                continue
            jerk = r.get("jerk")
            cells.append(f"{r['success_rate']:.2f}" + (f" (jerk {jerk:.3f})" if jerk is not None else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_success_vs_delay(
    curves: DelayCurves, path: Path, title: str = "Success against delay", dashed: tuple[str, ...] = ()
) -> None:
    """One line per mode: success (95% Wilson interval) against the ticks a policy call takes; the
    modes in `dashed` are drawn dashed (e.g. today's scheduling beside the prefix-conditioned one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, rows) in enumerate(curves.items()):
        ds = sorted(rows)
        rates = [float(rows[d]["success_rate"]) for d in ds]
        low = [max(0.0, r - rows[d]["success_ci95"][0]) for r, d in zip(rates, ds, strict=True)]
        high = [max(0.0, rows[d]["success_ci95"][1] - r) for r, d in zip(rates, ds, strict=True)]
        offset = (i - (len(curves) - 1) / 2) * 0.06  # side by side, so the intervals stay readable
        ax.errorbar(
            [d + offset for d in ds],
            rates,
            yerr=[low, high],
            marker="o",
            capsize=3,
            linestyle="--" if label in dashed else "-",
            label=label,
        )
    ax.set_xlabel("delay d (control ticks a policy call takes; 12.5 ms each)")
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
