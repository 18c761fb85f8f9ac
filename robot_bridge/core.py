"""The bridge's control logic without ROS: observations in, one safe command per control tick out.

    camera / state / instruction --observe_*--> latest observation --inference_request--> policy
    policy chunk [K, D] --deliver--> ChunkScheduler (stitched) --tick--> SafetyFilter --> command

`tick(now)` is called by the control timer at a fixed rate. It holds (empties the queue and steps
toward the hold target through the safety filter) while the e-stop is latched, an input is stale or
malformed, the policy just failed, or there is no instruction; it holds without emptying the queue
on underrun. An e-stop jumps to the hold target at once; every other hold ramps there at max_delta. A background worker asks
`inference_request(now)` for work; a request is handed out once the queue would run dry within the
expected inference latency plus `refill_margin_ticks` (or `replan_every_ticks` after the last
observation), so a policy that decodes faster than the chunk it produces keeps the queue from ever
running dry. The queue, that decision, warm-start guesses and late chunks are
`ceed_vla.scheduler.ChunkScheduler`, the same class `ceed eval` schedules the simulator with.

Planning ahead (`plan_ahead`, on by default unless `forced_prefix`): at each request the queue's next
d steps are committed (d from the latency quantile) and the policy is given the state they lead to
with the current images; its chunk runs from the tick right after them. The state comes from the
embodiment's forward model when one was given (`BridgeCore(predict_state=...)`: the sim robot passes
MetaWorld's), else from `state_rollforward`: a commanded joint driven to a position is where its last
committed target puts it, every other entry stays as measured.

All methods are thread-safe: ROS callbacks, the control timer and the inference worker call them
from different threads.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ceed_vla.cli import config_from_args
from ceed_vla.scheduler import ChunkRequest, ChunkScheduler, SchedulerConfig

from .config import BridgeConfig, OutputMode
from .safety import EStopLatch, SafetyFilter, StaleWatchdog

STATE, ENV_STATE = "state", "environment_state"

PredictState = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""An embodiment's forward model: (state [S], committed actions [d, D], both in the policy's units) ->
the state [S] expected once those actions have run."""


def state_rollforward(
    state: np.ndarray,
    committed: np.ndarray,
    state_joints: Sequence[tuple[int, int]],
    positions: Sequence[bool],
    scale: np.ndarray,
    offset: np.ndarray,
    low: Sequence[float] | None = None,
    high: Sequence[float] | None = None,
) -> np.ndarray:
    """The state [S] (the policy's units) expected once the committed actions have run, from the
    measured `state` [S]: what the bridge knows without a model of the embodiment.

    `committed` [d, D] are the queued actions in the controller's units (`BridgeCore.to_controller`
    applied). `state_joints` pairs a state entry with the action dimension commanding the same joint
    ((index in the state, action dimension)); `positions` [D] says which dimensions command a position
    (those not held at zero, `SafetyConfig.zero_hold`). A controller drives such a joint to its
    commanded target, so its entry becomes the last committed target, clipped to [low, high] [D] (the
    safety filter's limits, the controller's units) when given, and converted back to the policy's
    units: (a - offset) / scale (`scale`, `offset` [D]: policy -> controller). Every other entry (a
    velocity or delta command, a state entry no action commands) stays as measured. With no committed
    step the state is returned unchanged. Returns a new array of the state's dtype."""
    out = np.array(state, copy=True)
    committed = np.asarray(committed, dtype=np.float64)
    if committed.ndim != 2 or committed.shape[0] == 0:
        return out
    target = committed[-1]  # [D] where the position dimensions are driven
    if low is not None and high is not None:
        target = np.clip(target, np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))
    for i, d in state_joints:
        if positions[d]:
            out[i] = (target[d] - offset[d]) / scale[d]
    return out


@dataclass
class InferenceRequest:
    observation: dict  # the policy observation (docs/interfaces.md), batch of 1
    chunk: ChunkRequest  # the scheduler's side: observation tick, generation, warm-start guess
    image_stamp: float  # header stamp (s) of the oldest camera frame in the observation
    reset_policy: bool  # call policy.reset() before predicting (first request after a hold)


@dataclass
class TickResult:
    tick: int
    command: np.ndarray | None  # [D] what to publish this tick; None = nothing to publish
    holding: bool
    reason: str  # "ok" or why the bridge holds
    plan: np.ndarray | None = None  # [T, D] commands from this tick on (a new chunk arrived or a hold began)
    image_stamp: float | None = None  # camera stamp behind the first command of a new chunk
    jumped: bool = False  # the hold skipped the delta clamp (e-stop)


