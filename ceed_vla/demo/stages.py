"""The demo's stages, in the order the data flows (README, "Data flow"):

    record   scripted MetaWorld experts            -> LeRobotDataset          (ceed record)
    teacher  dataset                               -> teacher checkpoint      (ceed train)
    collect  teacher exact Jacobi over the dataset -> zarr trajectories       (ceed distill collect)
    distill  teacher + trajectories                -> student checkpoint      (ceed distill train)
    collect_r2, distill_r2, ...  optional on-policy rounds (profile field `distill_rounds`)
    speed    every decoder of the table timed in one process, interleaved  (ceed bench speed)
    eval_*   every decoding mode, same held-out episodes, paused, real-time and delay clocks (ceed eval)

Every stage is one `ceed` job run as a subprocess, so each can also be run by hand with the command
the log prints; `ceed_vla.pipeline` skips finished stages and reruns what a changed profile touches.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ceed_vla.pipeline import MARKER_FILE, Stage, run_job

from .profiles import DemoProfile


@dataclass
class DemoPaths:
    work: Path
    reports: Path

    @property
    def dataset(self) -> Path:
        return self.work / "record" / "dataset"

    @property
    def teacher(self) -> Path:
        return self.work / "teacher" / "run" / "final"

    def round_trajectories(self, r: int) -> Path:
        return self.work / collect_stage(r) / "trajectories.zarr"

    def round_student(self, r: int) -> Path:
        return self.work / distill_stage(r) / "run" / "final"

    def round_source(self, r: int) -> Path:
        """Who round r's trajectories come from and its student starts from."""
        return self.teacher if r == 1 else self.round_student(r - 1)

    def eval_dir(self, mode: str) -> Path:
        return self.work / f"eval_{mode}"

    def checkpoint(self, policy: str, rounds: int) -> Path:
        """The checkpoint an evaluation row decodes with: "teacher", or the last round's student."""
        return self.teacher if policy == "teacher" else self.round_student(rounds)

    @property
    def speed(self) -> Path:
        """The speed stage's record: every decoder of the table, timed interleaved (`ceed bench speed`)."""
        return self.work / "speed" / "speed.json"


def collect_stage(r: int) -> str:
    return "collect" if r == 1 else f"collect_r{r}"


def distill_stage(r: int) -> str:
    return "distill" if r == 1 else f"distill_r{r}"


