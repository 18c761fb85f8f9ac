"""`ceed record`: scripted-expert demonstrations into a LeRobotDataset v3 on disk.

For every task, attempts run on consecutive recording seeds until `episodes_per_task` of them
succeed; failed attempts are dropped. Each kept episode is fully determined by (run seed, task,
attempt), so a recording is reproducible and can be resumed exactly:

    meta/ceed_record.json   settings + one entry per kept episode (task, seed, instruction)

The entry is written *before* LeRobot saves the episode; on resume, entries beyond the dataset's
episode count are dropped (the episode never landed) and every task continues from the attempt
after its last kept one. Any exception or Ctrl-C finalizes the dataset with the episodes saved so
far, so an interrupted recording stays loadable.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import multiprocessing
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ceed_vla.sim.env import (
    CONTROL_HZ,
    DEFAULT_CAMERA,
    DEFAULT_GOAL_MARKER_RADIUS,
    DEFAULT_MAX_EPISODE_STEPS,
    FREE_CAMERAS,
    EnvConfig,
    MetaWorldEnv,
)
from ceed_vla.sim.experts import ScriptedExpert
from ceed_vla.sim.record_output import (  # noqa: F401 (LOG_NAME and the errors are this job's names too)
    LOG_NAME,
    EpisodeEntry,
    OutputExistsError,
    RecordLog,
    ResumeMismatchError,
    dataset_features,
    open_output,
)
from ceed_vla.sim.seeds import record_seed
from ceed_vla.sim.tasks import MT10, TaskSpec, UnknownTaskError, task_selection
from tqdm.auto import tqdm

from ceed_vla.cli import config_from_args
from ceed_vla.keys import ACTION_KEY, STATE_KEY, TASK_KEY


class RecordingError(RuntimeError):
    """The expert kept failing a task: too few successful episodes within the attempt budget."""


@dataclass
class RecordConfig:
    output: Path
    repo_id: str = "local/ceed_metaworld"
    tasks: tuple[str, ...] = MT10
    episodes_per_task: int = 20
    image_size: int = 64
    camera: str = DEFAULT_CAMERA
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS
    seed: int = 0
    noise_std: float = 0.0
    """DART-style: std of Gaussian noise added to the *executed* translation (the label stays clean)."""
    max_attempts_per_episode: int = 5
    """A task fails the recording after `episodes_per_task * this` attempts without enough successes."""
    resume: bool = False
    overwrite: bool = False
    workers: int = 1
    """Processes rolling the expert out side by side (1: in this process). This process still saves
    every episode, in attempt order, so the recording is the same whatever the count."""
    specs: tuple[TaskSpec, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        self.tasks, self.specs = task_selection(self.tasks)
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task!r}")
        if not 0.0 <= self.noise_std <= 1.0:
            raise ValueError(f"noise_std must be in [0, 1] (actions live in [-1, 1]), got {self.noise_std!r}")
        if self.max_attempts_per_episode < 1:
            raise ValueError(f"max_attempts_per_episode must be >= 1, got {self.max_attempts_per_episode!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")
        if self.resume and self.overwrite:
            raise ValueError("choose one of resume and overwrite, not both")
        if "/" not in self.repo_id:
            raise ValueError(f"repo_id must look like 'owner/name', got {self.repo_id!r}")
        # Validates image size, camera-independent limits and the horizon early.
        self.env_config(self.specs[0])

    def env_config(self, spec: TaskSpec) -> EnvConfig:
        return EnvConfig(
            spec.name, self.image_size, self.camera, self.max_episode_steps, self.goal_marker_radius
        )

    def settings(self) -> dict[str, Any]:
        """What must stay the same for a recording to be resumed."""
        return {
            "tasks": list(self.tasks),
            "image_size": self.image_size,
            "camera": self.camera,
            "max_episode_steps": self.max_episode_steps,
            "goal_marker_radius": self.goal_marker_radius,
            "seed": self.seed,
            "noise_std": self.noise_std,
            "fps": CONTROL_HZ,
        }


@dataclass
class RecordSummary:
    root: str
    repo_id: str
    episodes: int
    new_episodes: int
    attempts: int
    failures: int
    frames: int
    seconds: float
    per_task: dict[str, int]


@dataclass
class _Episode:
    success: bool
    images: list[dict[str, np.ndarray]]  # feature key -> [H, W, 3] uint8, one per frame
    states: list[np.ndarray]  # [4] float32 each
    actions: list[np.ndarray]  # [4] float32 each, the clean expert labels


# -------------------------------------------------------------------------------------- episodes


def run_expert_episode(
    env: MetaWorldEnv,
    expert: ScriptedExpert,
    spec: TaskSpec,
    seed: int,
    noise_std: float,
    rng: np.random.Generator,
) -> _Episode:
    """One expert rollout; frames are (observation_t, clean expert action_t) until success."""
    obs = env.reset(seed)
    episode = _Episode(success=False, images=[], states=[], actions=[])
    for _ in range(env.max_episode_steps):
        label = expert.act(spec, obs.environment_state)  # [4]
        executed = label.copy()
        if noise_std > 0:
            # Gripper effort stays clean: noise on it drops grasped objects and wastes attempts.
            executed[:3] = np.clip(executed[:3] + rng.normal(0.0, noise_std, size=3), -1.0, 1.0)
        episode.images.append(obs.images)
        episode.states.append(obs.state)
        episode.actions.append(label)
        result = env.step(executed)
        obs = result.observation
        if result.success:
            episode.success = True
            break
    return episode


def _save_episode(dataset, episode: _Episode, instruction: str) -> None:
    for images, state, action in zip(episode.images, episode.states, episode.actions, strict=True):
        dataset.add_frame({**images, STATE_KEY: state, ACTION_KEY: action, TASK_KEY: instruction})
    dataset.save_episode()


EpisodeCallback = Callable[[EpisodeEntry], None]


class _Recorder:
    """One recording run: the open dataset and log, the expert, and the run's counters."""

    def __init__(
        self,
        config: RecordConfig,
        dataset,
        log: RecordLog,
        on_episode: EpisodeCallback | None,
        bar,
        pool: ProcessPoolExecutor | None = None,
    ):
        self.config = config
        self.pool = pool
        self.dataset = dataset
        self.log = log
        self.on_episode = on_episode
        self.bar = bar
        self.expert = ScriptedExpert()
        self.attempts = self.failures = self.frames = 0

    def record_task(self, spec: TaskSpec) -> None:
        """Attempts on consecutive seeds, continuing after the last kept one, until enough succeed."""
        cfg = self.config
        done = self.log.count(spec.name)
        if done >= cfg.episodes_per_task:
            return
        first = self.log.next_attempt(spec.name)
        budget = cfg.episodes_per_task * cfg.max_attempts_per_episode
        attempts = range(first, budget)
        rollouts = (
            self._rollouts_here(spec, attempts)
            if self.pool is None
            else self._rollouts_in_pool(spec, attempts)
        )
        try:
            for attempt, episode in rollouts:
                if self.keep(spec, attempt, episode, done):
                    done += 1
                if done >= cfg.episodes_per_task:
                    return
        finally:
            rollouts.close()
        raise RecordingError(
            f"{spec.name}: only {done} successful episodes in {budget} attempts; the expert "
            f"fails too often within {cfg.max_episode_steps} steps (raise --max-steps, "
            "lower --noise or raise max_attempts_per_episode)"
        )

    def _rollouts_here(self, spec: TaskSpec, attempts: range):
        with MetaWorldEnv(self.config.env_config(spec)) as env:
            for attempt in attempts:
                yield attempt, rollout_attempt(env, self.expert, spec, self.config, attempt)

    def _rollouts_in_pool(self, spec: TaskSpec, attempts: range):
        """Attempts in order, rolled out by the workers a few ahead of the one being saved."""
        ahead = 2 * self.config.workers  # keeps every worker busy while this process saves
        pending = deque()
        todo = iter(attempts)
        try:
            for attempt in itertools.islice(todo, ahead):
                pending.append(self.pool.submit(_rollout_in_worker, spec.name, attempt))
            while pending:
                attempt, episode = pending.popleft().result()
                for nxt in itertools.islice(todo, 1):
                    pending.append(self.pool.submit(_rollout_in_worker, spec.name, nxt))
                yield attempt, episode
        finally:
            for future in pending:  # attempts past the last needed one: never saved
                future.cancel()

    def keep(self, spec: TaskSpec, attempt: int, episode: _Episode, done: int) -> bool:
        """Count one rollout; save it (and return True) if it succeeded."""
        self.attempts += 1
        self.failures += int(not episode.success)
        self.bar.set_postfix(task=spec.name, attempts=self.attempts, failed=self.failures)
        if not episode.success:
            return False
        entry = EpisodeEntry(
            episode_index=len(self.log.episodes),
            task=spec.name,
            seed=record_seed(self.config.seed, attempt),
            attempt=attempt,
            instruction=spec.train_instruction(done),
            steps=len(episode.actions),
        )
        self.log.append(entry)  # before the save: a resume drops it if the save never lands
        _save_episode(self.dataset, episode, entry.instruction)
        self.frames += entry.steps
        self.bar.update(1)
        if self.on_episode is not None:
            self.on_episode(entry)
        return True


