"""Real-time chunking in the scheduler: d from a latency quantile, the queue's next d steps as the
forced prefix, committed actions that no arriving chunk changes, and the decode deadline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ceed_vla.decoding import DecodeConfig

from ceed_vla.scheduler import (
    UNKNOWN_BIN,
    ChunkQueue,
    ChunkScheduler,
    SchedulerConfig,
    decoded_bins,
    policy_accepts_deadline,
    policy_accepts_forced_prefix,
    predict_chunk,
)
from tests.fixtures.policy import random_batch

PERIOD = 0.05  # 20 Hz
K, D = 8, 2


class FakeClock:
    def __init__(self, now: float = 10.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _scheduler(clock=None, **kw) -> ChunkScheduler:
    config = SchedulerConfig(**{"action_dim": D, "period_s": PERIOD, "forced_prefix": True, **kw})
    return ChunkScheduler(config, clock=clock or FakeClock())


def _to_actions(bins: torch.Tensor) -> np.ndarray:
    """A token policy's detokeniser: bins [1, K*D] -> actions [K, D]."""
    return bins.reshape(K, D).double().numpy() / 100.0


class TokenPolicy:
    """Chunk i's free bins are 10 * (i + 1) + step: each chunk is told apart from the forced steps it
    carries. `honour_prefix=False` returns other first steps than the forced ones (a policy that
    ignores them): the committed actions must run regardless."""

    def __init__(self, honour_prefix: bool = True):
        self.honour_prefix = honour_prefix
        self.calls = 0
        self.forced: list[list[int] | None] = []

    def __call__(self, request) -> tuple[np.ndarray, torch.Tensor]:
        self.calls += 1
        bins = (10 * self.calls + torch.arange(K)).repeat_interleave(D)[None]  # [1, K*D]
        self.forced.append(None if request.forced_bins is None else request.forced_bins[0].tolist())
        if request.forced_bins is not None and self.honour_prefix:
            bins[:, : request.forced_bins.shape[1]] = request.forced_bins
        return _to_actions(bins), bins


def drive(scheduler, policy, lags: list[int], ticks: int):
    """The synchronous real-time driver of `ceed eval`: a due chunk is computed, `lag` ticks of the
    queue execute, then it is delivered. Returns (executed actions by tick, None = hold; per request:
    (obs tick, d, the actions committed for ticks obs..obs+d-1))."""
    executed: dict[int, np.ndarray | None] = {}
    requests = []
    lags = iter(lags)
    tick = 0

    def run():
        nonlocal tick
        executed[tick] = scheduler.pop(tick)
        tick += 1

    while tick < ticks:
        if not scheduler.due(tick):
            run()
            continue
        request = scheduler.request(tick)
        committed = scheduler.remaining(tick)[: request.forced_steps].copy()
        requests.append((tick, request.forced_steps, committed))
        actions, bins = policy(request)
        lag = next(lags)
        for _ in range(lag):
            run()
        scheduler.deliver(request, actions, tick, lag * PERIOD, bins)
    while len(scheduler.remaining(tick)):  # run out what is queued, the committed steps included
        run()
    return executed, requests


def _deliver(s: ChunkScheduler, tick: int, latency_ticks: float, value: int = 1) -> torch.Tensor:
    """Request at `tick` and deliver at once (latency recorded as given): bins value*10 + step."""
    request = s.request(tick)
    bins = (10 * value + torch.arange(K)).repeat_interleave(D)[None]
    if request.forced_bins is not None:
        bins[:, : request.forced_bins.shape[1]] = request.forced_bins
    s.deliver(request, _to_actions(bins), tick, latency_ticks * PERIOD, bins)
    return bins


# ---- d from the latency estimate -----------------------------------------------------------------


def test_d_is_a_high_quantile_of_recent_latencies_plus_the_margin_not_the_mean():
    # ticks; the mean is 1.24 ticks (1 tick fires during it), the 0.9 quantile 3.4 (3 ticks fire)
    latencies = [1.0] * 9 + [3.4]
    for quantile, margin, expected in [(0.9, 0, 3), (0.9, 1, 4), (0.5, 0, 1), (0.5, 2, 3)]:
        s = _scheduler(latency_quantile=quantile, prefix_margin_ticks=margin)
        assert s.prefix_ticks() == 0  # nothing measured yet
        for lat in latencies:
            _deliver(s, 0, lat)
        assert s.latency_quantile_s() == pytest.approx((3.4 if quantile == 0.9 else 1.0) * PERIOD)
        assert s.prefix_ticks() == expected, (quantile, margin)
        request = s.request(0)  # the queue holds the last chunk's 8 steps
        assert request.forced_steps == expected


