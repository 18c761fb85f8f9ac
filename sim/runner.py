"""The episode runner of `ceed eval`: `EvalRunner(config).run(policy) -> report` for any policy with the
reset / predict_action_chunk API.

The runner keeps the chunk queue itself (equivalent to the policy's `select_action` with every
action of a chunk executed) so that each chunk's latency is measured directly and decoding
options reach `predict_action_chunk`. Two clocks:

paused    (lockstep, as papers report) the simulation waits while the policy computes.

realtime  the simulation keeps moving while the policy computes, as on the robot. A call that
          takes W seconds lets floor(W * control_hz) control ticks pass; during them the
          previously queued actions keep executing and, once the queue runs dry, the arm holds
          (zero translation, last gripper effort). The new chunk, planned from the observation at
          the call, then starts at offset floor(W * control_hz): its first actions are stale.

delay     the real-time clock with a delay model in place of the measured W: every call takes
          `delay_ticks` ticks, or `delay_ms` (W = delay_ms / 1000), whatever the machine. The
          schedule, and so every episode's outcome, repeats on any machine; the policy's robustness
          to delay is measured apart from its decoder's speed (the measured ms are still reported).

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

Under the real-time and delay clocks each chunk is planned ahead by default (`plan_ahead`): the
queue's next d steps (d from the latency estimate, as below) are committed, the policy sees the state
they lead to (`MetaWorldEnv.predict_state`) with the current image, and the chunk starts right after
them, so none of its steps is stale and none is cross-faded. On validation seeds, paired against
dropping the stale steps on the same episodes, it won 68 episodes and lost 9 over twelve decoder and
delay pairs (docs/experiments/2026-12-realtime.md); `plan_ahead=False` is the earlier scheduling.

Instead, a policy that takes a forced prefix (the VLA) gets one when
asked (`forced_prefix`, off by default: on validation seeds it cost teacher AR success and did not
change the student's, docs/sim.md "Decomposing a real-time drop"): the queue's next d steps, d from
the `latency_quantile` of the recent latencies plus `prefix_margin` ticks, are committed and given to the decoder as the chunk's first
steps (`ceed_vla/scheduler.py`). Under the real-time clock the decoder may also be given the time
the queue runs dry as a deadline (`decode_deadline`).

Evaluation seeds come from `ceed_vla.sim.seeds.eval_seed`, disjoint from every recording seed
(`--split validation` draws from the validation range instead, for model selection),
and every episode uses the task's held-out instruction by default.
"""

from __future__ import annotations

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
    FORWARD_MODELS,
    EnvConfig,
    MetaWorldEnv,
    Observation,
    cameras_for_image_keys,
    reads_per_camera_keys,
    to_policy_batch,
)
from ceed_vla.sim.report import build_report, save_rollout, write_report
from ceed_vla.sim.seeds import SPLITS, split_seed
from ceed_vla.sim.tasks import MT10, TaskSpec, task_selection
from tqdm.auto import tqdm

from ceed_vla.scheduler import (
    INIT_CHOICES,
    ROBOT_BLEND_STEPS,
    ROBOT_REFILL_MARGIN_TICKS,
    ChunkScheduler,
    SchedulerConfig,
    decoded_bins,
    policy_accepts_deadline,
    policy_accepts_exact_steps,
    policy_accepts_forced_prefix,
    policy_accepts_init_guess,
    predict_chunk,
)