@dataclass
class BridgeStats:
    ticks: int = 0
    hold_ticks: int = 0
    missed_ticks: int = (
        0  # control periods that passed without a tick (a late timer): their actions are skipped
    )
    inference_errors: int = 0
    consecutive_inference_errors: int = 0
    invalid_inputs: int = 0
    last_latency_s: float = 0.0
    last_iterations: float = float("nan")
    periods: deque = field(default_factory=lambda: deque(maxlen=400))  # s between ticks


class BridgeCore:
    """`predict_state`: the embodiment's forward model for planning ahead (`PredictState`); None =
    `state_rollforward`."""

    def __init__(self, config: BridgeConfig, predict_state: PredictState | None = None):
        self.config = config
        self.predict_state = predict_state
        self.period = config.period_s
        # Every scheduling field the bridge's parameters share with SchedulerConfig, by name.
        self.scheduler = ChunkScheduler(
            config_from_args(
                SchedulerConfig,
                config,
                action_dim=config.action_dim,
                period_s=config.period_s,
                replan_every=config.replan_every_ticks or None,
                init=config.decoding_init,
            )
        )
        self.queue = self.scheduler.queue
        self.safety = SafetyFilter(config.safety)
        self.estop = EStopLatch()
        self.cameras = {cam.key: cam for cam in config.cameras}  # feature key -> CameraInput
        required = [cam.name for cam in config.cameras] + [STATE]
        required += [ENV_STATE] if config.environment_state_topic else []
        self.watchdog = StaleWatchdog(required, config.stale_timeout_s, config.stamp_tolerance_s)
        self.stats = BridgeStats()
        self._lock = threading.Lock()
        self._tick = 0  # the next tick to run
        self._clock_start: float | None = None  # time of tick 0 of the current activation
        self._last_tick_time: float | None = None
        self._images: dict[str, np.ndarray] = {}  # feature key -> [H, W, 3] uint8
        self._image_stamps: dict[str, float] = {}
        self._state: np.ndarray | None = None  # [S] float32, in the policy's units
        # the arm's joint positions [D] in the controller's units (`joint_names` of the state
        # messages) and when they arrived; None until a state message carries them
        self._measured: np.ndarray | None = None
        self._measured_at = -math.inf
        # trajectory mode: the running plan, (tick of its first point, points [T, D]): the
        # controller executes point (tick - first) now, and the last point after the plan ends
        self._plan: tuple[int, np.ndarray] | None = None
        self.scale = np.asarray(config.unit_scale_array, dtype=np.float64)  # [D] policy -> controller
        self.offset = np.asarray(config.unit_offset_array, dtype=np.float64)  # [D]
        # state entries that are commanded joints: (index in the state, action dimension)
        self._state_joints = [
            (i, config.joint_names.index(name))
            for i, name in enumerate(config.state_joint_names)
            if name in config.joint_names
        ]
        self._position_dims = [not z for z in config.safety.zero_hold]  # [D] commands a position
        self._positions = any(self._position_dims)  # some dimensions command positions
        self.stale_counts: dict[str, int] = {}  # input -> ticks held because it was stale
        self._env_state: np.ndarray | None = None  # [E] float32
        self._instruction = config.instruction.strip()
        self._invalid: dict[str, str] = {}
        self._holding = True
        self._reason = "starting"
        self._reset_policy = True
        self._fresh_chunk_stamp: float | None = None
        self._failure_unheld = False  # an inference failure that no tick has held for yet

    # ---- inputs -------------------------------------------------------------------------------
    def observe_image(
        self,
        image: np.ndarray,
        stamp: float,
        now: float,
        stamp_age: float | None = None,
        key: str | None = None,
    ) -> str | None:
        """A frame of camera `key` (the policy's feature key; None: the only camera) taken at `stamp`,
        arrived at `now` (monotonic), its stamp `stamp_age` s old on the node's clock at arrival.
        Returns why it was refused (a stamp in the future or too old), else None."""
        camera = self._camera(key)
        with self._lock:
            problem = self._stamp_problem(camera.name, stamp_age)
            if problem is None:
                self._images[camera.key], self._image_stamps[camera.key] = image, stamp
                self._invalid.pop(camera.name, None)
                self.watchdog.feed(camera.name, now, stamp_age)
            return problem

    def _camera(self, key: str | None):
        if key is None:
            if len(self.cameras) != 1:
                raise ValueError(
                    f"this bridge has {len(self.cameras)} cameras: say which ({sorted(self.cameras)})"
                )
            return next(iter(self.cameras.values()))
        if key not in self.cameras:
            raise ValueError(f"no camera {key!r}; the policy's cameras are {sorted(self.cameras)}")
        return self.cameras[key]

    def observe_state(
        self,
        state: np.ndarray,
        now: float,
        stamp_age: float | None = None,
        positions: np.ndarray | None = None,
    ) -> str | None:
        """As `observe_image`, for the robot state [S] in the controller's units (converted here to
        the policy's); `positions` [D]: the commanded joints' measured positions, when the message
        carries them."""
        with self._lock:
            problem = self._stamp_problem(STATE, stamp_age)
            if problem is None:
                state = np.array(state, dtype=np.float32)
                for i, d in self._state_joints:
                    state[i] = (float(state[i]) - self.offset[d]) / self.scale[d]
                self._state = state
                if positions is not None:
                    self._measured, self._measured_at = np.asarray(positions, dtype=np.float64), now
                self._invalid.pop(STATE, None)
                self.watchdog.feed(STATE, now, stamp_age)
            return problem

    def observe_environment_state(self, env_state: np.ndarray, now: float) -> None:
        with self._lock:
            self._env_state = env_state
            self.watchdog.feed(ENV_STATE, now)

    def set_instruction(self, text: str) -> None:
        with self._lock:
            self._instruction = text
            self._invalid.pop("instruction", None)
            self._flush()  # a new task: the queued actions belong to the old one

    def invalid_input(self, kind: str, reason: str) -> None:
        """A message on input `kind` was malformed: hold until a valid one arrives."""
        with self._lock:
            self._invalid[kind] = reason
            self.stats.invalid_inputs += 1

    def set_estop(self, asserted: bool) -> None:
        with self._lock:
            self.estop.update(asserted)

    def reset_estop(self) -> bool:
        with self._lock:
            return self.estop.reset()

    # ---- inference ------------------------------------------------------------------------------
    def inference_request(self, now: float) -> InferenceRequest | None:
        with self._lock:
            if self._hold_reason(now, for_inference=True) is not None or not self.scheduler.due(self._tick):
                return None
            chunk = self.scheduler.request(self._tick)
            try:
                state = self._planned_state(chunk.committed_actions)
            except Exception:
                self.scheduler.cancel()  # the caller treats it as a failed inference
                raise
            request = InferenceRequest(
                observation=self._observation(state),
                chunk=chunk,
                image_stamp=min(self._image_stamps.values()),
                reset_policy=self._reset_policy,
            )
            self._reset_policy = False
            return request

    def _planned_state(self, committed: np.ndarray | None) -> np.ndarray:
        """The state [S] the policy plans from (the policy's units): as measured, or with plan-ahead
        committed steps [d, D] (the controller's units) the state they lead to."""
        if committed is None or len(committed) == 0:
            return self._state
        if self.predict_state is None:
            return state_rollforward(
                self._state,
                committed,
                self._state_joints,
                self._position_dims,
                self.scale,
                self.offset,
                self.config.action_low,
                self.config.action_high,
            )
        policy_units = (np.asarray(committed, dtype=np.float64) - self.offset) / self.scale  # [d, D]
        state = np.asarray(self.predict_state(self._state.copy(), policy_units), dtype=np.float32)
        if state.shape != self._state.shape or not np.all(np.isfinite(state)):
            raise ValueError(
                f"the forward model returned a state of shape {state.shape} (finite: {np.isfinite(state).all()}) "
                f"for one of shape {self._state.shape}: it must return a finite state of the same shape"
            )
        return state

    def deliver(
        self,
        request: InferenceRequest,
        chunk: np.ndarray,
        latency_s: float,
        iterations: float,
        bins: torch.Tensor | None = None,
    ) -> bool:
        """Merge a predicted chunk [K, D] (`bins` [1, n]: its tokens, for the next warm start);
        returns False when it was discarded (stale or too late)."""
        with self._lock:
            self.stats.last_latency_s, self.stats.last_iterations = latency_s, iterations
            chunk = self.to_controller(chunk)
            merged = self.scheduler.deliver(request.chunk, chunk, self._tick, latency_s, bins)
            if not merged.accepted:
                return False
            self.stats.consecutive_inference_errors = 0
            self._fresh_chunk_stamp = request.image_stamp
            return True

    def inference_failed(self) -> int:
        """The policy raised or returned an unusable chunk: hold now (the queued actions came from the
        same policy) until a good chunk arrives. Returns the number of failures in a row."""
        with self._lock:
            self.scheduler.cancel()
            self.stats.inference_errors += 1
            self.stats.consecutive_inference_errors += 1
            self._failure_unheld = True
            self._flush()
            return self.stats.consecutive_inference_errors

    def to_controller(self, actions: np.ndarray) -> np.ndarray:
        """Actions [..., D] in the policy's units -> the controller's (unit_scale, unit_offset)."""
        return np.asarray(actions, dtype=np.float64) * self.scale + self.offset

    # ---- control ------------------------------------------------------------------------------
    def tick(self, now: float) -> TickResult:
        with self._lock:
            tick = self._due_tick(now)
            self._tick = tick + 1
            self._record_period(now)
            reason = self._hold_reason(now)
            trajectory = self.config.output_mode is OutputMode.TRAJECTORY
            stamp = self._fresh_chunk_stamp
            # where the arm is: measured when the output (re)starts or a new plan begins
            restart = (reason is not None) != self._holding or (trajectory and stamp is not None)
            self._rebase(tick, now, restart)
            if reason is None and self._positions and self.safety.last is None:
                reason = "no_reference"  # no measured position and no initial_command: never guess
            if reason is not None:
                self._flush()
                if reason == "inference_error":
                    self._failure_unheld = False  # held once; a good chunk resumes from here
                if reason.startswith("stale_"):
                    self.stale_counts[reason[6:]] = self.stale_counts.get(reason[6:], 0) + 1
                return self._hold(tick, reason)
            plan = None
            if stamp is not None and trajectory:
                plan = self.safety.plan(self.queue.remaining(tick))  # [T, D]
            action = self.queue.pop(tick)
            if action is None:
                return self._hold(tick, "underrun")
            executing = self._executing(tick) if plan is None else None
            if executing is not None and self._plan is not None and tick - self._plan[0] < len(self._plan[1]):
                command = executing  # trajectory mode: the running plan's point, filtered when planned
            else:
                result = self.safety.apply(action)
                if result.command is None:
                    self._flush()
                    return self._hold(tick, result.rejected_reason)
                command = result.command
            self.safety.last, self.safety.window = command, None
            if plan is not None and len(plan):
                self._plan = (tick, plan)
            self._fresh_chunk_stamp = None
            self._holding, self._reason = False, "ok"
            return TickResult(tick, command, False, "ok", plan=plan, image_stamp=stamp)

    def stop_step(self, jump: bool = False) -> TickResult:
        """One step of the stop on deactivate or shutdown: empty the queue and step toward the hold
        target (`jump`: go there at once). `at_target` of the filter result tells when it is there."""
        with self._lock:
            self._flush()
            tick = self._tick
            self._rebase(tick, None, restart=not self._holding)
            result = self._hold(tick, "stopping", jump=jump, force_plan=True)
            self._tick = tick + 1  # the next step is a period later
            return result

    def hold_reached(self) -> bool:
        """Whether the last published command is the hold target (nothing left to ramp)."""
        with self._lock:
            target = self.safety.hold_target()
            return target is None or bool(np.all(target == self.safety.last))

    def restart_clock(self) -> None:
        """Start counting control periods afresh (on activation): the next tick is due now."""
        with self._lock:
            self._clock_start = None
            self._last_tick_time = None

    def status(self, now: float) -> dict[str, object]:
        """Numbers for diagnostics."""
        with self._lock:
            periods = np.asarray(self.stats.periods) if self.stats.periods else np.asarray([np.nan])
            return {
                "state": self._reason,
                "holding": self._holding,
                "estop_latched": self.estop.latched,
                "estop_latches": self.estop.latch_count,
                "hold_jumps": self.safety.jump_count,
                "control_hz": float(1.0 / np.mean(periods)) if np.isfinite(periods).all() else 0.0,
                "period_jitter_p99_ms": float(np.percentile(np.abs(periods - self.period), 99) * 1e3),
                "inference_latency_ms": self.stats.last_latency_s * 1e3,
                "inference_latency_ema_ms": self.scheduler.latency_ema_s * 1e3,
                "iterations_per_chunk": self.stats.last_iterations,
                "queue_length": len(self.queue.remaining(self._tick)),
                "chunks": self.scheduler.chunks,
                "late_chunks": self.scheduler.late_chunks,
                "dropped_actions": self.scheduler.dropped_actions,
                "warm_starts": self.scheduler.warm_starts,
                "forced_chunks": self.scheduler.forced_chunks,
                "prefix_overrun_ticks": self.scheduler.prefix_overrun_ticks,
                "planned_ahead_chunks": self.scheduler.planned_ahead_chunks,
                "planned_ahead_steps": self.scheduler.planned_ahead_steps,
                "missed_ticks": self.stats.missed_ticks,
                "inference_errors": self.stats.inference_errors,
                "consecutive_inference_errors": self.stats.consecutive_inference_errors,
                "invalid_inputs": self.stats.invalid_inputs,
                "clamped_commands": self.safety.clamped_count,
                "rejected_actions": self.safety.rejected_count,
                "observation_age_ms": self.watchdog.oldest_age(now) * 1e3,
                "stale_timeout_ms": self.config.stale_timeout_s * 1e3,
                "stale_holds": ", ".join(f"{k}: {v}" for k, v in sorted(self.stale_counts.items())) or "none",
                "ticks": self.stats.ticks,
                "hold_ticks": self.stats.hold_ticks,
            }

    # ---- internals (lock held) ----------------------------------------------------------------
    def _executing(self, tick: int) -> np.ndarray | None:
        """What the controller executes at `tick` [D]: trajectory mode, the running plan's point
        (its last after it ends); otherwise the last published command (None: nothing yet)."""
        if self._plan is None:
            return self.safety.last
        first, points = self._plan
        return points[min(max(tick - first, 0), len(points) - 1)].copy()

    def _rebase(self, tick: int, now: float | None, restart: bool) -> None:
        """Set the filter's reference to where the arm is before this tick's step: what the
        controller executes, and with `restart` the measured joint positions when fresh."""
        measured = None
        if restart and now is not None and now - self._measured_at <= self.config.stale_timeout_s:
            measured = self._measured
        self.safety.rebase(self._executing(tick), measured)

    def _hold_reason(self, now: float, for_inference: bool = False) -> str | None:
        if self.estop.latched:
            return "estop"
        if self._invalid:
            return "invalid_" + sorted(self._invalid)[0]
        stale = self.watchdog.stale_inputs(now)
        if stale:
            return "stale_" + stale[0]
        if not self._instruction:
            return "no_instruction"
        if (self.stats.consecutive_inference_errors or self._failure_unheld) and not for_inference:
            # held for at least one tick, then until a good chunk arrives; inference keeps trying
            return "inference_error"
        return None

    def _stamp_problem(self, name: str, stamp_age: float | None) -> str | None:
        return None if stamp_age is None else self.watchdog.stamp_problem(name, stamp_age)

    def _hold(self, tick: int, reason: str, jump: bool | None = None, force_plan: bool = False) -> TickResult:
        """Hold this tick: one step toward the hold target through the filter (an e-stop jumps)."""
        previous = None if self.safety.last is None else self.safety.last.copy()
        entering = not self._holding or reason != self._reason
        self._holding, self._reason = True, reason
        self.stats.hold_ticks += 1
        result = self.safety.hold(jump=reason == "estop" if jump is None else jump)
        if result is None:  # nothing was ever published and there is no reference: publish nothing
            return TickResult(tick, None, True, reason)
        command = result.command
        moved = previous is None or bool(np.any(command != previous))
        plan = command[None] if (entering or moved or force_plan) else None  # [1, D]
        if plan is not None and self.config.output_mode is OutputMode.TRAJECTORY:
            self._plan = (tick, plan.copy())  # the controller goes there and stays
        return TickResult(tick, command, True, reason, plan=plan, jumped=result.jumped)

    def _flush(self) -> None:
        self.scheduler.flush()
        self._reset_policy = True
        self._fresh_chunk_stamp = None

    def _observation(self, state: np.ndarray) -> dict:
        """The policy observation: the newest images, `state` [S] (the policy's units), the task."""
        obs = {
            key: torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)[None]  # [1, 3, H, W]
            for key, image in self._images.items()
        }
        obs |= {
            "observation.state": torch.from_numpy(state).float()[None],  # [1, S]
            "task": [self._instruction],
        }
        if self._env_state is not None:
            obs["observation.environment_state"] = torch.from_numpy(self._env_state).float()[None]  # [1, E]
        return obs

    def _due_tick(self, now: float) -> int:
        """The tick whose time slot `now` falls in. Ticks follow the clock, not the callback count:
        when the timer runs late the periods it missed are skipped with their actions, so every
        action still executes at the time it was predicted for."""
        if self._clock_start is None:
            self._clock_start = now - self._tick * self.period
        due = math.floor((now - self._clock_start) / self.period + 0.5)
        tick = max(due, self._tick)
        self.stats.missed_ticks += tick - self._tick
        return tick

    def _record_period(self, now: float) -> None:
        if self._last_tick_time is not None:
            self.stats.periods.append(now - self._last_tick_time)
        self._last_tick_time = now
        self.stats.ticks += 1
