"""The simulator schedules chunks exactly as the robot does: `ceed eval`'s real-time clock and the
bridge's core run the same `ChunkScheduler`, and for the same scripted latencies they execute the
same actions, hold on the same ticks, hand the policy the same warm-start guesses and the same
forced prefixes, and plan the same chunks ahead: at their defaults (both plan ahead), with today's
scheduling (eval `plan_ahead=False`, bridge `plan_ahead: false`), with the forced prefix, and planned
ahead replanning every 2 ticks with the executed steps asked exact (the same `exact_steps` per call)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ceed_vla.robot_bridge.config import BridgeConfig
from ceed_vla.robot_bridge.core import BridgeCore

from ceed_vla.scheduler import ChunkScheduler, predict_chunk
from tests.test_sim_eval import FakeClock

HZ = 80.0  # MetaWorld's control rate; the bridge runs at the same rate here
K = 8
LATENCIES = [4, 3, 9, 2, 5, 1, 6, 3, 2, 7, 4, 3, 2, 5, 1, 6, 2, 3, 4, 2]  # ticks per call; 9 is late
# the defaults; today's scheduling; the forced prefix; planned ahead every 2 ticks, executed steps exact
MODES = ("plan_ahead", "blend", "forced_prefix", "exact_executed")
PLANNED = ("plan_ahead", "exact_executed")
# What the scheduling without plan-ahead executed before planning ahead existed (eval and bridge alike):
# the held ticks, the stale actions dropped, the sum of the executed x, the first bin of each call's
# warm-start guess and each call's forced steps. Planning ahead must leave these as they were.
TODAY = {
    "blend": {
        "held": [0, 1, 2, 3, 12, 13, 14, 15, 16, 17, 31, 34, 43, 44, 46, 47, 48, 68],
        "dropped": 63,
        "sum": 23.1883,
        "guess0": [None, 16, 112, None, 308, 420, 512, 624, 712]
        + [812, 928, 1016, 1112, 1212, 1320, 1412, 1524],
        "forced": [0] * 17,
    },
    "forced_prefix": {
        "held": [0, 1, 2, 3, 12, 13, 14, 15, 16, 17, 32, 41, 43, 44, 45],
        "dropped": 69,
        "sum": 26.215,
        "guess0": [None, 16, 28, None, 308, 328, 424, 528, 712, 720]
        + [928, 1016, 1028, 1120, 1228, 1324, 1428, 1608, 1620],
        "forced": [0, 4, 4, 0, 6, 3, 7, 2, 5, 6, 1, 4, 5, 6, 3, 7, 2, 6, 5],
    },
}


class ScriptedPolicy:
    """Chunk i moves along x at 0.05 + 0.05 i + 0.005 step (never 0: a 0 is a hold) and takes
    LATENCIES[i] ticks; its "bins" are i + position, so warm-start guesses can be told apart. Given a
    forced prefix it carries those bins as its first ones (as the VLA does)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.calls = 0
        self.guesses: list[list[int] | None] = []
        self.forced: list[list[int] | None] = []
        self.exact: list[int | None] = []
        self.requests: list = []  # the scheduler's ChunkRequest behind each call

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, obs, init_guess=None, forced_bins=None, exact_steps=None):
        i = self.calls
        self.exact.append(exact_steps)
        self.calls += 1
        self.guesses.append(None if init_guess is None else init_guess[0].tolist())
        self.forced.append(None if forced_bins is None else forced_bins[0].tolist())
        self.clock.now += LATENCIES[i] / HZ
        chunk = torch.zeros(1, K, 4)
        chunk[0, :, 0] = 0.05 + 0.05 * i + 0.005 * torch.arange(K)
        chunk[0, :, 3] = 0.5
        bins = (torch.arange(K * 4) + 100 * i)[None]
        if forced_bins is not None:
            bins[:, : forced_bins.shape[1]] = forced_bins
        self.last_decode_output = SimpleNamespace(bins=bins)
        return chunk


def _eval_actions(ticks: int, mode: str):
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.tasks import get_task

    clock = FakeClock()
    policy = ScriptedPolicy(clock)
    config = EvalConfig(
        tasks=("push",),
        episodes_per_task=1,
        image_size=16,
        max_episode_steps=ticks,
        clock="realtime",
        forced_prefix=mode == "forced_prefix",
        **({"plan_ahead": False} if mode == "blend" else {}),  # else its default
        **({"exact_executed": True, "execute_steps": 2} if mode == "exact_executed" else {}),
    )
    assert config.plan_ahead == (mode in PLANNED)
    runner = EvalRunner(config, timer=clock, progress=False)
    assert isinstance(runner.scheduler(policy, HZ), ChunkScheduler)
    make_scheduler = runner.scheduler

    def spied_scheduler(policy, control_hz):  # records every request the episode makes
        scheduler = make_scheduler(policy, control_hz)
        request = scheduler.request

        def spy(tick, now=None):
            policy.requests.append(request(tick, now))
            return policy.requests[-1]

        scheduler.request = spy
        return scheduler

    runner.scheduler = spied_scheduler
    executed: list[float | None] = []
    with MetaWorldEnv(EnvConfig("push", image_size=16, max_episode_steps=ticks)) as env:
        step = env.step

        def spy(action, render=True):
            x = float(action[0])
            executed.append(None if x == 0.0 else x)  # the eval's hold: zero translation
            return step(action, render=render)

        env.step = spy
        result = runner.run_episode(policy, env, get_task("push"), seed=0)
    return executed, policy, result