def test_d_counts_the_ticks_that_fire_during_the_call_not_the_ticks_it_touches():
    """A call of 2.4 ticks lets 2 ticks run before it arrives (the simulator lets floor(W / period)
    pass; the bridge requests as a tick is taken): d = 2, so the chunk starts right after them rather
    than one step further open loop. Whole numbers of ticks give themselves."""
    for latency, expected in [(0.6, 0), (1.0, 1), (2.0, 2), (2.4, 2), (2.99, 2), (3.0, 3)]:
        s = _scheduler(latency_quantile=0.9)
        _deliver(s, 0, latency)
        assert s.prefix_ticks() == expected, latency
        assert s.lead_ticks() == math.ceil(latency - 1e-9) + s.config.refill_margin_ticks  # refill: up


def test_only_the_last_window_of_latencies_counts():
    s = _scheduler(latency_window=3)
    for lat in [6, 6, 6, 1, 1, 1]:
        _deliver(s, 0, lat)
    assert s.prefix_ticks() == 1


def test_the_prefix_is_the_queues_next_d_steps_and_they_become_committed():
    s = _scheduler()
    first = _deliver(s, 0, 2.0)  # d is 2 ticks from now on
    for t in range(3):
        s.pop(t)
    request = s.request(3)
    assert request.forced_steps == 2 and request.shift == 3
    assert request.forced_bins.tolist() == [first[0, 3 * D : 5 * D].tolist()]  # ticks 3 and 4
    assert torch.equal(request.forced_bins, request.init_guess[:, : 2 * D])  # the warm start's first d steps
    assert s.queue.committed_until == 5
    assert s.forced_chunks == 1 and s.forced_steps == 2


def test_d_is_capped_by_the_queue_and_leaves_a_step_to_decode():
    s = _scheduler()
    _deliver(s, 0, 6.0)
    for t in range(5):
        s.pop(t)
    request = s.request(5)  # 3 steps queued: d wants 6
    assert request.forced_steps == 3
    s.cancel()
    s2 = _scheduler()
    _deliver(s2, 0, 12.0)  # longer than the chunk
    assert s2.request(0).forced_steps == K - 1


def test_steps_without_bins_are_never_forced():
    plain = _scheduler()  # a policy without tokens
    request = plain.request(0)
    plain.deliver(request, np.zeros((K, D)), 0, 3 * PERIOD, bins=None)
    assert plain.request(0).forced_bins is None
    off = _scheduler(forced_prefix=False)  # switched off
    _deliver(off, 0, 3.0)
    request = off.request(0)
    assert request.forced_bins is None and request.forced_steps == 0 and off.queue.committed_until is None


def test_cross_faded_steps_have_no_bins_and_cut_the_prefix_short():
    q = ChunkQueue(action_dim=1, blend_steps=2)
    bins = np.arange(6)[:, None]
    q.merge(bins / 10.0, obs_tick=0, now_tick=0, bins=bins)
    q.merge(np.ones((6, 1)), obs_tick=0, now_tick=0, bins=bins + 50)  # blended over 2 ticks
    assert q.remaining_bins(0)[:, 0].tolist() == [UNKNOWN_BIN, UNKNOWN_BIN, 52, 53, 54, 55]
    s = _scheduler(blend_steps=2)
    _deliver(s, 0, 0.0, value=1)
    for t in range(2):
        s.pop(t)
    _deliver(s, 2, 3.0, value=2)  # d = 0 then (no latency yet): cross-faded as before
    assert s.request(2).forced_bins is None  # the queue's next steps are blends


# ---- committed actions -----------------------------------------------------------------------------


LAGS = [0, 3, 2, 5, 1, 4, 3, 9, 2, 3, 6, 2, 1, 3, 2, 4, 3, 2, 5, 3]


@pytest.mark.parametrize("honour", [True, False])
def test_an_arriving_chunk_never_changes_a_committed_action(honour):
    s = _scheduler(refill_margin_ticks=1, blend_steps=2)
    executed, requests = drive(s, TokenPolicy(honour_prefix=honour), LAGS * 4, ticks=90)
    forced = [(t, d, c) for t, d, c in requests if d]
    assert len(forced) >= 8  # the prefix was in play for most requests
    for tick, d, committed in forced:
        got = np.stack([executed[tick + j] for j in range(d)])  # each committed tick ran...
        np.testing.assert_array_equal(got, committed)  # ...exactly the action committed for it
    assert s.late_chunks >= 1  # the 9-tick call outlived its chunk; its commitment still held


