"""The bridge's logic without DDS: config validation, safety filter, e-stop latch, watchdog, chunk
queue stitching, the control tick and the inference worker, driven by a fake clock."""

import math

import numpy as np
import pytest
import torch
from ceed_vla.robot_bridge.config import BridgeConfig, ConfigError, HoldMode, SafetyConfig
from ceed_vla.robot_bridge.core import BridgeCore
from ceed_vla.robot_bridge.inference import InferenceWorker
from ceed_vla.robot_bridge.policies import PolicySpecError, SinePolicy, load_policy
from ceed_vla.robot_bridge.safety import EStopLatch, SafetyFilter, StaleWatchdog

# ---- config ------------------------------------------------------------------------------------


def test_config_defaults_are_safe_and_fill_derived_fields():
    # positions with nothing saying where the arm is: the first command would be a guess
    with pytest.raises(ConfigError, match="set joint_names .* or initial_command"):
        BridgeConfig()
    cfg = BridgeConfig(initial_command=[0.0] * 4)
    assert cfg.dry_run  # a live run needs an explicit dry_run: false
    assert cfg.action_dim == 4
    assert cfg.stale_timeout_s == pytest.approx(3 / 20.0)  # three input periods, not one
    assert cfg.command_topic == "/forward_position_controller/commands"
    assert cfg.safety.max_delta == [0.5] * 4


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"control_rate_hz": 0.0}, "control_rate_hz=0.0"),
        ({"output_mode": "velocity"}, "'velocity'"),
        ({"action_low": [1.0, 0, 0, 0]}, "[1.0, 1.0]"),
        ({"max_delta": [0.1, 0.2]}, "max_delta has 2"),
        ({"output_mode": "trajectory", "joint_names": ["a"]}, "joint_names=['a']"),
        ({"output_mode": "twist", "action_low": [-1, -1], "action_high": [1, 1]}, "got 2"),
        ({"stale_timeout_s": -1.0}, "stale_timeout_s=-1.0"),
    ],
)
def test_config_rejects_bad_values_quoting_them(kwargs, quoted):
    with pytest.raises(ConfigError, match=None) as err:
        BridgeConfig(**kwargs)
    assert quoted in str(err.value)


def test_dry_run_publishes_to_a_separate_topic():
    cfg = BridgeConfig(dry_run=True, output_mode="twist", action_low=[-1] * 4, action_high=[1] * 4)
    assert cfg.published_command_topic == "/servo_node/delta_twist_cmds/dry_run"
    assert cfg.published_gripper_topic.endswith("/dry_run")


# ---- safety ------------------------------------------------------------------------------------


def _safety(**kw):
    base = dict(action_low=[-1.0, -1.0], action_high=[1.0, 1.0], max_delta=[0.25])
    base.update(kw)
    return SafetyFilter(SafetyConfig(**base))


def test_safety_clips_limits_and_clamps_the_step():
    f = _safety()
    first = f.apply(np.array([3.0, -0.5]))
    np.testing.assert_allclose(first.command, [1.0, -0.5])  # limits only: nothing before it
    second = f.apply(np.array([-1.0, -0.5]))
    np.testing.assert_allclose(second.command, [0.75, -0.5])  # at most 0.25 per step
    assert first.clamped and second.clamped and f.clamped_count == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_safety_never_passes_non_finite_values(bad):
    f = _safety()
    f.apply(np.array([0.1, 0.1]))
    result = f.apply(np.array([0.2, bad]))
    assert result.command is None and result.rejected_reason == "non_finite"
    np.testing.assert_allclose(f.last, [0.1, 0.1])  # the previous command stays the reference


