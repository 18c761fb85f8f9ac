"""Planning ahead in the bridge: the `plan_ahead` parameter (on by default, exclusive with the forced
prefix), the state the policy is given (`state_rollforward`, or the embodiment's forward model), the
committed steps no arriving chunk changes, and the counters."""

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from ceed_vla.robot_bridge import ros_params
from ceed_vla.robot_bridge.config import BridgeConfig, ConfigError
from ceed_vla.robot_bridge.core import BridgeCore, state_rollforward
from ceed_vla.robot_bridge.inference import InferenceWorker

SIM_YAML = Path(__file__).resolve().parents[1] / "launch" / "config" / "sim.yaml"
JOINTS = ["ee_x", "ee_y", "ee_z", "gripper"]

# ---- the parameter ---------------------------------------------------------------------------------


def test_plan_ahead_is_on_by_default_and_reaches_the_scheduler():
    config = BridgeConfig(initial_command=[0.0] * 4)
    assert config.plan_ahead is True and config.forced_prefix is False
    scheduler = BridgeCore(config).scheduler.config
    assert scheduler.plan_ahead and not scheduler.forced_prefix
    off = BridgeConfig(initial_command=[0.0] * 4, plan_ahead=False)
    assert not BridgeCore(off).scheduler.config.plan_ahead


def test_forced_prefix_alone_turns_the_default_plan_ahead_off():
    config = ros_params.from_dict(BridgeConfig, {"forced_prefix": True, "initial_command": [0.0] * 4})
    assert config.forced_prefix and config.plan_ahead is False
    scheduler = BridgeCore(config).scheduler.config
    assert scheduler.forced_prefix and not scheduler.plan_ahead


def test_plan_ahead_and_forced_prefix_together_are_refused_naming_both_and_the_fix():
    for make in (
        lambda: BridgeConfig(initial_command=[0.0] * 4, plan_ahead=True, forced_prefix=True),
        lambda: ros_params.from_dict(
            BridgeConfig, {"plan_ahead": True, "forced_prefix": True, "initial_command": [0.0] * 4}
        ),
    ):
        with pytest.raises(ConfigError) as err:
            make()
        message = str(err.value)
        assert "plan_ahead=true and forced_prefix=true" in message
        assert "set plan_ahead: false" in message and "choose one" in message


@pytest.mark.parametrize(
    "params, match",
    [
        ({"plan_ahed": False}, r"'plan_ahed' \(did you mean plan_ahead\?\)"),
        ({"planahead": True}, r"'planahead' \(did you mean plan_ahead\?\)"),
        ({"plan_ahead": 1}, "plan_ahead=1 is not a valid bool"),
        ({"plan_ahead": "false"}, "plan_ahead='false' is not a valid bool"),
    ],
)
def test_a_misspelt_or_mistyped_plan_ahead_is_refused(params, match):
    with pytest.raises(ConfigError, match=match):
        ros_params.from_dict(BridgeConfig, {**params, "initial_command": [0.0] * 4})


class _Node:
    """What `ros_params.read` asks of a node: its parameters as ROS holds them (None: not set)."""

    def __init__(self, params: dict):
        self.params = {**ros_params.defaults(BridgeConfig), **params}

    def list_parameters(self, prefixes, depth):
        return SimpleNamespace(names=list(self.params))

    def get_parameter(self, name):
        return SimpleNamespace(value=self.params[name])

    def get_name(self):
        return "policy_bridge"


def test_the_ros_parameter_is_declared_unset_and_resolved_by_the_config():
    assert ros_params.defaults(BridgeConfig)["plan_ahead"] is None  # declared without a value
    base = {"initial_command": [0.0] * 4}
    assert ros_params.read(_Node(base), BridgeConfig, set(base)).plan_ahead is True
    given = {**base, "forced_prefix": True}
    config = ros_params.read(_Node(given), BridgeConfig, set(given))
    assert config.forced_prefix and config.plan_ahead is False
    given = {**base, "plan_ahead": False}
    assert ros_params.read(_Node(given), BridgeConfig, set(given)).plan_ahead is False
    assert "plan_ahead=True" in ros_params.describe(BridgeConfig(**base))  # the effective value is logged


