"""The bridge against a fake SO-101-shaped arm over DDS on loopback: a checkpoint contract of 6 joints
in degrees at 30 fps with a front and a wrist camera, a JointTrajectoryController-like arm in
radians that follows every plan it is sent and publishes /joint_states, and two 30 fps cameras with
real jitter. The policy's first chunk is far from the arm's pose (the issue's numbers)."""

from __future__ import annotations

import json
import math
import os
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from ceed_vla.robot_bridge import conversions as conv
from ceed_vla.robot_bridge.node import RELIABLE, PolicyBridgeNode
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
CAMERAS = {"observation.images.front": (48, 64), "observation.images.wrist": (24, 32)}  # H, W
FPS = 30.0
RAD = math.pi / 180
POSE_DEG = np.array([0.0, -30.0, 40.0, 0.0, 0.0, 50.0])  # where the arm is
FAR_DEG = np.array([-35.1, -42.4, 10.6, 1.65, -13.1, 9.7])  # the policy's first action
LOW, HIGH, MAX_DELTA = -2.5, 2.5, 0.05  # the controller's limits and step, radians
TOPIC = "/arm_controller/joint_trajectory"


def _contract(directory) -> str:
    """config.json as `ceed train` writes it for an SO-101 dataset (the contract; no weights)."""
    directory.mkdir()
    config = {
        "type": "ceed",
        "action_dim": 6,
        "state_dim": 6,
        "image_keys": list(CAMERAS),
        "image_shapes": [[3, h, w] for h, w in CAMERAS.values()],
        "state_names": [f"{j}.pos" for j in JOINTS],
        "action_names": [f"{j}.pos" for j in JOINTS],
        "fps": FPS,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return f"checkpoint:{directory}"


class FarPolicy:
    """Chunks of the far pose, in degrees; records the state it was given (degrees expected)."""

    last_decode_stats = None

    def __init__(self):
        self.states: list[np.ndarray] = []

    def reset(self):
        pass

    def predict_action_chunk(self, obs):
        self.states.append(obs["observation.state"][0].numpy().copy())
        return torch.tensor(np.tile(FAR_DEG, (8, 1)), dtype=torch.float32)[None]  # [1, 8, 6]


class FakeArm:
    """Follows each JointTrajectory as a JointTrajectoryController does (a zero stamp starts at
    receipt; linear between points; the last point held), publishes /joint_states at 100 Hz and two
    cameras at 30 fps with jitter (normal, sd 6 ms)."""

    def __init__(self, context):
        self.node = rclpy.create_node("fake_so101", context=context)
        self.lock = threading.Lock()
        self.position = POSE_DEG * RAD  # [6] radians
        self.plan: tuple[float, np.ndarray, np.ndarray] | None = None  # (start, times [T], points [T, 6])
        self.received: list[tuple[float, JointTrajectory]] = []
        self.node.create_subscription(JointTrajectory, TOPIC, self._on_plan, RELIABLE)
        self.state = self.node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.cameras = {
            key: self.node.create_publisher(
                Image, f"/{key.split('.')[-1]}/image_raw", qos_profile_sensor_data
            )
            for key in CAMERAS
        }
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._joint_states, self._camera)]

    def start(self):
        for t in self.threads:
            t.start()

    def _on_plan(self, msg: JointTrajectory) -> None:
        now = time.monotonic()
        ros_now = self.node.get_clock().now().nanoseconds * 1e-9
        stamp = conv.from_time(msg.header.stamp)
        start = now if stamp == 0 else now + (stamp - ros_now)
        times = np.asarray([conv.from_duration(p.time_from_start) for p in msg.points])
        points = np.asarray([p.positions for p in msg.points])
        with self.lock:
            self.received.append((now, msg))
            current = self.where(now)
            # a controller interpolates from where it is to the first point when that is in the future
            times, points = np.concatenate([[now - start], times]), np.vstack([current, points])
            self.plan = (start, times, points)

    def where(self, now: float) -> np.ndarray:
        if self.plan is None:
            return self.position
        start, times, points = self.plan
        t = now - start
        return np.asarray([np.interp(t, times, points[:, j]) for j in range(points.shape[1])])

    def _joint_states(self):
        while not self.stop.is_set():
            with self.lock:
                self.position = self.where(time.monotonic())
                position = self.position.copy()
            stamp = self.node.get_clock().now().to_msg()
            self.state.publish(conv.vector_to_joint_state(position, JOINTS, stamp))
            time.sleep(0.01)

    def _camera(self):
        rng = np.random.default_rng(0)
        frames = {k: np.full((h, w, 3), 90, np.uint8) for k, (h, w) in CAMERAS.items()}
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += 1 / FPS + rng.normal(0, 0.006)
            time.sleep(max(0.0, next_at - time.monotonic()))
            stamp = self.node.get_clock().now().to_msg()
            for key, pub in self.cameras.items():
                pub.publish(conv.array_to_image(frames[key], stamp))

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.node.destroy_node()


