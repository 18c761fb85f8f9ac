"""The policy bridge node over real DDS on loopback: a peer node plays camera, arm and operator.

Every test gets its own bridge and peer in one rclpy context on a domain id derived from the pid,
spun by a single-threaded executor in a background thread; both nodes are destroyed afterwards.
"""

import os
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from ceed_vla.robot_bridge import conversions as conv
from ceed_vla.robot_bridge.node import LATCHED, RELIABLE, PolicyBridgeNode
from ceed_vla.robot_bridge.policies import SinePolicy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]

STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper"]
RATE_HZ = 20.0
PERIOD = 1.0 / RATE_HZ
FORWARD = "/forward_position_controller/commands"


@pytest.fixture(scope="module")
def context():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=10 + os.getpid() % 100)
    yield ctx
    rclpy.shutdown(context=ctx)


class Rig:
    """A bridge under test and a peer node publishing its inputs and recording its outputs."""

    def __init__(self, context, given, **params):
        torch.set_num_threads(1)
        base = {
            "instruction": "reach the red goal",
            "control_rate_hz": RATE_HZ,
            "image_width": 16,
            "image_height": 16,
            "dry_run": False,  # these tests listen on the live topics
        }
        if len(params.get("action_low") or [0.0] * 4) == 4:
            base["initial_command"] = [
                0.0
            ] * 4  # where the (absent) arm starts: the first command's reference
        base.update(params)  # a None leaves the parameter out (to the checkpoint's contract)
        overrides = [Parameter(k, value=v) for k, v in base.items() if v is not None]
        self.bridge = PolicyBridgeNode(context=context, policy=given, parameter_overrides=overrides)
        assert self.bridge.start()
        self.config = self.bridge.config
        self.peer = Node("peer", context=context)
        self.received: dict[str, list] = {}
        self.camera = self.peer.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.state = self.peer.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.instruction = self.peer.create_publisher(String, "/instruction", LATCHED)
        self.estop = self.peer.create_publisher(Bool, "/estop", LATCHED)
        self.reset = self.peer.create_publisher(Empty, "/estop_reset", RELIABLE)
        self.listen(DiagnosticArray, "/diagnostics")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.bridge)
        self.executor.add_node(self.peer)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def listen(self, kind, topic):
        self.received[topic] = []
        self.peer.create_subscription(
            kind, topic, lambda m: self.received[topic].append((time.monotonic(), m)), RELIABLE
        )

    def feed(self, seconds: float, rate_hz: float = 50.0, image=None, names=STATE_NAMES) -> float:
        """Publish camera and state for `seconds`; returns the time of the last publish."""
        size = (self.config.image_height, self.config.image_width)
        image = np.full((*size, 3), 128, np.uint8) if image is None else image
        end = time.monotonic() + seconds
        while True:
            stamp = self.peer.get_clock().now().to_msg()
            self.camera.publish(conv.array_to_image(image, stamp))
            self.state.publish(conv.vector_to_joint_state(np.zeros(len(names)), names, stamp))
            last = time.monotonic()
            if last >= end:
                return last
            time.sleep(1.0 / rate_hz)

    def keep_feeding(self, **inputs) -> None:
        """Publish camera and state continuously in the background (with `inputs` as in feed)."""
        self.inputs = inputs
        if getattr(self, "feeder", None) is None:
            self.feeding = threading.Event()

            def loop():
                while not self.feeding.is_set():
                    self.feed(0.0, **self.inputs)
                    time.sleep(0.02)

            self.feeder = threading.Thread(target=loop, daemon=True)
            self.feeder.start()

    def commands(self, topic=FORWARD, after: float = -np.inf) -> list:
        return [m for t, m in self.received[topic] if t > after]

    def diagnostics(self) -> dict[str, str]:
        return (
            conv.diagnostic_values(self.received["/diagnostics"][-1][1])
            if self.received["/diagnostics"]
            else {}
        )

    def close(self):
        if getattr(self, "feeder", None) is not None:
            self.feeding.set()
            self.feeder.join(2)
        self.bridge.trigger_deactivate()  # timers and inference stop before the executor does
        self.executor.shutdown()
        self.thread.join(5)
        self.bridge.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def rig(context):
    made = []

    def make(given=None, topics=(FORWARD,), kind=Float64MultiArray, **params):
        """`given`: a policy object for the node; default a sine, unless `policy` (a spec) is a parameter."""
        if given is None and "policy" not in params:
            given = SinePolicy(4, chunk_size=8, amplitude=0.5, control_rate_hz=RATE_HZ)
        r = Rig(context, given, **params)
        for topic in topics:
            r.listen(kind, topic)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _wait(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_messages_flow_end_to_end_with_diagnostics(rig):
    r = rig(forced_prefix=True)
    r.feed(0.8)
    commands = r.commands()
    assert len(commands) >= 5
    values = np.asarray([c.data for c in commands])  # [N, 4]
    assert values.shape[1] == 4 and np.all(np.isfinite(values))
    assert np.ptp(values, axis=0).max() > 0  # the sine moves
    assert _wait(lambda: r.diagnostics().get("state") == "ok" or int(r.diagnostics().get("chunks", 0)) > 0)
    diag = r.diagnostics()
    for key in (
        "control_hz",
        "inference_latency_ms",
        "iterations_per_chunk",
        "estop_latched",
        "queue_length",
    ):
        assert key in diag
    assert float(diag["control_hz"]) > 0
    # the sine takes no forced prefix: configure switches it off even when asked, so it schedules as before
    assert not r.bridge.config.forced_prefix and not r.bridge.core.scheduler.config.forced_prefix


def test_watchdog_holds_within_two_control_periods(rig):
    r = rig(hold_mode="zero", stale_timeout_s=PERIOD)
    last_input = r.feed(0.6)
    assert _wait(lambda: len(r.commands(after=last_input)) >= 6)
    after = [np.asarray(c.data) for c in r.commands(after=last_input)]
    moving = [i for i, c in enumerate(after) if np.any(c != 0)]
    # commands still moving after the inputs stopped: at most the two control periods allowed
    assert len(moving) <= 2 and all(i < 2 for i in moving)
    assert all(np.all(c == 0) for c in after[2:])
    assert _wait(lambda: r.diagnostics().get("state", "").startswith("stale"))


def test_estop_latches_and_holds_until_reset(rig):
    r = rig(hold_mode="zero")
    r.keep_feeding()
    assert _wait(lambda: len(r.commands()) > 3)
    r.estop.publish(Bool(data=True))
    assert _wait(lambda: r.diagnostics().get("estop_latched") == "True")
    r.estop.publish(Bool(data=False))  # the input clears ...
    time.sleep(0.2)
    r.reset.publish(Empty())  # ... and an explicit reset releases the latch
    assert _wait(lambda: r.diagnostics().get("estop_latched") == "False")
    resumed = time.monotonic()
    assert _wait(lambda: any(np.any(np.asarray(c.data) != 0) for c in r.commands(after=resumed)))

    r.estop.publish(Bool(data=True))
    assert _wait(lambda: r.diagnostics().get("estop_latched") == "True")
    latched_at = time.monotonic()
    r.reset.publish(Empty())  # refused: the e-stop input is still asserted
    time.sleep(0.2)
    r.estop.publish(Bool(data=False))  # clearing the input alone does not release the latch
    time.sleep(8 * PERIOD)
    held = [np.asarray(c.data) for c in r.commands(after=latched_at + 2 * PERIOD)]
    assert len(held) >= 4 and all(np.all(c == 0) for c in held)
    assert r.diagnostics().get("estop_latched") == "True"
    r.reset.publish(Empty())
    released = time.monotonic()
    assert _wait(lambda: any(np.any(np.asarray(c.data) != 0) for c in r.commands(after=released)))


class WildPolicy:
    """Alternates chunks far out of range with chunks that start non-finite: none of it may leave
    the bridge as is."""

    last_decode_stats = None

    def __init__(self):
        self.calls = 0

    def reset(self):
        pass

    def predict_action_chunk(self, obs):
        self.calls += 1
        if self.calls % 2:
            chunk = torch.tensor([[3.0, -7.0, 0.2, 0.1], [-9.0, 9.0, 0.5, -0.3], [4.0, 4.0, -4.0, 4.0]])
        else:
            chunk = torch.tensor([[np.nan, 0.0, 0.0, 0.0], [0.0, np.inf, 0.0, 0.0], [0.0, 0.0, -np.inf, 0.0]])
        return chunk[None]  # [1, 3, 4]


def test_out_of_range_and_non_finite_actions_are_never_published(rig):
    r = rig(given=WildPolicy(), hold_mode="last", max_delta=[0.25], blend_steps=0)
    r.feed(1.0)
    values = np.asarray([c.data for c in r.commands()])  # [N, 4]
    assert len(values) >= 5
    assert np.all(np.isfinite(values))
    assert np.all(values >= -1.0) and np.all(values <= 1.0)
    assert np.all(np.abs(np.diff(values, axis=0)) <= 0.25 + 1e-9)
    diag = r.diagnostics()
    assert int(diag["rejected_actions"]) > 0 and int(diag["clamped_commands"]) > 0


def test_trajectory_chunks_have_monotonic_timestamps(rig):
    topic = "/joint_trajectory_controller/joint_trajectory"
    r = rig(
        topics=(topic,), kind=JointTrajectory, output_mode="trajectory", joint_names=["j1", "j2", "j3", "j4"]
    )
    r.feed(1.2)
    chunks = r.commands(topic)
    assert len(chunks) >= 3
    stamps = [conv.from_time(m.header.stamp) for m in chunks]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    for msg in chunks:
        assert list(msg.joint_names) == ["j1", "j2", "j3", "j4"]
        times = [conv.from_duration(p.time_from_start) for p in msg.points]
        assert times[0] == 0.0 and all(b > a for a, b in zip(times, times[1:], strict=False))
        positions = np.asarray([p.positions for p in msg.points])
        assert np.all(np.abs(positions) <= 1.0)


def test_malformed_input_is_logged_and_held_never_a_crash(rig):
    r = rig(hold_mode="zero")
    r.keep_feeding()
    assert _wait(lambda: r.diagnostics().get("state") == "ok")
    cases = [
        ("camera", dict(image=np.zeros((16, 16, 3), np.uint8)[:, :8])),  # wrong size
        ("state", dict(names=["shoulder", "elbow", "wrist", "gripper"])),  # joint names that do not match
    ]
    for kind, bad in cases:
        r.keep_feeding(**bad)
        assert _wait(lambda kind=kind: r.diagnostics().get("state") == f"invalid_{kind}")
        since = time.monotonic()
        time.sleep(3 * PERIOD)
        assert all(np.all(np.asarray(c.data) == 0) for c in r.commands(after=since))
        r.keep_feeding()  # valid again: the bridge resumes
        assert _wait(lambda: r.diagnostics().get("state") == "ok")

    r.instruction.publish(String(data="   "))
    assert _wait(lambda: r.diagnostics().get("state") == "invalid_instruction")
    r.instruction.publish(String(data="push the puck"))
    assert _wait(lambda: r.diagnostics().get("state") == "ok")

    r.feeding.set()
    r.feeder.join(2)
    time.sleep(3 * PERIOD)
    r.camera.publish(Image(height=16, width=16, encoding="mono8", step=16, data=bytes(256)))
    assert _wait(lambda: r.diagnostics().get("state") == "invalid_camera")
    assert int(r.diagnostics()["invalid_inputs"]) >= 4
    assert r.bridge.core is not None and r.thread.is_alive()


def test_pose_state_input(rig):
    from geometry_msgs.msg import PoseStamped

    r = rig(state_type="pose", state_topic="/ee_pose", hold_mode="zero")
    pose = r.peer.create_publisher(PoseStamped, "/ee_pose", qos_profile_sensor_data)
    end = time.monotonic() + 0.8
    while time.monotonic() < end:
        msg = PoseStamped()
        msg.header.stamp = r.peer.get_clock().now().to_msg()
        msg.pose.orientation.w = 1.0
        pose.publish(msg)
        r.camera.publish(conv.array_to_image(np.zeros((16, 16, 3), np.uint8), msg.header.stamp))
        time.sleep(0.02)
    values = np.asarray([c.data for c in r.commands()])
    assert len(values) >= 5 and np.any(values != 0)  # streaming, not holding


def test_twist_dry_run_publishes_only_to_the_dry_run_topics(rig):
    servo, gripper = "/servo_node/delta_twist_cmds", "/gripper_controller/commands"
    r = rig(
        topics=(servo, f"{servo}/dry_run"),
        kind=TwistStamped,
        output_mode="twist",
        dry_run=True,
        twist_scale=0.1,
    )
    r.listen(Float64MultiArray, f"{gripper}/dry_run")
    r.listen(Float64MultiArray, gripper)
    r.feed(0.8)
    twists = r.commands(f"{servo}/dry_run")
    assert len(twists) >= 5 and r.commands(servo) == [] and r.commands(gripper) == []
    assert len(r.commands(f"{gripper}/dry_run")) >= 5
    assert all(abs(t.twist.linear.x) <= 0.1 + 1e-9 and t.header.frame_id == "base_link" for t in twists)


@pytest.mark.slow
@pytest.mark.timeout(180)  # the first use of the policy package imports transformers
def test_a_vla_checkpoint_drives_the_bridge_with_jacobi_decoding(rig, make_policy, tmp_path):
    checkpoint = make_policy().save_pretrained(tmp_path / "tiny_vla")
    r = rig(policy=f"checkpoint:{checkpoint}", decoding_mode="jacobi", image_width=24, image_height=24)
    assert r.bridge.policy.__class__.__name__ == "VLAPolicy"
    r.keep_feeding()
    assert _wait(lambda: len(r.commands()) >= 5, timeout=60)  # the first decode pays one-off set-up
    values = np.asarray([c.data for c in r.commands()])  # [N, 4]
    assert len(values) >= 5 and np.all(np.abs(values) <= 1.0)
    assert _wait(lambda: int(r.diagnostics().get("chunks", 0)) > 0)
    assert float(r.diagnostics()["iterations_per_chunk"]) >= 1
    # the forced prefix and the deadline are off unless asked (the VLA takes both when they are)
    assert (
        not r.bridge.core.scheduler.config.forced_prefix
        and not r.bridge.core.scheduler.config.decode_deadline
    )


ARM_JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
ARM_CAMERAS = {"observation.images.front": (24, 32), "observation.images.wrist": (16, 20)}  # H, W


def _arm_checkpoint(directory, make_policy) -> str:
    """A tiny 6-joint, two-camera VLA saved as `ceed train` saves one trained on an arm's dataset."""
    policy = make_policy(
        action_dim=6,
        state_dim=6,
        image_keys=tuple(ARM_CAMERAS),
        image_shapes=tuple((3, h, w) for h, w in ARM_CAMERAS.values()),
        state_names=tuple(f"{j}.pos" for j in ARM_JOINTS),
        action_names=tuple(ARM_JOINTS),
        fps=15.0,
    )
    return str(policy.save_pretrained(directory))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_two_camera_arm_checkpoint_streams_joint_trajectories_with_its_joint_names(
    rig, make_policy, tmp_path
):
    checkpoint = _arm_checkpoint(tmp_path / "arm", make_policy)
    topic = "/joint_trajectory_controller/joint_trajectory"
    topics = {key: f"/camera/{key.split('.')[-1]}/image_raw" for key in ARM_CAMERAS}
    r = rig(
        topics=(topic,),
        kind=JointTrajectory,
        policy=f"checkpoint:{checkpoint}",
        output_mode="trajectory",
        camera_topics=[f"{k}={t}" for k, t in topics.items()],
        action_low=[-90.0] * 6,
        action_high=[90.0] * 6,
        max_delta=[5.0],
        control_rate_hz=None,  # the checkpoint's fps
        image_width=None,  # each camera's recorded size
        image_height=None,
    )
    assert r.config.control_rate_hz == 15.0
    assert list(r.config.state_joint_names) == [f"{j}.pos" for j in ARM_JOINTS]
    cams = {k: r.peer.create_publisher(Image, t, qos_profile_sensor_data) for k, t in topics.items()}
    end = time.monotonic() + 60
    while time.monotonic() < end and len(r.commands(topic)) < 3:
        stamp = r.peer.get_clock().now().to_msg()
        for key, (h, w) in ARM_CAMERAS.items():
            cams[key].publish(conv.array_to_image(np.full((h, w, 3), 100, np.uint8), stamp))
        # the dataset's state names and the controller's joints, as a robot's /joint_states may carry both
        names = [f"{j}.pos" for j in ARM_JOINTS] + ARM_JOINTS
        r.state.publish(conv.vector_to_joint_state(np.zeros(12), names, stamp))
        time.sleep(0.03)
    chunks = r.commands(topic)
    assert len(chunks) >= 3, r.diagnostics()
    for msg in chunks:
        assert list(msg.joint_names) == ARM_JOINTS
        positions = np.asarray([p.positions for p in msg.points])  # [T, 6], degrees
        assert (
            positions.shape[1] == 6 and np.all(np.abs(positions) <= 90.0) and np.all(np.isfinite(positions))
        )
    assert _wait(lambda: int(r.diagnostics().get("chunks", 0)) > 0)  # the policy decoded from both cameras


def test_lifecycle_deactivate_holds_and_stops_then_activate_resumes(rig):
    r = rig(hold_mode="zero")
    r.keep_feeding()
    assert _wait(lambda: len(r.commands()) >= 3)
    r.bridge.trigger_deactivate()
    stopped = time.monotonic()
    time.sleep(6 * PERIOD)
    late = r.commands(after=stopped + PERIOD)
    assert late == []  # an inactive node publishes nothing
    assert np.all(np.asarray(r.commands()[-1].data) == 0)  # its last word was a hold
    r.bridge.trigger_activate()
    resumed = time.monotonic()
    assert _wait(lambda: any(np.any(np.asarray(c.data) != 0) for c in r.commands(after=resumed)))


def _node_with_timer(callback):
    context = Context()
    rclpy.init(context=context, domain_id=10 + os.getpid() % 100)
    node = Node("spin_probe", context=context)
    pub = node.create_publisher(String, "/spin_probe", 1)
    node.create_timer(0.01, lambda: callback(context, pub))
    return node, SingleThreadedExecutor(context=context)


def test_spin_treats_a_publish_racing_the_shutdown_as_a_clean_exit():
    from ceed_vla.robot_bridge.node import spin

    def shut_down_then_publish(context, pub):  # what Ctrl-C does between a timer's wake-up and its publish
        rclpy.try_shutdown(context=context)
        pub.publish(String(data="late"))

    node, executor = _node_with_timer(shut_down_then_publish)
    assert spin([node], executor) == 0


def test_spin_raises_a_real_callback_failure():
    from ceed_vla.robot_bridge.node import spin

    def fail(context, pub):
        raise ValueError("a real bug in a callback")

    node, executor = _node_with_timer(fail)
    context = node.context
    try:
        with pytest.raises(ValueError, match="a real bug"):
            spin([node], executor)
    finally:
        rclpy.try_shutdown(context=context)
