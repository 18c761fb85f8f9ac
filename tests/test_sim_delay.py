"""`ceed eval`'s delay clock and the forced prefix in the simulator: a delay model repeats a real-time
result whatever the machine's timing; the scheduler picks d from the latencies and hands the queue's
next d steps to the policy; what was committed runs as it was queued; the report carries held ticks,
late chunks and jerk."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.test_sim_eval import FakeClock, _run_slow

pytestmark = pytest.mark.sim

HZ = 80.0
K = 8


class TokenChunkPolicy:
    """Chunk i's bins are 10 * (i + 1) + step in every dimension, its actions bins / 1000 (never 0, so
    a hold is told apart); given a forced prefix it carries those bins and their actions first, as the
    VLA does. Each call "takes" a random 1-60 ms on the fake clock (`seed` picks them)."""

    def __init__(self, clock: FakeClock, seed: int):
        self.clock = clock
        self.rng = random.Random(seed)
        self.calls = 0
        self.forced: list[list[int] | None] = []
        self.call_ticks: list[int] = []  # the tick each call planned from
        self.tick = lambda: -1  # the next tick to run (the test's spy counts them)

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, obs, init_guess=None, forced_bins=None):
        self.calls += 1
        self.call_ticks.append(self.tick())
        bins = (10 * self.calls + torch.arange(K)).repeat_interleave(4)[None]  # [1, K * 4]
        self.forced.append(None if forced_bins is None else forced_bins[0].tolist())
        if forced_bins is not None:
            bins[:, : forced_bins.shape[1]] = forced_bins
        self.last_decode_output = SimpleNamespace(bins=bins)
        self.clock.now += self.rng.uniform(0.001, 0.06)
        return (bins.reshape(K, 4).float() / 1000.0)[None]  # [1, K, 4]


def _run(seed: int, ticks: int = 60, policy_class=None, predicted: list | None = None, **config):
    """One push episode; returns (commands executed per tick, None for a hold; the policy; result).
    `predicted` collects the true state of each `predict_state` call (planning ahead)."""
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.tasks import get_task

    clock = FakeClock()
    policy = (policy_class or TokenChunkPolicy)(clock, seed)
    cfg = EvalConfig(tasks=("push",), episodes_per_task=1, image_size=16, max_episode_steps=ticks, **config)
    runner = EvalRunner(cfg, timer=clock, progress=False)
    executed: list[np.ndarray | None] = []
    with MetaWorldEnv(EnvConfig("push", image_size=16, max_episode_steps=ticks)) as env:
        step, predict = env.step, env.predict_state

        def spy(action, render=True):
            executed.append(None if float(action[0]) == 0.0 else np.asarray(action, dtype=np.float64))
            return step(action, render=render)

        def spy_predict(state, actions, **kw):
            if predicted is not None:
                predicted.append(np.asarray(state).copy())
            return predict(state, actions, **kw)

        env.step, env.predict_state = spy, spy_predict
        policy.tick = lambda: len(executed)
        result = runner.run_episode(policy, env, get_task("push"), seed=0)
    return executed, policy, result


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("delay", [{"delay_ticks": 3}, {"delay_ms": 31.6}])
def test_the_delay_clock_repeats_whatever_the_measured_latencies(delay):
    first, p1, r1 = _run(seed=1, clock="delay", **delay)
    second, p2, r2 = _run(seed=2, clock="delay", **delay)  # other measured latencies
    assert _same(first, second) and p1.forced == p2.forced
    assert (r1.held_steps, r1.late_chunks, r1.policy_calls) == (
        r2.held_steps,
        r2.late_chunks,
        r2.policy_calls,
    )
    assert r1.call_ms != r2.call_ms  # the measured times differed and are still reported
    ticks = delay.get("delay_ticks", 2)  # 31.6 ms at 80 Hz: floor(2.53) = 2 ticks pass per call
    assert (
        first[:ticks] == [None] * ticks and first[ticks] is not None
    )  # held only while the first chunk computed
    # under the measured clock the same two runs schedule differently
    rt1, _, _ = _run(seed=1, clock="realtime")
    rt2, _, _ = _run(seed=2, clock="realtime")
    assert not _same(rt1, rt2)


def test_the_delay_clock_gives_the_same_report_twice(make_policy):
    from ceed_vla.decoding import DecodeConfig
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    torch.set_num_threads(1)
    policy = make_policy()
    config = EvalConfig(
        tasks=("reach",),
        episodes_per_task=2,
        image_size=24,
        max_episode_steps=16,
        clock="delay",
        delay_ticks=2,
        forced_prefix=True,
    )
    decoding = {"decoding": DecodeConfig(mode="jacobi", n_bins=policy.n_bins)}
    reports = [EvalRunner(config, decoding, progress=False).run(policy) for _ in range(2)]

    def outcomes(report):
        return [
            (
                e["seed"],
                e["success"],
                e["steps"],
                e["policy_calls"],
                e["held_steps"],
                e["forced_chunks"],
                e["jerk"],
            )
            for e in report["episodes"]
        ]

    assert outcomes(reports[0]) == outcomes(reports[1])
    overall = reports[0]["overall"]
    assert overall["forced_chunks"] > 0 and overall["forced_steps_per_chunk"] == 2.0  # d = 2 ticks
    assert reports[0]["settings"]["scheduler"]["forced_prefix"] is True


def test_the_scheduler_forces_the_queues_next_d_steps_and_they_run_as_queued():
    executed, policy, result = _run(seed=3, ticks=80, clock="delay", delay_ticks=2, forced_prefix=True)
    forced = [(t, f) for t, f in zip(policy.call_ticks, policy.forced, strict=True) if f is not None]
    assert len(forced) >= 5 and result.forced_chunks == len(forced)
    for tick, bins in forced:
        assert len(bins) == 2 * 4  # d = ceil(2 ticks of latency) + margin 0
        committed = np.asarray(bins, dtype=np.float64).reshape(2, 4) / 1000.0
        ran = [executed[t] for t in range(tick, tick + 2) if t < len(executed)]
        # the committed steps ran exactly as queued, whatever the chunk decoded for them arrived with
        np.testing.assert_allclose(np.stack(ran), committed[: len(ran)], rtol=0, atol=1e-7)
    assert result.prefix_overrun_ticks == 0 and result.late_chunks == 0


def test_without_the_prefix_or_planning_ahead_the_scheduling_is_todays():
    executed, policy, result = _run(
        seed=3, ticks=60, clock="delay", delay_ticks=2, forced_prefix=False, plan_ahead=False
    )
    assert all(f is None for f in policy.forced) and result.forced_chunks == 0
    assert result.planned_ahead_steps == 0 and result.dropped_actions > 0
    blended = [a for a in executed if a is not None and not np.allclose(a * 1000, np.round(a * 1000))]
    assert blended  # the old plan is cross-faded into the new chunk (off-grid actions)


def test_the_paused_clock_is_unchanged_and_refuses_the_prefix(make_policy):
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    runner = EvalRunner(EvalConfig(tasks=("reach",)), progress=False)
    config = runner.scheduler(make_policy(), HZ).config
    assert not config.forced_prefix and not config.decode_deadline
    assert (config.blend_steps, config.refill_margin_ticks) == (0, 0)
    with pytest.raises(ValueError, match="forced_prefix needs the realtime or delay clock"):
        EvalConfig(tasks=("reach",), forced_prefix=True)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"clock": "delay"}, "exactly one of delay_ticks or delay_ms"),
        ({"clock": "delay", "delay_ticks": 1, "delay_ms": 10.0}, "exactly one"),
        ({"clock": "delay", "delay_ticks": -1}, "delay_ticks must be an int >= 0"),
        ({"clock": "delay", "delay_ms": float("nan")}, "delay_ms must be finite"),
        ({"clock": "realtime", "delay_ticks": 2}, "delay_ticks is for the delay clock"),
        ({"clock": "delay", "delay_ticks": 2, "decode_deadline": True}, "decode_deadline needs the realtime"),
        ({"clock": "realtime", "latency_quantile": 1.5}, "latency_quantile"),
        ({"clock": "realtime", "prefix_margin": -1}, "prefix_margin"),
    ],
)
def test_bad_delay_and_prefix_settings_are_refused(kw, match):
    from ceed_vla.sim.evaluate import EvalConfig

    with pytest.raises(ValueError, match=match):
        EvalConfig(tasks=("reach",), **kw)


def test_a_policy_without_tokens_gets_no_prefix_and_the_deadline_only_where_taken(make_policy):
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.experts import ScriptedExpert

    # off unless asked, as the bridge's default
    assert (
        not EvalRunner(EvalConfig(tasks=("reach",), clock="realtime"), progress=False)
        .scheduler(make_policy(), HZ)
        .config.forced_prefix
    )
    config = EvalConfig(
        tasks=("reach",), clock="realtime", forced_prefix=True, decode_deadline=True, deadline_margin_ms=5.0
    )
    runner = EvalRunner(config, progress=False)
    expert = runner.scheduler(ScriptedExpert(), HZ).config
    assert not expert.forced_prefix and not expert.decode_deadline
    vla = runner.scheduler(make_policy(), HZ)
    assert vla.config.forced_prefix and vla.config.decode_deadline
    assert vla.config.deadline_margin_s == pytest.approx(0.005) and vla.clock is runner.timer


def test_jerk_is_the_mean_change_of_the_command_between_ticks():
    from ceed_vla.sim.evaluate import EvalConfig, build_report

    paused, _ = _run_slow("paused")
    realtime, _ = _run_slow("realtime")
    # the slow policy commands +x every tick. The arm is at rest before the first tick in both clocks:
    # paused, the first tick changes |1 - 0| in x (a quarter of the mean over 4 dimensions), then
    # nothing; in real time the first 4 ticks hold (the rest command again), then the same one change.
    # The start from rest counts alike, so the clocks' jerk differs only by what happens after it.
    assert paused.action_change_sum == pytest.approx(0.25) and paused.action_changes == 24
    assert realtime.action_change_sum == pytest.approx(0.25) and realtime.action_changes == 24
    config = EvalConfig(tasks=("reach",), episodes_per_task=1, image_size=16, clock="realtime")
    overall = build_report(config, [realtime], {})["overall"]
    assert overall["jerk"] == pytest.approx(0.25 / 24)
    assert overall["held_steps"] == 4 and overall["late_chunks"] == 0


def test_cli_takes_the_delay_model_and_the_prefix_options(tmp_path):
    from ceed_vla import cli

    out = tmp_path / "eval"
    argv = ["eval", "--policy", "expert", "--tasks", "reach", "--episodes", "1", "--image-size", "16"]
    assert cli.main([*argv, "--delay-ticks", "2", "--no-forced-prefix", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["clock"] == "delay" and report["settings"]["delay_ticks"] == 2
    assert report["settings"]["forced_prefix"] is False
    assert "jerk" in report["overall"] and "held_steps" in report["overall"]
    assert "(delay 2 ticks clock)" in (out / "report.md").read_text()
    assert cli.main([*argv, "--clock", "paused", "--forced-prefix", "--output", str(out)]) == 2


def test_success_against_delay_table_and_plot(tmp_path):
    from ceed_vla.sim.report import delay_table_markdown, plot_success_vs_delay

    def row(rate):
        return {
            "success_rate": rate,
            "success_ci95": [max(0.0, rate - 0.2), min(1.0, rate + 0.2)],
            "jerk": 0.01,
        }

    curves = {
        "student, today": {0: row(0.9), 2: row(0.5), 4: row(0.2)},
        "student, prefix": {0: row(0.9), 2: row(0.85), 4: row(0.8)},
        "teacher AR": {0: row(0.9), 2: row(0.6)},
    }
    table = delay_table_markdown(curves, note_zero="paused")
    assert "| mode | d = 0 (paused) | d = 2 | d = 4 |" in table
    assert "| teacher AR | 0.90 (jerk 0.010) | 0.60 (jerk 0.010) | - |" in table
    plot_success_vs_delay(curves, tmp_path / "delay.png", dashed=("student, today",))
    assert (tmp_path / "delay.png").read_bytes()[:4] == b"\x89PNG"


def test_decodes_ended_by_their_deadline_are_counted_in_the_report():
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner, build_report
    from ceed_vla.sim.runner import EpisodeResult

    config = EvalConfig(tasks=("reach",), episodes_per_task=1, image_size=16, clock="realtime")
    runner = EvalRunner(config, progress=False)
    result = EpisodeResult("reach", 0, False, 0, 0, [], 0, 0, 0, 0.0, 0.0, 0.0)
    policy = SimpleNamespace(last_decode_stats=None)
    for stopped_by in ("sigma", "deadline", "fixed_point", "deadline"):
        previous = policy.last_decode_stats
        policy.last_decode_stats = SimpleNamespace(
            wall_ms=5.0, iterations=torch.tensor([1.0]), tokens=32, stopped_by=stopped_by
        )
        runner._record_call(policy, result, 0.005, previous, warm_started=True)
    runner._record_call(policy, result, 0.005, policy.last_decode_stats, warm_started=True)  # no new decode
    assert result.deadline_stops == 2 and result.policy_calls == 5
    assert build_report(config, [result], {})["overall"]["deadline_stops"] == 2


class StateSpyPolicy(TokenChunkPolicy):
    """Records the state each call is given."""

    def __init__(self, clock: FakeClock, seed: int):
        super().__init__(clock, seed)
        self.states: list[np.ndarray] = []

    def predict_action_chunk(self, obs, init_guess=None, forced_bins=None):
        self.states.append(obs["observation.state"][0].numpy().copy())
        return super().predict_action_chunk(obs, init_guess=init_guess)


@pytest.mark.parametrize("forward_model", ["arm", "kinematic"])
def test_plan_ahead_gives_the_policy_the_predicted_state_and_runs_each_chunk_from_its_step_0(forward_model):
    observed: list[np.ndarray] = []  # the true state at each policy call that planned ahead
    executed, policy, result = _run(
        0,
        40,
        StateSpyPolicy,
        observed,
        clock="delay",
        delay_ticks=2,
        plan_ahead=True,
        execute_steps=4,
        forward_model=forward_model,
    )
    # only the first chunk (no latency known yet, so planned for its observation) lost steps
    assert result.planned_ahead_steps == 2 * (policy.calls - 1) and result.dropped_actions == 2
    # every call after the first planned 2 committed steps ahead: the policy saw the predicted state
    assert len(observed) == policy.calls - 1
    for given, true in zip(policy.states[1:], observed, strict=True):
        assert not np.allclose(given[:3], true[:3])  # moved by the committed steps
        if forward_model == "kinematic":
            np.testing.assert_allclose(given[3], true[3])  # the gripper as observed
    # chunk i (i >= 2) runs from its step 0 (bins 10 * i + 0, action (10 * i) / 1000) with no cross-fade
    starts = [float(a[0]) for a in executed if a is not None and round(a[0] * 1000) % 10 == 0]
    assert [round(v * 1000) for v in starts][:3] == [20, 30, 40]  # chunk 1 lost steps 0-1


def test_predict_state_moves_the_hand_by_the_scaled_translations_inside_the_bounds():
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv

    with MetaWorldEnv(EnvConfig("reach", image_size=16, max_episode_steps=10)) as env:
        state = env.reset(0).state
        np.testing.assert_array_equal(env.predict_state(state, np.zeros((0, 4))), state)
        moved = env.predict_state(state, np.array([[0.5, 0.0, -0.5, 1.0], [0.5, 2.0, 0.0, -1.0]]))
        np.testing.assert_allclose(moved[:3], state[:3] + np.array([0.01, 0.01, -0.005]), atol=1e-6)
        assert moved[3] == state[3]
        far = env.predict_state(state, np.ones((1000, 4)))
        assert np.all(far[:3] <= env._env.mocap_high + 1e-6)
        with pytest.raises(ValueError, match="expected"):
            env.predict_state(state[:3], np.zeros((1, 4)))


def test_the_arm_forward_model_predicts_the_state_the_steps_reach_and_leaves_the_simulator_alone():
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv

    # the hand trails its position target: summing the translations misses where it ends up, rolling
    # the arm's own dynamics does not (free space, so no contact is left out)
    moves = np.array(
        [[0.8, 0.0, 0.6, 1.0], [0.8, -0.3, 0.6, 1.0], [0.0, -0.5, 0.2, -1.0], [0.0, -0.5, 0.0, -1.0]]
    )
    with (
        MetaWorldEnv(EnvConfig("reach", image_size=16, max_episode_steps=20)) as env,
        MetaWorldEnv(EnvConfig("reach", image_size=16, max_episode_steps=20)) as twin,
    ):
        env.reset(3), twin.reset(3)
        env.step(moves[0], render=False), twin.step(moves[0], render=False)  # the hand already moving
        state = env.raw_state[:4].astype(np.float32)
        arm = env.predict_state(state, moves, model="arm")
        kinematic = env.predict_state(state, moves, model="kinematic")
        np.testing.assert_array_equal(env.predict_state(state, moves, model="arm"), arm)  # repeatable
        for move in moves:
            env.step(move, render=False), twin.step(move, render=False)
        # the prediction changed nothing: the same steps give the same states with and without it
        np.testing.assert_array_equal(env.raw_state, twin.raw_state)
        reached = env.raw_state[:4].astype(np.float32)
        assert abs(reached[3] - state[3]) > 0.05  # the gripper moved, which the kinematic model keeps
        assert np.abs(arm[:3] - reached[:3]).max() < 1e-4
        assert abs(arm[3] - reached[3]) < 1e-3
        assert np.abs(kinematic[:3] - reached[:3]).max() > 10 * np.abs(arm[:3] - reached[:3]).max()
        with pytest.raises(ValueError, match="current state"):
            env.predict_state(state, moves, model="arm")  # no longer the current state
        with pytest.raises(ValueError, match="forward model 'dynamic' is unknown"):
            env.predict_state(reached, moves, model="dynamic")


def test_eval_config_refuses_an_unknown_forward_model():
    from ceed_vla.sim.evaluate import EvalConfig

    with pytest.raises(ValueError, match="forward_model 'kinematics' is unknown"):
        EvalConfig(tasks=("push",), clock="delay", delay_ticks=2, forward_model="kinematics")


def test_a_call_between_ticks_commits_the_ticks_that_run_during_it_not_one_more():
    """31.6 ms at 80 Hz is 2.53 ticks: 2 run while the call computes, so 2 are committed and each
    chunk runs from its step 0 right after them (3 would leave it a tick further open loop)."""
    executed, policy, result = _run(
        0, 40, clock="delay", delay_ms=31.6, plan_ahead=True, execute_steps=4, forward_model="kinematic"
    )
    assert result.planned_ahead_steps == 2 * (policy.calls - 1) and result.dropped_actions == 2
    assert result.late_chunks == 0
    starts = [round(float(a[0]) * 1000) for a in executed if a is not None and round(a[0] * 1000) % 10 == 0]
    assert starts[:3] == [20, 30, 40]  # chunks 2, 3, 4 from their step 0; chunk 1 lost steps 0-1


def test_the_delay_clock_plans_ahead_by_default():
    executed, policy, result = _run(seed=3, ticks=60, clock="delay", delay_ticks=2)
    assert all(f is None for f in policy.forced) and result.forced_chunks == 0
    assert result.planned_ahead_steps > 0
    # no cross-fade: every executed action is one the policy decoded (on the 1/1000 grid)
    assert all(np.allclose(a * 1000, np.round(a * 1000)) for a in executed if a is not None)
