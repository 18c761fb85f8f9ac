"""`ceed eval`: closed-loop evaluation of any policy with the reset / predict_action_chunk API.

The runner keeps the chunk queue itself (equivalent to the policy's `select_action` with every
action of a chunk executed) so that each chunk's latency is measured directly and decoding
options reach `predict_action_chunk`. Two clocks:

paused    (lockstep, as papers report) the simulation waits while the policy computes.

realtime  the simulation keeps moving while the policy computes, as on the robot. A call that
          takes W seconds lets floor(W * control_hz) control ticks pass; during them the
          previously queued actions keep executing and, once the queue runs dry, the arm holds
          (zero translation, last gripper effort). The new chunk, planned from the observation at
          the call, then starts at offset floor(W * control_hz): its first actions are stale.

    tick:      k        k+1      k+2      k+3      k+4
    paused:    [obs -> policy ........] a0       a1 ...        (sim frozen during the call)
    realtime:  [obs -> policy ........] hold     hold     a2 ...  (W = 2.x ticks: a0, a1 dropped)

Chunks are scheduled by `ceed_vla.scheduler.ChunkScheduler`, the class the robot bridge uses: in the
real-time clock the next observation is taken while the previous chunk still executes (once no more
than the expected latency plus `refill_margin` actions are left), and the new chunk is cross-faded
into the old one over `blend_steps` ticks; both default to the bridge's values. The paused clock
keeps lockstep: a chunk is planned when the last one has run (or after `execute_steps`), with no
blend. Wherever an earlier chunk of the episode exists, its unexecuted tail is the next chunk's
initial Jacobi guess (`init="tail"`; `"constant"` measures the decoder's own guess).

Evaluation seeds come from `ceed_vla.sim.seeds.eval_seed`, disjoint from every recording seed
(`--split validation` draws from the validation range instead, for model selection),
and every episode uses the task's held-out instruction by default.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ceed_vla.sim.env import (
    CONTROL_HZ,
    DEFAULT_CAMERA,
    DEFAULT_GOAL_MARKER_RADIUS,
    DEFAULT_MAX_EPISODE_STEPS,
    EnvConfig,
    MetaWorldEnv,
    Observation,
    cameras_for_image_keys,
    reads_per_camera_keys,
    to_policy_batch,
)
from ceed_vla.sim.metrics import mean, percentile, wilson_interval
from ceed_vla.sim.seeds import SPLITS, split_seed
from ceed_vla.sim.tasks import MT10, TaskSpec, UnknownTaskError, resolve_tasks
from tqdm.auto import tqdm

from ceed_vla.atomic import atomic_savefig, atomic_write_bytes, atomic_write_text
from ceed_vla.scheduler import (
    INIT_CHOICES,
    ROBOT_BLEND_STEPS,
    ROBOT_REFILL_MARGIN_TICKS,
    ChunkScheduler,
    SchedulerConfig,
    decoded_bins,
    policy_accepts_init_guess,
    predict_chunk,
)

Clock = Literal["paused", "realtime"]
CLOCKS = ("paused", "realtime")
INSTRUCTION_SETS = ("eval", "train")


@dataclass
class EvalConfig:
    tasks: tuple[str, ...] = MT10
    episodes_per_task: int = 10
    seed: int = 0
    image_size: int = 64
    camera: str | None = None
    """One camera or several, comma-separated; None: the policy's (`for_policy`), else DEFAULT_CAMERA."""
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS
    """Must match the recording the policy learnt from (its `meta/ceed_record.json`)."""
    clock: Clock = "paused"
    instructions: str = "eval"
    """`eval`: the held-out paraphrase; `train`: the first training paraphrase."""
    execute_steps: int | None = None
    """Actions of each chunk executed before planning again (None: the whole chunk)."""
    init: str = "tail"
    """Initial Jacobi guess: `tail` (the previous chunk's unexecuted tail) or `constant`."""
    blend_steps: int | None = None
    """Ticks a new chunk is cross-faded into the old one over (None: 0 paused, the bridge's realtime)."""
    refill_margin: int | None = None
    """Realtime: plan this many ticks before the queue would run dry (None: 0 paused, the bridge's)."""
    split: str = "eval"
    """`eval`: the held-out evaluation seeds; `validation`: the seeds model selection may look at."""
    save_rollouts: int = 0
    """Episodes per task saved as a GIF and a frame strip under `<output>/rollouts/` (the first ones)."""
    output: Path | None = None
    per_camera_keys: bool = False
    """Name even one camera `observation.images.<camera>`; `for_policy` sets it from the policy."""
    workers: int = 1
    """Processes running episodes side by side, each with its own copy of the policy and env (1: in
    this process). Episodes keep their seeds, so the report is the same whatever the count."""
    threads: int | None = None
    """torch threads in each worker (None: the machine's cores shared out between the workers)."""
    specs: tuple[TaskSpec, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = (self.tasks,)
        self.specs = resolve_tasks(self.tasks)
        self.tasks = tuple(s.name for s in self.specs)
        if self.episodes_per_task < 1:
            raise ValueError(f"episodes_per_task must be >= 1, got {self.episodes_per_task!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.instructions not in INSTRUCTION_SETS:
            raise ValueError(f"instructions must be one of {INSTRUCTION_SETS}, got {self.instructions!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")
        if self.save_rollouts < 0:
            raise ValueError(f"save_rollouts must be >= 0, got {self.save_rollouts!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.execute_steps is not None and self.execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1 or None, got {self.execute_steps!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")
        realtime = self.clock == "realtime"
        if self.blend_steps is None:
            self.blend_steps = ROBOT_BLEND_STEPS if realtime else 0
        if self.refill_margin is None:
            self.refill_margin = ROBOT_REFILL_MARGIN_TICKS if realtime else 0
        if self.blend_steps < 0 or self.refill_margin < 0:
            raise ValueError(f"blend_steps={self.blend_steps}, refill_margin={self.refill_margin}: need >= 0")
        if self.output is not None:
            self.output = Path(self.output)
        self.env_config(self.specs[0])

    def env_config(self, spec: TaskSpec) -> EnvConfig:
        camera = self.camera or DEFAULT_CAMERA
        return EnvConfig(
            spec.name,
            self.image_size,
            camera,
            self.max_episode_steps,
            self.goal_marker_radius,
            per_camera_keys=self.per_camera_keys,
        )

    def for_policy(self, policy) -> EvalConfig:
        """This config with the cameras the policy reads (the asked `camera` must agree with them)."""
        keys = getattr(getattr(policy, "config", None), "image_keys", None)
        if keys is None:  # the scripted expert reads the state, not images
            return self
        return replace(
            self,
            camera=cameras_for_image_keys(keys, self.camera),
            per_camera_keys=reads_per_camera_keys(keys),
        )

    def instruction(self, spec: TaskSpec) -> str:
        return spec.eval_instruction if self.instructions == "eval" else spec.train_instructions[0]


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int
    policy_calls: int
    call_ms: list[float]
    actions_from_policy: int
    held_steps: int
    dropped_actions: int
    policy_seconds: float
    env_seconds: float
    wall_seconds: float
    decode_ms: list[float] = field(default_factory=list)
    decode_iterations: list[float] = field(default_factory=list)
    decode_tokens: list[float] = field(default_factory=list)
    decode_warm: list[bool] = field(default_factory=list)  # per decoded chunk: started from the tail
    late_chunks: int = 0  # chunks that arrived after every one of their actions was due
    reward_sum: float = 0.0  # MetaWorld's shaped reward, summed and maximised over the episode
    reward_max: float = float("-inf")
    # [H * cameras, W, 3] uint8, the frame each plan was made from
    frames: list[np.ndarray] = field(default_factory=list, repr=False)


class _Episode:
    """Mutable state of one rollout: the env, its chunk scheduler and the counters."""

    def __init__(
        self, env: MetaWorldEnv, spec: TaskSpec, seed: int, instruction: str, scheduler: ChunkScheduler
    ):
        self.env = env
        self.instruction = instruction
        self.scheduler = scheduler
        self.obs: Observation | None = env.reset(seed)
        self.last_grip = 0.0
        self.done = False
        self.result = EpisodeResult(spec.name, seed, False, 0, 0, [], 0, 0, 0, 0.0, 0.0, 0.0)

    @property
    def tick(self) -> int:
        """The next control tick to run (= steps taken)."""
        return self.result.steps

    def step(self, action: np.ndarray, from_policy: bool, render: bool) -> None:
        t0 = time.perf_counter()
        out = self.env.step(action, render=render)
        self.result.env_seconds += time.perf_counter() - t0
        self.obs = out.observation
        self.last_grip = float(action[3])
        self.result.reward_sum += out.reward
        self.result.reward_max = max(self.result.reward_max, out.reward)
        self.result.steps += 1
        self.result.actions_from_policy += int(from_policy)
        self.result.held_steps += int(not from_policy)
        if out.success:
            self.result.success = True
        self.done = out.success or out.truncated

    def execute_tick(self) -> None:
        """Run one tick from the queue; on underrun hold (zero translation, last gripper effort)."""
        action = self.scheduler.pop(self.tick)
        held = action is None
        if held:
            action = np.array([0.0, 0.0, 0.0, self.last_grip], dtype=np.float32)
        # Render only the frames a plan will look at: the next tick's, if it plans.
        self.step(action, from_policy=not held, render=self.scheduler.due(self.tick + 1))


class EvalRunner:
    """Runs `config.episodes_per_task` episodes per task and reports success and speed.

    `predict_kwargs` are passed to every `predict_action_chunk` call (e.g. `decoding=DecodeConfig`).
    `timer` measures policy latency (seconds); tests inject a fake one.
    """

    def __init__(
        self,
        config: EvalConfig,
        predict_kwargs: dict[str, Any] | None = None,
        timer: Callable[[], float] = time.perf_counter,
        progress: bool = True,
    ):
        self.config = config
        self.predict_kwargs = dict(predict_kwargs or {})
        self.timer = timer
        self.progress = progress

    def run(self, policy) -> dict[str, Any]:
        """Evaluate `policy`; returns the report dict (also written to `config.output` if set).

        With `config.workers > 1` the policy is pickled to that many spawned processes, which take
        episodes in order from a shared queue; the report lists them in the sequential order."""
        cfg = self.config
        jobs = [(t, i) for t in range(len(cfg.specs)) for i in range(cfg.episodes_per_task)]
        threads = self.threads()
        done: dict[tuple[int, int], tuple[EpisodeResult, str | None]] = {}
        bar = tqdm(
            total=len(jobs),
            desc=f"eval ({cfg.clock})" + (f", {cfg.workers} workers" if cfg.workers > 1 else ""),
            unit="ep",
            disable=not self.progress,
        )
        try:
            stream = self._run_here if cfg.workers == 1 else self._run_in_workers
            for job, result, saved in stream(policy, jobs, threads):
                done[job] = (result, saved)
                task = [r for (t, _), (r, _) in done.items() if t == job[0]]
                bar.set_postfix(task=result.task, success=f"{sum(r.success for r in task)}/{len(task)}")
                bar.update(1)
        finally:
            bar.close()
        episodes = [done[job][0] for job in jobs]
        saved = [done[job][1] for job in jobs if done[job][1] is not None]
        report = build_report(cfg, episodes, self.predict_kwargs)
        report["settings"]["threads"] = threads
        if saved:
            report["rollouts"] = saved  # frame strips (.png) beside GIFs of the same name
        if cfg.output is not None:
            write_report(report, cfg.output)
        return report

    def threads(self) -> int | None:
        """torch threads each worker runs with (None: this process's, untouched, without torch)."""
        cfg = self.config
        if cfg.threads is not None:
            return cfg.threads
        if cfg.workers > 1:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            return max(1, (cores or 1) // cfg.workers)
        torch = sys.modules.get("torch")
        return torch.get_num_threads() if torch is not None else None

    def _run_here(self, policy, jobs, threads):
        if self.config.threads is not None:
            _set_torch_threads(threads)
        episodes = _EpisodeJobs(self, policy)
        try:
            for job in jobs:
                yield (job, *episodes(job))
        finally:
            episodes.close()

    def _run_in_workers(self, policy, jobs, threads):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        quiet = EvalRunner(self.config, self.predict_kwargs, self.timer, progress=False)
        pool = ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=multiprocessing.get_context(
                "spawn"
            ),  # no fork of a process holding GL or OpenMP state
            initializer=_init_worker,
            initargs=(quiet, policy, threads),
        )
        try:
            futures = [pool.submit(_work, job) for job in jobs]
            for future in as_completed(futures):
                yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def scheduler(self, policy, control_hz: float) -> ChunkScheduler:
        """A fresh scheduler for one episode, configured as this evaluation asks."""
        cfg = self.config
        return ChunkScheduler(
            SchedulerConfig(
                action_dim=4,
                period_s=1.0 / control_hz,
                blend_steps=cfg.blend_steps,
                refill_margin_ticks=cfg.refill_margin,
                replan_every=cfg.execute_steps or _policy_action_steps(policy),
                init=cfg.init,
            )
        )

    def run_episode(
        self, policy, env: MetaWorldEnv, spec: TaskSpec, seed: int, keep_frames: bool = False
    ) -> EpisodeResult:
        policy.reset()
        ep = _Episode(env, spec, seed, self.config.instruction(spec), self.scheduler(policy, env.control_hz))
        warm = policy_accepts_init_guess(policy)
        start = time.perf_counter()
        while not ep.done:
            if ep.scheduler.due(ep.tick):
                if keep_frames:  # the frame the policy plans from (the real-time clock moves on after)
                    if ep.obs is None:
                        ep.obs = ep.env.observe()
                    ep.result.frames.append(ep.obs.frame())
                self._plan(policy, ep, warm)
                continue
            ep.execute_tick()
        ep.result.wall_seconds = time.perf_counter() - start
        ep.result.late_chunks = ep.scheduler.late_chunks
        return ep.result

    # ------------------------------------------------------------------ internals
    def _plan(self, policy, ep: _Episode, warm: bool) -> None:
        if ep.obs is None:
            ep.obs = ep.env.observe()
        batch = to_policy_batch([ep.obs], [ep.instruction])
        request = ep.scheduler.request(ep.tick)
        previous_stats = getattr(policy, "last_decode_stats", None)
        t0 = self.timer()
        chunk, warm_started = predict_chunk(policy, batch, self.predict_kwargs, request, warm)  # [1, K, D]
        seconds = self.timer() - t0
        actions = _chunk_to_numpy(chunk)  # [K, D]
        self._record_call(policy, ep.result, seconds, previous_stats, warm_started)

        realtime = self.config.clock == "realtime"
        if realtime:  # the control ticks that passed while the policy computed
            for _ in range(int(math.floor(seconds * ep.env.control_hz + 1e-9))):
                if ep.done:
                    break
                ep.execute_tick()
        bins = decoded_bins(policy) if warm else None
        merged = ep.scheduler.deliver(request, actions, ep.tick, seconds if realtime else 0.0, bins)
        ep.result.dropped_actions += merged.dropped

    def _record_call(
        self, policy, result: EpisodeResult, seconds: float, previous_stats, warm_started: bool
    ) -> None:
        result.policy_calls += 1
        result.policy_seconds += seconds
        result.call_ms.append(seconds * 1000.0)
        stats = getattr(policy, "last_decode_stats", None)
        if stats is None or stats is previous_stats:
            return
        result.decode_ms.append(float(stats.wall_ms))
        result.decode_iterations.append(_mean_of(stats.iterations))
        result.decode_tokens.append(float(stats.tokens))
        result.decode_warm.append(warm_started)


class _EpisodeJobs:
    """Runs one episode per `(task index, episode index)` job, keeping the current task's env open."""

    def __init__(self, runner: EvalRunner, policy):
        self.runner = runner
        self.policy = policy
        self.task: int | None = None
        self.env: MetaWorldEnv | None = None

    def __call__(self, job: tuple[int, int]) -> tuple[EpisodeResult, str | None]:
        cfg = self.runner.config
        t, i = job
        spec = cfg.specs[t]
        if self.task != t:  # jobs come task by task: one env open at a time
            self.close()
            self.env, self.task = MetaWorldEnv(cfg.env_config(spec)), t
        keep = cfg.output is not None and i < cfg.save_rollouts
        seed = split_seed(cfg.split, cfg.seed, i)
        result = self.runner.run_episode(self.policy, self.env, spec, seed, keep_frames=keep)
        saved = None
        if keep and result.frames:
            frames = [*result.frames, self.env.observe().frame()]
            saved = str(save_rollout(result, frames, cfg.output / "rollouts").relative_to(cfg.output))
        result.frames = []
        return result, saved

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env = self.task = None


_WORKER_JOBS: _EpisodeJobs | None = None


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _init_worker(runner: EvalRunner, policy, threads: int | None) -> None:
    global _WORKER_JOBS
    _set_torch_threads(threads)
    _WORKER_JOBS = _EpisodeJobs(runner, policy)


def _work(job: tuple[int, int]) -> tuple[tuple[int, int], EpisodeResult, str | None]:
    assert _WORKER_JOBS is not None, "worker not initialised"
    return (job, *_WORKER_JOBS(job))


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


def _policy_action_steps(policy) -> int | None:
    """The policy's own `n_action_steps` (LeRobot's name), if it declares one."""
    steps = getattr(getattr(policy, "config", None), "n_action_steps", None)
    return int(steps) if steps else None


def _chunk_to_numpy(chunk) -> np.ndarray:
    arr = (
        chunk.detach().cpu().float().numpy()
        if hasattr(chunk, "detach")
        else np.asarray(chunk, dtype=np.float32)
    )
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise ValueError(f"expected a chunk for one observation [1, K, D], got shape {tuple(arr.shape)}")
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] < 1:
        raise ValueError(f"predict_action_chunk must return [1, K, 4] actions, got shape {tuple(arr.shape)}")
    return arr.astype(np.float32)


def _mean_of(value) -> float:
    if hasattr(value, "float"):
        return float(value.float().mean())
    return float(np.mean(value))


# ------------------------------------------------------------------------------------ reporting


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
    if clock == "realtime":
        out["held_steps"] = sum(e.held_steps for e in episodes)
        out["dropped_actions"] = sum(e.dropped_actions for e in episodes)
        out["held_fraction"] = out["held_steps"] / steps if steps else None
        out["late_chunks"] = sum(e.late_chunks for e in episodes)
    return out


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


def report_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"# Evaluation ({s['clock']} clock)",
        "",
        f"{s['episodes_per_task']} episodes per task, {s.get('split', 'eval')} seeds (run seed {s['seed']}), {s['image_size']} px, "
        f"horizon {s['max_episode_steps']} steps, {s['instructions']} instructions.",
        "",
        "| task | success | 95% CI | episodes | steps to success | policy ms p50 | p95 | actions/s | env steps/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [*report["per_task"].items(), ("**overall**", report["overall"])]
    for name, r in rows:
        low, high = r["success_ci95"]
        lines.append(
            f"| {name} | {r['success_rate']:.2f} | [{low:.2f}, {high:.2f}] | {r['episodes']} | "
            f"{_fmt(r['mean_steps_to_success'])} | {_fmt(r['policy_ms_p50'], '.2f')} | {_fmt(r['policy_ms_p95'], '.2f')} | "
            f"{_fmt(r['actions_per_s'], '.0f')} | {_fmt(r['env_steps_per_s'], '.0f')} |"
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
            f"{overall['late_chunks']} chunks arrived too late to use.",
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
    ax.set_title(f"{report['settings']['clock']} clock, overall {overall:.2f}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)


def write_report(report: dict[str, Any], output: Path) -> None:
    """`report.json`, `report.md` and `success.png` in `output`."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "report.json", json.dumps(report, indent=2))
    atomic_write_text(output / "report.md", report_markdown(report))
    plot_success(report, output / "success.png")


# ------------------------------------------------------------------------------------------- CLI


def load_policy(spec: str, device: str | None = None):
    """`expert` -> the scripted expert; anything else -> a VLA checkpoint directory."""
    if spec == "expert":
        from ceed_vla.sim.experts import ScriptedExpert

        return ScriptedExpert()
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"--policy must be 'expert' or a checkpoint directory; {spec!r} is neither")
    from ceed_vla.policy import VLAPolicy  # imported lazily: the expert path needs no model code

    policy = VLAPolicy.from_pretrained(spec, device=device, expected_action_dim=4)
    policy.eval()
    return policy


def decoding_kwargs(
    policy, mode: str | None, sigma: int | None, tau: int | None, fused_prefill: bool = False
) -> dict[str, Any]:
    """`{"decoding": DecodeConfig(...)}` for a policy that decodes, `{}` otherwise (the expert)."""
    if not hasattr(policy, "n_bins"):
        if mode is not None or sigma is not None or tau is not None or fused_prefill:
            print("ceed eval: note: decoding options ignored, this policy does not decode", file=sys.stderr)
        return {}
    from ceed_vla.decoding import DecodeConfig

    if mode is None:
        mode = "early_exit" if (sigma is not None or tau is not None) else "ar"
    config = DecodeConfig(mode=mode, sigma=sigma, tau=tau, n_bins=policy.n_bins, fused_prefill=fused_prefill)
    return {"decoding": config}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="expert", help="'expert' or a VLA checkpoint directory")
    parser.add_argument("--tasks", default="mt10", help="comma-separated task names or 'mt10'")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="run seed: selects the evaluation seed range")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="eval",
        help="episode seeds: held-out evaluation (default) or validation (for model selection)",
    )
    parser.add_argument("--clock", choices=CLOCKS, default="paused", help="paused (lockstep) or realtime")
    parser.add_argument(
        "--image-size", type=int, default=64, help="camera image size (match the training data)"
    )
    parser.add_argument(
        "--camera",
        default=None,
        help="the recording's camera(s), comma-separated (default: the checkpoint's, else "
        + DEFAULT_CAMERA
        + ")",
    )
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_EPISODE_STEPS, help="episode horizon")
    parser.add_argument(
        "--goal-marker-radius",
        type=float,
        default=DEFAULT_GOAL_MARKER_RADIUS,
        help="radius (m) of the rendered goal sphere (match the recording)",
    )
    parser.add_argument(
        "--instructions", choices=INSTRUCTION_SETS, default="eval", help="held-out or training wording"
    )
    parser.add_argument(
        "--execute-steps",
        type=int,
        default=None,
        help="actions per chunk before replanning (default: the policy's)",
    )
    parser.add_argument(
        "--init",
        choices=INIT_CHOICES,
        default="tail",
        help="initial Jacobi guess: the previous chunk's unexecuted tail (default) or the constant one",
    )
    parser.add_argument(
        "--blend-steps",
        type=int,
        default=None,
        help=f"ticks a new chunk is cross-faded over (default: 0 paused, {ROBOT_BLEND_STEPS} realtime as the bridge)",
    )
    parser.add_argument(
        "--refill-margin",
        type=int,
        default=None,
        help="realtime: plan this many ticks before the queue would run dry "
        f"(default: 0 paused, {ROBOT_REFILL_MARGIN_TICKS} realtime as the bridge)",
    )
    parser.add_argument(
        "--decoding", choices=("ar", "jacobi", "early_exit"), default=None, help="VLA decoding mode"
    )
    parser.add_argument("--sigma", type=int, default=None, help="early exit: iteration cap")
    parser.add_argument("--tau", type=int, default=None, help="early exit: bin-distance tolerance")
    parser.add_argument(
        "--fused-prefill",
        action="store_true",
        help="Jacobi modes: one forward over prompt and guess block replaces prefill + first iteration",
    )
    parser.add_argument("--device", default=None, help="torch device for a VLA checkpoint")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running episodes side by side, each with a copy of the policy (default: 1); "
        "the same episodes and report whatever the count",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: the cores shared out between the workers)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/eval"), help="report directory")
    parser.add_argument(
        "--save-rollouts",
        type=int,
        default=2,
        help="episodes per task saved as GIF + frame strip under <output>/rollouts/ (0 = none)",
    )


def config_from_args(args: argparse.Namespace, **fixed: Any) -> EvalConfig:
    """An `EvalConfig` from parsed `ceed eval`-style arguments; a job that lacks an option (or fixes
    it, as `ceed select` fixes the split) passes it in `fixed` or gets the config's default."""
    names = {
        "episodes_per_task": "episodes",
        "seed": "seed",
        "image_size": "image_size",
        "camera": "camera",
        "max_episode_steps": "max_steps",
        "goal_marker_radius": "goal_marker_radius",
        "clock": "clock",
        "instructions": "instructions",
        "execute_steps": "execute_steps",
        "init": "init",
        "blend_steps": "blend_steps",
        "refill_margin": "refill_margin",
        "split": "split",
        "save_rollouts": "save_rollouts",
        "output": "output",
        "workers": "workers",
        "threads": "threads",
    }
    values = {field: getattr(args, arg) for field, arg in names.items() if hasattr(args, arg)}
    values["tasks"] = tuple(t for t in args.tasks.split(",") if t.strip())
    return EvalConfig(**{**values, **fixed})


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)  # bad options are refused before the model loads
        policy = load_policy(args.policy, args.device)
        config = config.for_policy(policy)
        predict_kwargs = decoding_kwargs(policy, args.decoding, args.sigma, args.tau, args.fused_prefill)
    except (UnknownTaskError, FileNotFoundError, ValueError) as err:
        print(f"ceed eval: error: {err}", file=sys.stderr)
        return 2
    report = EvalRunner(config, predict_kwargs).run(policy)
    print(report_markdown(report))
    print(f"wrote {config.output / 'report.json'}, report.md and success.png")
    return 0
