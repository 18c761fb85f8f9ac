"""Replanning interval and warm start, measured closed loop: success, task time, holds and Jacobi
iterations per chunk for each decoder, under the paused and the real-time clock.

    python benchmarks/bench_replan.py --teacher outputs/demo/teacher/run/final \
        --student outputs/demo/distill_r2/run/final --intervals 2,4,8 --episodes 5

Every evaluation is its own `ceed eval` process on the same episodes (validation seeds by default:
this chooses a setting), with its report kept under `--work`; a finished one is not run again, so an
interrupted benchmark resumes. Rows:
- `teacher_ar`, `student_early_exit` (sigma `--sigma`) at each interval and clock;
- `student_jacobi` with `--init tail` and `--init constant` at the chunk's full length, paused: the
  exact-Jacobi iterations a warm start saves in closed loop.
Writes benchmarks/results/replan.json and replan.png (success against interval per decoder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ceed_vla.sim.levers import TASKS, run_eval

RESULTS = Path(__file__).resolve().parent / "results"
KEEP = (
    "success_rate",
    "success_ci95",
    "episodes",
    "mean_seconds_to_success",
    "chunk_ms_p50",
    "iterations_per_chunk",
    "iterations_per_chunk_warm",
    "iterations_per_chunk_cold",
    "warm_start_share",
    "held_fraction",
    "late_chunks",
    "policy_calls",
)


def _eval(argv: list[str], out: Path) -> dict:
    return run_eval([*argv, "--save-rollouts", "0"], out, keep=KEEP)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", required=True, help="teacher checkpoint directory")
    parser.add_argument("--student", required=True, help="distilled student checkpoint directory")
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--episodes", type=int, default=5, help="episodes per task and row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="validation", choices=["validation", "eval"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--camera", default="workspace")
    parser.add_argument("--goal-marker-radius", type=float, default=0.05)
    parser.add_argument("--intervals", default="2,4,8", help="comma-separated steps before replanning")
    parser.add_argument("--clocks", default="paused,realtime")
    parser.add_argument("--sigma", type=int, default=1, help="the student's early-exit cap")
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_replan"))
    parser.add_argument("--output", type=Path, default=RESULTS / "replan.json")
    args = parser.parse_args()

    common = ["--tasks", args.tasks, "--episodes", str(args.episodes), "--seed", str(args.seed)]
    common += ["--split", args.split, "--image-size", str(args.image_size), "--instructions", "train"]
    common += ["--camera", args.camera, "--goal-marker-radius", str(args.goal_marker_radius)]
    decoders = {
        "teacher_ar": ["--policy", args.teacher, "--decoding", "ar"],
        "student_early_exit": [
            "--policy",
            args.student,
            "--decoding",
            "early_exit",
            "--sigma",
            str(args.sigma),
        ],
    }
    rows: dict[str, dict] = {}
    t0 = time.perf_counter()
    for clock in args.clocks.split(","):
        for interval in (int(x) for x in args.intervals.split(",")):
            for name, decoder in decoders.items():
                key = f"{name}/{clock}/exec{interval}"
                argv = ["eval", *decoder, *common, "--clock", clock, "--execute-steps", str(interval)]
                rows[key] = {
                    "decoder": name,
                    "clock": clock,
                    "interval": interval,
                    **_eval(argv, args.work / key),
                }
                r = rows[key]
                print(
                    f"{key}: success {r['success_rate']:.2f}, iterations {r['iterations_per_chunk']}",
                    flush=True,
                )
    for init in ("tail", "constant"):
        key = f"student_jacobi/paused/init_{init}"
        argv = ["eval", "--policy", args.student, "--decoding", "jacobi", *common, "--init", init]
        rows[key] = {
            "decoder": "student_jacobi",
            "clock": "paused",
            "init": init,
            **_eval(argv, args.work / key),
        }
    warm, cold = (
        rows[f"student_jacobi/paused/init_{i}"]["iterations_per_chunk"] for i in ("tail", "constant")
    )
    record = {
        "benchmark": "replan",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "teacher": args.teacher,
        "student": args.student,
        "episodes_per_task": args.episodes,
        "split": args.split,
        "seed": args.seed,
        "seconds": time.perf_counter() - t0,
        "warm_start_iteration_ratio": (cold / warm) if warm else None,
        "rows": rows,
    }
    from ceed_vla.atomic import atomic_write_json

    atomic_write_json(args.output, record)
    plot(record, args.output.with_suffix(".png"))
    print(f"warm start: {cold} -> {warm} exact-Jacobi iterations per chunk; wrote {args.output}")
    return 0


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ceed_vla.atomic import atomic_savefig

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines: dict[tuple[str, str], list[dict]] = {}
    for r in record["rows"].values():
        if r.get("interval") is not None:
            lines.setdefault((r["decoder"], r["clock"]), []).append(r)
    for (decoder, clock), rows in sorted(lines.items()):
        rows.sort(key=lambda r: r["interval"])
        x = [r["interval"] for r in rows]
        y = [r["success_rate"] for r in rows]
        err = [
            [r["success_rate"] - r["success_ci95"][0] for r in rows],
            [r["success_ci95"][1] - r["success_rate"] for r in rows],
        ]
        ax.errorbar(
            x,
            y,
            yerr=err,
            marker="o",
            capsize=3,
            ls="-" if clock == "paused" else "--",
            label=f"{decoder} ({clock})",
        )
    ax.set_xlabel("steps executed before the next observation")
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(
        f"Replanning interval, {record['episodes_per_task']} episodes per task ({record['split']} seeds)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)


if __name__ == "__main__":
    sys.exit(main())
