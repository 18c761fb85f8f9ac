"""The policy bridge node under faults over real DDS on loopback: e-stop pulses, misspelt
parameters, stale stamps, a loaded executor, trajectory holds, a failing policy, lifecycle stops and
signals. The rig of test_bridge_ros plays camera, arm and operator."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from ceed_vla.robot_bridge import conversions as conv
from ceed_vla.robot_bridge import ros_params
from ceed_vla.robot_bridge.config import BridgeConfig, ConfigError
from ceed_vla.robot_bridge.node import RELIABLE, PolicyBridgeNode, spin
from ceed_vla.robot_bridge.policies import SinePolicy
from rcl_interfaces.msg import Log
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from tests import test_bridge_ros
from tests.test_bridge_ros import PERIOD, RATE_HZ, STATE_NAMES, _wait

pytestmark = [pytest.mark.ros, pytest.mark.timeout(90)]

rig = test_bridge_ros.rig  # the same rig fixture, over this module's own DDS domain (`context`)


@pytest.fixture(scope="module")
def context():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=120 + os.getpid() % 100)
    yield ctx
    rclpy.shutdown(context=ctx)


def _values(messages) -> np.ndarray:
    return np.asarray([m.data for m in messages])  # [N, D]


def test_every_estop_pulse_latches_even_during_a_camera_flood(rig):
    r = rig(hold_mode="zero", diagnostics_rate_hz=20.0)
    flood = threading.Event()
    image = conv.array_to_image(np.full((16, 16, 3), 128, np.uint8), r.peer.get_clock().now().to_msg())

    def camera_flood():  # about 300 Hz of frames besides the rig's own feed
        while not flood.is_set():
            image.header.stamp = r.peer.get_clock().now().to_msg()
            r.camera.publish(image)
            time.sleep(1 / 300)

    flooder = threading.Thread(target=camera_flood, daemon=True)
    flooder.start()
    r.keep_feeding()
    try:
        assert _wait(lambda: r.diagnostics().get("state") == "ok")
        pulses = 5
        for i in range(pulses):
            r.estop.publish(Bool(data=True))  # a pulse with no gap: true, then false at once
            r.estop.publish(Bool(data=False))
            assert _wait(lambda: r.diagnostics().get("estop_latched") == "True", timeout=3), (
                f"pulse {i + 1} of {pulses} was not latched"
            )
            r.reset.publish(Empty())
            assert _wait(lambda: r.diagnostics().get("estop_latched") == "False")
        assert int(r.diagnostics()["estop_latches"]) == pulses
    finally:
        flood.set()
        flooder.join(2)


def test_a_misspelt_parameter_fails_configure_naming_the_right_one(context):
    node = PolicyBridgeNode(
        "policy_bridge_typo",
        context=context,
        policy=SinePolicy(4),
        parameter_overrides=[Parameter("dryrun", value=True)],
    )
    try:
        with pytest.raises(ConfigError, match=r"'dryrun' \(did you mean dry_run\?\)"):
            ros_params.read(node, BridgeConfig)
        assert not node.start()  # configure fails: nothing is published anywhere
        assert node.core is None
    finally:
        node.destroy_node()


def test_the_effective_parameters_are_logged_once_at_configure(rig):
    probe = rig(hold_mode="zero")
    logs: list[tuple[str, str]] = []  # (logger name, message)
    sub = probe.peer.create_subscription(Log, "/rosout", lambda m: logs.append((m.name, m.msg)), RELIABLE)
    assert _wait(lambda: sub.get_publisher_count() >= 1)
    before = sub.get_publisher_count()
    node = PolicyBridgeNode(
        "policy_bridge_logged",
        context=probe.bridge.context,
        policy=SinePolicy(4),
        parameter_overrides=[Parameter("initial_command", value=[0.0] * 4)],
    )
    probe.executor.add_node(node)
    try:
        assert _wait(lambda: sub.get_publisher_count() > before)  # its /rosout publisher is matched
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        mine = lambda: [m for name, m in logs if name == "policy_bridge_logged"]  # noqa: E731
        assert _wait(lambda: any(m.startswith("configured:") for m in mine()))  # logged after the set
        lines = [m for m in mine() if m.startswith("parameters:")]
        assert len(lines) == 1, lines
        assert (
            "dry_run=True" in lines[0]  # the code's default: dry run
            and "stale_timeout_s=0.15" in lines[0]  # three input periods at 20 Hz
            and "hold_mode='last'" in lines[0]
        )
    finally:
        probe.executor.remove_node(node)
        node.destroy_node()


def test_a_camera_resending_an_old_frame_is_stale(rig):
    r = rig(hold_mode="zero", diagnostics_rate_hz=20.0)
    r.keep_feeding()
    assert _wait(lambda: r.diagnostics().get("state") == "ok")
    r.feeding.set()
    r.feeder.join(2)
    old = r.peer.get_clock().now().nanoseconds * 1e-9 - 10.0
    stamp = conv.array_to_image(np.zeros((1, 1, 3), np.uint8), r.peer.get_clock().now().to_msg()).header.stamp
    stamp.sec, stamp.nanosec = int(old), int((old % 1) * 1e9)
    image = conv.array_to_image(np.full((16, 16, 3), 128, np.uint8), stamp)

    def resend() -> bool:
        now = r.peer.get_clock().now().to_msg()
        r.camera.publish(image)  # the same frame, stamped 10 s ago, at 50 Hz
        r.state.publish(conv.vector_to_joint_state(np.zeros(4), STATE_NAMES, now))
        time.sleep(0.02)
        return r.diagnostics().get("state") == "stale_camera"

    assert _wait(resend)
    since = time.monotonic()
    for _ in range(10):
        resend()
    assert np.all(_values(r.commands(after=since + PERIOD)) == 0)


def test_a_tick_sees_the_inputs_that_arrived_before_it_on_a_busy_executor(context):
    """The executor runs due timers before subscriptions: a tick must take waiting camera and state
    messages itself, or a loaded executor trips the watchdog on inputs that did arrive in time."""
    bridge = PolicyBridgeNode(
        "policy_bridge_busy",
        context=context,
        policy=SinePolicy(4),
        parameter_overrides=[
            Parameter("instruction", value="reach"),
            Parameter("camera_topic", value="/busy/camera"),
            Parameter("initial_command", value=[0.0] * 4),
            Parameter("state_topic", value="/busy/state"),
        ],
    )
    peer = rclpy.create_node("busy_peer", context=context)
    try:
        assert bridge.start()
        camera = peer.create_publisher(Image, "/busy/camera", qos_profile_sensor_data)
        state = peer.create_publisher(JointState, "/busy/state", qos_profile_sensor_data)

        def fresh_after_a_tick() -> bool:  # nothing spins: only the tick itself can read the inputs
            stamp = peer.get_clock().now().to_msg()
            camera.publish(conv.array_to_image(np.zeros((8, 8, 3), np.uint8), stamp))
            state.publish(conv.vector_to_joint_state(np.zeros(4), STATE_NAMES, stamp))
            time.sleep(0.01)
            bridge._on_tick()
            return not bridge.core.watchdog.stale_inputs(time.monotonic())

        assert _wait(fresh_after_a_tick, timeout=5)
    finally:
        bridge.destroy_node()
        peer.destroy_node()


def _jtc_takes(msg: JointTrajectory, received: float) -> bool:
    """The JointTrajectoryController's time check: a non-zero stamp whose last point is already in the
    past on arrival is refused; a zero stamp means "start now"."""
    start = conv.from_time(msg.header.stamp)
    end = start + conv.from_duration(msg.points[-1].time_from_start)
    return start == 0.0 or end >= received


def test_trajectory_holds_are_accepted_by_a_joint_trajectory_controller(rig):
    topic = "/joint_trajectory_controller/joint_trajectory"
    r = rig(topics=(), output_mode="trajectory", joint_names=["j1", "j2", "j3", "j4"])
    heard: list = []
    r.peer.create_subscription(
        JointTrajectory,
        topic,
        lambda m: heard.append((r.peer.get_clock().now().nanoseconds * 1e-9, m)),
        RELIABLE,
    )
    r.feed(0.5)  # stream, then the inputs stop: the bridge holds
    assert _wait(lambda: any(len(m.points) == 1 for _, m in heard))
    holds = [(t, m) for t, m in heard if len(m.points) == 1]
    for received, msg in holds:
        assert _jtc_takes(msg, received), (
            f"hold stamped {conv.from_time(msg.header.stamp)} refused at {received}"
        )
        assert conv.trajectory_rejection(msg, received, ["j1", "j2", "j3", "j4"]) is None
    last_plan = [m for _, m in heard if len(m.points) > 1][-1]
    assert np.all(
        np.abs(np.subtract(holds[-1][1].points[0].positions, last_plan.points[0].positions)) <= 0.5 * 20
    )


def test_deactivate_ramps_to_the_hold_through_the_filter(rig):
    r = rig(hold_mode="zero", max_delta=[0.1])
    r.keep_feeding()
    assert _wait(lambda: np.abs(_values(r.commands())).max(initial=0) > 0.35)
    r.bridge.trigger_deactivate()
    # the stop waits for the peer's reader to acknowledge; its executor thread may still be behind
    _wait(lambda: np.all(_values(r.commands())[-1] == 0), timeout=2.0)
    values = _values(r.commands())
    assert np.all(values[-1] == 0)  # its last word is the hold ...
    assert np.abs(np.diff(values, axis=0)).max() <= 0.1 + 1e-9  # ... reached at max_delta per tick
    r.bridge.trigger_activate()  # (the fixture deactivates again)


class FailingPolicy:
    """Streams a sine for a while, then raises on every call."""

    last_decode_stats = None

    def __init__(self, good_calls: int):
        self.sine = SinePolicy(4, chunk_size=4, amplitude=0.5, control_rate_hz=RATE_HZ)
        self.calls, self.good_calls = 0, good_calls

    def reset(self):
        pass

    def predict_action_chunk(self, obs):
        self.calls += 1
        if self.calls > self.good_calls:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.sine.predict_action_chunk(obs)


def test_a_policy_that_keeps_failing_stops_the_node_with_a_hold_and_status_1(context):
    bridge = PolicyBridgeNode(
        "policy_bridge_failing",
        context=context,
        policy=FailingPolicy(good_calls=6),
        parameter_overrides=[
            Parameter("instruction", value="reach"),
            Parameter("hold_mode", value="zero"),
            Parameter("inference_failure_limit", value=3),
            Parameter("command_topic", value="/failing/commands"),
            Parameter("dry_run", value=False),
        ],
    )
    assert bridge.start()
    peer = rclpy.create_node("failing_peer", context=context)
    commands: list = []
    peer.create_subscription(
        Float64MultiArray, "/failing/commands", lambda m: commands.append(m.data), RELIABLE
    )
    camera = peer.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    state = peer.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)

    def feed():
        stamp = peer.get_clock().now().to_msg()
        camera.publish(conv.array_to_image(np.zeros((8, 8, 3), np.uint8), stamp))
        state.publish(conv.vector_to_joint_state(np.zeros(4), STATE_NAMES, stamp))

    peer.create_timer(0.02, feed)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(peer)
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)  # a guard only: the failures end the spin long before
    timer.start()
    drain = SingleThreadedExecutor(context=context)
    try:
        code = spin([bridge], executor, stop)  # spin shuts its executor down when it returns
        drain.add_node(peer)
        for _ in range(10):  # the last commands reach the peer
            drain.spin_once(timeout_sec=0.02)
    finally:
        timer.cancel()
        drain.shutdown()
        peer.destroy_node()
    assert code == 1 and not stop.is_set()
    values = np.asarray(commands)
    assert np.abs(values).max() > 0 and np.all(values[-1] == 0)  # it moved, and its last word is the hold


def _bridge_process(tmp_path, name: str, domain: int) -> subprocess.Popen:
    params = tmp_path / f"{name}.yaml"
    params.write_text(
        "policy_bridge:\n  ros__parameters:\n"
        "    policy: 'sine:0.5'\n    instruction: reach the goal\n    output_mode: forward\n"
        "    hold_mode: zero\n    max_delta: [0.1]\n    image_width: 8\n    image_height: 8\n    dry_run: false\n"
        f"    command_topic: /{name}/commands\n"
    )
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [sys.executable, "-m", "ceed_vla.cli", "bridge", "--params", str(params)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _drive_then_signal(
    proc: subprocess.Popen, sig: signal.Signals, domain: int
) -> tuple[bool, np.ndarray, str]:
    """Feed the bridge in `proc` until it moves, send `sig`; returns (it moved, the commands [N, 4]
    it published, its output)."""
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    peer = rclpy.create_node("signal_peer", context=ctx)
    commands: list = []
    topic = f"/{sig.name.lower()}/commands"
    peer.create_subscription(Float64MultiArray, topic, lambda m: commands.append(m.data), RELIABLE)
    camera = peer.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    state = peer.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(peer)
    out = ""
    try:
        end = time.monotonic() + 60
        moving = False
        while time.monotonic() < end and proc.poll() is None and not moving:
            stamp = peer.get_clock().now().to_msg()
            camera.publish(conv.array_to_image(np.zeros((8, 8, 3), np.uint8), stamp))
            state.publish(conv.vector_to_joint_state(np.zeros(4), STATE_NAMES, stamp))
            executor.spin_once(timeout_sec=0.02)
            moving = len(commands) > 10 and np.abs(commands[-1]).max() > 0.25
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        # take every command still queued for the peer (one callback per spin): until none has come
        # for half a second, so a slow machine does not cut the stop's last messages off
        quiet_until, deadline = time.monotonic() + 0.5, time.monotonic() + 10
        while time.monotonic() < min(quiet_until, deadline):
            seen = len(commands)
            executor.spin_once(timeout_sec=0.05)
            if len(commands) != seen:
                quiet_until = time.monotonic() + 0.5
    finally:
        executor.shutdown()
        peer.destroy_node()
        rclpy.shutdown(context=ctx)
    return moving, np.asarray(commands), out


def test_sigint_and_sigterm_end_with_a_hold_and_status_0(tmp_path):
    """Both signals, each to its own `ceed bridge` process on its own domain (started together)."""
    base = 60 + os.getpid() % 50
    sigs = (signal.SIGINT, signal.SIGTERM)
    procs = {sig: _bridge_process(tmp_path, sig.name.lower(), base + i) for i, sig in enumerate(sigs)}
    try:
        for i, sig in enumerate(sigs):
            moving, values, out = _drive_then_signal(procs[sig], sig, base + i)
            assert moving, f"{sig.name}: the bridge never moved; output:\n{out[-2000:]}"
            assert procs[sig].returncode == 0, f"{sig.name}: exit {procs[sig].returncode}\n{out[-2000:]}"
            assert np.all(values[-1] == 0), f"{sig.name}: last command {values[-1]} is not the hold"
            assert np.abs(np.diff(values, axis=0)).max() <= 0.1 + 1e-9  # the stop ramps at max_delta
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