def rollout_attempt(
    env: MetaWorldEnv, expert: ScriptedExpert, spec: TaskSpec, config: RecordConfig, attempt: int
) -> _Episode:
    """Attempt number `attempt` of a task: its seed and noise follow from (run seed, attempt) alone."""
    seed = record_seed(config.seed, attempt)
    rng = np.random.default_rng([config.seed, seed])
    episode = run_expert_episode(env, expert, spec, seed, config.noise_std, rng)
    if not episode.success:  # nothing of a failed attempt is kept
        episode.images, episode.states = [], []
    return episode


class _RolloutWorker:
    """A worker process's expert and its env for the task it is on."""

    def __init__(self, config: RecordConfig):
        self.config = config
        self.expert = ScriptedExpert()
        self.specs = {s.name: s for s in config.specs}
        self.env: MetaWorldEnv | None = None
        self.task: str | None = None

    def __call__(self, task: str, attempt: int) -> tuple[int, _Episode]:
        if self.task != task:  # attempts come task by task: one env open at a time
            if self.env is not None:
                self.env.close()
            self.env, self.task = MetaWorldEnv(self.config.env_config(self.specs[task])), task
        return attempt, rollout_attempt(self.env, self.expert, self.specs[task], self.config, attempt)


_WORKER: _RolloutWorker | None = None