# ---- state_rollforward -----------------------------------------------------------------------------


def test_rollforward_puts_position_joints_at_their_last_committed_target_in_policy_units():
    state = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)  # [S]: four joints and an unnamed entry
    committed = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])  # [d, D] the controller's units
    scale, offset = np.array([2.0, 2.0, 2.0, 0.5]), np.array([0.1, 0.0, 0.0, 0.2])
    joints = [(0, 0), (1, 1), (3, 2), (2, 3)]  # state entry -> action dimension (reordered)
    out = state_rollforward(state, committed, joints, [True, True, False, True], scale, offset)
    assert out.dtype == np.float32 and out is not state
    expected = [(0.5 - 0.1) / 2.0, 0.6 / 2.0, (0.8 - 0.2) / 0.5, 4.0, 5.0]  # dim 2 is a velocity: as measured
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(state, [1.0, 2.0, 3.0, 4.0, 5.0])  # the measured state is untouched


def test_rollforward_leaves_the_state_as_measured_where_it_cannot_predict():
    state = np.array([0.3, -0.2, 0.1, 0.9], np.float32)
    ones, zeros = np.ones(4), np.zeros(4)
    committed = np.full((3, 4), 0.5)
    for out in (
        state_rollforward(state, np.zeros((0, 4)), [(i, i) for i in range(4)], [True] * 4, ones, zeros),
        state_rollforward(state, committed, [(i, i) for i in range(4)], [False] * 4, ones, zeros),  # deltas
        state_rollforward(state, committed, [], [True] * 4, ones, zeros),  # no state entry is a joint
    ):
        np.testing.assert_array_equal(out, state)
        assert out is not state


def test_rollforward_clips_targets_to_the_limits_the_safety_filter_applies():
    out = state_rollforward(
        np.zeros(2, np.float32),
        np.array([[3.0, -3.0]]),
        [(0, 0), (1, 1)],
        [True, True],
        np.ones(2),
        np.zeros(2),
        low=[-1.0, -0.5],
        high=[1.0, 0.5],
    )
    np.testing.assert_allclose(out, [1.0, -0.5])


# ---- the core --------------------------------------------------------------------------------------

PERIOD = 0.1


def _core(predict_state=None, **kw) -> BridgeCore:
    params = dict(
        control_rate_hz=1 / PERIOD,
        instruction="reach the goal",
        max_delta=[10.0],
        initial_command=[0.0] * 4,
    )
    return BridgeCore(BridgeConfig(**(params | kw)), predict_state=predict_state)


def _feed(core: BridgeCore, now: float, state=(0.0, 0.0, 0.0, 0.0)) -> None:
    core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=now, now=now)
    core.observe_state(np.asarray(state, np.float32), now=now)


def _first_chunk(core: BridgeCore, chunk: np.ndarray, latency_ticks: int = 3) -> None:
    """Serve the first request (no latency known yet: nothing committed) with `chunk` [K, D] taking
    `latency_ticks` ticks, so that later requests commit d = `latency_ticks` steps."""
    _feed(core, 0.0)
    request = core.inference_request(0.0)
    committed = request.chunk.committed_actions
    assert committed is None or len(committed) == 0
    assert core.deliver(request, chunk, latency_ticks * PERIOD, float("nan"))


def _tick_until_due(core: BridgeCore, t: float, state=(0.0, 0.0, 0.0, 0.0)):
    """Tick (feeding inputs) until the core hands out a request; returns (request, time, commands)."""
    commands = []
    for _ in range(50):
        _feed(core, t, state)
        request = core.inference_request(t)
        if request is not None:
            return request, t, commands
        commands.append(core.tick(t).command)
        t += PERIOD
    raise AssertionError("no request was due")


