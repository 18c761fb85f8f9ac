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

Forced prefix (real-time chunking, `SchedulerConfig.forced_prefix`): the d steps that will execute
while a chunk is computed are already in the queue. At the request they are *committed* (no merge
may change them any more) and their bins go to the policy as the chunk's forced first d steps, so the
model decodes the rest as its own continuation of what the arm actually does. d is the latency
estimate in ticks, floor(q / period) + `prefix_margin_ticks` (the ticks that fire while the call
runs, a request going out as a tick is taken), where q is the `latency_quantile` of the
last `latency_window` measured latencies (a high quantile, not the mean: a chunk later than d ticks
executes old, unconditioned steps). d is capped by the queued steps whose bins are known and by
K - 1. A chunk with a forced prefix is not cross-faded: its step d follows the committed steps it was
conditioned on. The refill decision then uses the same quantile.

    ticks:        t_obs ..... now ......................
    queue at request:  [c c c o o]            (c = committed: d = 3)
    new chunk:         [c c c x x x x x]      (its first d steps are the forced c)
    merged:                  [c x x x x x]    (now = t_obs + 2: the committed c still to run, then x)

Planning ahead (`SchedulerConfig.plan_ahead`): the chunk is planned for the tick it will start at,
not the tick of its observation. At the request the queue's next d steps (d as for the forced prefix)
are committed and handed to the caller (`ChunkRequest.committed_actions`), which predicts the state
they lead to (`ceed_vla.sim.env.MetaWorldEnv.predict_state`, the bridge's `state_rollforward`) and
gives the policy that state with the observation's image; the chunk's step 0 is for tick
`obs_tick + d` (`ChunkRequest.start_tick`), right after the committed steps, so no step of it is
dropped as stale unless it is later than d ticks, and it is not cross-faded. The policy needs no
tokens for it: any policy with a proprioceptive state can plan ahead. Exclusive with the forced
prefix (which conditions on the same d steps through the tokens instead of the state).

    ticks:        t_obs ..... now ......................
    queue at request:  [c c c o o]            (c = committed: d = 3)
    new chunk:               [x x x x x x x x]   (planned from the state after c, for t_obs + 3 on)
    merged:                  [c x x x x x x x x]

Deadline (`SchedulerConfig.decode_deadline`): the request carries the time by which the chunk must
arrive, when the queue would run dry (the queued ticks times the period after the request) less
`deadline_margin_s`, on the scheduler's clock; the Jacobi decoder stops iterating by then. With an
empty queue (the arm holds anyway) there is no deadline.

Exact executed steps (`SchedulerConfig.exact_executed`): the request says how many of the chunk's
steps will run before the next chunk takes over (`ChunkRequest.exact_steps`). The next observation is
`replan_every` ticks away, or d if the call takes longer, and the next chunk starts d after it, so
max(replan_every, d) + d - (the chunk's start - its observation) steps. It needs `replan_every`
(without it the whole chunk runs: decode it exactly). An early-exit decoder leaves those steps exact
(the model's greedy AR actions) and only the rest of the chunk, the next warm start, approximate.

The bridge calls this from three threads (ROS callbacks, the control timer, the inference worker);
`ceed eval` from one. Both drive it through the same methods, so the simulator schedules exactly as
the robot does: the real-time clock of `ceed eval` advances the simulation by the measured latency
while the old queue executes, as the bridge's control timer would.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ceed_vla.decoding.guess import guess_from_previous_chunk

INIT_CHOICES = ("tail", "constant")
ROBOT_BLEND_STEPS = 2
"""The bridge's default cross-fade (ticks); `ceed eval --clock realtime` uses it too."""
ROBOT_REFILL_MARGIN_TICKS = 1
"""The bridge's default refill margin (ticks); `ceed eval --clock realtime` uses it too."""


def _accepts(policy, *names: str) -> bool:
    try:
        params = inspect.signature(policy.predict_action_chunk).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return all(name in params for name in names)


def policy_accepts_init_guess(policy) -> bool:
    """Whether `policy.predict_action_chunk` takes a warm-start `init_guess` (the VLA does)."""
    return _accepts(policy, "init_guess")


def policy_accepts_forced_prefix(policy) -> bool:
    """Whether `policy.predict_action_chunk` takes `forced_bins`, the chunk's first steps given (the
    VLA does); `SchedulerConfig.forced_prefix` is for such policies only."""
    return _accepts(policy, "forced_bins")


def policy_accepts_deadline(policy) -> bool:
    """Whether `policy.predict_action_chunk` takes a `deadline` and its `clock` (the VLA does);
    `SchedulerConfig.decode_deadline` is for such policies only."""
    return _accepts(policy, "deadline", "clock")


def policy_accepts_exact_steps(policy) -> bool:
    """Whether `policy.predict_action_chunk` takes `exact_steps` (the VLA does);
    `SchedulerConfig.exact_executed` is for such policies only."""
    return _accepts(policy, "exact_steps")


def executed_steps(replan_every: int, delay_ticks: int, planned_ahead: int) -> int:
    """The steps of a chunk that run before the next one takes over: the next request goes out after
    `max(replan_every, delay_ticks)` ticks and its chunk arrives `delay_ticks` later, less the steps
    this chunk was planned ahead of its observation (`planned_ahead`)."""
    return max(replan_every, delay_ticks) + delay_ticks - planned_ahead


def predict_chunk(policy, observation: dict, predict_kwargs: dict, request: ChunkRequest, warm: bool):
    """`policy.predict_action_chunk` for `request`: with its warm-start guess when the policy takes
    one (`warm`, from `policy_accepts_init_guess`), its forced prefix, its deadline and its exact
    steps when the scheduler set them (only for policies that take them). Returns (chunk [1, K, D],
    whether it was warm)."""
    kwargs = dict(predict_kwargs)
    if warm and request.init_guess is not None:
        kwargs["init_guess"] = request.init_guess
    if request.forced_bins is not None:
        kwargs["forced_bins"] = request.forced_bins
    if request.deadline is not None:
        kwargs["deadline"], kwargs["clock"] = request.deadline, request.clock
    if request.exact_steps is not None:
        kwargs["exact_steps"] = request.exact_steps
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
    forced_prefix: bool = False
    """Commit the queue's next d steps at each request and hand their bins to the policy as the
    chunk's forced first steps (policies where `policy_accepts_forced_prefix`)."""
    latency_quantile: float = 0.9  # the latency estimate behind d (and the refill, with a forced prefix)
    latency_window: int = 20  # how many recent latencies the quantile is taken over
    prefix_margin_ticks: int = 0  # added to floor(latency quantile / period) to give d
    plan_ahead: bool = False
    """Commit the queue's next d steps at each request, hand them to the caller to predict the state
    they lead to, and start the chunk after them (any policy; exclusive with `forced_prefix`)."""
    decode_deadline: bool = False
    """Give each request the time the queue would run dry, less `deadline_margin_s`, as the decode
    deadline (policies where `policy_accepts_deadline`)."""
    deadline_margin_s: float = 0.0
    exact_executed: bool = False
    """Ask the decoder to leave exact the chunk's steps that will run before the next chunk
    (`ChunkRequest.exact_steps`; policies where `policy_accepts_exact_steps`)."""

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
        if not 0.0 <= self.latency_quantile <= 1.0:
            raise ValueError(f"latency_quantile must be in [0, 1], got {self.latency_quantile!r}")
        if not (isinstance(self.latency_window, int) and self.latency_window >= 1):
            raise ValueError(f"latency_window must be an int >= 1, got {self.latency_window!r}")
        if self.prefix_margin_ticks < 0:
            raise ValueError(f"prefix_margin_ticks must be >= 0, got {self.prefix_margin_ticks!r}")
        if self.forced_prefix and self.plan_ahead:
            raise ValueError(
                "forced_prefix and plan_ahead both condition the chunk on the committed steps (through the "
                "tokens, or through the predicted state): choose one"
            )
        if self.exact_executed and self.replan_every is None:
            raise ValueError(
                "exact_executed needs replan_every: without it the whole chunk runs, so decode it exactly "
                "(exact Jacobi) instead"
            )
        if not (math.isfinite(self.deadline_margin_s) and self.deadline_margin_s >= 0):
            raise ValueError(f"deadline_margin_s must be finite and >= 0, got {self.deadline_margin_s!r}")


@dataclass
class ChunkRequest:
    obs_tick: int  # the tick that was next to run when the observation was taken
    generation: int  # queue generation; a result from an older generation is discarded
    init_guess: torch.Tensor | None  # [1, n] bins: the previous chunk's tail shifted into place
    shift: int | None  # ticks since the previous chunk's observation (None: no previous chunk)
    forced_steps: int = 0  # d: the chunk's first steps that are given, not decoded (committed)
    forced_bins: torch.Tensor | None = None  # [1, d * D] their bins (None when d = 0)
    deadline: float | None = None  # on `clock`: when the chunk must arrive (None: no deadline)
    clock: Callable[[], float] | None = None  # the clock of `deadline`
    start_tick: int | None = None  # the tick the chunk's step 0 is for (None: obs_tick)
    committed_actions: np.ndarray | None = None  # plan-ahead: [d, D] the steps that run before start_tick
    exact_steps: int | None = None  # the chunk's steps that will run before the next one (None: not asked)

    @property
    def chunk_tick(self) -> int:
        """The tick of the chunk's step 0."""
        return self.obs_tick if self.start_tick is None else self.start_tick


@dataclass
class MergeResult:
    accepted: bool  # False when every action of the chunk was already in the past (or it was stale)
    dropped: int  # actions of the chunk whose tick had already passed
    blended: int  # ticks where old and new were cross-faded
    length: int  # queue length after the merge
    stale: bool = False  # requested before a flush: belongs to an earlier episode or task
    kept: int = 0  # committed ticks still queued, kept as they were (the chunk's steps for them unused)


UNKNOWN_BIN = -1
"""The bin of a queued action that no token stands behind (a cross-faded action, a policy without
bins): such a step cannot be forced."""


class ChunkQueue:
    """Thread-safe queue of future actions indexed by control tick, with the bins behind each action
    and a commitment: actions for ticks before `committed_until` are never changed by a merge."""

    def __init__(self, action_dim: int, blend_steps: int):
        self.action_dim = action_dim
        self.blend_steps = blend_steps
        self._lock = threading.Lock()
        self._start = 0  # tick of self._actions[0]
        self._actions = np.zeros((0, action_dim))  # [T, D]
        self._bins = np.zeros((0, action_dim), dtype=np.int64)  # [T, D], UNKNOWN_BIN where none
        self._committed_until: int | None = None

    def __len__(self) -> int:
        with self._lock:
            return self._actions.shape[0]

    def clear(self) -> None:
        with self._lock:
            self._actions = np.zeros((0, self.action_dim))
            self._bins = np.zeros((0, self.action_dim), dtype=np.int64)
            self._committed_until = None

    def pop(self, tick: int) -> np.ndarray | None:
        """The action for `tick` ([D]) or None on underrun; actions for earlier ticks are discarded."""
        with self._lock:
            self._drop_before(tick)
            if self._actions.shape[0] == 0 or self._start != tick:
                return None
            action = self._actions[0].copy()
            self._actions, self._bins = self._actions[1:], self._bins[1:]
            self._start = tick + 1
            return action

    def remaining(self, tick: int) -> np.ndarray:
        """Actions queued for `tick` and later, [T, D] (a copy)."""
        with self._lock:
            self._drop_before(tick)
            return self._actions.copy() if self._start == tick else np.zeros((0, self.action_dim))

    def remaining_bins(self, tick: int) -> np.ndarray:
        """The bins behind the actions queued for `tick` and later, [T, D] int64 (UNKNOWN_BIN where none)."""
        with self._lock:
            self._drop_before(tick)
            if self._start != tick:
                return np.zeros((0, self.action_dim), dtype=np.int64)
            return self._bins.copy()

    @property
    def committed_until(self) -> int | None:
        return self._committed_until

    def commit(self, until_tick: int) -> None:
        """Commit the queued actions for ticks before `until_tick`: no merge changes them any more."""
        with self._lock:
            if self._committed_until is None or until_tick > self._committed_until:
                self._committed_until = until_tick

    def merge(
        self,
        chunk: np.ndarray,
        obs_tick: int,
        now_tick: int,
        bins: np.ndarray | None = None,
        blend: bool = True,
    ) -> MergeResult:
        """Merge a chunk [K, D] predicted for ticks obs_tick.. into the queue, `now_tick` being next;
        `bins` [K, D] are its tokens. Committed ticks keep their queued actions; the chunk takes over
        after them, cross-faded into the old tail over `blend_steps` ticks when `blend`."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk has shape {chunk.shape}; expected [K, {self.action_dim}]")
        if bins is None:
            bins = np.full(chunk.shape, UNKNOWN_BIN, dtype=np.int64)
        bins = np.asarray(bins, dtype=np.int64)
        if bins.shape != chunk.shape:
            raise ValueError(f"bins have shape {bins.shape}; expected the chunk's {chunk.shape}")
        dropped = max(0, now_tick - obs_tick)
        with self._lock:
            self._drop_before(now_tick)
            queued = self._start == now_tick
            old = self._actions if queued else np.zeros((0, self.action_dim))
            old_bins = self._bins if queued else np.zeros((0, self.action_dim), dtype=np.int64)
            until = now_tick if self._committed_until is None else self._committed_until
            kept = min(max(0, until - now_tick), old.shape[0])
            first = now_tick + kept - obs_tick  # index in the chunk of the first tick it may write
            fresh, fresh_bins = chunk[max(first, 0) :], bins[max(first, 0) :]  # [K', D]
            if fresh.shape[0] == 0:
                return MergeResult(False, min(dropped, chunk.shape[0]), 0, old.shape[0], kept=kept)
            tail = old[kept:]  # the uncommitted rest of the old plan
            blended = min(self.blend_steps, tail.shape[0], fresh.shape[0]) if blend else 0
            merged, merged_bins = fresh.copy(), fresh_bins.copy()
            if blended:
                w = (np.arange(1, blended + 1) / (self.blend_steps + 1))[:, None]  # [b, 1]
                merged[:blended] = (1 - w) * tail[:blended] + w * fresh[:blended]
                merged_bins[:blended] = UNKNOWN_BIN
            self._actions = np.concatenate([old[:kept], merged])
            self._bins = np.concatenate([old_bins[:kept], merged_bins])
            self._start = now_tick
            return MergeResult(True, min(dropped, chunk.shape[0]), blended, self._actions.shape[0], kept=kept)

    def _drop_before(self, tick: int) -> None:
        behind = tick - self._start
        if behind > 0:
            self._actions, self._bins = self._actions[behind:], self._bins[behind:]
            self._start = tick


class ChunkScheduler:
    """The queue, the refill decision, warm-start guesses, the forced prefix, the decode deadline and
    late-chunk handling, per episode. `clock` (seconds) is read only for deadlines."""

    def __init__(self, config: SchedulerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.queue = ChunkQueue(config.action_dim, config.blend_steps)
        self._lock = threading.Lock()
        self._generation = 0
        self._in_flight = False
        self._last_obs_tick: int | None = None  # observation behind the last accepted chunk
        self._last_chunk_tick: int | None = None  # the tick of that chunk's step 0
        self._previous_bins: torch.Tensor | None = None  # [1, n] that chunk's bins (None: not a VLA)
        self.latency_ema_s = 0.0
        self._latencies: deque[float] = deque(maxlen=config.latency_window)
        self.chunks = 0
        self.late_chunks = 0
        self.dropped_actions = 0
        self.warm_starts = 0
        self.forced_chunks = 0  # chunks requested with a forced prefix
        self.forced_steps = 0  # their forced steps, summed
        self.prefix_overrun_ticks = 0  # ticks that ran old, unforced steps before such a chunk arrived
        self.planned_ahead_chunks = 0  # chunks planned for a later start (plan_ahead, d > 0)
        self.planned_ahead_steps = 0  # their d, summed

    # ---- planning -----------------------------------------------------------------------------
    @property
    def in_flight(self) -> bool:
        return self._in_flight

    def latency_quantile_s(self) -> float:
        """The `latency_quantile` of the last `latency_window` latencies (0 before the first)."""
        if not self._latencies:
            return 0.0
        return float(
            np.quantile(np.fromiter(self._latencies, float), self.config.latency_quantile, method="higher")
        )

    def _latency_estimate_s(self) -> float:
        quantile = self.config.forced_prefix or self.config.plan_ahead
        return self.latency_quantile_s() if quantile else self.latency_ema_s

    def _latency_ticks(self) -> int:
        """Ticks of actions a call of the estimated latency needs queued (rounded up: the refill)."""
        return math.ceil(self._latency_estimate_s() / self.config.period_s - 1e-9)

    def lead_ticks(self) -> int:
        """Actions that must still be queued when a request goes out for the queue not to run dry."""
        return self._latency_ticks() + self.config.refill_margin_ticks

    def prefix_ticks(self) -> int:
        """The d the latency estimate asks for (before the queue caps it); 0 before any latency is known.

        d counts the control ticks that run while a call of the estimated latency q is computed: a
        request goes out as a tick is taken (the bridge's worker is woken by the control timer,
        `ceed eval` plans between ticks), so the ticks that fire before the chunk arrives are
        floor(q / period), which is also how many the simulator lets pass. Rounding up instead would
        commit one step more than runs meanwhile whenever q is not a whole number of ticks, and
        leave every chunk a tick further open loop."""
        if not self._latencies:
            return 0
        ticks = math.floor(self._latency_estimate_s() / self.config.period_s + 1e-9)
        return ticks + self.config.prefix_margin_ticks

    def due(self, tick: int) -> bool:
        """Whether a new observation should be taken now, `tick` being the next tick to run."""
        with self._lock:
            if self._in_flight:
                return False
            every = self.config.replan_every
            if every is not None and self._last_obs_tick is not None and tick - self._last_obs_tick >= every:
                return True
            return len(self.queue.remaining(tick)) <= self.lead_ticks()

    def request(self, tick: int, now: float | None = None) -> ChunkRequest:
        """Mark a request in flight for an observation taken now (`tick` next to run; `now` on the
        scheduler's clock, read when None and a deadline is due)."""
        with self._lock:
            if self._in_flight:
                raise RuntimeError("a chunk request is already in flight: deliver or cancel it first")
            self._in_flight = True
            start, committed = self._plan_ahead(tick) if self.config.plan_ahead else (tick, None)
            shift = None if self._last_chunk_tick is None else start - self._last_chunk_tick
            guess = None
            if self.config.init == "tail" and self._previous_bins is not None:
                k = self._previous_bins.shape[1] // self.config.action_dim
                if shift <= k:  # its last `shift` steps are filled with its final step
                    guess = guess_from_previous_chunk(self._previous_bins, shift, self.config.action_dim)
                    self.warm_starts += 1
            request = ChunkRequest(tick, self._generation, guess, shift)
            if committed is not None:
                request.start_tick, request.committed_actions = start, committed
            if self.config.forced_prefix:
                self._force_prefix(request)
            if self.config.exact_executed:
                request.exact_steps = self._executed_steps(request)
            if self.config.decode_deadline:
                queued = len(self.queue.remaining(tick))
                if queued:
                    now = self.clock() if now is None else now
                    request.deadline = now + queued * self.config.period_s - self.config.deadline_margin_s
                    request.clock = self.clock
            return request

    def _plan_ahead(self, tick: int) -> tuple[int, np.ndarray]:
        """Commit the queue's next d steps; returns (the chunk's start tick, those steps [d, D])."""
        queued = self.queue.remaining(tick)  # [T, D]
        d = min(self._committed_ticks(tick), queued.shape[0])
        if d > 0:
            self.queue.commit(tick + d)
            self.planned_ahead_chunks += 1
            self.planned_ahead_steps += d
        return tick + d, queued[:d].copy()

    def _committed_ticks(self, tick: int) -> int:
        """The d a request at `tick` commits, before the queue caps it: the latency estimate's, and at
        least the steps an earlier request already committed. When the estimate falls below the one
        that planned the previous chunk, a smaller d would put the chunk's first steps inside steps no
        merge may change (and, planned ahead, before the previous chunk its warm start shifts)."""
        committed_until = self.queue.committed_until
        already = 0 if committed_until is None else committed_until - tick
        return max(self.prefix_ticks(), already)

    def _executed_steps(self, request: ChunkRequest) -> int:
        """The steps of the chunk asked for by `request` that will run before the next chunk takes over
        (uncapped: the policy caps it at its chunk)."""
        return executed_steps(
            self.config.replan_every, self.prefix_ticks(), request.chunk_tick - request.obs_tick
        )

    def _force_prefix(self, request: ChunkRequest) -> None:
        """Commit the queue's next d steps and put their bins in the request (d = 0: nothing)."""
        queued = self.queue.remaining_bins(request.obs_tick)  # [T, D]
        unknown = (queued == UNKNOWN_BIN).any(axis=1)  # [T]
        known = int(unknown.argmax()) if unknown.any() else queued.shape[0]  # leading steps with bins
        d = min(self._committed_ticks(request.obs_tick), known)
        if self._previous_bins is not None:  # leave at least one step to decode
            d = min(d, self._previous_bins.shape[1] // self.config.action_dim - 1)
        if d <= 0:
            return
        self.queue.commit(request.obs_tick + d)
        request.forced_steps = d
        request.forced_bins = torch.from_numpy(queued[:d].reshape(1, -1).copy())  # [1, d * D]
        self.forced_chunks += 1
        self.forced_steps += d

    def deliver(
        self,
        request: ChunkRequest,
        actions: np.ndarray,
        now_tick: int,
        latency_s: float,
        bins: torch.Tensor | None = None,
    ) -> MergeResult:
        """Merge the chunk [K, D] decoded for `request`, `now_tick` being next to run; `bins` [1, n] are
        its tokens (for the next warm start and forced prefix), `latency_s` how long it took (0 where
        time stood still). The committed steps stay as they are queued."""
        with self._lock:
            self._in_flight = False
            self._record_latency(latency_s)
            if request.generation != self._generation:
                return MergeResult(False, 0, 0, len(self.queue.remaining(now_tick)), stale=True)
            actions = np.asarray(actions, dtype=np.float64)
            step_bins = None
            if bins is not None and bins.numel() == actions.size:
                step_bins = bins.detach().to("cpu", torch.long).reshape(actions.shape).numpy()
            # Only a chunk planned from the observation's own tick is cross-faded: one planned ahead (or
            # forced) already continues the committed steps, and fading it into the old plan delays the
            # correction (validation seeds, docs/experiments/2026-12-realtime.md, "A cross-fade at the
            # planned seam": -4 / -12 points at d = 2 / 4, a higher jerk at d = 2).
            blend = request.forced_steps == 0 and request.chunk_tick == request.obs_tick
            merged = self.queue.merge(actions, request.chunk_tick, now_tick, bins=step_bins, blend=blend)
            self.dropped_actions += merged.dropped
            if request.forced_steps:
                self.prefix_overrun_ticks += max(0, now_tick - request.obs_tick - request.forced_steps)
            if not merged.accepted:
                self.late_chunks += 1
                return merged
            self.chunks += 1
            self._last_obs_tick = request.obs_tick
            self._last_chunk_tick = request.chunk_tick
            self._previous_bins = None if bins is None else bins.detach().to("cpu", torch.long).reshape(1, -1)
            return merged

    def cancel(self) -> None:
        """The request failed (the policy raised): nothing arrives, a new one may go out. Steps it
        committed stay committed (they are queued and run as they are)."""
        with self._lock:
            self._in_flight = False

    def flush(self) -> None:
        """Forget the queue, its commitment and the previous chunk (a hold, a new task, a new
        episode); a request in flight now is discarded when it arrives."""
        with self._lock:
            self.queue.clear()
            self._generation += 1
            self._last_obs_tick = None
            self._last_chunk_tick = None
            self._previous_bins = None

    # ---- execution ----------------------------------------------------------------------------
    def pop(self, tick: int) -> np.ndarray | None:
        """The action [D] for `tick`, or None on underrun (the caller holds)."""
        return self.queue.pop(tick)

    def remaining(self, tick: int) -> np.ndarray:
        return self.queue.remaining(tick)

    def _record_latency(self, latency_s: float) -> None:
        self._latencies.append(latency_s)
        if self.chunks == 0 and self.late_chunks == 0 and self.latency_ema_s == 0:
            self.latency_ema_s = latency_s
        else:
            self.latency_ema_s = 0.8 * self.latency_ema_s + 0.2 * latency_s