def _init_rollout_worker(config: RecordConfig) -> None:
    global _WORKER
    _WORKER = _RolloutWorker(config)


def _rollout_in_worker(task: str, attempt: int) -> tuple[int, _Episode]:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER(task, attempt)


def _rollout_pool(config: RecordConfig):
    if config.workers == 1:
        return contextlib.nullcontext(None)
    return ProcessPoolExecutor(
        max_workers=config.workers,
        mp_context=multiprocessing.get_context("spawn"),  # no fork of a process holding GL state
        initializer=_init_rollout_worker,
        initargs=(config,),
    )


def record(
    config: RecordConfig, on_episode: EpisodeCallback | None = None, progress: bool = True
) -> RecordSummary:
    """Record `config.episodes_per_task` successful expert episodes per task.

    `on_episode` is called after each saved episode (used to report or to stop a run early).
    Whatever happens, the dataset is finalized with the episodes saved so far.
    """
    start = time.perf_counter()
    dataset, log = open_output(config)
    already = len(log.episodes)
    target = config.episodes_per_task * len(config.specs)
    bar = tqdm(total=target, initial=min(already, target), desc="record", unit="ep", disable=not progress)
    try:
        with _rollout_pool(config) as pool:
            recorder = _Recorder(config, dataset, log, on_episode, bar, pool)
            try:
                for spec in config.specs:
                    recorder.record_task(spec)
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
        if dataset.has_pending_frames():
            dataset.clear_episode_buffer()
        dataset.finalize()
    return RecordSummary(
        root=str(config.output),
        repo_id=config.repo_id,
        episodes=len(log.episodes),
        new_episodes=len(log.episodes) - already,
        attempts=recorder.attempts,
        failures=recorder.failures,
        frames=recorder.frames,
        seconds=round(time.perf_counter() - start, 2),
        per_task={s.name: log.count(s.name) for s in config.specs},
    )


# ------------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", required=True, type=Path, help="dataset root directory (LeRobotDataset v3)"
    )
    parser.add_argument(
        "--repo-id", default="local/ceed_metaworld", help="LeRobot repo id stored in the dataset"
    )
    parser.add_argument(
        "--tasks", default="mt10", help="comma-separated task names or 'mt10' (default: mt10)"
    )
    parser.add_argument("--episodes", type=int, default=20, help="successful episodes per task (default: 20)")
    parser.add_argument("--image-size", type=int, default=64, help="square camera image size in pixels")
    parser.add_argument(
        "--camera",
        default=DEFAULT_CAMERA,
        help=f"a MetaWorld camera or one of {sorted(FREE_CAMERAS)}, or several comma-separated, e.g. "
        f"corner2,gripperPOV (a wrist camera) (default: {DEFAULT_CAMERA})",
    )
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_EPISODE_STEPS, help="episode horizon")
    parser.add_argument(
        "--goal-marker-radius",
        type=float,
        default=DEFAULT_GOAL_MARKER_RADIUS,
        help=f"radius (m) of the rendered goal sphere of reach and push (default {DEFAULT_GOAL_MARKER_RADIUS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="run seed: selects the recording seed range")
    parser.add_argument("--noise", type=float, default=0.0, help="DART noise std on the executed translation")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes rolling the expert out side by side (default: 1); the same recording whatever the count",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue a recording in --output")
    mode.add_argument("--overwrite", action="store_true", help="delete --output first")


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through record()'s finally: the dataset is finalized


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)  # torchcodec: unused for images
    try:
        summary = record(_config_from_args(args))
    except (UnknownTaskError, OutputExistsError, ResumeMismatchError, RecordingError, ValueError) as err:
        print(f"ceed record: error: {err}", file=sys.stderr)
        return 2
    print(
        f"recorded {summary.new_episodes} new episodes ({summary.episodes} total, {summary.frames} new frames) "
        f"into {summary.root} in {summary.seconds:.1f} s; {summary.failures} of {summary.attempts} attempts failed"
    )
    for task, n in summary.per_task.items():
        print(f"  {task:28s} {n} episodes")
    return 0


def _config_from_args(args: argparse.Namespace) -> RecordConfig:
    return config_from_args(
        RecordConfig, args, "output", "repo_id", "tasks", "image_size", "camera", "goal_marker_radius", "seed",
        "resume", "overwrite", "workers",
        episodes_per_task=args.episodes, max_episode_steps=args.max_steps, noise_std=args.noise,
    )  # fmt: skip