def test_a_committed_action_is_never_changed_by_an_arriving_chunk():
    core = _core(blend_steps=2)  # cross-fading on: a plan-ahead chunk must still not touch them
    first = np.linspace(0.0, 0.45, 10)[:, None].repeat(4, 1)  # [10, 4]: action k = 0.05 k
    _first_chunk(core, first)
    request, t, commands = _tick_until_due(core, 0.0)
    committed = request.chunk.committed_actions  # [d, D]
    assert committed.shape == (3, 4)
    np.testing.assert_allclose(committed, first[len(commands) : len(commands) + 3])
    assert request.chunk.start_tick == request.chunk.obs_tick + 3
    # one tick runs while the policy computes, then a chunk that disagrees with everything arrives
    _feed(core, t)
    np.testing.assert_allclose(core.tick(t).command, committed[0])
    second = np.full((8, 4), -0.7) + 0.01 * np.arange(8)[:, None]  # [8, 4]
    assert core.deliver(request, second, PERIOD, float("nan"))
    after = []
    for _ in range(4):
        t += PERIOD
        _feed(core, t)
        after.append(core.tick(t).command)
    np.testing.assert_allclose(after[:2], committed[1:])  # the committed steps ran as they were queued
    np.testing.assert_allclose(after[2:], second[:2])  # then the chunk from its step 0, not cross-faded
    status = core.status(t)
    assert status["planned_ahead_chunks"] == 1 and status["planned_ahead_steps"] == 3
    assert status["forced_chunks"] == 0


# trajectory mode on joints the state names: positions in degrees, the controller in radians + offset
DEGREES_TO_RADIANS = dict(
    output_mode="trajectory",
    joint_names=JOINTS,
    unit_conversion=["deg_to_rad"],
    unit_offset=[0.1],
    action_low=[-10.0] * 4,
    action_high=[10.0] * 4,
    max_delta=[100.0],
)


def test_the_policy_plans_from_the_state_the_committed_position_targets_lead_to():
    core = _core(**DEGREES_TO_RADIANS)
    first = np.linspace(0.0, 90.0, 10)[:, None].repeat(4, 1)  # [10, 4] degrees
    measured = (0.5, 0.4, 0.3, 0.2)  # radians + offset, as the controller reports them
    _first_chunk(core, first)
    request, _, commands = _tick_until_due(core, 0.0, measured)
    last = first[len(commands) + 2]  # the last committed step, degrees
    np.testing.assert_allclose(request.observation["observation.state"][0].numpy(), last, rtol=1e-5)
    # without plan-ahead the policy sees the measured state (in its units)
    core = _core(plan_ahead=False, **DEGREES_TO_RADIANS)
    _first_chunk(core, first)
    request, _, _ = _tick_until_due(core, 0.0, measured)
    assert request.chunk.committed_actions is None and request.chunk.start_tick is None
    expected = (np.asarray(measured) - 0.1) * 180 / np.pi
    np.testing.assert_allclose(request.observation["observation.state"][0].numpy(), expected, rtol=1e-5)


def test_delta_commands_leave_the_state_as_measured():
    core = _core(hold_mode="zero", joint_names=JOINTS)  # every dimension a delta (velocity)
    _first_chunk(core, np.full((10, 4), 0.3))
    request, _, _ = _tick_until_due(core, 0.0, (0.5, 0.4, 0.3, 0.2))
    assert len(request.chunk.committed_actions) == 3  # still planned ahead: the chunk starts after them
    np.testing.assert_allclose(request.observation["observation.state"][0].numpy(), [0.5, 0.4, 0.3, 0.2])


