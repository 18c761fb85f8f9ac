"""The chunk scheduler shared by the bridge and `ceed eval`: refill, late chunks, warm start, blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ceed_vla.decoding import guess_from_previous_chunk

from ceed_vla.scheduler import ChunkQueue, ChunkScheduler, SchedulerConfig

PERIOD = 0.05  # 20 Hz


def _scheduler(**kw) -> ChunkScheduler:
    return ChunkScheduler(SchedulerConfig(**{"action_dim": 1, "period_s": PERIOD, **kw}))


def _chunk(value: float, k: int = 8) -> np.ndarray:
    return np.full((k, 1), value)


def drive(scheduler: ChunkScheduler, latencies_ticks: list[int], ticks: int, k: int = 8):
    """A synchronous driver with scripted latencies, as `ceed eval`'s real-time clock runs: when a
    chunk is due it is computed at once, then `lag` ticks execute the old queue before it is merged.
    Returns (what each tick executed, None = hold), obs ticks, merge results."""
    executed, obs_ticks, merges = [], [], []
    latencies = iter(latencies_ticks)
    tick = 0
    while tick < ticks:
        if scheduler.due(tick):
            request = scheduler.request(tick)
            lag = next(latencies)
            obs_ticks.append(tick)
            value = float(len(obs_ticks))  # chunk i holds the value i
            for _ in range(lag):
                a = scheduler.pop(tick)
                executed.append(None if a is None else float(a[0]))
                tick += 1
            merges.append(scheduler.deliver(request, _chunk(value, k), tick, lag * PERIOD))
            continue
        a = scheduler.pop(tick)
        executed.append(None if a is None else float(a[0]))
        tick += 1
    return executed, obs_ticks, merges


def test_lockstep_without_latency_plans_every_chunk_when_the_queue_is_empty():
    executed, obs, merges = drive(_scheduler(), [0] * 10, ticks=24)
    assert obs == [0, 8, 16]
    assert executed == [1.0] * 8 + [2.0] * 8 + [3.0] * 8
    assert all(m.accepted and m.dropped == 0 for m in merges)


def test_replan_every_observes_on_its_interval_and_replaces_the_rest():
    executed, obs, _ = drive(_scheduler(replan_every=4), [0] * 10, ticks=12)
    assert obs == [0, 4, 8]
    assert executed == [1.0] * 4 + [2.0] * 4 + [3.0] * 4


def test_known_latency_gives_the_expected_holds_and_offsets():
    # 3 ticks of latency: the first chunk arrives at tick 3 with 3 actions dropped (3 held ticks);
    # the latency estimate (3 ticks) + margin 1 asks again when 4 actions are left, so the queue
    # never runs dry afterwards and each later chunk drops exactly 3 actions.
    s = _scheduler(refill_margin_ticks=1)
    executed, obs, merges = drive(s, [3] * 10, ticks=30)
    assert executed[:3] == [None, None, None]
    assert None not in executed[3:]
    assert obs[:4] == [0, 4, 8, 12]  # 8 - 3 dropped = 5 queued at tick 3; due when 4 are left
    assert [m.dropped for m in merges] == [3] * len(merges)
    assert s.late_chunks == 0 and s.dropped_actions == 3 * len(merges)


def test_a_chunk_slower_than_its_length_is_late_and_the_arm_holds():
    s = _scheduler()
    executed, obs, merges = drive(s, [9, 9, 2, 2], ticks=22)
    assert [m.accepted for m in merges] == [False, False, True, True]
    assert s.late_chunks == 2
    assert executed[:20] == [None] * 20  # two late chunks, then the third's 2 dropped actions
    assert executed[20:] == [3.0, 3.0]  # the fourth request went out at once: the estimate is 8 ticks
    assert obs == [0, 9, 18, 20]


def test_warm_start_guess_is_the_previous_tail_shifted_by_the_ticks_since_its_observation():
    s = _scheduler(action_dim=2)
    r0 = s.request(0)
    assert r0.init_guess is None and r0.shift is None  # nothing to start from
    bins = torch.arange(16).reshape(1, 16)  # K = 8 steps of D = 2
    s.deliver(r0, np.zeros((8, 2)), now_tick=0, latency_s=0.0, bins=bins)
    for t in range(3):
        s.pop(t)
    r1 = s.request(3)
    assert r1.shift == 3
    assert torch.equal(r1.init_guess, guess_from_previous_chunk(bins, 3, 2))
    assert r1.init_guess[0].tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 14, 15, 14, 15, 14, 15]
    s.deliver(r1, np.zeros((8, 2)), now_tick=3, latency_s=0.0, bins=bins + 100)
    r2 = s.request(3 + 9)  # more than a chunk later: nothing of the previous one is left
    assert r2.init_guess is None and s.warm_starts == 1


def test_constant_init_and_policies_without_bins_never_warm_start():
    s = _scheduler(init="constant")
    r = s.request(0)
    s.deliver(r, _chunk(1.0), 0, 0.0, bins=torch.zeros(1, 8, dtype=torch.long))
    assert s.request(2).init_guess is None
    plain = _scheduler()
    r = plain.request(0)
    plain.deliver(r, _chunk(1.0), 0, 0.0, bins=None)
    assert plain.request(2).init_guess is None


def test_flush_discards_the_chunk_in_flight_and_forgets_the_previous_one():
    s = _scheduler()
    r = s.request(0)
    s.deliver(r, _chunk(1.0), 0, 0.0, bins=torch.zeros(1, 8, dtype=torch.long))
    r = s.request(2)
    s.flush()
    result = s.deliver(r, _chunk(2.0), 3, 0.0, bins=torch.zeros(1, 8, dtype=torch.long))
    assert result.stale and not result.accepted and len(s.remaining(3)) == 0
    assert s.request(3).init_guess is None  # a new episode starts from the constant guess


def test_one_request_in_flight_at_a_time():
    s = _scheduler()
    s.request(0)
    assert not s.due(0)
    with pytest.raises(RuntimeError, match="in flight"):
        s.request(0)
    s.cancel()
    assert s.due(0)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"blend_steps": -1}, "blend_steps"),
        ({"replan_every": 0}, "replan_every"),
        ({"init": "prev"}, "init must be one of"),
        ({"period_s": 0.0}, "period_s"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _scheduler(**kw)


def test_queue_drops_elapsed_actions_and_blends_the_overlap():
    q = ChunkQueue(action_dim=1, blend_steps=2)
    q.merge(np.zeros((6, 1)), obs_tick=0, now_tick=0)
    assert q.pop(0)[0] == 0.0 and q.pop(1)[0] == 0.0
    # predicted from tick 1, arrives when tick 2 is next: its first action is dropped
    result = q.merge(np.full((6, 1), 3.0), obs_tick=1, now_tick=2)
    assert result.accepted and result.dropped == 1 and result.blended == 2
    got = [q.pop(t)[0] for t in range(2, 7)]
    np.testing.assert_allclose(got, [1.0, 2.0, 3.0, 3.0, 3.0])
    assert q.pop(7) is None  # underrun


def test_queue_rejects_a_chunk_that_is_entirely_in_the_past():
    q = ChunkQueue(action_dim=2, blend_steps=0)
    result = q.merge(np.ones((3, 2)), obs_tick=0, now_tick=5)
    assert not result.accepted and result.dropped == 3 and len(q) == 0
    with pytest.raises(ValueError, match=r"expected \[K, 2\]"):
        q.merge(np.ones((3, 4)), obs_tick=5, now_tick=5)
