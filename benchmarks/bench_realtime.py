"""Where real-time success goes: one decoder under the paused clock, then under the delay clock at each
d with today's scheduling, with one piece of it switched off at a time, planned ahead (`ceed eval`'s
default under the moving clocks) and with the forced prefix.

    python benchmarks/bench_realtime.py --policy outputs/demo/quick/distill/run/final \
        --decoding early_exit --sigma 2 --delays 2,3 --episodes 4 --execute-steps 4

Rows (each its own `ceed eval` on the same validation episodes, kept under `--work`, so an interrupted
study resumes):
- `paused`: the reference (nothing executes while the policy computes);
- `d<d>_today`: the delay clock's d ticks per call, the bridge's scheduling (the chunk's first d
  actions dropped as stale, the rest cross-faded into the old plan over 2 ticks, warm start);
- `d<d>_no_blend`: the same without the cross-fade (`--blend-steps 0`);
- `d<d>_no_warm_start`: the same from the decoder's constant guess (`--init constant`);
- `d<d>_prefix`: the forced prefix (the d queued steps given to the decoder as the chunk's first);
- `d<d>_plan_ahead`: the chunk planned for the tick it starts at (the d queued steps committed, the
  policy given the state they lead to, the chunk run from its step 0 after them), that state by the
  arm's own dynamics (`--forward-model arm`, the default); `d<d>_plan_ahead_kinematic` by the actions'
  translations summed (`--forward-model kinematic`);
- `realtime_today`, `realtime_plan_ahead`, `realtime_plan_ahead_kinematic`, `realtime_prefix`, `realtime_prefix_deadline` with
  `--realtime`: the measured clock at the decoder's latency, the last with the decoder stopped when
  the queue would run dry (`--decode-deadline`); `--busy-cores N` runs N busy-loop processes beside these rows only (a loaded
  machine, the case the deadline is for).
Writes `--output` (JSON: every row, and each row paired with `paused` on the same episodes), a
Markdown table on stdout and a PNG of success against d beside the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from ceed_vla.sim.levers import TASKS, run_eval
from ceed_vla.sim.metrics import paired_outcomes
from ceed_vla.sim.report import plot_success_vs_delay

KEEP = (
    "held_fraction",
    "late_chunks",
    "dropped_actions",
    "jerk",
    "forced_steps_per_chunk",
    "prefix_overrun_ticks",
    "deadline_stops",
    "chunk_ms_p95",
    "iterations_per_chunk_warm",
    "iterations_per_chunk_cold",
)
TODAY = ["--no-forced-prefix", "--no-plan-ahead"]  # the stale steps dropped, the rest cross-faded
VARIANTS = {
    "today": TODAY,
    "no_blend": [*TODAY, "--blend-steps", "0"],
    "no_warm_start": [*TODAY, "--init", "constant"],
    "prefix": ["--forced-prefix"],
    "plan_ahead": ["--no-forced-prefix", "--plan-ahead", "--forward-model", "arm"],
    "plan_ahead_kinematic": ["--no-forced-prefix", "--plan-ahead", "--forward-model", "kinematic"],
}


def rows_to_run(delays: list[int], realtime: bool, variants=tuple(VARIANTS)) -> dict[str, list[str]]:
    """Row name -> the `ceed eval` options that make it."""
    rows: dict[str, list[str]] = {"paused": ["--clock", "paused"]}
    for d in delays:
        for variant in variants:
            rows[f"d{d}_{variant}"] = ["--delay-ticks", str(d), *VARIANTS[variant]]
    if realtime:
        rows["realtime_today"] = ["--clock", "realtime", *TODAY]
        rows["realtime_plan_ahead"] = ["--clock", "realtime", *VARIANTS["plan_ahead"]]
        rows["realtime_plan_ahead_kinematic"] = ["--clock", "realtime", *VARIANTS["plan_ahead_kinematic"]]
        rows["realtime_prefix"] = ["--clock", "realtime", "--forced-prefix"]
        rows["realtime_prefix_deadline"] = ["--clock", "realtime", "--forced-prefix", "--decode-deadline"]
    return rows


@contextlib.contextmanager
def busy_cores(n: int):
    """n processes spinning on the CPU while the block runs (the load the measured clock is tried under)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def table(record: dict) -> str:
    lines = [
        "| row | success (95% CI) | vs paused: both / only paused / only this / neither | McNemar p "
        "| held | late chunks | jerk | forced steps/chunk | iterations/chunk | ms/chunk p50 | deadline stops |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for name, r in record["rows"].items():
        p = r["vs_paused"]
        lo, hi = r["success_ci95"]
        lines.append(
            f"| {name} | {r['success_rate']:.2f} ({lo:.2f}-{hi:.2f}) "
            f"| {p['both']} / {p['only_a']} / {p['only_b']} / {p['neither']} | {p['mcnemar_p']:.3g} "
            f"| {fmt(r.get('held_fraction'), '.1%')} | {fmt(r.get('late_chunks'), 'd')} | {fmt(r.get('jerk'), '.4f')} "
            f"| {fmt(r.get('forced_steps_per_chunk'), '.2f')} | {fmt(r.get('iterations_per_chunk'), '.2f')} "
            f"| {fmt(r.get('chunk_ms_p50'), '.1f')} | {fmt(r.get('deadline_stops'), 'd')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", required=True, help="checkpoint directory (or 'expert')")
    parser.add_argument("--decoding", default="early_exit", choices=("ar", "jacobi", "early_exit"))
    parser.add_argument("--sigma", type=int, default=None)
    parser.add_argument(
        "--fused-prefill", action="store_true", help="Jacobi modes: one forward over prompt and guess"
    )
    parser.add_argument(
        "--exact-executed",
        action="store_true",
        help="early exit: the steps each chunk executes left exact (`ceed eval --exact-executed`), every row",
    )
    parser.add_argument("--delays", default="2,3", help="comma-separated ticks per call")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="also the measured clock: today's scheduling, planned ahead, the prefix, the prefix with a deadline",
    )
    parser.add_argument(
        "--busy-cores",
        type=int,
        default=0,
        help="busy-loop processes beside the measured-clock rows (default: 0)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated delay-clock variants among {', '.join(VARIANTS)} (default: all)",
    )
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--episodes", type=int, default=4, help="validation episodes per task and row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--execute-steps", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_realtime"))
    parser.add_argument("--output", type=Path, default=Path("outputs/bench_realtime/realtime.json"))
    args = parser.parse_args()

    common = ["eval", "--policy", args.policy, "--decoding", args.decoding, "--tasks", args.tasks]
    common += ["--episodes", str(args.episodes), "--seed", str(args.seed), "--split", "validation"]
    common += [
        "--image-size",
        str(args.image_size),
        "--instructions",
        "train",
        "--workers",
        str(args.workers),
    ]
    common += ["--save-rollouts", "0"]
    common += ["--sigma", str(args.sigma)] if args.sigma is not None else []
    common += ["--fused-prefill"] if args.fused_prefill else []
    common += ["--exact-executed"] if args.exact_executed else []
    common += ["--execute-steps", str(args.execute_steps)] if args.execute_steps else []
    delays = [int(d) for d in args.delays.split(",") if d.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"--variants {args.variants!r}: unknown {unknown}; choose among {', '.join(VARIANTS)}")
    t0 = time.perf_counter()
    rows = {}
    for name, options in rows_to_run(delays, args.realtime, variants).items():
        loaded = args.busy_cores if name.startswith("realtime") else 0
        with busy_cores(loaded):
            rows[name] = run_eval([*common, *options], args.work / name, keep=KEEP)
        rows[name]["busy_cores"] = loaded
        print(f"{name}: success {rows[name]['success_rate']:.2f}", flush=True)

    def outcomes(row):
        return {(t, int(s)): bool(ok) for t, s, ok in row["outcomes"]}

    for row in rows.values():
        row["vs_paused"] = paired_outcomes(outcomes(rows["paused"]), outcomes(row))
    record = {
        "benchmark": "realtime",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "policy": args.policy,
        "decoding": {
            "mode": args.decoding,
            "sigma": args.sigma,
            "fused_prefill": args.fused_prefill,
            "exact_executed": args.exact_executed,
        },
        "episodes_per_task": args.episodes,
        "split": "validation",
        "seconds": time.perf_counter() - t0,
        "busy_cores_beside_realtime_rows": args.busy_cores,
        "rows": rows,
    }
    from ceed_vla.atomic import atomic_write_json

    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, record)
    print(table(record))
    if not delays:  # measured-clock rows only: no curve to draw
        print(f"wrote {args.output}")
        return 0
    curves = {
        variant.replace("_", " "): {0: rows["paused"], **{d: rows[f"d{d}_{variant}"] for d in delays}}
        for variant in variants
    }
    plot_success_vs_delay(
        curves, args.output.with_suffix(".png"), title="Where real-time success goes", dashed=("today",)
    )
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
