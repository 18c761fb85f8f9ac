"""The `ceed` command: one entry point whose subcommands are the project's jobs.

Each job lives next to the code it drives and exposes two functions:

    configure_parser(parser: argparse.ArgumentParser) -> None
    main(args: argparse.Namespace) -> int | None

Jobs are imported only when chosen, so `ceed --help` stays fast and a job's heavy imports (torch,
MuJoCo, rclpy) are paid only by the job that needs them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Job:
    name: str
    module: str
    help: str


# Grouped jobs (`ceed distill collect`, `ceed bench decode`) are listed under their group.
JOBS: dict[str | None, list[Job]] = {
    None: [
        Job("record", "ceed_vla.sim.record", "record scripted-expert demonstrations into a LeRobotDataset"),
        Job("eval", "ceed_vla.sim.evaluate", "evaluate a policy (checkpoint or scripted expert) in MuJoCo"),
        Job("train", "ceed_vla.policy.train", "train the VLA teacher on a LeRobotDataset"),
        Job(
            "select",
            "ceed_vla.sim.select",
            "choose a run's checkpoint by closed-loop success on validation seeds",
        ),
        Job("bridge", "ceed_vla.robot_bridge.launcher", "start ROS 2 nodes from a parameter YAML"),
        Job("demo", "ceed_vla.demo", "record -> train -> distill -> evaluate, end to end"),
    ],
    "distill": [
        Job("collect", "ceed_vla.distill.collect", "collect the teacher's Jacobi trajectories into zarr"),
        Job("train", "ceed_vla.distill.train", "consistency-distil a student from the teacher"),
    ],
    "checkpoint": [
        Job("convert", "ceed_vla.policy.convert", "rewrite a first-layout checkpoint in LeRobot's layout"),
    ],
    "bench": [
        Job("env", "ceed_vla.sim.bench", "env steps/s with rendering, ours vs LeRobot's MetaWorld env"),
        Job("decode", "ceed_vla.policy.bench_decode", "ms per chunk and iterations for every decoding mode"),
        Job(
            "speed",
            "ceed_vla.policy.bench_speed",
            "ms per chunk of several decoders, interleaved on recorded observations",
        ),
        Job("train", "ceed_vla.policy.bench", "training throughput and AR decode latency"),
        Job("bridge", "ceed_vla.robot_bridge.bench", "control rate, jitter and camera-to-command latency"),
    ],
}

GROUP_HELP = {
    "distill": "consistency distillation: trajectory collection and student training",
    "bench": "benchmarks writing JSON",
    "checkpoint": "checkpoint maintenance",
}


def config_from_args(cls, args: argparse.Namespace, *names: str, **values):
    """A job's config from its parsed flags: `cls(name=args.name for each name, **values)`; `values`
    carries the fields whose flag has another name or that do not come from a flag. With no names,
    every field of the dataclass `cls` that has a flag of the same name."""
    if not names:
        names = tuple(
            f.name for f in fields(cls) if f.init and hasattr(args, f.name) and f.name not in values
        )
    return cls(**{n: getattr(args, n) for n in names}, **values)


def _load(job: Job):
    module = importlib.import_module(job.module)
    if not (hasattr(module, "configure_parser") and hasattr(module, "main")):
        raise RuntimeError(f"{job.module} does not define configure_parser() and main()")
    return module


def _add_jobs(subparsers, jobs: list[Job], chosen: list[str]) -> None:
    for job in jobs:
        parser = subparsers.add_parser(job.name, help=job.help, description=job.help)
        parser.set_defaults(_job=job)
        # Only the chosen job is imported to fill in its arguments.
        if job.name in chosen:
            _load(job).configure_parser(parser)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ceed",
        description="ceed-vla: train, distil, decode, evaluate and deploy a VLA policy.",
    )
    sub = parser.add_subparsers(title="jobs", metavar="JOB")
    words = [a for a in argv if not a.startswith("-")]
    top_jobs = JOBS[None]
    _add_jobs(sub, top_jobs, words[:1])
    for group, jobs in JOBS.items():
        if group is None:
            continue
        gparser = sub.add_parser(group, help=GROUP_HELP[group], description=GROUP_HELP[group])
        gsub = gparser.add_subparsers(title=f"{group} jobs", metavar="JOB")
        gparser.set_defaults(_group_parser=gparser)
        _add_jobs(gsub, jobs, words[1:2] if words[:1] == [group] else [])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    job = getattr(args, "_job", None)
    if job is None:
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    module = _load(job)
    try:
        rc = module.main(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from ceed_vla.policy.checkpoint_io import CheckpointError

        if not isinstance(e, CheckpointError):
            raise
        # a checkpoint that cannot be read or written: the message says which and what to do
        print(f"ceed: error: {e}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
