"""Distillation levers, measured closed loop: distil a student from a teacher's trajectory store with
one lever's `ceed distill train` options, roll it out in several decoding modes on validation seeds,
and pair every mode with the teacher's AR rollouts of the same episodes. Appends one record to
benchmarks/results/student_levers.json.

The question a lever answers is whether CEED keeps the teacher's success at the speed it buys, so
each student is judged by success per decoding mode (exact Jacobi = its own greedy policy; early
exit at a few sigmas) against teacher AR, as both / only the teacher / only the student / neither
with the exact McNemar p, on validation seeds only: the demo's evaluation seeds stay unseen.

    python benchmarks/bench_student.py --name teacher_target --teacher T --trajectories S.zarr \\
        --dataset-root D --camera corner2,gripperPOV --image-size 64 --eval-episodes 20 \\
        --modes jacobi,sigma1,sigma2 -- --steps 1500 --lr 3e-4 --target teacher

Everything after `--` goes to `ceed distill train` as it is. A run whose `final/` exists is not
trained again and an evaluation whose report exists is not rerun, so an interrupted benchmark
resumes. The teacher's AR rollouts are made once per teacher and kept under the work directory.
Modes: `ar`, `jacobi`, `sigmaN` (early exit at N iterations), `sigmaNf` (the same with the prompt
and the first iteration in one forward, `--fused-prefill`); `@K` after any of them replans after K
actions of each chunk (the rest of the chunk, shifted, is the next initial guess) instead of the
whole chunk.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

from ceed_vla.sim.levers import add_validation_arguments, compare, run_eval, validation_args

from ceed_vla.pipeline import run_job

RESULTS = Path(__file__).resolve().parent / "results"

MODE = re.compile(r"^(ar|jacobi|sigma(\d+)(f?))(@(\d+))?$")


def mode_args(mode: str) -> list[str]:
    """`ceed eval` decoding options for a mode name (see the module docstring)."""
    m = MODE.match(mode)
    if m is None:
        raise SystemExit(
            f"unknown mode {mode!r}: use ar, jacobi, sigmaN or sigmaNf (fused prefill), each optionally "
            "@K (replan after K actions)"
        )
    args = (
        ["--decoding", m.group(1)]
        if m.group(2) is None
        else ["--decoding", "early_exit", "--sigma", m.group(2)]
    )
    if m.group(3):
        args.append("--fused-prefill")
    if m.group(5):
        args += ["--execute-steps", m.group(5)]
    return args


def main() -> int:
    argv = sys.argv[1:]
    output = RESULTS / "student_levers.json"
    if argv[:1] == ["compare"]:
        compare(output, argv[1:])
        return 0
    distill_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="lever name (the record's key)")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    parser.add_argument(
        "--teacher-name", default="full", help="the teacher's key in the results (one per teacher)"
    )
    parser.add_argument("--trajectories", type=Path, required=True, help="the teacher's trajectory store")
    parser.add_argument("--dataset-root", required=True)
    parser.add_argument("--work", type=Path, default=Path("outputs/student_levers"), help="run directories")
    parser.add_argument("--modes", default="jacobi,sigma1,sigma2", help="comma-separated decoding modes")
    parser.add_argument(
        "--teacher-modes",
        default="ar",
        help="the teacher's modes (AR always: every student mode is paired with it)",
    )
    add_validation_arguments(parser, episodes=20, image_size=64)
    parser.add_argument("--note", default="", help="what the lever is, in words")
    parser.add_argument("--output", type=Path, default=output, help="results file (one record per lever)")
    args = parser.parse_args(own)
    output = args.output
    modes = [m for m in args.modes.split(",") if m]
    for m in modes + args.teacher_modes.split(","):
        mode_args(m)  # refuse a bad mode before hours of training

    results = json.loads(output.read_text()) if output.is_file() else {"levers": {}}
    teacher_key = f"teacher_{args.teacher_name}"
    known = results["levers"].get(teacher_key)
    if known is not None and known["checkpoint"] != str(args.teacher.resolve()):
        raise SystemExit(
            f"{teacher_key} in {output} is {known['checkpoint']}, not {args.teacher.resolve()}: "
            "give this teacher another --teacher-name"
        )
    if known is None:
        known = results["levers"][teacher_key] = {
            "checkpoint": str(args.teacher.resolve()),
            "evaluations": {},
        }
    for mode in ["ar", *(m for m in args.teacher_modes.split(",") if m and m != "ar")]:
        if mode not in known["evaluations"]:
            out = args.work / teacher_key / f"eval_{mode}"
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = ["eval", "--policy", str(args.teacher)] + validation_args(args) + mode_args(mode)
            known["evaluations"][mode] = run_eval(cmd, out, args.threads)

    run = args.work / args.name / "distill"
    run.parent.mkdir(parents=True, exist_ok=True)
    train_cmd = ["distill", "train", "--teacher", str(args.teacher), "--trajectories", str(args.trajectories)]
    train_cmd += ["--dataset-root", args.dataset_root, "--output", str(run), "--threads", str(args.threads)]
    train_cmd += distill_args
    if not (run / "final" / "config.json").is_file():
        run_job(
            train_cmd + (["--resume"] if (run / "checkpoints" / "last").is_file() else []),
            run.parent / "distill.log",
        )
    summary = json.loads((run / "summary.json").read_text())

    evals = dict(results["levers"].get(args.name, {}).get("evaluations", {}))  # earlier modes stay
    for mode in modes:
        cmd = ["eval", "--policy", str(run / "final")] + validation_args(args) + mode_args(mode)
        evals[mode] = run_eval(cmd, run.parent / f"eval_{mode}", args.threads)
        print(
            f"{args.name} {mode}: {evals[mode]['success_rate']:.2f}, {evals[mode]['iterations_per_chunk']:.2f} it"
        )
    results["levers"][args.name] = {
        "name": args.name,
        "note": args.note,
        "teacher": teacher_key,
        "train_command": "ceed " + shlex.join(train_cmd),
        "train_seconds": summary.get("train_seconds"),
        "train_summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str)},
        "evaluations": evals,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"threads": args.threads},
    }
    from ceed_vla.atomic import atomic_write_json

    atomic_write_json(output, results)
    compare(output, [f"{teacher_key}/ar:{args.name}/{m}" for m in modes])
    return 0


if __name__ == "__main__":
    sys.exit(main())