def test_the_forced_part_is_exactly_what_executes_and_the_chunk_continues_it():
    policy = TokenPolicy()
    s = _scheduler(refill_margin_ticks=1)
    executed, requests = drive(s, policy, [2] * 20, ticks=60)
    # every call takes 2 ticks: after the first (held) one, d = 2, each chunk's forced steps are the 2
    # that run while it is computed, and execution goes on from its step 2 without a hold
    assert [d for _, d, _ in requests] == [0] + [2] * (len(requests) - 1)
    assert [t for t, a in executed.items() if a is None] == [0, 1]
    assert s.prefix_overrun_ticks == 0 and s.dropped_actions == 2 * len(requests)
    for i, ((tick, d, committed), bins) in enumerate(zip(requests, policy.forced, strict=True)):
        if i == 0:
            continue
        padded = torch.tensor(bins + [0] * (K - d) * D)[None]
        np.testing.assert_array_equal(_to_actions(padded)[:d], committed)  # forced = what was queued
        ran = np.stack([executed[tick + j] for j in range(d)])
        np.testing.assert_array_equal(ran, committed)  # the forced part is what ran...
        # ...then the chunk's own steps, until the next chunk takes over after its own forced steps
        end = requests[i + 1][0] + 2 if i + 1 < len(requests) else tick + K
        own = [t for t in range(tick + d, end) if t in executed]
        assert own, i
        for t in own:
            np.testing.assert_array_equal(executed[t], np.full(D, (10 * (i + 1) + t - tick) / 100.0))


def test_a_forced_chunk_is_not_cross_faded_and_a_late_one_counts_its_overrun():
    s = _scheduler(blend_steps=3, refill_margin_ticks=1)
    _deliver(s, 0, 2.0, value=1)
    request = s.request(0)
    assert request.forced_steps == 2
    bins = (20 + torch.arange(K)).repeat_interleave(D)[None]
    bins[:, : 2 * D] = request.forced_bins
    merged = s.deliver(request, _to_actions(bins), 1, PERIOD, bins)  # 1 tick later: 1 committed left
    assert merged.accepted and merged.kept == 1 and merged.blended == 0
    queued = s.remaining(1)
    np.testing.assert_array_equal(queued, _to_actions(bins)[1:])  # the chunk itself, no blend
    request = s.request(1)
    assert request.forced_steps == 2 and s.queue.committed_until == 3
    s.deliver(request, _to_actions(bins), 5, 4 * PERIOD, bins)  # arrives 2 ticks past its prefix
    assert s.prefix_overrun_ticks == 2


def test_flush_forgets_the_commitment():
    s = _scheduler()
    _deliver(s, 0, 2.0)
    s.request(0)
    assert s.queue.committed_until == 2
    s.flush()
    assert s.queue.committed_until is None and len(s.remaining(0)) == 0


def test_with_a_prefix_the_refill_uses_the_quantile():
    s = _scheduler(refill_margin_ticks=1)
    for lat in [1.0] * 9 + [3.4]:
        _deliver(s, 0, lat)
    assert s.lead_ticks() == 4 + 1
    ema = _scheduler(forced_prefix=False, refill_margin_ticks=1)
    for lat in [1.0] * 9 + [3.4]:
        _deliver(ema, 0, lat)
    assert ema.lead_ticks() == 2 + 1  # unchanged without the prefix: the average


# ---- deadline ----------------------------------------------------------------------------------------


def test_the_deadline_is_when_the_queue_runs_dry_less_the_margin_on_the_schedulers_clock():
    clock = FakeClock(10.0)
    s = _scheduler(clock=clock, decode_deadline=True, deadline_margin_s=0.01, forced_prefix=False)
    first = s.request(0)
    assert first.deadline is None  # an empty queue: the arm holds whatever the decoder does
    s.deliver(first, np.zeros((K, D)), 0, 0.0)
    for t in range(3):
        s.pop(t)
    clock.now = 12.5
    request = s.request(3)  # 5 ticks queued
    assert request.deadline == pytest.approx(12.5 + 5 * PERIOD - 0.01)
    assert request.clock is clock
    s.cancel()
    assert s.request(3, now=20.0).deadline == pytest.approx(20.0 + 5 * PERIOD - 0.01)
    assert _scheduler(clock=clock).request(0).deadline is None  # off by default