Clock = Literal["paused", "realtime", "delay"]
CLOCKS = ("paused", "realtime", "delay")
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
    delay_ticks: int | None = None
    """Delay clock: control ticks that pass during every policy call (or `delay_ms`)."""
    delay_ms: float | None = None
    """Delay clock: the latency of every policy call in ms (floor(ms * control_hz / 1000) ticks pass)."""
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
    forced_prefix: bool = False
    """Force the queue's next d steps as the chunk's first (off by default, as in the bridge); only
    under the realtime and delay clocks and for policies that take a forced prefix."""
    plan_ahead: bool | None = None
    """Plan each chunk for the tick it starts at: the queue's next d steps are committed, the policy
    sees the state they lead to (`MetaWorldEnv.predict_state`) with the current image, and the chunk
    runs from its step 0 after them; only under the realtime and delay clocks, exclusive with
    `forced_prefix`. None: on under those clocks unless `forced_prefix`, off paused."""
    forward_model: str = "arm"
    """How a planned-ahead chunk's start state is predicted (`MetaWorldEnv.predict_state`, one of
    `FORWARD_MODELS`): `arm`, the arm's own dynamics without contacts, or `kinematic`, the actions'
    translations summed."""
    latency_quantile: float = 0.9
    """The quantile of recent latencies d (and, with the prefix, the refill) is planned from."""
    prefix_margin: int = 0
    """Ticks added to the latency quantile to give d."""
    decode_deadline: bool = False
    """Realtime: the decoder stops iterating when the queue would run dry, less `deadline_margin_ms`."""
    deadline_margin_ms: float = 0.0
    exact_executed: bool = False
    """The decoder leaves exact the chunk's steps that will run before the next chunk (policies that
    take `exact_steps`; a no-op for AR and exact Jacobi)."""
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
        self.tasks, self.specs = task_selection(self.tasks)
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
        self._check_delay()
        moving = self.clock != "paused"
        if self.blend_steps is None:
            self.blend_steps = ROBOT_BLEND_STEPS if moving else 0
        if self.refill_margin is None:
            self.refill_margin = ROBOT_REFILL_MARGIN_TICKS if moving else 0
        if self.blend_steps < 0 or self.refill_margin < 0:
            raise ValueError(f"blend_steps={self.blend_steps}, refill_margin={self.refill_margin}: need >= 0")
        if self.forced_prefix and not moving:
            raise ValueError(
                "forced_prefix needs the realtime or delay clock: under the paused clock nothing executes "
                "while the policy computes, so there is no prefix to force"
            )
        if self.plan_ahead is None:
            self.plan_ahead = moving and not self.forced_prefix
        if self.plan_ahead and not moving:
            raise ValueError(
                "plan_ahead needs the realtime or delay clock: under the paused clock nothing executes "
                "while the policy computes, so there is no later start to plan for"
            )
        if self.plan_ahead and self.forced_prefix:
            raise ValueError("plan_ahead and forced_prefix both condition on the committed steps: choose one")
        if self.forward_model not in FORWARD_MODELS:
            raise ValueError(
                f"forward_model {self.forward_model!r} is unknown; choose one of {FORWARD_MODELS}"
            )
        if not 0.0 <= self.latency_quantile <= 1.0:
            raise ValueError(f"latency_quantile must be in [0, 1], got {self.latency_quantile!r}")
        if self.prefix_margin < 0:
            raise ValueError(f"prefix_margin must be >= 0, got {self.prefix_margin!r}")
        if not (math.isfinite(self.deadline_margin_ms) and self.deadline_margin_ms >= 0):
            raise ValueError(f"deadline_margin_ms must be finite and >= 0, got {self.deadline_margin_ms!r}")
        if self.decode_deadline and self.clock != "realtime":
            raise ValueError(
                f"decode_deadline needs the realtime clock (got {self.clock!r}): a deadline is read on the "
                "machine's clock, which the paused and delay clocks do not charge for decoding"
            )
        if self.output is not None:
            self.output = Path(self.output)
        self.env_config(self.specs[0])

    def _check_delay(self) -> None:
        given = [n for n in ("delay_ticks", "delay_ms") if getattr(self, n) is not None]
        if self.clock != "delay":
            if given:
                raise ValueError(f"{given[0]} is for the delay clock; got clock={self.clock!r}")
            return
        if len(given) != 1:
            raise ValueError("the delay clock needs exactly one of delay_ticks or delay_ms")
        value = getattr(self, given[0])
        if given[0] == "delay_ticks" and not (isinstance(value, int) and value >= 0):
            raise ValueError(f"delay_ticks must be an int >= 0, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"delay_ms must be finite and >= 0, got {value!r}")

    def call_seconds(self, measured_s: float, control_hz: float) -> float:
        """The time a policy call costs the simulation: 0 paused, the measured one under the real-time
        clock, the delay model's under the delay clock."""
        if self.clock == "paused":
            return 0.0
        if self.clock == "realtime":
            return measured_s
        if self.delay_ticks is not None:
            return self.delay_ticks / control_hz
        return self.delay_ms / 1000.0

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
    deadline_stops: int = 0  # chunks whose decoding the deadline ended (before the fixed point or sigma)
    forced_chunks: int = 0  # chunks decoded after a forced prefix
    forced_steps: int = 0  # their forced steps, summed
    prefix_overrun_ticks: int = 0  # ticks that ran old, unforced steps before a forced chunk arrived
    planned_ahead_steps: int = 0  # plan-ahead: committed steps the chunks were planned after, summed
    # |change of the commanded action| between consecutive ticks, mean over the action's dimensions,
    # summed over the episode's ticks (jerk = sum / count)
    action_change_sum: float = 0.0
    action_changes: int = 0
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
        # [D] the command of the last tick; before the first, the arm is at rest (what a hold commands),
        # so the first command's change from rest counts in every clock alike, not only where the
        # real-time and delay clocks hold while the first chunk is computed
        self.last_action = self.rest_action()
        self.done = False
        self.result = EpisodeResult(spec.name, seed, False, 0, 0, [], 0, 0, 0, 0.0, 0.0, 0.0)

    def rest_action(self) -> np.ndarray:
        """What a hold commands: zero translation, the last gripper effort."""
        return np.array([0.0, 0.0, 0.0, self.last_grip], dtype=np.float32)

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
        action = np.asarray(action, dtype=np.float64)
        self.result.action_change_sum += float(np.abs(action - self.last_action).mean())
        self.result.action_changes += 1
        self.last_action = action
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
            action = self.rest_action()
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
        # what the scheduler ran with for this policy (the prefix and deadline only where it takes them)
        report["settings"]["scheduler"] = asdict(self.scheduler(policy, CONTROL_HZ).config)
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
                forced_prefix=cfg.forced_prefix and policy_accepts_forced_prefix(policy),
                plan_ahead=cfg.plan_ahead,
                latency_quantile=cfg.latency_quantile,
                prefix_margin_ticks=cfg.prefix_margin,
                decode_deadline=cfg.decode_deadline and policy_accepts_deadline(policy),
                deadline_margin_s=cfg.deadline_margin_ms / 1000.0,
                exact_executed=cfg.exact_executed and policy_accepts_exact_steps(policy),
            ),
            clock=self.timer,
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
        ep.result.forced_chunks = ep.scheduler.forced_chunks
        ep.result.forced_steps = ep.scheduler.forced_steps
        ep.result.prefix_overrun_ticks = ep.scheduler.prefix_overrun_ticks
        ep.result.planned_ahead_steps = ep.scheduler.planned_ahead_steps
        return ep.result

    # ------------------------------------------------------------------ internals
    def _plan(self, policy, ep: _Episode, warm: bool) -> None:
        if ep.obs is None:
            ep.obs = ep.env.observe()
        request = ep.scheduler.request(ep.tick)
        obs = ep.obs
        if request.committed_actions is not None and len(request.committed_actions):
            # plan ahead: the state after the committed steps, the image as it is now
            obs = replace(
                obs,
                state=ep.env.predict_state(
                    obs.state, request.committed_actions, model=self.config.forward_model
                ),
            )
        batch = to_policy_batch([obs], [ep.instruction])
        previous_stats = getattr(policy, "last_decode_stats", None)
        t0 = self.timer()
        chunk, warm_started = predict_chunk(policy, batch, self.predict_kwargs, request, warm)  # [1, K, D]
        seconds = self.timer() - t0
        actions = _chunk_to_numpy(chunk)  # [K, D]
        self._record_call(policy, ep.result, seconds, previous_stats, warm_started)

        # the control ticks that pass while the policy computes: none paused, else the call's latency,
        # measured (realtime) or the delay model's
        latency = self.config.call_seconds(seconds, ep.env.control_hz)
        for _ in range(int(math.floor(latency * ep.env.control_hz + 1e-9))):
            if ep.done:
                break
            ep.execute_tick()
        tokens = warm or ep.scheduler.config.forced_prefix  # the queue keeps bins to warm-start or force
        bins = decoded_bins(policy) if tokens else None
        merged = ep.scheduler.deliver(request, actions, ep.tick, latency, bins)
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
        result.deadline_stops += int(stats.stopped_by == "deadline")


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
