"""The simulator schedules chunks exactly as the robot does: `ceed eval`'s real-time clock and the
bridge's core run the same `ChunkScheduler`, and for the same scripted latencies they execute the
same actions, hold on the same ticks and hand the policy the same warm-start guesses and the same
forced prefixes (on by default in both for a policy that takes one)."""

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


class ScriptedPolicy:
    """Chunk i moves along x at 0.05 + 0.05 i + 0.005 step (never 0: a 0 is a hold) and takes
    LATENCIES[i] ticks; its "bins" are i + position, so warm-start guesses can be told apart. Given a
    forced prefix it carries those bins as its first ones (as the VLA does)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.calls = 0
        self.guesses: list[list[int] | None] = []
        self.forced: list[list[int] | None] = []

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, obs, init_guess=None, forced_bins=None):
        i = self.calls
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


def _eval_actions(ticks: int, prefix: bool):
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
        forced_prefix=prefix,
    )
    runner = EvalRunner(config, timer=clock, progress=False)
    assert isinstance(runner.scheduler(policy, HZ), ChunkScheduler)
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


def _bridge_actions(ticks: int, prefix: bool):
    core = BridgeCore(
        BridgeConfig(
            control_rate_hz=HZ,
            instruction="push the puck",
            max_delta=[2.0],
            hold_mode="last",
            initial_command=[0.0] * 4,  # a position output needs to know where the arm starts
            forced_prefix=prefix,
        )
    )
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
        chunk, _ = predict_chunk(policy, request.observation, {}, request.chunk, warm=True)
        lag = LATENCIES[policy.calls - 1]
        for _ in range(lag):
            if t < ticks:
                run_tick()
        core.deliver(
            request, chunk[0].double().numpy(), lag / HZ, float("nan"), policy.last_decode_output.bins
        )
    return executed, policy, core


@pytest.mark.parametrize("prefix", [False, True], ids=["blend", "forced_prefix"])
def test_eval_and_bridge_execute_the_same_actions_for_the_same_latencies(prefix):
    ticks = 70
    sim, sim_policy, result = _eval_actions(ticks, prefix)
    robot, robot_policy, core = _bridge_actions(ticks, prefix)
    sim_guesses, robot_guesses = sim_policy.guesses, robot_policy.guesses
    assert len(sim) == ticks  # push does not succeed from these actions: the whole horizon ran
    np.testing.assert_allclose(
        [np.nan if a is None else a for a in sim], [np.nan if a is None else a for a in robot], atol=1e-6
    )
    assert sim_guesses == robot_guesses[: len(sim_guesses)]
    assert sim[:4] == [None] * 4 and None not in sim[4:10]  # held while the first chunk computed
    late = core.status(ticks / HZ)["late_chunks"]
    assert result.late_chunks == late >= 1  # the 9-tick call outlived its chunk
    assert any(g is not None for g in sim_guesses)  # warm starts reached the policy
    assert result.held_steps == sum(a is None for a in robot)
    assert sim_policy.forced == robot_policy.forced[: len(sim_policy.forced)]
    forced = [f for f in sim_policy.forced if f is not None]
    assert result.forced_chunks == len(forced) == core.status(ticks / HZ)["forced_chunks"]
    if prefix:
        assert len(forced) >= 5  # the queue's next steps reached the policy as its first ones
        assert result.prefix_overrun_ticks >= 1  # the 9-tick call outlived its prefix
    else:
        assert not forced