def _bridge_actions(ticks: int, mode: str):
    params = {"forced_prefix": True} if mode == "forced_prefix" else {}
    params |= {"plan_ahead": False} if mode == "blend" else {}  # else its default
    if mode == "exact_executed":
        params |= {"exact_executed": True, "replan_every_ticks": 2, "decoding_mode": "early_exit"}
        params |= {"decoding_sigma": 2}
    config = BridgeConfig(
        control_rate_hz=HZ,
        instruction="push the puck",
        max_delta=[2.0],
        hold_mode="last",
        initial_command=[0.0] * 4,  # a position output needs to know where the arm starts
        **params,
    )
    assert config.plan_ahead == (mode in PLANNED)
    core = BridgeCore(config)
    assert isinstance(core.scheduler, ChunkScheduler)
    clock = FakeClock()
    policy = ScriptedPolicy(clock)
    executed: list[float | None] = []
    t = 0

    def run_tick():
        nonlocal t
        now = t / HZ
        core.observe_image(np.zeros((16, 16, 3), np.uint8), stamp=now, now=now)
        core.observe_state(np.zeros(4, np.float32), now=now)
        result = core.tick(now)
        executed.append(None if result.holding else float(result.command[0]))
        t += 1

    while t < ticks:
        now = t / HZ
        core.observe_image(np.zeros((16, 16, 3), np.uint8), stamp=now, now=now)
        core.observe_state(np.zeros(4, np.float32), now=now)
        request = core.inference_request(now)
        if request is None:
            run_tick()
            continue
        # the inference worker computes while the control timer keeps ticking
        policy.requests.append(request.chunk)
        chunk, _ = predict_chunk(policy, request.observation, {}, request.chunk, warm=True)
        lag = LATENCIES[policy.calls - 1]
        for _ in range(lag):
            if t < ticks:
                run_tick()
        core.deliver(
            request, chunk[0].double().numpy(), lag / HZ, float("nan"), policy.last_decode_output.bins
        )
    return executed, policy, core


def _plans(policy) -> list[tuple[int, int, list]]:
    """Per call: (observation tick, the tick of the chunk's step 0, the committed steps it follows)."""
    plans = []
    for r in policy.requests:
        committed = [] if r.committed_actions is None else np.round(r.committed_actions, 6).tolist()
        plans.append((r.obs_tick, r.chunk_tick, committed))
    return plans


@pytest.mark.parametrize("mode", MODES)
def test_eval_and_bridge_execute_the_same_actions_for_the_same_latencies(mode):
    ticks = 70
    sim, sim_policy, result = _eval_actions(ticks, mode)
    robot, robot_policy, core = _bridge_actions(ticks, mode)
    status = core.status(ticks / HZ)
    sim_guesses, robot_guesses = sim_policy.guesses, robot_policy.guesses
    assert len(sim) == ticks  # push does not succeed from these actions: the whole horizon ran
    np.testing.assert_allclose(
        [np.nan if a is None else a for a in sim], [np.nan if a is None else a for a in robot], atol=1e-6
    )
    assert sim_guesses == robot_guesses[: len(sim_guesses)]
    assert sim[:4] == [None] * 4 and None not in sim[4:10]  # held while the first chunk computed
    assert result.late_chunks == status["late_chunks"]
    assert any(g is not None for g in sim_guesses)  # warm starts reached the policy
    assert result.held_steps == sum(a is None for a in robot)
    assert sim_policy.forced == robot_policy.forced[: len(sim_policy.forced)]
    forced = [f for f in sim_policy.forced if f is not None]
    assert result.forced_chunks == len(forced) == status["forced_chunks"]
    # the same chunks planned for the same ticks after the same committed steps
    sim_plans, robot_plans = _plans(sim_policy), _plans(robot_policy)
    assert sim_plans == robot_plans[: len(sim_plans)] and len(sim_plans) == len(sim_policy.guesses)
    assert result.planned_ahead_steps == status["planned_ahead_steps"]
    assert sim_policy.exact == robot_policy.exact[: len(sim_policy.exact)]
    if mode == "exact_executed":  # max(2, d) steps of each chunk run: the latency script sets d
        asked = [e for e in sim_policy.exact if e is not None]
        assert len(asked) == len(sim_policy.exact) and min(asked) == 2 and max(asked) >= 4
    else:
        assert set(sim_policy.exact) == {None}
    if mode in PLANNED:
        ahead = [(obs, start, c) for obs, start, c in sim_plans if start > obs]
        assert len(ahead) >= 5 and status["planned_ahead_chunks"] == len(ahead)  # chunks started later
        assert all(start - obs == len(c) for obs, start, c in ahead)  # right after the committed steps
        assert result.planned_ahead_steps == sum(len(c) for _, _, c in ahead) > 0
        assert not forced
        return
    assert all(start == obs and not c for obs, start, c in sim_plans)  # planned for the observation tick
    assert result.planned_ahead_steps == 0 == status["planned_ahead_chunks"]
    today = TODAY[mode]
    assert [i for i, a in enumerate(robot) if a is None] == today["held"]
    assert status["dropped_actions"] == today["dropped"]
    assert round(sum(a for a in robot if a is not None), 4) == today["sum"]
    assert [None if g is None else g[0] for g in robot_guesses] == today["guess0"]
    assert [0 if f is None else len(f) // 4 for f in robot_policy.forced] == today["forced"]
    assert result.late_chunks >= 1  # the 9-tick call outlived its chunk
    if mode == "forced_prefix":
        assert len(forced) >= 5  # the queue's next steps reached the policy as its first ones
        assert result.prefix_overrun_ticks >= 1  # the 9-tick call outlived its prefix
    else:
        assert not forced
