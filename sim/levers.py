"""Lever studies, judged closed loop: the pieces the lever benchmarks (`benchmarks/bench_teacher.py`,
`bench_student.py`, `bench_replan.py`) share.

A lever is a change to training or decoding; it is judged by rollouts on the *validation* seed range
(`ceed eval --split validation`), so the seeds of reported evaluations stay unseen while a recipe is
chosen, and two levers are compared on the same episodes (both / only A / only B / neither and the
exact McNemar p). Every evaluation is its own `ceed eval` process whose report is kept, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ceed_vla.sim.metrics import paired_outcomes

from ceed_vla.pipeline import run_job

TASKS = "reach,push,drawer-open,button-press-topdown,door-open"


def add_validation_arguments(parser, episodes: int, image_size: int) -> None:
    """The options `validation_args` reads: which validation episodes, rendered as the recording was,
    and the threads each evaluation runs with."""
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--eval-episodes", type=int, default=episodes, help="validation episodes per task")
    parser.add_argument("--eval-seed", type=int, default=0, help="run seed within the validation range")
    parser.add_argument("--image-size", type=int, default=image_size, help="rendered size (the recording's)")
    parser.add_argument("--camera", default="corner2", help="the recording's camera(s)")
    parser.add_argument("--goal-marker-radius", type=float, default=0.03, help="the recording's goal marker")
    parser.add_argument("--threads", type=int, default=2)


def validation_args(args, wording: str = "train") -> list[str]:
    """`ceed eval` options for the validation episodes of a lever run (`args`: tasks, eval_episodes,
    eval_seed, image_size, camera, goal_marker_radius), in the training wording or (`wording="eval"`)
    the held-out paraphrases."""
    return [
        *("--tasks", args.tasks, "--episodes", str(args.eval_episodes), "--seed", str(args.eval_seed)),
        *("--split", "validation", "--image-size", str(args.image_size), "--instructions", wording),
        *("--camera", args.camera, "--goal-marker-radius", str(args.goal_marker_radius)),
    ]


def run_eval(
    cmd: list[str], out: Path, threads: int | None = None, keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`ceed eval ... --output out` (not rerun when its report exists) -> the record a lever keeps:
    success with its interval, per task, ms per chunk, iterations, every episode's outcome, and the
    `keep` keys of the report's overall row."""
    cmd = [*cmd, "--output", str(out)]
    seconds = None
    if not (out / "report.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
        seconds = run_job(cmd, out.parent / f"{out.name}.log", env=env)
    report = json.loads((out / "report.json").read_text())
    o = report["overall"]
    return {
        "success_rate": o["success_rate"],
        "success_ci95": o["success_ci95"],
        "episodes": o["episodes"],
        "per_task": {t: r["success_rate"] for t, r in report["per_task"].items()},
        "chunk_ms_p50": o.get("chunk_ms_p50"),
        "iterations_per_chunk": o.get("iterations_per_chunk"),
        "mean_steps_to_success": o.get("mean_steps_to_success"),
        **{k: o.get(k) for k in keep},
        "outcomes": [[e["task"], e["seed"], e["success"]] for e in report["episodes"]],
        "eval_seconds": seconds,
        "command": "ceed " + shlex.join(cmd),
    }


def checkpoint_path(run: Path, name: str) -> Path:
    """`final`, a checkpoint name (`step_001500`), or `step_NNNNNN_raw`: that EMA checkpoint's raw
    weights (exported once under `raw/`), so a single run pairs the EMA against its raw weights."""
    if name.endswith("_raw"):
        from ceed_vla.policy.trainer import export_raw_weights

        out = run / "raw" / name
        if not (out / "config.json").is_file():
            export_raw_weights(run / "checkpoints" / name.removesuffix("_raw"), out)
        return out
    return run / "final" if name == "final" else run / "checkpoints" / name


def compare(results_path: Path, pairs: list[str]) -> dict[str, dict]:
    """`lever/evaluation` pairs `A:B` -> paired outcomes on their common episodes, stored under
    "comparisons" in the results file and printed."""
    from ceed_vla.atomic import atomic_write_json

    results = json.loads(results_path.read_text())

    def outcomes(ref: str) -> dict:
        lever, key = ref.split("/", 1)
        ev = results["levers"][lever]["evaluations"][key]
        return {(t, int(seed)): bool(ok) for t, seed, ok in ev["outcomes"]}

    comparisons = results.setdefault("comparisons", {})
    for pair in pairs:
        a, b = pair.split(":")
        out = comparisons[f"{a} vs {b}"] = paired_outcomes(outcomes(a), outcomes(b))
        print(
            f"{a} vs {b}: {out['success_a']:.2f} vs {out['success_b']:.2f}; both {out['both']}, "
            f"only A {out['only_a']}, only B {out['only_b']}, neither {out['neither']}; "
            f"McNemar p = {out['mcnemar_p']:.3g}"
        )
    atomic_write_json(results_path, results)
    return comparisons