def test_safety_plan_chains_the_clamp_and_stops_at_the_first_bad_action():
    f = _safety(initial_command=[0.0, 0.0])
    plan = f.plan(np.array([[1.0, 0.0], [1.0, 0.0], [np.nan, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(plan, [[0.25, 0.0], [0.5, 0.0]])
    np.testing.assert_allclose(f.last, [0.0, 0.0])  # planning does not commit


def test_hold_target_follows_hold_mode():
    last = _safety(hold_mode=HoldMode.LAST)
    assert last.hold_target() is None and last.hold() is None  # nothing published: nothing to hold
    last.apply(np.array([0.2, 0.1]))
    np.testing.assert_allclose(last.hold_target(), [0.2, 0.1])
    zero = _safety(hold_mode="zero")
    np.testing.assert_allclose(zero.hold_target(), [0.0, 0.0])  # a velocity interface starts at rest


def test_estop_latches_until_reset_with_the_input_clear():
    latch = EStopLatch()
    latch.update(True)
    latch.update(False)
    assert latch.latched  # clearing the input does not release it
    latch.update(True)
    assert not latch.reset() and latch.latched  # refused while asserted
    latch.update(False)
    assert latch.reset() and not latch.latched


def test_watchdog_reports_missing_and_old_inputs():
    dog = StaleWatchdog(["camera", "state"], timeout_s=0.1)
    assert dog.stale_inputs(0.0) == ["camera", "state"]
    dog.feed("camera", 1.0)
    dog.feed("state", 1.0)
    assert dog.stale_inputs(1.09) == []
    assert dog.stale_inputs(1.11) == ["camera", "state"]


# ---- core ----------------------------------------------------------------------------------------


def _core(**kw) -> BridgeCore:
    base = dict(
        control_rate_hz=10.0,
        instruction="reach the goal",
        blend_steps=0,
        max_delta=[10.0],
        initial_command=[0.0] * 4,
    )
    base.update(kw)
    return BridgeCore(BridgeConfig(**base))


def _feed(core: BridgeCore, now: float) -> None:
    core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=now, now=now)
    core.observe_state(np.zeros(4, np.float32), now=now)


def _serve(core: BridgeCore, now: float, chunk: np.ndarray) -> None:
    request = core.inference_request(now)
    assert request is not None
    assert request.observation["observation.image"].shape == (1, 3, 8, 8)
    assert request.observation["task"] == ["reach the goal"]
    core.deliver(request, chunk, latency_s=0.01, iterations=3.0)


def test_tick_streams_queued_actions_in_order():
    core = _core()
    _feed(core, 0.0)
    chunk = np.linspace(0, 0.3, 4)[:, None].repeat(4, 1)  # [4, 4]
    _serve(core, 0.0, chunk)
    results = [core.tick(0.0 + 0.1 * i) for i in range(1)]
    assert not results[0].holding and results[0].image_stamp == 0.0
    _feed(core, 0.1)
    second = core.tick(0.1)
    np.testing.assert_allclose(second.command, chunk[1])
    assert second.image_stamp is None  # only the first command of a chunk carries the camera stamp


def test_watchdog_holds_within_two_periods_of_the_last_input():
    core = _core(hold_mode="zero", stale_timeout_s=0.1)  # one period
    _feed(core, 0.0)
    _serve(core, 0.0, np.full((20, 4), 0.5))
    t, moving = 0.0, 0
    while True:  # inputs stop after t = 0
        result = core.tick(t)
        if result.holding:
            break
        moving += 1
        t += core.period
    assert result.reason == "stale_camera"
    assert t <= 2 * core.period
    np.testing.assert_allclose(result.command, 0.0)
    assert len(core.queue) == 0  # the stale plan is dropped


def test_estop_holds_until_reset_and_then_resumes():
    core = _core(hold_mode="zero")
    _feed(core, 0.0)
    _serve(core, 0.0, np.full((20, 4), 0.5))
    core.set_estop(True)
    core.set_estop(False)
    for i in range(3):
        _feed(core, 0.1 * i)
        result = core.tick(0.1 * i)
        assert result.holding and result.reason == "estop"
        assert core.inference_request(0.1 * i) is None
    assert core.reset_estop()
    _feed(core, 0.3)
    _serve(core, 0.3, np.full((20, 4), 0.5))
    assert not core.tick(0.3).holding


def test_non_finite_chunk_is_never_published():
    core = _core(hold_mode="last", initial_command=[0.0] * 4)
    _feed(core, 0.0)
    _serve(core, 0.0, np.array([[0.1] * 4, [np.nan] * 4, [0.3] * 4]))
    first = core.tick(0.0)
    second = core.tick(0.05)
    assert not first.holding
    assert second.holding and second.reason == "non_finite"
    np.testing.assert_allclose(second.command, first.command)  # holds the last good command


def test_invalid_input_and_missing_instruction_hold():
    core = _core(instruction="")
    _feed(core, 0.0)
    assert core.tick(0.0).reason == "no_instruction"
    core.set_instruction("open the drawer")
    core.invalid_input("camera", "wrong encoding")
    assert core.tick(0.01).reason == "invalid_camera"
    _feed(core, 0.02)
    assert core.tick(0.02).reason == "underrun"  # valid again; waiting for the first chunk


def test_trajectory_mode_plans_a_new_chunk_once():
    core = _core(output_mode="trajectory", joint_names=["a", "b", "c", "d"])
    _feed(core, 0.0)
    _serve(core, 0.0, np.full((5, 4), 0.2))
    first, second = core.tick(0.0), core.tick(0.05)
    assert first.plan.shape == (5, 4) and second.plan is None


def test_refill_starts_before_the_queue_runs_dry():
    core = _core()
    _feed(core, 0.0)
    _serve(core, 0.0, np.zeros((6, 4)))  # latency estimate 10 ms -> lead of 1 + 1 ticks
    asked_at = None
    for i in range(6):
        _feed(core, 0.1 * i)
        core.tick(0.1 * i)
        if core.inference_request(0.1 * i) is not None:
            asked_at = i
            break
    assert asked_at is not None and len(core.queue) >= 1


def test_worker_fills_the_queue_from_a_policy():
    torch.set_num_threads(1)
    core = _core()
    _feed(core, 0.0)
    policy = SinePolicy(action_dim=4, chunk_size=8, amplitude=0.3)
    worker = InferenceWorker(policy, core, poll_s=0.01, clock=lambda: 0.0)
    assert worker.step()
    assert len(core.queue) == 8
    assert math.isnan(core.stats.last_iterations)


def test_worker_survives_a_failing_policy():
    class Broken:
        def reset(self):
            pass

        def predict_action_chunk(self, obs):
            raise RuntimeError("boom")

    core = _core()
    _feed(core, 0.0)
    errors = []
    worker = InferenceWorker(Broken(), core, poll_s=0.01, on_error=errors.append, clock=lambda: 0.0)
    assert not worker.step()
    assert core.stats.inference_errors == 1 and isinstance(errors[0], RuntimeError)
    assert core.inference_request(0.0) is not None  # asks again


def test_load_policy_specs():
    assert isinstance(load_policy("sine:0.1", 3, 20.0), SinePolicy)
    with pytest.raises(PolicySpecError, match="not a number"):
        load_policy("sine:big", 3, 20.0)
    with pytest.raises(PolicySpecError, match="checkpoint:DIR"):
        load_policy("random", 3, 20.0)


# ---- message conversions -------------------------------------------------------------------------


def test_image_conversion_checks_encoding_size_and_data():
    from builtin_interfaces.msg import Time
    from ceed_vla.robot_bridge import conversions as conv

    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    msg = conv.array_to_image(rgb, Time())
    np.testing.assert_array_equal(conv.image_to_array(msg, 6, 4), rgb)
    msg.encoding = "bgr8"
    np.testing.assert_array_equal(conv.image_to_array(msg), rgb[..., ::-1])
    msg.encoding = "mono8"
    with pytest.raises(conv.MalformedInputError, match="'mono8' is not supported"):
        conv.image_to_array(msg)
    msg.encoding = "rgb8"
    with pytest.raises(conv.MalformedInputError, match="6x4 but the policy expects 8x8"):
        conv.image_to_array(msg, 8, 8)
    msg.data = msg.data[:-3]
    with pytest.raises(conv.MalformedInputError, match="bytes"):
        conv.image_to_array(msg)


def test_state_conversions_pick_names_and_reject_bad_values():
    from builtin_interfaces.msg import Time
    from ceed_vla.robot_bridge import conversions as conv
    from geometry_msgs.msg import PoseStamped

    msg = conv.vector_to_joint_state(np.array([1.0, 2.0, 3.0]), ["a", "b", "c"], Time())
    np.testing.assert_allclose(conv.joint_state_to_vector(msg, ["c", "a"]), [3.0, 1.0])
    with pytest.raises(conv.MalformedInputError, match=r"lacks joints \['z'\]"):
        conv.joint_state_to_vector(msg, ["a", "z"])
    pose = PoseStamped()
    pose.pose.position.x, pose.pose.orientation.w = 0.5, 1.0
    np.testing.assert_allclose(conv.pose_to_vector(pose), [0.5, 0, 0, 0, 0, 0, 1])
    pose.pose.orientation.w = 2.0
    with pytest.raises(conv.MalformedInputError, match="unit quaternion"):
        conv.pose_to_vector(pose)
    with pytest.raises(conv.MalformedInputError, match="empty"):
        conv.parse_instruction("  ")


def test_trajectory_message_times_points_from_the_stamp():
    from builtin_interfaces.msg import Time
    from ceed_vla.robot_bridge import conversions as conv

    msg = conv.trajectory(np.zeros((3, 2)), ["a", "b"], Time(sec=5), period_s=0.05)
    times = [conv.from_duration(p.time_from_start) for p in msg.points]
    np.testing.assert_allclose(times, [0.0, 0.05, 0.1])
    assert conv.from_time(msg.header.stamp) == 5.0


# ---- sim robot command handling ------------------------------------------------------------------


def test_sim_command_buffer_holds_samples_and_times_out():
    from ceed_vla.robot_bridge.sim_robot import CommandBuffer, SimRobotConfig

    buf = CommandBuffer(timeout_s=0.25)
    np.testing.assert_allclose(buf.current(0.0), 0.0)  # nothing received: zero action
    buf.set(np.array([0.1, 0.2, 0.3, 0.4]), now=1.0)
    np.testing.assert_allclose(buf.current(1.2), [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(buf.current(1.3), 0.0)  # older than the timeout
    buf.set_partial(np.array([-1.0]), start=3, now=2.0)
    np.testing.assert_allclose(buf.current(2.0), [0.1, 0.2, 0.3, -1.0])

    points = np.arange(12, dtype=float).reshape(3, 4)  # due at 10.0, 10.1, 10.2
    buf.set_trajectory(np.array([10.0, 10.1, 10.2]), points, now=10.0)
    np.testing.assert_allclose(buf.current(9.9), 0.0)  # not due yet
    np.testing.assert_allclose(buf.current(10.15), points[1])
    np.testing.assert_allclose(buf.current(10.3), points[2])
    np.testing.assert_allclose(buf.current(10.5), 0.0)  # past the end by more than the timeout

    assert (
        SimRobotConfig(command_mode="trajectory").command_topic
        == "/joint_trajectory_controller/joint_trajectory"
    )
    with pytest.raises(ConfigError, match="step_rate_hz=0"):
        SimRobotConfig(step_rate_hz=0)


def test_ticks_follow_the_clock_and_a_late_timer_skips_missed_actions():
    core = _core()  # 10 Hz
    _feed(core, 0.0)
    chunk = np.arange(8, dtype=float)[:, None].repeat(4, 1) / 10  # [8, 4]: action k = k / 10
    _serve(core, 0.0, chunk)
    assert core.tick(0.0).command[0] == 0.0
    _feed(core, 0.3)
    late = core.tick(0.3)  # the timer slept through ticks 1 and 2
    assert late.tick == 3 and late.command[0] == pytest.approx(0.3)
    assert core.stats.missed_ticks == 2
    _feed(core, 0.38)
    assert core.tick(0.38).tick == 4  # an early callback still takes the next tick
