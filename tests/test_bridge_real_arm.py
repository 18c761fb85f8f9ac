"""From checkpoint to a real arm: nothing live by accident, no first-command jump, holds and plans
that start where the arm is, units, a stale default that follows the inputs' rate, strict types.
Logic and parameter files, without DDS (a fake clock drives `BridgeCore`)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import rclpy
from ceed_vla.robot_bridge import conversions as conv
from ceed_vla.robot_bridge import launcher, ros_params
from ceed_vla.robot_bridge.config import BridgeConfig, ConfigError
from ceed_vla.robot_bridge.core import BridgeCore
from ceed_vla.robot_bridge.launcher import LaunchError
from rclpy.context import Context
from sensor_msgs.msg import Image, JointState

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
RATE = 30.0
PERIOD = 1.0 / RATE


def _arm(**kw) -> BridgeConfig:
    """An SO-101-shaped trajectory bridge: 6 joints, limits in degrees, 3 degrees per tick."""
    base = dict(
        instruction="put the cube in the box",
        control_rate_hz=RATE,
        output_mode="trajectory",
        joint_names=JOINTS,
        state_joint_names=JOINTS,
        action_low=[-120.0] * 6,
        action_high=[120.0] * 6,
        max_delta=[3.0],
        blend_steps=0,
        dry_run=False,
    )
    base.update(kw)
    return BridgeConfig(**base)


def _observe(core: BridgeCore, now: float, positions, image_age: float = 0.0) -> None:
    core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=now - image_age, now=now)
    positions = np.asarray(positions, dtype=np.float64)
    core.observe_state(positions.astype(np.float32), now=now, positions=positions)


def _serve(core: BridgeCore, now: float, chunk: np.ndarray) -> None:
    request = core.inference_request(now)
    assert request is not None, core.status(now)["state"]
    core.deliver(request, chunk, latency_s=0.001, iterations=1.0)


# ---- 1. nothing live by accident ------------------------------------------------------------------


def _write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


PARAMS = (
    "  ros__parameters:\n    policy: 'sine:0.05'\n    output_mode: twist\n    dry_run: true\n"
    "    command_topic: /servo/cmd\n    autostart: false\n"
)


@pytest.mark.parametrize(
    "key, fqn",
    [
        ("/robot/policy_bridge", "/robot/policy_bridge"),
        ("robot/arm/policy_bridge", "/robot/arm/policy_bridge"),
        ("/**/policy_bridge", "/policy_bridge"),
        ("policy_bridge", "/policy_bridge"),
    ],
)
def test_a_parameter_file_binds_to_the_node_it_names_namespace_included(tmp_path, key, fqn):
    path = _write(tmp_path, f"{key}:\n{PARAMS}")
    ctx = Context()
    rclpy.init(context=ctx, args=["x", "--ros-args", "--params-file", str(path)], domain_id=199)
    try:
        (node,) = launcher.create_nodes(path, context=ctx)
        try:
            assert node.get_fully_qualified_name() == fqn
            # the file's values, not the code's defaults
            assert node.get_parameter("command_topic").value == "/servo/cmd"
            assert node.get_parameter("output_mode").value == "twist"
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_wildcard_and_foreign_keys(tmp_path):
    only_wild = _write(tmp_path, f"/**:\n{PARAMS}")
    with pytest.raises(LaunchError, match="names no node this launcher starts.*add --node"):
        launcher.node_specs(only_wild)
    (spec,) = launcher.node_specs(only_wild, ["policy_bridge"])  # a wildcard applies to the node asked for
    assert spec.fully_qualified_name == "/policy_bridge"
    with pytest.raises(LaunchError, match="leaves the namespace open"):
        launcher.node_specs(_write(tmp_path, f"/*/policy_bridge:\n{PARAMS}"))
    with pytest.raises(LaunchError, match="not one of"):
        launcher.node_specs(_write(tmp_path, f"/robot/camera_driver:\n{PARAMS}"))


def test_the_node_refuses_a_file_whose_keys_name_another_node(tmp_path):
    path = _write(tmp_path, f"/robot/policy_bridge:\n{PARAMS}")
    problem = ros_params.binding_problem([str(path)], "/policy_bridge")
    assert problem is not None and "__ns:=/robot" in problem
    assert ros_params.binding_problem([str(path)], "/robot/policy_bridge") is None
    assert ros_params.binding_problem([], "/policy_bridge") is None


def test_ceed_policy_bridge_on_a_namespaced_file_exits_without_publishing(tmp_path):
    from ceed_vla.robot_bridge import node

    path = _write(tmp_path, f"/robot/policy_bridge:\n{PARAMS}")
    # before: the node ran on its code defaults (policy sine, forward, live) and exited 0
    assert node.main(["x", "--ros-args", "--params-file", str(path)]) == 1


def test_the_live_banner_names_the_topic_and_how_to_stop():
    config = _arm()
    banner = __import__("ceed_vla.robot_bridge.node", fromlist=["live_banner"]).live_banner(config)
    assert "LIVE" in banner and config.published_command_topic in banner and "/estop" in banner


# ---- 2 and 3. every command starts from where the arm is -----------------------------------------


def test_the_first_command_starts_from_the_measured_pose_not_the_policy():
    core = BridgeCore(_arm())
    measured = np.array([0.0, -30.0, 40.0, 0.0, 0.0, 50.0])  # where the arm is (degrees)
    _observe(core, 0.0, measured)
    wild = np.tile([-35.1, -42.4, 10.6, 1.65, -13.1, 9.7], (8, 1))  # the policy's first chunk
    _serve(core, 0.0, wild)
    first = core.tick(0.0)
    assert first.plan is not None and not first.holding
    # before: the plan's first point was the policy's action, 35 degrees from the arm in one tick
    assert np.max(np.abs(first.plan[0] - measured)) <= 3.0 + 1e-9
    assert np.max(np.abs(np.diff(first.plan, axis=0))) <= 3.0 + 1e-9


def test_no_reference_means_no_command():
    core = BridgeCore(_arm())
    core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=0.0, now=0.0)
    core.observe_state(np.zeros(6, np.float32), now=0.0)  # the state lacks the commanded joints
    result = core.tick(0.0)
    assert result.holding and result.reason == "no_reference" and result.command is None


def _ramp_chunk(start: float, step: float, n: int = 30) -> np.ndarray:
    return start + step * np.arange(n)[:, None] * np.ones((1, 6))  # [n, 6]


def _arm_follows_the_plan(core: BridgeCore, t: float, tick: int) -> None:
    """A fake arm: its measured position is the running plan's point at `tick` (a perfect controller)."""
    first, points = core._plan
    _observe(core, t, points[min(max(tick - first, 0), len(points) - 1)])


