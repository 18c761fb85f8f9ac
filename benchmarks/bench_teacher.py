"""Teacher levers, measured by closed-loop success: train a teacher variant, roll it out on validation
seeds, append one record to benchmarks/results/teacher_levers.json.

Validation loss does not track closed-loop success in imitation learning, so every lever is judged
by rollouts, and on the validation seed range only (`ceed eval --split validation`): the seeds of
the demo's reported evaluation stay unseen while the recipe is chosen.

    python benchmarks/bench_teacher.py --name spatial96 --dataset-root DATA --work runs/levers \
        --execute-steps 8,4 -- --vision spatial --image-size 96 --steps 1500

Everything after `--` goes to `ceed train` as it is (the shared defaults below come first, so a
lever can override them). A run whose `final/` exists is not trained again, so an interrupted
benchmark resumes at its evaluations. `--checkpoints step_000750,final` evaluates more than the
final weights (the training-length lever without retraining); `step_003000_raw` is that EMA
checkpoint's raw weights (the EMA lever without retraining).

`--run DIR` evaluates a finished run instead (the demo's teacher stage, say), and `--wordings
train,eval` adds the held-out paraphrases (keys `.../exec8_heldout`).

    python benchmarks/bench_teacher.py compare sp96/final/exec8:sp96/final/exec4

pairs two recorded evaluations on their common episodes (both / only A / only B / neither and the
exact McNemar p) and stores the result under "comparisons". Each evaluation is its own
`ceed eval` process, with its report kept under the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from ceed_vla.sim.levers import (
    TASKS,
    add_validation_arguments,
    checkpoint_path,
    compare,
    run_eval,
    validation_args,
)

from ceed_vla.pipeline import run_job

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TRAIN_ARGS = ["--precision", "bf16", "--first-step-weight", "8", "--save-every", "500"]


def first_step(
    results_path: Path, dataset_root: str, levers: list[str], work: Path, episodes: int = 30
) -> int:
    """Does the first action of an episode use the image? Per task, the mean |error| of the first
    step's translation (x, y, z) on episode starts, next to the spread (std) of the ground truth
    across those starts. The arm always starts in the same pose, so only the image says where the
    goal is: an error as large as the spread means the image is ignored. Training episodes
    (fitting) and validation episodes (every 10th, held out by `ceed train`) apart."""
    import torch
    from ceed_vla.policy import VLAPolicy
    from ceed_vla.policy.data import load_frames
    from ceed_vla.sim.tasks import task_for_instruction

    from ceed_vla.atomic import atomic_write_json

    frames = load_frames(f"local/{Path(dataset_root).name}", dataset_root, 8)
    starts = torch.nonzero(frames.ep_start == torch.arange(len(frames))).flatten()  # [E]
    results = json.loads(results_path.read_text())
    for lever in levers:
        policy = VLAPolicy.from_pretrained(work / lever / "train" / "final").eval()
        table: dict[str, dict] = {}
        by_task: dict[str, list[int]] = {}
        for i in starts.tolist():
            by_task.setdefault(task_for_instruction(frames.tasks[i]).name, []).append(i)
        for task, rows in by_task.items():
            eps = [(int(frames.episode[i]), i) for i in rows]
            for split, pick in (
                ("train", [i for e, i in eps if e % 10 != 9]),
                ("val", [i for e, i in eps if e % 10 == 9]),
            ):
                pick = pick[:episodes]
                obs = {key: imgs[pick].float() / 255.0 for key, imgs in frames.cameras.items()}
                obs.update(
                    {"observation.state": frames.states[pick], "task": [frames.tasks[i] for i in pick]}
                )
                with torch.no_grad():
                    pred = policy.predict_action_chunk(obs)[:, 0, :3]  # [N, 3]
                gt = frames.actions[pick][:, :3]
                table.setdefault(task, {})[split] = {
                    "episodes": len(pick),
                    "abs_error_xyz": (pred - gt).abs().mean(0).tolist(),
                    "gt_std_xyz": gt.std(0).tolist(),
                }
        results["levers"][lever]["first_step"] = table
        for task, r in table.items():
            print(
                lever,
                task,
                {k: [round(x, 3) for x in v["abs_error_xyz"]] for k, v in r.items()},
                "spread",
                [round(x, 3) for x in r["train"]["gt_std_xyz"]],
            )
    atomic_write_json(results_path, results)
    return 0


TASK_ORDER = TASKS.split(",")


def table(results_path: Path) -> int:
    """The levers and comparisons as Markdown rows (what docs/experiments/2026-12-policy-levers.md shows)."""
    results = json.loads(results_path.read_text())
    for name, lever in results["levers"].items():
        for key, ev in lever["evaluations"].items():
            lo, hi = ev["success_ci95"]
            tasks = " | ".join(f"{ev['per_task'].get(t, float('nan')):.2f}" for t in TASK_ORDER)
            summary = lever.get("train_summary", {})
            speed = f"{summary.get('train_seconds', 0):.0f} ({summary.get('samples_per_s', 0):.0f})"
            print(f"| {name} {key} | {ev['success_rate']:.2f} ({lo:.2f}-{hi:.2f}) | {tasks} | {speed} |")
    print()
    for pair, c in results.get("comparisons", {}).items():
        print(
            f"- {pair}: {c['success_a']:.2f} vs {c['success_b']:.2f}; {c['both']} / {c['only_a']} / "
            f"{c['only_b']} / {c['neither']}, p = {c['mcnemar_p']:.3g}"
        )
    return 0


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["table"]:
        return table(RESULTS / "teacher_levers.json")
    if argv[:1] == ["compare"]:
        compare(RESULTS / "teacher_levers.json", argv[1:])
        return 0
    if argv[:1] == ["first-step"]:
        p = argparse.ArgumentParser(prog="bench_teacher.py first-step")
        p.add_argument("--dataset-root", required=True)
        p.add_argument("--work", type=Path, default=Path("outputs/teacher_levers"))
        p.add_argument("levers", nargs="+")
        a = p.parse_args(argv[1:])
        return first_step(RESULTS / "teacher_levers.json", a.dataset_root, a.levers, a.work)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="lever name (the record's key)")
    parser.add_argument("--dataset-root", required=True, nargs="+")
    parser.add_argument("--work", type=Path, default=Path("outputs/teacher_levers"), help="run directories")
    add_validation_arguments(parser, episodes=10, image_size=128)
    parser.add_argument("--execute-steps", default="8", help="comma-separated actions per chunk to evaluate")
    parser.add_argument("--checkpoints", default="final", help="comma-separated checkpoint names")
    parser.add_argument("--note", default="", help="what the lever is, in words")
    parser.add_argument(
        "--wordings",
        default="train",
        help="instruction wordings to evaluate: train, eval (the held-out paraphrases) or both",
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="evaluate this finished `ceed train` run (e.g. the demo's teacher stage) instead of training",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "teacher_levers.json")
    args = parser.parse_args(own)

    run = args.run or args.work / args.name / "train"
    if args.run is not None:
        if train_args:
            raise SystemExit("--run evaluates a finished run: drop the training options after --")
        if not (run / "final" / "config.json").is_file():
            raise SystemExit(f"--run {run} has no final/ checkpoint: finish its training first")
        train_cmd = ["(the run at " + str(run) + ")"]
    else:
        train_cmd = ["train", "--dataset-root", *args.dataset_root, "--output", str(run)]
        train_cmd += ["--threads", str(args.threads), *DEFAULT_TRAIN_ARGS, *train_args]
    out_dir = args.work / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (run / "final" / "config.json").is_file():
        run_job(
            train_cmd + (["--resume"] if (run / "checkpoints" / "last").is_file() else []),
            out_dir / "train.log",
        )
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}

    evals = {}
    for ckpt in args.checkpoints.split(","):
        for steps in (int(s) for s in args.execute_steps.split(",")):
            for wording in args.wordings.split(","):
                key = f"{ckpt}/exec{steps}" + ("_heldout" if wording == "eval" else "")
                cmd = ["eval", "--policy", str(checkpoint_path(run, ckpt))]
                cmd += validation_args(args, wording) + ["--decoding", "ar", "--execute-steps", str(steps)]
                ev = run_eval(cmd, out_dir / f"eval_{key.replace('/', '_')}", args.threads)
                evals[key] = {"checkpoint": ckpt, "execute_steps": steps, "instructions": wording, **ev}
                print(
                    f"{args.name} {key}: {ev['success_rate']:.2f} "
                    + " ".join(f"{t}={r:.2f}" for t, r in ev["per_task"].items())
                )

    record = {
        "name": args.name,
        "note": args.note,
        "train_command": "ceed " + shlex.join(train_cmd),
        "train_seconds": summary.get("train_seconds") or summary.get("seconds"),
        "train_summary": {k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
        "evaluations": evals,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads},
    }
    from ceed_vla.atomic import atomic_write_json

    results = json.loads(args.output.read_text()) if args.output.is_file() else {"levers": {}}
    results["levers"][args.name] = record
    atomic_write_json(args.output, results)
    print(f"wrote {args.output} ({len(results['levers'])} levers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