def test_a_far_first_chunk_ramps_from_the_measured_pose_in_radians_with_few_held_ticks(tmp_path):
    context = Context()
    rclpy.init(context=context, domain_id=30 + os.getpid() % 100)
    try:
        _drive_the_fake_arm(context, tmp_path)
    finally:
        rclpy.shutdown(context=context)


def _drive_the_fake_arm(context, tmp_path) -> None:
    torch.set_num_threads(1)
    policy = FarPolicy()
    params = {
        "policy": _contract(tmp_path / "so101"),
        "instruction": "put the cube in the box",
        "output_mode": "trajectory",
        "dry_run": False,
        "command_topic": TOPIC,
        "camera_topics": [f"{k}=/{k.split('.')[-1]}/image_raw" for k in CAMERAS],
        "state_joint_names": JOINTS,  # the controller's names: converted back to degrees for the policy
        "joint_names": JOINTS,
        "unit_conversion": ["deg_to_rad"],
        "action_low": [LOW] * 6,
        "action_high": [HIGH] * 6,
        "max_delta": [MAX_DELTA],
        "diagnostics_rate_hz": 5.0,
    }
    bridge = PolicyBridgeNode(
        "policy_bridge_so101",
        context=context,
        policy=policy,
        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
    )
    arm = FakeArm(context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(arm.node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    arm.start()
    time.sleep(0.3)  # /joint_states flowing before the bridge starts
    try:
        assert bridge.start()
        assert bridge.config.control_rate_hz == FPS and bridge.config.stale_timeout_s == pytest.approx(0.1)
        executor.add_node(bridge)
        time.sleep(4.0)
        status = bridge.core.status(time.monotonic())
    finally:
        bridge.trigger_deactivate()
        executor.shutdown()
        spinner.join(5)
        bridge.destroy_node()
        arm.close()
    plans = [m for _, m in arm.received]
    assert len(plans) >= 3, status
    # the policy saw the state in degrees
    np.testing.assert_allclose(policy.states[0], POSE_DEG, atol=1e-3)
    # the first point is within max_delta of the measured pose: no jump (before: 35 degrees at once)
    first = np.asarray(plans[0].points[0].positions)
    assert np.max(np.abs(first - POSE_DEG * RAD)) <= MAX_DELTA + 1e-6
    for msg in plans:
        points = np.asarray([p.positions for p in msg.points])  # [T, 6] radians
        assert np.all(points >= LOW) and np.all(points <= HIGH) and np.all(np.isfinite(points))
        assert np.max(np.abs(np.diff(points, axis=0)), initial=0.0) <= MAX_DELTA + 1e-9
    # it heads for the policy's pose, in radians
    last = np.asarray(plans[-1].points[-1].positions)
    assert np.all(np.abs(last - FAR_DEG * RAD) < np.abs(POSE_DEG * RAD - FAR_DEG * RAD) + 1e-9)
    # a 30 fps camera with normal jitter: under 5% of the ticks held for a stale input
    stale = sum(int(part.split(": ")[1]) for part in str(status["stale_holds"]).split(", ") if ": " in part)
    assert stale / max(status["ticks"], 1) < 0.05, status


def test_the_so101_parameter_file_of_docs_real_arm_configures_the_bridge_as_written(tmp_path):
    import re
    from pathlib import Path

    import yaml
    from ceed_vla.robot_bridge import ros_params
    from ceed_vla.robot_bridge.config import BridgeConfig
    from ceed_vla.robot_bridge.contract import apply_contract

    doc = (Path(__file__).resolve().parents[1] / "docs" / "real_arm.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.startswith("# so101.yaml"))
    path = tmp_path / "so101.yaml"
    path.write_text(block)
    data = ros_params.load_param_file(path)  # what rcl would refuse is refused here, with the fix
    params = data["policy_bridge"]["ros__parameters"]
    assert params["policy"] == "checkpoint:runs/so101_student/final"
    params["policy"] = _contract(tmp_path / "so101")  # the same contract, written here
    config = ros_params.from_dict(BridgeConfig, params, adjust=apply_contract)
    assert config.dry_run and config.control_rate_hz == FPS and config.stale_timeout_s == pytest.approx(0.1)
    assert config.joint_names == JOINTS and config.state_joint_names == JOINTS
    assert [c.width for c in config.cameras] == [w for _, w in CAMERAS.values()]
    # the dataset's range maps into the controller's limits: degrees to radians, the gripper's 0..100
    scale, offset = np.asarray(config.unit_scale_array), np.asarray(config.unit_offset_array)
    np.testing.assert_allclose(scale[:5], RAD)
    low, high = np.asarray(config.action_low), np.asarray(config.action_high)
    assert np.all(FAR_DEG * scale + offset >= low) and np.all(FAR_DEG * scale + offset <= high)
    assert yaml.safe_load(block)["policy_bridge"]["ros__parameters"]["max_delta"] == [0.05]