def test_after_missed_ticks_a_hold_lands_where_the_running_plan_is():
    core = BridgeCore(_arm())
    _observe(core, 0.0, np.zeros(6))
    _serve(core, 0.0, _ramp_chunk(0.0, -3.0))  # moving at max_delta per tick
    for tick in range(3):
        if tick:
            _arm_follows_the_plan(core, tick * PERIOD, tick)
        core.tick(tick * PERIOD)
    # the timer stalls for 3 periods; the controller kept running the plan meanwhile
    tick = 6
    _arm_follows_the_plan(core, tick * PERIOD, tick)
    core.set_estop(True)
    held = core.tick(tick * PERIOD)
    assert held.holding and held.tick == tick and held.plan is not None
    # before: the hold went back to the last tick executed (-6), 4 max_delta behind the plan (-18)
    np.testing.assert_allclose(held.plan[0], -3.0 * tick)
    assert core._plan[0] == tick  # the controller now holds there


def test_a_new_plan_after_missed_ticks_starts_from_the_running_plan_not_behind_it():
    core = BridgeCore(_arm())
    _observe(core, 0.0, np.zeros(6))
    _serve(core, 0.0, _ramp_chunk(0.0, -3.0, n=8))
    core.tick(0.0)
    tick = 5  # 4 missed ticks: the controller is at point 5 of the plan (-15)
    t = tick * PERIOD
    _arm_follows_the_plan(core, t, tick)
    core._tick = tick  # the clock has moved on: the next chunk is observed at this tick
    core.scheduler.flush()
    request = core.inference_request(t)
    core.deliver(request, _ramp_chunk(-12.0, -3.0), latency_s=0.001, iterations=1.0)
    result = core.tick(t)
    assert result.plan is not None and result.tick == tick
    # before: chained from the last tick executed (0), the plan started 5 max_delta behind the arm
    assert np.max(np.abs(result.plan[0] - (-15.0))) <= 3.0 + 1e-9


