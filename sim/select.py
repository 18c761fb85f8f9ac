"""`ceed select`: choose a training run's checkpoint by closed-loop success on validation seeds.

Validation loss does not track closed-loop success in imitation learning (robomimic measured that
choosing by loss can halve success), so this job rolls out every checkpoint a run saved and keeps
the one that succeeds most often. It rolls them out only on the *validation* seed range
(`ceed_vla.sim.seeds.validation_seed`), disjoint from the recording seeds and from the evaluation
seeds that reports use: the choice never sees an episode it will later be scored on.

    ceed select --run runs/teacher/train --tasks reach,push --episodes 5 --output runs/teacher/selected

writes the chosen checkpoint (policy files only; no optimizer state) to `--output` atomically and
`selection.json` (every candidate's success per task, the choice and why) beside its files.
Ties go to the later checkpoint.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ceed_vla.sim.evaluate import EvalConfig, EvalRunner, config_from_args, decoding_kwargs
from ceed_vla.sim.seeds import is_validation_seed
from ceed_vla.sim.tasks import UnknownTaskError

from ceed_vla.atomic import atomic_directory, atomic_write_text
from ceed_vla.policies import load_policy

SELECTION_FILE = "selection.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_SKIP_FILES = {"training_state.pt"}


class SelectionError(ValueError):
    """Nothing to select from, or a selection asked to look at evaluation seeds."""


def candidates(run: Path) -> list[tuple[str, int, Path]]:
    """(name, step, directory) of every checkpoint of a `ceed train` / `ceed distill train` run.

    `checkpoints/step_N/` in step order; `final/` is added only when no step checkpoint holds the
    same step (the trainer saves one at the end, so `final` is usually a duplicate).
    """
    run = Path(run)
    found: list[tuple[str, int, Path]] = []
    ckpts = run / "checkpoints"
    if ckpts.is_dir():
        for d in ckpts.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / "config.json").is_file():
                found.append((d.name, int(m.group(1)), d))
    found.sort(key=lambda c: c[1])
    final = run / "final"
    if (final / "config.json").is_file() and not found:
        found.append(("final", -1, final))
    if not found:
        raise SelectionError(
            f"{run} holds no checkpoint (expected checkpoints/step_N/ or final/); pass the --output "
            "directory of `ceed train` or `ceed distill train`"
        )
    return found


def select_checkpoint(
    run: Path,
    config: EvalConfig,
    evaluate: Callable[[Path, EvalConfig], dict[str, Any]],
    every: int = 1,
) -> dict[str, Any]:
    """Evaluate the run's checkpoints on validation seeds; return the selection record.

    `evaluate(checkpoint, config) -> report` runs one closed-loop evaluation (`ceed eval`'s report
    dict). `every` keeps every n-th candidate, counted back from the last one.
    """
    if config.split != "validation":
        raise SelectionError(
            f"checkpoint selection must run on validation seeds, got split={config.split!r}; "
            "evaluation seeds are kept for the report"
        )
    pool = candidates(run)[::-1][::every][::-1]
    rows = []
    for name, step, path in pool:
        report = evaluate(path, config)
        seeds = [e["seed"] for e in report["episodes"]]
        if not all(is_validation_seed(s) for s in seeds):
            raise SelectionError(f"evaluation of {name} ran non-validation seeds {seeds[:5]}")
        rows.append(
            {
                "name": name,
                "step": step,
                "path": str(path),
                "success_rate": report["overall"]["success_rate"],
                "successes": report["overall"]["successes"],
                "episodes": report["overall"]["episodes"],
                "per_task": {t: r["success_rate"] for t, r in report["per_task"].items()},
                "seeds": seeds,
            }
        )
        print(
            f"select: {name}: {rows[-1]['successes']}/{rows[-1]['episodes']} on validation seeds",
            file=sys.stderr,
            flush=True,
        )
    best = max(rows, key=lambda r: (r["success_rate"], r["step"]))
    return {
        "run": str(run),
        "split": config.split,
        "run_seed": config.seed,
        "episodes_per_task": config.episodes_per_task,
        "tasks": list(config.tasks),
        "candidates": rows,
        "selected": best["name"],
        "selected_step": best["step"],
        "selected_success_rate": best["success_rate"],
        "rule": "highest validation success; ties go to the later checkpoint",
    }


def write_selected(selection: dict[str, Any], output: Path) -> Path:
    """Copy the chosen checkpoint's policy files to `output` (atomic) with `selection.json`."""
    chosen = next(c for c in selection["candidates"] if c["name"] == selection["selected"])
    source = Path(chosen["path"])
    with atomic_directory(Path(output)) as tmp:
        for f in source.iterdir():
            if f.is_file() and f.name not in _SKIP_FILES:
                shutil.copy2(f, tmp / f.name)
        atomic_write_text(tmp / SELECTION_FILE, json.dumps(selection, indent=2))
    return Path(output)


def rollout(checkpoint: Path, config: EvalConfig, decoding: str = "ar") -> dict[str, Any]:
    policy = load_policy(str(checkpoint), action_dim=4)
    config = config.for_policy(policy)
    return EvalRunner(config, decoding_kwargs(policy, decoding, None, None), progress=False).run(policy)


# ------------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="output directory of a training run")
    parser.add_argument("--output", required=True, type=Path, help="where the chosen checkpoint is copied")
    parser.add_argument("--tasks", default="mt10", help="comma-separated task names or 'mt10'")
    parser.add_argument("--episodes", type=int, default=5, help="validation episodes per task and checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="run seed within the validation range")
    parser.add_argument("--image-size", type=int, default=64, help="camera image size (match the data)")
    parser.add_argument("--instructions", choices=("eval", "train"), default="train")
    parser.add_argument("--execute-steps", type=int, default=None, help="actions per chunk before replanning")
    parser.add_argument("--every", type=int, default=1, help="evaluate every n-th checkpoint (from the last)")
    parser.add_argument("--workers", type=int, default=1, help="processes running episodes side by side")


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args, split="validation", output=None)  # --output is the checkpoint copy
        if args.every < 1:
            raise ValueError(f"--every must be >= 1, got {args.every!r}")
        candidates(args.run)
    except (UnknownTaskError, ValueError) as err:
        print(f"ceed select: error: {err}", file=sys.stderr)
        return 2
    selection = select_checkpoint(args.run, config, rollout, every=args.every)
    out = write_selected(selection, args.output)
    print(
        f"selected {selection['selected']} ({selection['selected_success_rate']:.2f} on "
        f"{selection['candidates'][0]['episodes']} validation episodes) -> {out}"
    )
    return 0
