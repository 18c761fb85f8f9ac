"""When to observe, what to execute: the chunk scheduler shared by the robot bridge and `ceed eval`.

Time is counted in control ticks. A chunk predicted from an observation taken when tick `t_obs` was
next to run holds actions for ticks t_obs, t_obs+1, ... . By the time it arrives some of those ticks
have passed; their actions are dropped (a chunk whose every action is in the past is *late* and is
discarded whole). The rest overlaps the tail of the previous chunk: over the first `blend_steps`
overlapping ticks the two are cross-faded linearly (weight of the new chunk 1/(b+1), 2/(b+1), ...),
after which the new chunk alone is used. This keeps consecutive commands continuous when the
policy changes its mind between chunks.

    ticks:        t_obs ............ now ............................
    old queue:                       [o o o o o]
    new chunk:    [x x x x x x x x x x x x]
    merged:                          [b b n n n n n n]   (b = blend, n = new)

A new observation is due when either
- `replan_every` ticks have passed since the last one (how often the policy sees the world), or
- the queue would run dry before a chunk requested now could arrive: at most
  ceil(expected latency / period) + `refill_margin_ticks` actions are left. The expected latency is
  an exponential average of the measured ones.
One request is in flight at a time.

Warm start: the previous chunk's unexecuted tail, shifted by the ticks that passed between its
observation and this one, is the next chunk's initial Jacobi guess (`ChunkRequest.init_guess`, bins
as `ceed_vla.decoding.guess_from_previous_chunk` lays them out). Where no earlier chunk of this
episode exists, or the gap is more than a whole chunk, the guess is None: the decoder's constant guess.

The bridge calls this from three threads (ROS callbacks, the control timer, the inference worker);
`ceed eval` from one. Both drive it through the same methods, so the simulator schedules exactly as
the robot does: the real-time clock of `ceed eval` advances the simulation by the measured latency
while the old queue executes, as the bridge's control timer would.
"""

from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ceed_vla.decoding.guess import guess_from_previous_chunk

INIT_CHOICES = ("tail", "constant")
ROBOT_BLEND_STEPS = 2
"""The bridge's default cross-fade (ticks); `ceed eval --clock realtime` uses it too."""
ROBOT_REFILL_MARGIN_TICKS = 1
"""The bridge's default refill margin (ticks); `ceed eval --clock realtime` uses it too."""


def policy_accepts_init_guess(policy) -> bool:
    """Whether `policy.predict_action_chunk` takes a warm-start `init_guess` (the VLA does)."""
    try:
        return "init_guess" in inspect.signature(policy.predict_action_chunk).parameters
    except (TypeError, ValueError):
        return False


def predict_chunk(policy, observation: dict, predict_kwargs: dict, request: ChunkRequest, warm: bool):
    """`policy.predict_action_chunk` for `request`, with its warm-start guess when the policy takes
    one (`warm`, from `policy_accepts_init_guess`). Returns (chunk [1, K, D], whether it was warm)."""
    kwargs = dict(predict_kwargs)
    if warm and request.init_guess is not None:
        kwargs["init_guess"] = request.init_guess
    return policy.predict_action_chunk(observation, **kwargs), "init_guess" in kwargs


def decoded_bins(policy) -> torch.Tensor | None:
    """[1, n] bins of the policy's last decode, or None for policies that do not decode tokens."""
    bins = getattr(getattr(policy, "last_decode_output", None), "bins", None)
    return None if bins is None else bins[:1]