def test_a_hold_never_reverses_a_trajectory_already_sent():
    core = BridgeCore(_arm())
    _observe(core, 0.0, np.zeros(6))
    _serve(core, 0.0, _ramp_chunk(0.0, -3.0))
    core.tick(0.0)
    _arm_follows_the_plan(core, PERIOD, 1)
    core.tick(PERIOD)
    _arm_follows_the_plan(core, 2 * PERIOD, 2)
    core.set_estop(True)
    hold = core.tick(2 * PERIOD).plan[0]
    np.testing.assert_allclose(hold, -6.0)  # where the plan is: not back toward where it started


# ---- 4. the stale default follows the inputs -------------------------------------------------------


def test_the_stale_default_is_three_input_periods_not_one_control_period():
    assert _arm().stale_timeout_s == pytest.approx(0.1)  # 30 Hz inputs
    assert _arm(input_rate_hz=10.0).stale_timeout_s == pytest.approx(0.3)
    assert _arm(stale_timeout_s=0.05).stale_timeout_s == 0.05  # an explicit value is kept


def test_a_jittered_30_fps_camera_holds_under_5_percent_of_ticks():
    """Camera frames 33.3 ms apart with real jitter (normal, sd 6 ms, plus 2% of frames 25 ms late);
    before, the one-period default held at 592 of 600 ticks."""
    rng = np.random.default_rng(0)
    gaps = np.clip(PERIOD + rng.normal(0, 0.006, 700) + (rng.random(700) < 0.02) * 0.025, 0.005, None)
    arrivals = np.cumsum(gaps)
    core = BridgeCore(_arm(initial_command=[0.0] * 6, max_delta=[200.0]))
    t, i, held = arrivals[0], 0, 0
    ticks = 600
    for _ in range(ticks):
        while i < len(arrivals) and arrivals[i] <= t:
            _observe(core, arrivals[i], np.zeros(6))
            i += 1
        if core.inference_request(t) is not None:
            core.scheduler.cancel()
            core.scheduler.flush()
        result = core.tick(t)
        held += result.reason.startswith("stale")
        t += PERIOD
    assert held / ticks < 0.05, core.status(t)["stale_holds"]


def test_diagnostics_say_which_input_was_stale_and_how_often():
    core = BridgeCore(_arm(stale_timeout_s=0.05))
    _observe(core, 0.0, np.zeros(6))
    core.observe_state(np.zeros(6, np.float32), now=0.2, positions=np.zeros(6))
    core.tick(0.2)
    core.tick(0.2 + PERIOD)
    assert core.status(0.3)["stale_holds"] == "camera: 2"


# ---- 5. units --------------------------------------------------------------------------------------