@dataclass
class StageCommand:
    """Runs `ceed ...` as a subprocess, streaming its output, logging the exact command."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, out: Path) -> None:
        run_job(self.argv, env=self.env)


def _fresh_or_resume(out: Path, content: Path) -> list[str]:
    """A stage that ran before under another config starts over; an interrupted one resumes."""
    if (out / MARKER_FILE).exists():
        shutil.rmtree(content, ignore_errors=True)
        (out / MARKER_FILE).unlink()
        return []
    return ["--resume"] if content.exists() and any(content.iterdir()) else []


def build_stages(profile: DemoProfile, paths: DemoPaths) -> list[Stage]:
    p = profile
    threads = ["--threads", str(p.threads)] if p.threads else []

    def record(out: Path) -> None:
        resume = _fresh_or_resume(out, paths.dataset)
        StageCommand(
            ["record", "--output", str(paths.dataset), "--tasks", ",".join(p.tasks)]
            + ["--episodes", str(p.record_episodes), "--image-size", str(p.image_size)]
            + ["--camera", p.camera, "--goal-marker-radius", str(p.goal_marker_radius)]
            + ["--noise", str(p.record_noise), "--seed", str(p.seed), "--workers", str(p.workers), *resume]
        )(out)

    def teacher(out: Path) -> None:
        run = out / "run"
        resume = _fresh_or_resume(out, run)
        StageCommand(
            ["train", "--dataset-root", str(paths.dataset), "--output", str(run)]
            + ["--steps", str(p.teacher_steps), "--batch-size", str(p.teacher_batch)]
            + [
                "--image-size",
                str(p.image_size),
                "--seed",
                str(p.seed),
                *threads,
                *p.extra_train_args,
                *resume,
            ]
        )(out)

    def collect(r: int):
        def run(out: Path) -> None:
            store = paths.round_trajectories(r)
            _fresh_or_resume(out, store)  # the store resumes by itself
            StageCommand(
                ["distill", "collect", "--teacher", str(paths.round_source(r))]
                + ["--dataset-root", str(paths.dataset), "--output", str(store)]
                + ["--trajectories", str(p.collect_trajectories), "--seed", str(p.seed), *threads]
                + [*p.extra_collect_args]
            )(out)

        return run

    def distill(r: int):
        steps, extra = (
            (p.distill_steps, p.extra_distill_args) if r == 1 else (p.refine_steps, p.extra_refine_args)
        )

        def run(out: Path) -> None:
            run_dir = out / "run"
            resume = _fresh_or_resume(out, run_dir)
            StageCommand(
                ["distill", "train", "--teacher", str(paths.round_source(r))]
                + ["--trajectories", str(paths.round_trajectories(r))]
                + ["--dataset-root", str(paths.dataset), "--output", str(run_dir)]
                + ["--steps", str(steps), "--batch-size", str(p.distill_batch), "--seed", str(p.seed)]
                + [*threads, *extra, *resume]
            )(out)

        return run

    stages = [
        Stage(
            "record",
            record,
            _stage_config(
                p,
                "tasks",
                "record_episodes",
                "record_noise",
                "image_size",
                "camera",
                "goal_marker_radius",
                "seed",
            ),
        ),
        Stage(
            "teacher",
            teacher,
            _stage_config(p, "teacher_steps", "teacher_batch", "extra_train_args"),
            depends_on=["record"],
        ),
        Stage("collect", collect(1), _collect_config(p), depends_on=["teacher"]),
        Stage(
            "distill",
            distill(1),
            _stage_config(p, "distill_steps", "distill_batch", "extra_distill_args"),
            depends_on=["collect"],
        ),
    ]
    for r in range(2, p.distill_rounds + 1):
        stages += [
            Stage(
                collect_stage(r),
                collect(r),
                _collect_config(p),
                depends_on=[distill_stage(r - 1)],
            ),
            Stage(
                distill_stage(r),
                distill(r),
                _stage_config(p, "refine_steps", "distill_batch", "extra_refine_args"),
                depends_on=[collect_stage(r)],
            ),
        ]
    stages.append(
        Stage(
            "speed",
            StageCommand(speed_argv(p, paths)),
            {
                "decoders": list(p.decoders()),
                **_stage_config(p, "speed_runs", "speed_run_length", "speed_rounds", "execute_steps"),
            },
            depends_on=["teacher", distill_stage(p.distill_rounds)],
        )
    )
    for mode in p.modes():
        ckpt = paths.checkpoint(mode.policy, p.distill_rounds)
        argv = ["eval", "--policy", str(ckpt), "--tasks", ",".join(p.tasks)]
        argv += ["--episodes", str(p.eval_episodes), "--image-size", str(p.image_size), "--seed", str(p.seed)]
        argv += ["--camera", p.camera, "--goal-marker-radius", str(p.goal_marker_radius)]
        wording = mode.instructions or p.eval_instructions
        argv += ["--instructions", wording]
        if p.execute_steps is not None:
            argv += ["--execute-steps", str(p.execute_steps)]
        argv += ["--workers", str(p.workers)]
        argv += mode.cli_args() + ["--output", str(paths.eval_dir(mode.name))]
        stages.append(
            Stage(
                f"eval_{mode.name}",
                _eval_stage(argv),
                {
                    "mode": _mode_config(mode),
                    "episodes": p.eval_episodes,
                    "instructions": wording,
                    "workers": p.workers,
                    **({"execute_steps": p.execute_steps} if p.execute_steps is not None else {}),
                },
                depends_on=["teacher"] if mode.policy == "teacher" else [distill_stage(p.distill_rounds)],
            )
        )
    return stages


def speed_argv(p: DemoProfile, paths: DemoPaths) -> list[str]:
    """`ceed bench speed` over every decoder of the table, teacher AR the reference."""
    argv = ["bench", "speed", "--dataset", str(paths.dataset), "--out", str(paths.speed)]
    argv += ["--runs", str(p.speed_runs), "--run-length", str(p.speed_run_length)]
    argv += ["--rounds", str(p.speed_rounds), "--threads", "1"]
    if p.execute_steps is not None:
        argv += ["--steps-executed", str(p.execute_steps)]
    for name, mode in p.decoders().items():
        ckpt = paths.checkpoint(mode.policy, p.distill_rounds)
        spec = f"name={name},policy={ckpt},decoding={mode.decoding}"
        spec += f",sigma={mode.sigma}" if mode.sigma is not None else ""
        spec += f",tau={mode.tau}" if mode.tau is not None else ""
        spec += ",fused=1" if mode.fused else ""
        spec += f",exact={mode.exact_steps}" if mode.exact_steps else ""
        argv += ["--mode", spec]
    return argv


def _eval_stage(argv: list[str]):
    def run(out: Path) -> None:
        StageCommand(argv)(out)

    return run


def _stage_config(profile: DemoProfile, *names: str) -> dict[str, Any]:
    return {n: getattr(profile, n) for n in names}


def _mode_config(mode) -> dict[str, Any]:
    return _unset_left_out(asdict(mode), "exact_steps")


def _collect_config(profile: DemoProfile) -> dict[str, Any]:
    return _unset_left_out(
        _stage_config(profile, "collect_trajectories", "extra_collect_args"), "extra_collect_args"
    )


def _unset_left_out(config: dict[str, Any], *later: str) -> dict[str, Any]:
    """`config` without the fields of `later` (added after runs were made) while they are unset (None or
    empty): a stage that does not use them keeps its key, and its finished outputs are reused."""
    return {k: v for k, v in config.items() if not (k in later and v in (None, ()))}
