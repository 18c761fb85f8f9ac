"""The launch YAML run for real, each on its own DDS domain: the hardware file through
`ceed bridge --params FILE` in a subprocess (a dry run: commands only on the dry-run topics), and the
sim file through the same launcher code in this process (the bridge drives the MetaWorld sim robot
through an episode with the scripted expert).

The subprocess starts first (its imports dominate), so it comes up while the sim episode runs.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from ceed_vla.robot_bridge import conversions as conv
from ceed_vla.robot_bridge import launcher
from ceed_vla.robot_bridge.node import LATCHED, RELIABLE
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow, pytest.mark.timeout(150)]

CONFIG = Path(__file__).resolve().parents[1] / "launch" / "config"
DOMAINS = {"sim": 110 + os.getpid() % 60, "hardware": 170 + os.getpid() % 60}


def _start(name: str, params: Path, duration: float) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAINS[name]), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [
        sys.executable,
        "-m",
        "ceed_vla.cli",
        "bridge",
        "--params",
        str(params),
        "--duration",
        str(duration),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def hardware_process():
    proc = _start("hardware", CONFIG / "bridge_hardware.yaml", duration=150)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C the process, as an operator would; returns its exit code and output."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


class Peer:
    """A node in the given domain, spun in a background thread; `nodes` are spun with it."""

    def __init__(self, domain: int, args: list[str] | None = None):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain, args=args)
        self.node = Node("test_peer", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.nodes: list = []
        self.thread: threading.Thread | None = None
        self.received: dict[str, list] = {}

    def spin(self, nodes=()):
        self.nodes = list(nodes)
        for node in self.nodes:
            self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        return self

    def listen(self, kind, topic, qos=RELIABLE):
        self.received[topic] = []
        self.node.create_subscription(kind, topic, self.received[topic].append, qos)

    def close(self):
        self.executor.shutdown()
        if self.thread is not None:
            self.thread.join(5)
        for node in [*self.nodes, self.node]:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


def _wait(predicate, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and (proc is None or proc.poll() is None):
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_bridge_drives_the_sim_robot_through_an_episode(hardware_process, tmp_path):
    # The expert answers within a 50 ms tick, so no tick runs during a call and d would be 0: one tick
    # of margin makes the bridge commit a step ahead, planned from the sim robot's arm forward model.
    text = (CONFIG / "sim.yaml").read_text()
    anchor = "    control_rate_hz: 20.0\n"
    assert text.count(anchor) == 1
    params = tmp_path / "sim.yaml"
    params.write_text(text.replace(anchor, anchor + "    prefix_margin_ticks: 1\n"))
    peer = Peer(DOMAINS["sim"], args=launcher.ros_args(params))
    try:
        peer.listen(Bool, "/sim/success", LATCHED)
        peer.listen(DiagnosticArray, "/diagnostics")
        nodes = launcher.create_nodes(params, context=peer.context)
        assert sorted(n.get_name() for n in nodes) == ["policy_bridge", "sim_robot"]
        sim = next(n for n in nodes if n.get_name() == "sim_robot")
        bridge = next(n for n in nodes if n.get_name() == "policy_bridge")
        assert bridge.core.predict_state is not None  # it plans ahead with MetaWorld's forward model
        peer.spin(nodes)
        succeeded = _wait(lambda: any(m.data for m in peer.received["/sim/success"]), 60)
        steps = sim.steps
        diagnostics = [conv.diagnostic_values(m) for m in peer.received["/diagnostics"]]
    finally:
        peer.close()
    assert succeeded, f"the episode did not succeed over ROS 2 (sim stopped after {steps} steps)"
    assert 0 < steps < 250
    assert diagnostics and max(int(d["chunks"]) for d in diagnostics) >= steps // 2
    assert max(int(d["planned_ahead_chunks"]) for d in diagnostics) > 0


def test_hardware_launch_file_is_a_dry_run(hardware_process):
    proc, peer = hardware_process, Peer(DOMAINS["hardware"]).spin()
    servo = "/servo_node/delta_twist_cmds"
    try:
        peer.listen(TwistStamped, servo)
        peer.listen(TwistStamped, f"{servo}/dry_run")
        camera = peer.node.create_publisher(Image, "/camera/color/image_raw", qos_profile_sensor_data)
        state = peer.node.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        peer.node.create_publisher(String, "/instruction", LATCHED).publish(String(data="reach the red goal"))
        image = np.zeros((64, 64, 3), np.uint8)

        def dry_run_commands() -> bool:
            stamp = peer.node.get_clock().now().to_msg()
            camera.publish(conv.array_to_image(image, stamp))
            state.publish(conv.vector_to_joint_state(np.zeros(4), ["ee_x", "ee_y", "ee_z", "gripper"], stamp))
            return len(peer.received[f"{servo}/dry_run"]) >= 10

        flowing = _wait(dry_run_commands, 120, proc)
        real = list(peer.received[servo])
    finally:
        peer.close()
    code, out = _stop(proc)
    assert flowing, f"no commands on {servo}/dry_run; process output:\n{out[-3000:]}"
    assert real == []
    assert "DRY RUN" in out
    assert code == 0, out[-2000:]