# ---- the policy side -------------------------------------------------------------------------------


class KwargsPolicy:
    def predict_action_chunk(self, obs, init_guess=None, forced_bins=None, deadline=None, clock=None):
        self.got = {
            "init_guess": init_guess,
            "forced_bins": forced_bins,
            "deadline": deadline,
            "clock": clock,
        }
        return torch.zeros(1, K, D)


class PlainPolicy:
    def predict_action_chunk(self, obs):
        return torch.zeros(1, K, D)


def test_predict_chunk_hands_the_policy_the_prefix_and_the_deadline():
    assert policy_accepts_forced_prefix(KwargsPolicy()) and policy_accepts_deadline(KwargsPolicy())
    assert not policy_accepts_forced_prefix(PlainPolicy()) and not policy_accepts_deadline(PlainPolicy())
    clock = FakeClock(1.0)
    s = _scheduler(clock=clock, decode_deadline=True)
    _deliver(s, 0, 2.0)
    request = s.request(0)
    policy = KwargsPolicy()
    _, warm = predict_chunk(policy, {}, {}, request, warm=True)
    assert warm and torch.equal(policy.got["forced_bins"], request.forced_bins)
    assert policy.got["deadline"] == request.deadline and policy.got["clock"] is clock
    _, warm = predict_chunk(PlainPolicy(), {}, {}, _scheduler(forced_prefix=False).request(0), warm=False)
    assert not warm


def test_the_vla_decodes_after_the_committed_steps_exactly_as_ar_given_them(make_policy):
    policy = make_policy(seed=5, chunk_size=6)
    assert policy_accepts_forced_prefix(policy) and policy_accepts_deadline(policy)
    k, d_dim = 6, policy.config.action_dim
    batch = random_batch(batch=1, chunk=k)
    s = ChunkScheduler(SchedulerConfig(action_dim=d_dim, period_s=PERIOD, forced_prefix=True))
    decoding = {"decoding": DecodeConfig(mode="jacobi", n_bins=policy.n_bins)}
    request = s.request(0)
    chunk, _ = predict_chunk(policy, batch, decoding, request, warm=True)
    s.deliver(request, chunk[0].double().numpy(), 0, 2 * PERIOD, decoded_bins(policy))
    s.pop(0)
    request = s.request(1)
    assert request.forced_steps == 2
    committed = s.remaining(1)[:2]
    chunk, warm = predict_chunk(policy, random_batch(batch=1, chunk=k, seed=1), decoding, request, warm=True)
    assert warm and policy.last_decode_stats.forced == 2 * d_dim
    # the chunk's first d steps are the committed actions, exactly
    np.testing.assert_array_equal(chunk[0, :2].double().numpy(), committed)
    ar = policy.predict_action_chunk(
        random_batch(batch=1, chunk=k, seed=1), forced_bins=request.forced_bins
    )  # AR given the same steps
    assert torch.equal(chunk, ar)
    with pytest.raises(Exception, match="whole steps"):
        policy.predict_action_chunk(batch, forced_bins=request.forced_bins[:, :3])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"latency_quantile": 1.5}, "latency_quantile"),
        ({"latency_window": 0}, "latency_window"),
        ({"prefix_margin_ticks": -1}, "prefix_margin_ticks"),
        ({"deadline_margin_s": -0.1}, "deadline_margin_s"),
    ],
)
def test_bad_prefix_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        SchedulerConfig(action_dim=D, period_s=PERIOD, **kw)


def test_a_falling_latency_estimate_forces_every_step_already_committed():
    s, policy = _scheduler(latency_window=1), TokenPolicy()
    request = s.request(0)
    actions, bins = policy(request)
    s.deliver(request, actions, now_tick=0, latency_s=5 * PERIOD, bins=bins)  # d = 5 from now on
    request = s.request(0)
    assert request.forced_steps == 5  # ticks 0-4 committed
    s.pop(0)
    actions, bins = policy(request)
    s.deliver(request, actions, now_tick=1, latency_s=PERIOD, bins=bins)  # early; the estimate falls to 1
    s.pop(1)
    request = s.request(2)  # d = 1 would leave the committed ticks 3 and 4 outside the prefix
    assert request.forced_steps == 3