def test_degrees_from_the_policy_go_to_the_controller_in_radians_and_the_state_comes_back_in_degrees():
    rad = math.pi / 180
    config = _arm(
        unit_conversion=["deg_to_rad"],
        action_low=[-2.0] * 6,
        action_high=[2.0] * 6,
        max_delta=[0.06],  # radians per tick
        stale_timeout_s=1.0,
    )
    core = BridgeCore(config)
    measured_rad = np.array([0.0, -30.0, 40.0, 0.0, 0.0, 50.0]) * rad
    _observe(core, 0.0, measured_rad)
    request = core.inference_request(0.0)
    state_deg = request.observation["observation.state"][0].numpy()
    np.testing.assert_allclose(state_deg, [0.0, -30.0, 40.0, 0.0, 0.0, 50.0], atol=1e-4)
    core.deliver(request, np.tile([1.0, -31.0, 41.0, 0.0, 0.0, 51.0], (8, 1)), 0.001, 1.0)  # degrees
    plan = core.tick(0.0).plan
    np.testing.assert_allclose(plan[0], np.array([1.0, -31.0, 41.0, 0.0, 0.0, 51.0]) * rad, atol=1e-9)
    assert np.all(np.abs(plan) <= 2.0)  # inside the controller's limits, in radians


def test_unit_scale_and_offset_apply_per_joint_and_are_checked():
    config = _arm(
        initial_command=[0.0] * 6, unit_scale=[1, 1, 1, 1, 1, 0.01], unit_offset=[0, 0, 0, 0, 0, 0.5]
    )
    assert config.unit_scale_array[5] == 0.01 and config.unit_offset_array[5] == 0.5
    with pytest.raises(ConfigError, match="unit_conversion names \\['degrees'\\]"):
        _arm(unit_conversion=["degrees"])
    with pytest.raises(ConfigError, match="unit_scale=.*zero"):
        _arm(unit_scale=[0.0])
    with pytest.raises(ConfigError, match="unit_offset has 2 values; expected 1 or 6"):
        _arm(unit_offset=[0.0, 1.0])


# ---- 7. strict types, parse errors, the stop ramp, bad messages --------------------------------------


@pytest.mark.parametrize(
    "name, kind, value",
    [
        ("stale_timeout_s", "float", True),
        ("max_delta", "list[float]", [True]),
        ("torch_threads", "int", False),
        ("control_rate_hz", "float", "30"),
        ("joint_names", "list[str]", [1, 2]),
    ],
)
def test_booleans_and_strings_are_not_numbers(name, kind, value):
    # before: stale_timeout_s: true was a 1.0 s watchdog, max_delta: [true] 1.0 per tick
    with pytest.raises(ConfigError, match=f"parameter {name}=.*is not a valid {re.escape(kind)}: write"):
        ros_params.coerce(name, kind, value)
    if kind in ("float", "list[float]"):
        with pytest.raises(ConfigError, match="boolean"):
            BridgeConfig(
                **{name: value if not isinstance(value, str) else True, "initial_command": [0.0] * 4}
            )


def test_an_unquoted_camera_entry_is_explained_with_its_key_and_the_fix(tmp_path):
    path = _write(
        tmp_path,
        "policy_bridge:\n  ros__parameters:\n"
        "    camera_topics: [observation.images.front=/front/image_raw:640x480]\n",
    )
    with pytest.raises(
        ConfigError, match=r"line 3: camera_topics .* Quote it: camera_topics: \['observation"
    ):
        ros_params.load_param_file(path)
    with pytest.raises(LaunchError, match="Quote it"):
        launcher.node_specs(path)


def test_a_twist_stop_ramps_all_the_way_and_a_short_ramp_is_refused():
    config = BridgeConfig(output_mode="twist", max_delta=[0.05], control_rate_hz=20.0)
    assert config.stop_ramp_s == pytest.approx(20 * 0.05)  # 1.0 / 0.05 ticks from a limit to zero
    with pytest.raises(ConfigError, match="stop_ramp_s=0.5 is shorter than the stop needs: 20 ticks"):
        BridgeConfig(output_mode="twist", max_delta=[0.05], control_rate_hz=20.0, stop_ramp_s=0.5)
    # the stop from the limit: every step at most max_delta, ending at zero, without a jump
    core = BridgeCore(BridgeConfig(output_mode="twist", max_delta=[0.05], instruction="x", blend_steps=0))
    core.safety.last = np.array([1.0, -1.0, 1.0, 0.3])
    steps = [core.safety.last.copy()]
    for _ in range(math.ceil(config.stop_ramp_s / config.period_s)):
        result = core.stop_step()
        steps.append(result.command)
        assert not result.jumped
        if core.hold_reached():
            break
    assert core.hold_reached()
    assert np.max(np.abs(np.diff(steps, axis=0))) <= 0.05 + 1e-9
    np.testing.assert_allclose(steps[-1], [0, 0, 0, 0.3])