@dataclass(frozen=True)
class SchedulerConfig:
    action_dim: int
    period_s: float  # one control tick
    blend_steps: int = 0
    refill_margin_ticks: int = 0
    replan_every: int | None = None  # ticks between observations; None = only when the queue runs low
    init: str = "tail"  # "tail": warm start from the previous chunk; "constant": the decoder's guess

    def __post_init__(self) -> None:
        if not (isinstance(self.action_dim, int) and self.action_dim > 0):
            raise ValueError(f"action_dim must be a positive int, got {self.action_dim!r}")
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s must be positive and finite, got {self.period_s!r}")
        if self.blend_steps < 0 or self.refill_margin_ticks < 0:
            raise ValueError(
                f"blend_steps={self.blend_steps}, refill_margin_ticks={self.refill_margin_ticks}: need >= 0"
            )
        if self.replan_every is not None and self.replan_every < 1:
            raise ValueError(f"replan_every must be >= 1 or None, got {self.replan_every!r}")
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}")


@dataclass
class ChunkRequest:
    obs_tick: int  # the tick that was next to run when the observation was taken
    generation: int  # queue generation; a result from an older generation is discarded
    init_guess: torch.Tensor | None  # [1, n] bins: the previous chunk's tail shifted into place
    shift: int | None  # ticks since the previous chunk's observation (None: no previous chunk)


@dataclass
class MergeResult:
    accepted: bool  # False when every action of the chunk was already in the past (or it was stale)
    dropped: int  # actions of the chunk whose tick had already passed
    blended: int  # ticks where old and new were cross-faded
    length: int  # queue length after the merge
    stale: bool = False  # requested before a flush: belongs to an earlier episode or task