def test_an_embodiment_forward_model_replaces_the_rollforward():
    calls = []

    def predict_state(state, committed):
        calls.append((state.copy(), committed.copy()))
        return state + committed.sum(axis=0)

    core = _core(predict_state, unit_scale=[2.0], hold_mode="zero")
    first = np.full((10, 4), 0.2)  # the policy's units; the queue holds 0.4
    _first_chunk(core, first)
    request, _, _ = _tick_until_due(core, 0.0, (1.0, 1.0, 1.0, 1.0))
    ((state, committed),) = calls
    np.testing.assert_allclose(state, [1.0] * 4)
    np.testing.assert_allclose(committed, first[:3])  # handed over in the policy's units
    np.testing.assert_allclose(request.observation["observation.state"][0].numpy(), [1.6] * 4, rtol=1e-6)


def test_a_failing_forward_model_is_an_inference_failure_not_a_dead_worker():
    class Policy:
        def reset(self):
            pass

        def predict_action_chunk(self, obs):
            return np.full((1, 10, 4), 0.1)

    core = _core(lambda state, committed: state[:2], hold_mode="zero")  # the wrong shape
    _first_chunk(core, np.full((10, 4), 0.1))
    errors = []
    worker = InferenceWorker(Policy(), core, poll_s=0.01, on_error=errors.append, clock=lambda: 0.0)
    t = 0.0
    while not errors and t < 2.0:
        _feed(core, t)
        core.tick(t)
        worker.step()
        t += PERIOD
    assert errors and "forward model returned a state of shape (2,)" in str(errors[0])
    assert core.stats.inference_errors == 1 and not core.scheduler.in_flight  # a new request may go out
    assert core.tick(t).reason == "inference_error"  # held, as after a failing policy


# ---- the sim robot's forward model -----------------------------------------------------------------


def test_the_sim_robot_hands_a_bridge_driving_it_metaworlds_forward_model():
    from ceed_vla.robot_bridge.sim_robot import SimRobotConfig, SimRobotNode

    files = yaml.safe_load(SIM_YAML.read_text())
    bridge = ros_params.from_dict(BridgeConfig, files["policy_bridge"]["ros__parameters"])
    sim_params = files["sim_robot"]["ros__parameters"]
    calls = []
    lock = threading.Lock()
    now = np.array([0.1, 0.2, 0.3, 0.4, 9.0])  # the physics' raw state as the sim thread left it

    def fake_predict(state, actions, model):
        assert lock.locked()  # the sim thread is held still while the arm is rolled
        calls.append(actions), models.append(model), states.append(state)
        return state + 1

    env = SimpleNamespace(predict_state=fake_predict, raw_state=now)
    models, states = [], []

    def model(bridge, **sim):
        robot = SimpleNamespace(config=SimRobotConfig(**(sim_params | sim)), _env=env, _physics_lock=lock)
        return SimRobotNode.forward_model(robot, bridge)

    predict = model(bridge)
    assert predict is not None
    np.testing.assert_allclose(predict(np.zeros(4), np.ones((2, 4))), now[:4] + 1)
    assert calls[-1].shape == (2, 4)  # one sim step per bridge tick (both 20 Hz)
    assert models == ["arm"]  # as `ceed eval` plans ahead
    np.testing.assert_allclose(states[-1], now[:4])  # from the physics now, not the older measured state
    assert not lock.locked()
    predict = model(bridge, step_rate_hz=80.0)  # each command runs 4 sim steps
    predict(np.zeros(4), np.ones((2, 4)))
    assert calls[-1].shape == (8, 4)
    assert model(bridge, step_rate_hz=30.0) is None  # not a whole number of sim steps per tick
    params = files["policy_bridge"]["ros__parameters"]
    for other in (
        {"dry_run": True},  # its commands never reach the sim
        {"state_joint_names": ["ee_x", "ee_y", "ee_z"]},
        {"unit_scale": [2.0]},
        {"command_topic": "/elsewhere"},
    ):
        assert model(ros_params.from_dict(BridgeConfig, params | other)) is None, other