def test_a_wrong_size_frame_from_camera_topics_names_the_camera_topics_fix():
    msg = conv.array_to_image(np.zeros((480, 640, 3), np.uint8), Image().header.stamp)
    fix = "give its size in camera_topics ('observation.images.front=/front:WIDTHxHEIGHT')"
    with pytest.raises(conv.MalformedInputError, match=re.escape(fix)):
        conv.image_to_array(msg, 320, 240, fix)


def test_a_joint_state_with_huge_values_is_refused_without_an_overflow_warning():
    msg = JointState(name=["a", "b"], position=[1e300, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: RuntimeWarning: overflow encountered in cast
        with pytest.raises(conv.MalformedInputError, match="float32's range"):
            conv.joint_state_to_vector(msg, ["a", "b"])
        with pytest.raises(conv.MalformedInputError, match="float32's range"):
            conv.joint_positions(msg, ["a", "b"])


# ---- 6. the image size in the contract ---------------------------------------------------------------


def test_a_pretrained_preset_checkpoint_records_the_size_its_conv_encoder_was_trained_at():
    import argparse

    from ceed_vla.policy.train import model_config

    args = argparse.Namespace(
        chunk_size=8, n_action_steps=8, preset="pretrained", lm_path="/lm", vision_tower_path=None,
        image_size=96, vision=None, keypoints=None, grid=None, coords=None,
    )  # fmt: skip
    # before: vision.image_size None, and at deployment the encoder ran at the cameras' 480x640
    assert model_config(args, 6, 6).vision.image_size == 96


def test_the_contract_carries_the_image_size_and_warns_when_a_large_camera_has_none(tmp_path):
    import json

    from ceed_vla.robot_bridge.contract import PolicyContract, image_size_note

    base = {"type": "ceed", "action_dim": 6, "state_dim": 6, "image_keys": ["observation.images.front"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(
        json.dumps({**base, "image_shapes": [[3, 480, 640]], "vision": {"image_size": 96}})
    )
    sized = PolicyContract.from_checkpoint(tmp_path / "a")
    assert sized.image_size == 96 and image_size_note(sized) is None
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({**base, "image_shapes": [[3, 480, 640]]}))
    assert "records no vision.image_size" in image_size_note(PolicyContract.from_checkpoint(tmp_path / "b"))


def test_a_live_run_says_so_loudly_once_and_a_dry_run_not_at_all(capfd):
    from ceed_vla.robot_bridge.node import PolicyBridgeNode
    from ceed_vla.robot_bridge.policies import SinePolicy
    from rclpy.parameter import Parameter

    ctx = Context()
    rclpy.init(context=ctx, domain_id=198)
    try:
        for name, dry_run in (("bridge_live", False), ("bridge_dry", True)):
            node = PolicyBridgeNode(
                name,
                context=ctx,
                policy=SinePolicy(4),
                parameter_overrides=[
                    Parameter("initial_command", value=[0.0] * 4),
                    Parameter("dry_run", value=dry_run),
                ],
            )
            try:
                capfd.readouterr()
                assert node.start()
                node.trigger_deactivate()
                log = capfd.readouterr()
                text = log.out + log.err
                assert text.count("LIVE: dry_run is false") == (0 if dry_run else 1), text
            finally:
                node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
