"""Planning ahead in the scheduler and the evaluation: the chunk is planned for the tick it starts at,
after the queue's committed steps, whose effect on the state the embodiment's model predicts."""

from __future__ import annotations

import numpy as np
import pytest

from ceed_vla.scheduler import ChunkScheduler, SchedulerConfig

PERIOD = 0.05
D = 2


def _scheduler(**kw) -> ChunkScheduler:
    config = SchedulerConfig(**{"action_dim": D, "period_s": PERIOD, "plan_ahead": True, **kw})
    return ChunkScheduler(config)


def _chunk(value: float, k: int = 8) -> np.ndarray:
    """[K, D] whose step i holds value + i / 100."""
    return value + np.repeat(np.arange(k)[:, None] / 100.0, D, axis=1)


def test_plan_ahead_commits_the_next_d_steps_and_starts_the_chunk_after_them():
    s = _scheduler()
    first = s.request(0)
    assert first.committed_actions.shape == (0, D) and first.chunk_tick == 0  # no latency known yet
    s.deliver(first, _chunk(1.0), now_tick=0, latency_s=2 * PERIOD)  # d = 2 from now on
    queued = s.remaining(0).copy()
    request = s.request(0)
    assert request.start_tick == 2 and request.chunk_tick == 2
    np.testing.assert_array_equal(request.committed_actions, queued[:2])
    s.pop(0), s.pop(1)  # the two committed ticks run while the policy computes
    merged = s.deliver(request, _chunk(5.0), now_tick=2, latency_s=2 * PERIOD)
    # on time: nothing dropped, no cross-fade, the chunk's step 0 is the action of tick 2
    assert merged.accepted and merged.dropped == 0 and merged.blended == 0
    np.testing.assert_allclose(s.remaining(2), _chunk(5.0))
    assert s.planned_ahead_chunks == 1 and s.planned_ahead_steps == 2


def test_a_chunk_arriving_early_never_changes_the_committed_steps():
    s = _scheduler()
    s.deliver(s.request(0), _chunk(1.0), now_tick=0, latency_s=3 * PERIOD)
    committed = s.remaining(0)[:3].copy()
    request = s.request(0)
    assert request.chunk_tick == 3
    s.pop(0)
    s.deliver(request, _chunk(7.0), now_tick=1, latency_s=PERIOD)  # one tick: two committed still queued
    np.testing.assert_allclose(s.remaining(1)[:2], committed[1:])
    np.testing.assert_allclose(s.remaining(1)[2:], _chunk(7.0))


def test_a_late_chunk_drops_only_the_ticks_it_missed():
    s = _scheduler()
    s.deliver(s.request(0), _chunk(1.0), now_tick=0, latency_s=PERIOD)
    request = s.request(0)  # d = 1
    for t in range(3):
        s.pop(t)
    merged = s.deliver(request, _chunk(4.0), now_tick=3, latency_s=3 * PERIOD)
    assert merged.dropped == 2  # planned for tick 1, arrived at 3
    np.testing.assert_allclose(s.remaining(3), _chunk(4.0)[2:])


def test_the_warm_start_shift_counts_from_chunk_start_to_chunk_start():
    s = _scheduler()
    s.deliver(s.request(0), _chunk(1.0), now_tick=0, latency_s=2 * PERIOD)
    for t in range(4):
        s.pop(t)
    request = s.request(4)  # observed at 4, starts at 6: six ticks after the last chunk's start (0)
    assert request.chunk_tick == 6 and request.shift == 6


def test_a_falling_latency_estimate_plans_after_the_steps_already_committed():
    s = _scheduler(latency_window=1)
    s.deliver(s.request(0), _chunk(1.0), now_tick=0, latency_s=5 * PERIOD)  # d = 5
    first = s.request(0)
    assert first.chunk_tick == 5  # ticks 0-4 committed
    s.pop(0)
    s.deliver(first, _chunk(2.0), now_tick=1, latency_s=PERIOD)  # early; the estimate falls to 1 tick
    s.pop(1)
    queued = s.remaining(2).copy()
    request = s.request(2)  # d = 1 would start at 3, inside the committed ticks 2-4
    assert request.chunk_tick == 5 and request.shift == 0
    np.testing.assert_array_equal(request.committed_actions, queued[:3])
    for t in range(2, 4):
        s.pop(t)
    s.deliver(request, _chunk(3.0), now_tick=4, latency_s=2 * PERIOD)
    np.testing.assert_allclose(s.remaining(4)[0], queued[2])  # the committed tick 4 kept
    np.testing.assert_allclose(s.remaining(4)[1:], _chunk(3.0))


def test_plan_ahead_and_the_forced_prefix_are_exclusive():
    with pytest.raises(ValueError, match="choose one"):
        SchedulerConfig(action_dim=D, period_s=PERIOD, plan_ahead=True, forced_prefix=True)


def test_eval_config_refuses_plan_ahead_without_a_moving_clock():
    from ceed_vla.sim.runner import EvalConfig

    with pytest.raises(ValueError, match="plan_ahead needs the realtime or delay clock"):
        EvalConfig(tasks=("reach",), plan_ahead=True)
    with pytest.raises(ValueError, match="choose one"):
        EvalConfig(tasks=("reach",), clock="delay", delay_ticks=2, plan_ahead=True, forced_prefix=True)
    assert EvalConfig(tasks=("reach",), clock="delay", delay_ticks=2, plan_ahead=True).plan_ahead


def test_the_request_says_which_steps_will_run_before_the_next_chunk():
    """max(replan_every, d) + d - (chunk start - observation): planned ahead the chunk starts d after
    its observation, so max(r, d) of it runs; with today's scheduling it starts at the observation."""
    s = _scheduler(replan_every=2, exact_executed=True)
    first = s.request(0)
    assert first.exact_steps == 2  # no latency known: d = 0, the next observation 2 ticks on
    s.deliver(first, _chunk(1.0), now_tick=0, latency_s=4 * PERIOD)  # d = 4 from now on
    request = s.request(0)
    assert request.chunk_tick == 4 and request.exact_steps == 4  # a call every 4 ticks, 4 steps each
    s.cancel()
    today = _scheduler(replan_every=2, exact_executed=True, plan_ahead=False)
    today.deliver(today.request(0), _chunk(1.0), now_tick=0, latency_s=PERIOD)  # d = 1
    assert today.request(0).exact_steps == 3  # 1 stale, then 2 until the next chunk lands
    assert _scheduler(replan_every=2).request(0).exact_steps is None  # not asked: the plain early exit
    with pytest.raises(ValueError, match="needs replan_every"):
        SchedulerConfig(action_dim=D, period_s=PERIOD, exact_executed=True)


def test_predict_chunk_hands_the_exact_steps_to_a_policy_that_takes_them():
    from ceed_vla.scheduler import ChunkRequest, policy_accepts_exact_steps, predict_chunk

    seen = {}

    class Policy:
        def predict_action_chunk(self, obs, init_guess=None, exact_steps=None):
            seen.update(exact_steps=exact_steps)
            return np.zeros((1, 8, D))

    request = ChunkRequest(obs_tick=0, generation=0, init_guess=None, shift=None, exact_steps=3)
    assert policy_accepts_exact_steps(Policy()) and not policy_accepts_exact_steps(object())
    predict_chunk(Policy(), {}, {}, request, warm=True)
    assert seen == {"exact_steps": 3}