class ChunkQueue:
    """Thread-safe queue of future actions indexed by control tick."""

    def __init__(self, action_dim: int, blend_steps: int):
        self.action_dim = action_dim
        self.blend_steps = blend_steps
        self._lock = threading.Lock()
        self._start = 0  # tick of self._actions[0]
        self._actions = np.zeros((0, action_dim))  # [T, D]

    def __len__(self) -> int:
        with self._lock:
            return self._actions.shape[0]

    def clear(self) -> None:
        with self._lock:
            self._actions = np.zeros((0, self.action_dim))

    def pop(self, tick: int) -> np.ndarray | None:
        """The action for `tick` ([D]) or None on underrun; actions for earlier ticks are discarded."""
        with self._lock:
            self._drop_before(tick)
            if self._actions.shape[0] == 0 or self._start != tick:
                return None
            action = self._actions[0].copy()
            self._actions = self._actions[1:]
            self._start = tick + 1
            return action

    def remaining(self, tick: int) -> np.ndarray:
        """Actions queued for `tick` and later, [T, D] (a copy)."""
        with self._lock:
            self._drop_before(tick)
            return self._actions.copy() if self._start == tick else np.zeros((0, self.action_dim))

    def merge(self, chunk: np.ndarray, obs_tick: int, now_tick: int) -> MergeResult:
        """Merge a chunk [K, D] predicted for ticks obs_tick.. into the queue, `now_tick` being next."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk has shape {chunk.shape}; expected [K, {self.action_dim}]")
        dropped = max(0, now_tick - obs_tick)
        fresh = chunk[dropped:]  # [K', D] for ticks now_tick..
        with self._lock:
            self._drop_before(now_tick)
            if fresh.shape[0] == 0:
                return MergeResult(False, min(dropped, chunk.shape[0]), 0, self._actions.shape[0])
            old = self._actions if self._start == now_tick else np.zeros((0, self.action_dim))
            blended = min(self.blend_steps, old.shape[0], fresh.shape[0])
            merged = fresh.copy()
            if blended:
                w = (np.arange(1, blended + 1) / (self.blend_steps + 1))[:, None]  # [b, 1]
                merged[:blended] = (1 - w) * old[:blended] + w * fresh[:blended]
            self._actions = merged
            self._start = now_tick
            return MergeResult(True, dropped, blended, merged.shape[0])

    def _drop_before(self, tick: int) -> None:
        behind = tick - self._start
        if behind > 0:
            self._actions = self._actions[behind:]
            self._start = tick


class ChunkScheduler:
    """The queue, the refill decision, warm-start guesses and late-chunk handling, per episode."""

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.queue = ChunkQueue(config.action_dim, config.blend_steps)
        self._lock = threading.Lock()
        self._generation = 0
        self._in_flight = False
        self._last_obs_tick: int | None = None  # observation behind the last accepted chunk
        self._previous_bins: torch.Tensor | None = None  # [1, n] that chunk's bins (None: not a VLA)
        self.latency_ema_s = 0.0
        self.chunks = 0
        self.late_chunks = 0
        self.dropped_actions = 0
        self.warm_starts = 0

    # ---- planning -----------------------------------------------------------------------------
    @property
    def in_flight(self) -> bool:
        return self._in_flight

    def lead_ticks(self) -> int:
        """Actions that must still be queued when a request goes out for the queue not to run dry."""
        return math.ceil(self.latency_ema_s / self.config.period_s - 1e-9) + self.config.refill_margin_ticks

    def due(self, tick: int) -> bool:
        """Whether a new observation should be taken now, `tick` being the next tick to run."""
        with self._lock:
            if self._in_flight:
                return False
            every = self.config.replan_every
            if every is not None and self._last_obs_tick is not None and tick - self._last_obs_tick >= every:
                return True
            return len(self.queue.remaining(tick)) <= self.lead_ticks()

    def request(self, tick: int) -> ChunkRequest:
        """Mark a request in flight for an observation taken now (`tick` next to run)."""
        with self._lock:
            if self._in_flight:
                raise RuntimeError("a chunk request is already in flight: deliver or cancel it first")
            self._in_flight = True
            shift = None if self._last_obs_tick is None else tick - self._last_obs_tick
            guess = None
            if self.config.init == "tail" and self._previous_bins is not None:
                k = self._previous_bins.shape[1] // self.config.action_dim
                if shift <= k:  # its last `shift` steps are filled with its final step
                    guess = guess_from_previous_chunk(self._previous_bins, shift, self.config.action_dim)
                    self.warm_starts += 1
            return ChunkRequest(tick, self._generation, guess, shift)

    def deliver(
        self,
        request: ChunkRequest,
        actions: np.ndarray,
        now_tick: int,
        latency_s: float,
        bins: torch.Tensor | None = None,
    ) -> MergeResult:
        """Merge the chunk [K, D] decoded for `request`, `now_tick` being next to run; `bins` [1, n] are
        its tokens (for the next warm start), `latency_s` how long it took (0 where time stood still)."""
        with self._lock:
            self._in_flight = False
            self._record_latency(latency_s)
            if request.generation != self._generation:
                return MergeResult(False, 0, 0, len(self.queue.remaining(now_tick)), stale=True)
            merged = self.queue.merge(actions, request.obs_tick, now_tick)
            self.dropped_actions += merged.dropped
            if not merged.accepted:
                self.late_chunks += 1
                return merged
            self.chunks += 1
            self._last_obs_tick = request.obs_tick
            self._previous_bins = None if bins is None else bins.detach().to("cpu", torch.long).reshape(1, -1)
            return merged

    def cancel(self) -> None:
        """The request failed (the policy raised): nothing arrives, a new one may go out."""
        with self._lock:
            self._in_flight = False

    def flush(self) -> None:
        """Forget the queue and the previous chunk (a hold, a new task, a new episode); a request in
        flight now is discarded when it arrives."""
        with self._lock:
            self.queue.clear()
            self._generation += 1
            self._last_obs_tick = None
            self._previous_bins = None

    # ---- execution ----------------------------------------------------------------------------
    def pop(self, tick: int) -> np.ndarray | None:
        """The action [D] for `tick`, or None on underrun (the caller holds)."""
        return self.queue.pop(tick)

    def remaining(self, tick: int) -> np.ndarray:
        return self.queue.remaining(tick)

    def _record_latency(self, latency_s: float) -> None:
        if self.chunks == 0 and self.late_chunks == 0 and self.latency_ema_s == 0:
            self.latency_ema_s = latency_s
        else:
            self.latency_ema_s = 0.8 * self.latency_ema_s + 0.2 * latency_s
