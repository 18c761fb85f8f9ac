"""`ceed bench bridge --faults`: replay attacks against the real bridge node over DDS on loopback.

Each output mode (trajectory, forward, twist) gets bridge processes of its own, each on its own
domain; a peer node in this process plays camera, arm and operator and records every command:

    process     how it starts                     attacks, in order
    attacks     `python -m ...faults serve`       wild_actions, estop_pulses (during a 300 Hz camera
                (the node's own main, a policy    flood), stale_camera, old_stamps, future_stamps,
                whose behaviour the peer can      duplicate_joints, long_instruction,
                switch)                           inference_exception, deactivate, then SIGINT
    sigterm     `ceed bridge --params FILE`       SIGTERM while moving (the stop ramps in every mode)
    crash       `python -m ...faults serve`       a policy that keeps raising (exit status 1)
    nan_param   `ceed bridge --params FILE`       stale_timeout_s: .nan (configure must fail)
    typo_param  `ceed bridge --params FILE`       dryrun: true for dry_run (configure must fail)
    bool_stale  `ceed bridge --params FILE`       stale_timeout_s: true (configure must fail)
    bool_delta  `ceed bridge --params FILE`       max_delta: [true] (configure must fail)
    namespaced_file  `ceed bridge --params FILE`  a `/robot/policy_bridge:` key: the node runs in
                                                  /robot on the file's values (its own topic)
    wildcard_file    `ceed bridge --params FILE`  `/**:` and `/**/policy_bridge:` keys: the same
    unbound_file     `ceed-policy-bridge ...`     a `/robot/policy_bridge:` file, node in /: exit 1,
                                                  nothing published (before: code defaults, live)
    far_first_command `ceed bridge --params FILE` the arm far from the policy's first action: the
                                                  first command within max_delta of the arm

The attacks process also gets `timer_stall` (the executor blocked 4 periods at a time, so ticks
are missed while the controller runs the plan) and `jittered_camera` (3 s of normal running with
the camera's 33 ms period jittered, sd 6 ms: held ticks counted; the camera is jittered throughout).
The peer is also the arm: its /joint_states carry the commanded joints at the position the
controller would be at (trajectory: the running plan's point now; forward: the last command).

Per attack, from the commands received in its window: commands, limit / delta-clamp / non-finite
violations, motion commands while the bridge should hold (after its first hold step, any command
that is not one: on a zero hold a full max_delta step toward zero or zero itself, on a "last" hold
the same command, in trajectory mode only hold messages), e-stop pulses sent and latched, hold
latency (control periods from the fault to the first hold step) and the process exit status. A declared e-stop jump (a step past
max_delta that lands on the zero hold) is counted as `estop_jumps`, not as a violation.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ceed_vla.atomic import atomic_write_json

DEFAULT_OUT = Path("benchmarks/results/bench_bridge_faults.json")
MODES = ("trajectory", "forward", "twist")
RATE_HZ = 20.0
PERIOD = 1.0 / RATE_HZ
LOW, HIGH, MAX_DELTA = -0.6, 0.6, 0.25
STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper"]
JOINTS = ["j1", "j2", "j3", "j4"]
TOPICS = {
    "trajectory": "/joint_trajectory_controller/joint_trajectory",
    "forward": "/forward_position_controller/commands",
    "twist": "/servo_node/delta_twist_cmds",
}
GRIPPER = "/gripper_controller/commands"
SWITCH_TOPIC = "/fault/policy_mode"
EPS = 1e-9
CAMERA_HZ = 30.0
CAMERA_JITTER_S = 0.006  # sd of the camera period: a USB camera under load
STALL_S = 4 * PERIOD  # one blocked executor callback in `timer_stall`
FAR_POSE = [0.55, -0.55, 0.55, -0.55]  # the arm in `far_first_command`: the sine starts up to 1.05 away


def bridge_params(mode: str, **extra) -> dict:
    params = {
        "instruction": "reach the red goal",
        "control_rate_hz": RATE_HZ,
        "output_mode": mode,
        "dry_run": False,  # the peer plays the controller on the live topic
        "image_width": 16,
        "image_height": 16,
        "input_rate_hz": CAMERA_HZ,  # the stale timeout is derived: 3 camera periods, 0.1 s
        "diagnostics_rate_hz": 20.0,
        "action_low": [LOW] * 4,
        "action_high": [HIGH] * 4,
        "max_delta": [MAX_DELTA],
        "blend_steps": 0,
        "policy": "sine:0.5",
    }
    if mode != "twist":
        params["joint_names"] = JOINTS  # where the arm is: the reference of every start and hold
    params.update(extra)
    return params


def write_params(
    path: Path, params: dict, key: str = "policy_bridge", extra_keys: dict | None = None
) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({**(extra_keys or {}), key: {"ros__parameters": params}}))
    return path


# ---- the bridge side: `python -m ceed_vla.robot_bridge.faults serve` --------------------------------


class FaultPolicy:
    """A sine policy the peer can turn wild (out-of-range and non-finite chunks) or make fail once;
    with `fail_after` it fails for good after that many calls."""

    last_decode_stats = None

    def __init__(self, fail_after: int = 0):
        from .policies import SinePolicy

        self.sine = SinePolicy(4, chunk_size=8, amplitude=0.5, control_rate_hz=RATE_HZ)
        self.mode = "sine"
        self.calls, self.fail_after = 0, fail_after

    def reset(self):
        pass

    def predict_action_chunk(self, obs):
        import torch

        self.calls += 1
        if self.mode == "raise_once":  # a transient failure: the next call works again
            self.mode = "sine"
            raise RuntimeError("injected inference failure")
        if self.fail_after and self.calls > self.fail_after:
            raise RuntimeError("injected inference failure (for good)")
        if self.mode == "wild":
            if self.calls % 2:
                return torch.tensor(
                    [[[5.0, -5.0, 3.0, -3.0]] * 4 + [[-5.0, 5.0, -3.0, 3.0]] * 4]
                )  # [1, 8, 4]
            chunk = torch.full((1, 8, 4), 0.3)
            chunk[0, 1, 0], chunk[0, 3, 2] = float("nan"), float("inf")
            return chunk
        return self.sine.predict_action_chunk(obs)


def serve(argv: list[str]) -> int:
    """The bridge process of the attacks: the node's own `run` (signals, exit status), a FaultPolicy."""
    from rclpy.node import Node
    from std_msgs.msg import String

    from .node import RELIABLE, PolicyBridgeNode, run

    parser = argparse.ArgumentParser(prog="faults serve")
    parser.add_argument("--params", required=True)
    parser.add_argument("--fail-after", type=int, default=0)
    args = parser.parse_args(argv)
    policy = FaultPolicy(args.fail_after)

    def make(stop):
        bridge = PolicyBridgeNode(policy=policy)
        if not bridge.start():
            bridge.destroy_node()
            return 1
        switch = Node("fault_switch")

        def set_mode(msg):
            if msg.data.startswith("stall:"):  # block the executor: the control timer misses ticks
                time.sleep(float(msg.data.split(":")[1]))
                return
            policy.mode = msg.data

        switch.create_subscription(String, SWITCH_TOPIC, set_mode, RELIABLE)
        return [bridge, switch]

    return run(make, ["faults", "--ros-args", "--params-file", args.params])


# ---- the peer side -------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    mode: str
    attack: str
    commands: int = 0
    limit_violations: int = 0
    delta_violations: int = 0
    non_finite: int = 0
    motion_while_holding: int = 0
    estop_pulses_sent: int = 0
    estop_pulses_latched: int = 0
    estop_jumps: int = 0
    hold_latency_periods: float | None = None  # worst over the attack's faults; None: no hold expected
    held: bool = True  # every fault of the attack reached its hold
    exit_code: int | None = None
    ticks: int | None = None  # jittered_camera: control ticks in the window, and how many held
    held_ticks: int | None = None
    expect_commands: bool = False  # the attack passes only if commands flowed (a file that binds)
    notes: list[str] = field(default_factory=list)


class Peer:
    """Camera, arm and operator for one bridge process, in a context on that process's domain."""

    def __init__(self, domain: int, mode: str, command_topic: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TwistStamped
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Empty, Float64MultiArray, String
        from trajectory_msgs.msg import JointTrajectory

        from . import conversions as conv
        from .node import ESTOP, ESTOP_RESET, LATCHED, RELIABLE

        self.conv, self.mode = conv, mode
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("fault_peer", context=self.context)
        n = self.node
        self.lock = threading.Lock()
        self.received: list[tuple[float, object]] = []  # (monotonic arrival, message)
        self.gripper: list[tuple[float, list[float]]] = []
        self.diag: dict[str, str] = {}
        kind = {"trajectory": JointTrajectory, "forward": Float64MultiArray, "twist": TwistStamped}[mode]
        n.create_subscription(kind, command_topic, self._on_command, RELIABLE)
        n.create_subscription(Float64MultiArray, GRIPPER, self._on_gripper, RELIABLE)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, RELIABLE)
        self.camera = n.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.state = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.instruction = n.create_publisher(String, "/instruction", LATCHED)
        self.estop = n.create_publisher(Bool, "/estop", ESTOP)
        self.reset = n.create_publisher(Empty, "/estop_reset", ESTOP_RESET)
        self.switch = n.create_publisher(String, SWITCH_TOPIC, RELIABLE)
        self.msgs = {"Bool": Bool, "Empty": Empty, "String": String}
        self.image = conv.array_to_image(np.full((16, 16, 3), 128, np.uint8), n.get_clock().now().to_msg())
        self.feed = {"camera": True, "state": True, "stamp_offset": 0.0, "names": STATE_NAMES, "flood": False}
        self.arm = np.zeros(4)  # the arm's joint positions (JOINTS) before any command
        self.arm_plan: tuple[float, np.ndarray, np.ndarray] | None = None  # (start, times [T], points [T, D])
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)
        self._stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.executor.spin, daemon=True),
            threading.Thread(target=self._feeder, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _on_command(self, msg) -> None:
        with self.lock:
            self.received.append((time.monotonic(), msg))
            if self.mode == "forward":
                self.arm = np.asarray(msg.data, dtype=np.float64)
            elif self.mode == "trajectory":  # a JointTrajectoryController: a zero stamp starts now
                now = self.node.get_clock().now().nanoseconds * 1e-9
                start = self.conv.from_time(msg.header.stamp) or now
                times = np.asarray([self.conv.from_duration(p.time_from_start) for p in msg.points])
                points = np.asarray([p.positions for p in msg.points], dtype=np.float64)
                current = self.arm_position(now)
                self.arm_plan = (start, np.concatenate([[now - start], times]), np.vstack([current, points]))

    def arm_position(self, now: float) -> np.ndarray:
        """Where the arm is at ROS time `now` [4]: the running plan's point (trajectory), the last
        command (forward), else where it started."""
        if self.mode != "trajectory" or self.arm_plan is None:
            return self.arm.copy()
        start, times, points = self.arm_plan
        t = min(max(now - start, times[0]), times[-1])
        return np.asarray([np.interp(t, times, points[:, j]) for j in range(points.shape[1])])

    def _on_gripper(self, msg) -> None:
        with self.lock:
            self.gripper.append((time.monotonic(), list(msg.data)))

    def _on_diag(self, msg) -> None:
        self.diag = self.conv.diagnostic_values(msg)

    def _feeder(self) -> None:
        """Camera and state at 30 Hz with a jittered period (300 Hz of extra frames while flooding)."""
        rng = np.random.default_rng(0)
        next_frame = time.monotonic()
        while not self._stop.is_set():
            f = self.feed
            now = time.monotonic()
            stamp = self.node.get_clock().now()
            if f["stamp_offset"]:
                from rclpy.duration import Duration

                offset = Duration(nanoseconds=int(abs(f["stamp_offset"]) * 1e9))
                stamp = stamp + offset if f["stamp_offset"] > 0 else stamp - offset
            if now >= next_frame:
                if f["camera"]:
                    self.image.header.stamp = stamp.to_msg()
                    self.camera.publish(self.image)
                if f["state"]:
                    names = list(f["names"])
                    ros_now = self.node.get_clock().now()
                    with self.lock:
                        arm = self.arm_position(ros_now.nanoseconds * 1e-9)
                    values = np.concatenate([np.zeros(len(names)), arm])
                    self.state.publish(
                        self.conv.vector_to_joint_state(values, names + JOINTS, ros_now.to_msg())
                    )
                next_frame += max(0.005, 1 / CAMERA_HZ + rng.normal(0.0, CAMERA_JITTER_S))
            elif f["flood"] and f["camera"]:
                self.image.header.stamp = stamp.to_msg()
                self.camera.publish(self.image)
            time.sleep(1 / 300 if f["flood"] else max(0.0, min(0.005, next_frame - time.monotonic())))

    def set_policy(self, mode: str) -> None:
        self.switch.publish(self.msgs["String"](data=mode))

    def wait(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.005)
        return predicate()

    def samples(self, start: float, end: float) -> list[tuple[float, object]]:
        with self.lock:
            return [(t, m) for t, m in self.received if start <= t <= end]

    def vectors(self, start: float, end: float) -> list[tuple[float, np.ndarray]]:
        """Per-tick commands [D] in [start, end] (twist: x, y, z and the gripper published with it)."""
        with self.lock:
            received, gripper = list(self.received), list(self.gripper)
        out = []
        if self.mode == "forward":
            out = [(t, np.asarray(m.data, dtype=np.float64)) for t, m in received]
        elif self.mode == "twist":
            for (t, m), (_, g) in zip(received, gripper, strict=False):
                lin = m.twist.linear
                out.append((t, np.asarray([lin.x, lin.y, lin.z, *g], dtype=np.float64)))
        return [(t, v) for t, v in out if start <= t <= end]

    def lifecycle(self, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        client = self.node.create_client(ChangeState, "/policy_bridge/change_state")
        if not client.wait_for_service(timeout_sec=5):
            return False
        future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        ok = self.wait(future.done, 10)
        self.node.destroy_client(client)
        return ok and future.result().success

    def close(self) -> None:
        import rclpy

        self._stop.set()
        self.executor.shutdown()
        for t in self.threads:
            t.join(5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


# ---- analysis -------------------------------------------------------------------------------------


def zero_hold_mask(mode: str) -> np.ndarray:
    return np.asarray([True, True, True, False]) if mode == "twist" else np.zeros(4, dtype=bool)


def at_hold(mode: str, prev: np.ndarray, cmd: np.ndarray) -> bool:
    """Whether `cmd` [D] after `prev` is a step of the hold: on the zero-held dimensions a full
    max_delta step toward zero (or zero reached), on the others no change. The policies here change
    a command by far less than max_delta per tick, so a step like this is the bridge holding."""
    zero = zero_hold_mask(mode)
    ramp = np.abs(cmd[zero]) <= np.maximum(np.abs(prev[zero]) - MAX_DELTA, 0.0) + EPS
    return bool(np.all(ramp) and np.all(np.sign(cmd[zero]) * np.sign(prev[zero]) >= 0)) and bool(
        np.all(cmd[~zero] == prev[~zero])
    )


def check_vectors(result: AttackResult, vectors: list, estop_times: list[float] = ()) -> None:
    """Limits, delta clamp and finiteness over per-tick commands (the previous command included)."""
    zero = zero_hold_mask(result.mode)
    for i, (t, v) in enumerate(vectors):
        if not np.all(np.isfinite(v)):
            result.non_finite += 1
            continue
        result.limit_violations += int(np.any(v < LOW - EPS) or np.any(v > HIGH + EPS))
        if i == 0 or not np.all(np.isfinite(vectors[i - 1][1])):
            continue
        step = np.abs(v - vectors[i - 1][1])
        if np.any(step > MAX_DELTA + EPS):
            jump = np.all(v[zero] == 0) and np.all(step[~zero] <= MAX_DELTA + EPS)
            if jump and any(0 <= t - e <= 1.0 for e in estop_times):
                result.estop_jumps += 1
            else:
                result.delta_violations += 1


def trajectory_points(samples: list) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """(start time s, point times [T], positions [T, D]) per JointTrajectory; a zero stamp starts
    at its arrival (as the controller reads it), on the ROS clock of the arrival."""
    out = []
    for _t_arrival, msg, ros_arrival in samples:
        from . import conversions as conv

        start = conv.from_time(msg.header.stamp) or ros_arrival
        times = np.asarray([conv.from_duration(p.time_from_start) for p in msg.points])
        out.append((start, times, np.asarray([p.positions for p in msg.points], dtype=np.float64)))
    return out


def check_trajectories(result: AttackResult, plans: list) -> None:
    for k, (start, _times, points) in enumerate(plans):
        if not np.all(np.isfinite(points)):
            result.non_finite += 1
            continue
        result.limit_violations += int(np.any(points < LOW - EPS) or np.any(points > HIGH + EPS))
        steps = np.abs(np.diff(points, axis=0))
        result.delta_violations += int(np.any(steps > MAX_DELTA + EPS))
        if k == 0:
            continue
        p_start, p_times, p_points = plans[k - 1]
        # the previous plan's command for the tick before this one starts (one period of slack)
        due = p_start + p_times
        near = np.abs(due - (start - PERIOD)) <= 1.5 * PERIOD
        candidates = p_points[near] if near.any() else p_points[-1:]
        gap = np.min(np.max(np.abs(candidates - points[0]), axis=1))
        result.delta_violations += int(gap > MAX_DELTA + EPS)


def hold_window(result: AttackResult, peer: Peer, fault: float, end: float, motion: bool = True) -> None:
    """Hold latency and (with `motion`) motion while holding, for one fault that starts at `fault`
    and lasts until `end`. Without `motion` the fault is over once the bridge has held (a transient
    inference failure), so resuming after the hold is expected."""
    if result.mode == "trajectory":
        samples = peer.samples(fault, end)
        holds = [i for i, (_, m) in enumerate(samples) if len(m.points) == 1 and m.header.stamp.sec == 0]
        if not holds:
            result.held = False
            return
        first = holds[0]
        latency = (samples[first][0] - fault) / PERIOD
        point = list(samples[first][1].points[0].positions)
        result.motion_while_holding += motion * sum(
            1 for _, m in samples[first + 1 :] if len(m.points) > 1 or list(m.points[0].positions) != point
        )
    else:
        vectors = peer.vectors(fault - 2 * PERIOD, end)
        before = [i for i, (t, _) in enumerate(vectors) if t < fault]
        start = before[-1] if before else 0
        first = next(
            (
                i
                for i in range(start + 1, len(vectors))
                if at_hold(result.mode, vectors[i - 1][1], vectors[i][1])
            ),
            None,
        )
        if first is None:
            result.held = False
            return
        latency = (vectors[first][0] - fault) / PERIOD
        result.motion_while_holding += motion * sum(
            1
            for i in range(first + 1, len(vectors))
            if not at_hold(result.mode, vectors[i - 1][1], vectors[i][1])
        )
    result.hold_latency_periods = max(result.hold_latency_periods or 0.0, round(latency, 2))


def check_window(result: AttackResult, peer: Peer, start: float, end: float, estop_times=()) -> None:
    if result.mode == "trajectory":
        ros_offset = peer.node.get_clock().now().nanoseconds * 1e-9 - time.monotonic()
        samples = [(t, m, t + ros_offset) for t, m in peer.samples(start - PERIOD, end)]
        result.commands += sum(1 for t, _, _ in samples if t >= start)
        check_trajectories(result, trajectory_points(samples))
    else:
        vectors = peer.vectors(start - PERIOD, end)
        result.commands += sum(1 for t, _ in vectors if t >= start)
        check_vectors(result, vectors, estop_times)


# ---- the attacks -----------------------------------------------------------------------------------


def _moving(peer: Peer, timeout: float = 20.0) -> bool:
    """Wait until the bridge streams again (a fresh plan, or commands that change)."""
    since = time.monotonic()
    if peer.mode == "trajectory":
        return peer.wait(lambda: any(len(m.points) > 1 for _, m in peer.samples(since, math.inf)), timeout)

    def changing():
        v = peer.vectors(since, math.inf)
        return (
            len(v) >= 3
            and not np.array_equal(v[-1][1], v[-2][1])
            and not at_hold(peer.mode, v[-2][1], v[-1][1])
        )

    return peer.wait(changing, timeout)


def attack_sequence(peer: Peer, mode: str) -> list[AttackResult]:
    results = []

    def window(name: str, fault, recover, hold: bool = True, seconds: float = 1.0, motion: bool = True):
        r = AttackResult(mode, name)
        if not _moving(peer):
            r.notes.append("the bridge was not moving before the attack")
        start = time.monotonic()
        fault_at = fault() or start
        time.sleep(seconds)
        end = time.monotonic()
        if hold:
            hold_window(r, peer, fault_at, end, motion)
        recover()
        time.sleep(3 * PERIOD)
        check_window(r, peer, start, time.monotonic())
        if not hold:
            r.hold_latency_periods = None
        results.append(r)
        return r

    f = peer.feed
    window(
        "wild_actions",
        lambda: peer.set_policy("wild"),
        lambda: peer.set_policy("sine"),
        hold=False,
        seconds=2.0,
    )

    # e-stop pulses during a 300 Hz camera flood: true then false at once, then an explicit reset
    r = AttackResult(mode, "estop_pulses")
    _moving(peer)
    f["flood"] = True
    start, pulses = time.monotonic(), []
    for _ in range(10):
        _moving(peer, 5.0)
        t = time.monotonic()
        peer.estop.publish(peer.msgs["Bool"](data=True))
        peer.estop.publish(peer.msgs["Bool"](data=False))
        pulses.append(t)
        r.estop_pulses_sent += 1
        if peer.wait(lambda: peer.diag.get("estop_latched") == "True", 1.0):
            r.estop_pulses_latched += 1
        time.sleep(4 * PERIOD)
        hold_window(r, peer, t, time.monotonic())
        peer.reset.publish(peer.msgs["Empty"]())
        peer.wait(lambda: peer.diag.get("estop_latched") == "False", 2.0)
    f["flood"] = False
    time.sleep(3 * PERIOD)
    check_window(r, peer, start, time.monotonic(), pulses)
    results.append(r)

    def stop_camera():
        f["camera"] = False
        return time.monotonic()

    window("stale_camera", stop_camera, lambda: f.update(camera=True), seconds=1.5)
    window("old_stamps", lambda: f.update(stamp_offset=-10.0), lambda: f.update(stamp_offset=0.0))
    window("future_stamps", lambda: f.update(stamp_offset=5.0), lambda: f.update(stamp_offset=0.0))
    window(
        "duplicate_joints",
        lambda: f.update(names=[*STATE_NAMES, "ee_x"]),
        lambda: f.update(names=STATE_NAMES),
    )
    String = peer.msgs["String"]
    window(
        "long_instruction",
        lambda: peer.instruction.publish(String(data="pick " * 20_000)),
        lambda: peer.instruction.publish(String(data="reach the red goal")),
    )
    # the policy fails at its next call, when the queue needs a refill (up to a chunk, 8 periods, after
    # the switch): the latency is counted from the switch
    window("inference_exception", lambda: peer.set_policy("raise_once"), lambda: None, motion=False)

    # the executor blocked for 4 periods, 5 times: ticks are missed while the controller runs the plan
    before = dict(peer.diag)

    def stalls():
        for _ in range(5):
            peer.switch.publish(String(data=f"stall:{STALL_S}"))
            time.sleep(0.5)

    r = window(
        "timer_stall", lambda: threading.Thread(target=stalls, daemon=True).start(), lambda: None, False, 3.0
    )
    missed = int(peer.diag.get("missed_ticks", 0)) - int(before.get("missed_ticks", 0))
    r.notes.append(f"{missed} missed ticks")

    # normal running with the jittered camera: how many ticks hold
    r = AttackResult(mode, "jittered_camera")
    _moving(peer)
    first = dict(peer.diag)
    start = time.monotonic()
    time.sleep(3.0)
    last = dict(peer.diag)
    check_window(r, peer, start, time.monotonic())
    r.ticks = int(last.get("ticks", 0)) - int(first.get("ticks", 0))
    r.held_ticks = int(last.get("hold_ticks", 0)) - int(first.get("hold_ticks", 0))
    r.notes.append(f"stale_timeout_ms {last.get('stale_timeout_ms')} (derived from the 30 Hz camera)")
    results.append(r)

    # lifecycle deactivate: the hold, then silence; activate resumes
    r = AttackResult(mode, "deactivate")
    _moving(peer)
    start = time.monotonic()
    deactivated = peer.lifecycle(4)  # TRANSITION_DEACTIVATE
    time.sleep(0.5)
    end = time.monotonic()
    hold_window(r, peer, start, end)
    silent_from = end - 0.3
    late = len(peer.samples(silent_from, end))
    activated = peer.lifecycle(3)  # TRANSITION_ACTIVATE
    check_window(r, peer, start, time.monotonic())
    r.motion_while_holding += late
    if not (deactivated and activated):
        r.notes.append(f"lifecycle transitions: deactivate {deactivated}, activate {activated}")
    results.append(r)
    return results


def last_is_hold(result: AttackResult, peer: Peer) -> None:
    """The last command received is the hold (checked after the process has exited)."""
    if result.mode == "trajectory":
        samples = peer.samples(-math.inf, math.inf)
        ok = bool(samples) and len(samples[-1][1].points) == 1 and samples[-1][1].header.stamp.sec == 0
    else:
        v = peer.vectors(-math.inf, math.inf)
        ok = len(v) >= 2 and at_hold(result.mode, v[-2][1], v[-1][1])
    result.held = ok
    if not ok:
        result.motion_while_holding += 1
        result.notes.append("the last command was not the hold")


# ---- processes -------------------------------------------------------------------------------------


def _start(cmd: list[str], domain: int) -> subprocess.Popen:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _serve_cmd(params: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ceed_vla.robot_bridge.faults", "serve", "--params", str(params), *extra]


def _bridge_cmd(params: Path) -> list[str]:
    return [sys.executable, "-m", "ceed_vla.cli", "bridge", "--params", str(params)]


def _finish(proc: subprocess.Popen, sig=None, timeout: float = 30.0) -> tuple[int, str]:
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


def run_mode(mode: str, workdir: Path, domain: int) -> list[AttackResult]:
    topic = TOPICS[mode]
    results: list[AttackResult] = []

    # the attacks, ended by SIGINT
    params = write_params(workdir / f"{mode}_attacks.yaml", bridge_params(mode))
    proc = _start(_serve_cmd(params), domain)
    peer = Peer(domain, mode, topic)
    try:
        if not _moving(peer, 60):
            code, out = _finish(proc, signal.SIGKILL)
            raise RuntimeError(f"{mode}: the bridge never streamed; its output:\n{out[-3000:]}")
        results += attack_sequence(peer, mode)
        r = AttackResult(mode, "sigint")
        _moving(peer)
        start = time.monotonic()
        r.exit_code, out = _finish(proc, signal.SIGINT)
        time.sleep(0.2)
        check_window(r, peer, start, time.monotonic())
        last_is_hold(r, peer)
        results.append(r)
        long_lines = [line for line in out.splitlines() if "instruction has" in line]
        results[[a.attack for a in results].index("long_instruction")].notes.append(
            f"{len(long_lines)} log line(s) for the long instruction, longest {max(map(len, long_lines), default=0)} chars"
        )
    finally:
        peer.close()
        if proc.poll() is None:
            _finish(proc, signal.SIGKILL)

    # processes of their own: SIGTERM through `ceed bridge`, a policy that keeps failing, bad and
    # namespaced parameter files, and a start with the arm far from the policy's first action
    own_topic = f"/robot_commands/{mode}"
    bound = bridge_params(mode, command_topic=own_topic)

    def file(name: str, params: dict, **kw) -> Path:
        return write_params(workdir / f"{mode}_{name}.yaml", params, **kw)

    cases = [
        dict(name="sigterm", cmd=_bridge_cmd(file("term", bridge_params(mode))), sig=signal.SIGTERM),
        dict(
            name="crash",
            cmd=_serve_cmd(
                file("crash", bridge_params(mode, inference_failure_limit=3)), "--fail-after", "20"
            ),
        ),
        dict(name="nan_param", cmd=_bridge_cmd(file("nan", bridge_params(mode, stale_timeout_s=math.nan)))),
        dict(name="typo_param", cmd=_bridge_cmd(file("typo", bridge_params(mode, dryrun=True)))),
        dict(
            name="bool_stale", cmd=_bridge_cmd(file("bool_stale", bridge_params(mode, stale_timeout_s=True)))
        ),
        dict(name="bool_delta", cmd=_bridge_cmd(file("bool_delta", bridge_params(mode, max_delta=[True])))),
        dict(
            name="namespaced_file",
            cmd=_bridge_cmd(file("ns", bound, key="/robot/policy_bridge")),
            sig=signal.SIGTERM,
            topic=own_topic,
            expect_commands=True,
        ),
        dict(
            name="wildcard_file",
            cmd=_bridge_cmd(
                file(
                    "wild",
                    bound,
                    key="/**/policy_bridge",
                    extra_keys={"/**": {"ros__parameters": {"use_sim_time": False}}},
                )
            ),
            sig=signal.SIGTERM,
            topic=own_topic,
            expect_commands=True,
        ),
        # the node started outside the file's namespace: before, it ran on its code defaults (a live
        # forward sine on the default forward topic), so the peer listens there
        dict(
            name="unbound_file",
            cmd=[
                sys.executable,
                "-m",
                "ceed_vla.robot_bridge.node",
                "--ros-args",
                "--params-file",
                str(file("unbound", bound, key="/robot/policy_bridge")),
            ],
            topic=TOPICS["forward"],
            peer_mode="forward",
        ),
        dict(
            name="far_first_command",
            cmd=_bridge_cmd(file("far", bridge_params(mode))),
            sig=signal.SIGTERM,
            far=True,
        ),
    ]
    for case in cases:
        name, cmd, sig = case["name"], case["cmd"], case.get("sig")
        domain += 1
        proc = _start(cmd, domain)
        peer = Peer(domain, case.get("peer_mode", mode), case.get("topic", topic))
        if case.get("far"):
            peer.arm = np.asarray(FAR_POSE, dtype=np.float64)
        r = AttackResult(mode, name, expect_commands=case.get("expect_commands", False))
        try:
            start = time.monotonic()
            if sig is not None:
                _moving(peer, 60)
                time.sleep(0.3)
            r.exit_code, out = _finish(proc, sig, timeout=90)
            time.sleep(0.3)
            r.mode = peer.mode  # the commands were checked as this output's
            check_window(r, peer, start, time.monotonic())
            r.mode = mode
            if case.get("far"):
                first_command_from(r, peer, FAR_POSE if mode != "twist" else [0.0, 0.0, 0.0, 0.0])
            if sig is not None or name == "crash":
                last_is_hold(r, peer)
            else:
                r.hold_latency_periods = None
                reason = [
                    ln.split("configure failed: ", 1)[1]
                    if "configure failed: " in ln
                    else ln.split("] ", 1)[-1]
                    for ln in out.splitlines()
                    if "configure failed: " in ln or "refusing to run" in ln or "bad parameter file" in ln
                ]
                r.notes.append(reason[0][:160] if reason else "no configure error logged")
        finally:
            peer.close()
        results.append(r)
    return results


def first_command_from(result: AttackResult, peer: Peer, reference) -> None:
    """The first command received is within max_delta of where the arm was (`reference` [D])."""
    reference = np.asarray(reference, dtype=np.float64)
    if peer.mode == "trajectory":
        samples = peer.samples(-math.inf, math.inf)
        first = np.asarray(samples[0][1].points[0].positions) if samples else None
    else:
        v = peer.vectors(-math.inf, math.inf)
        first = v[0][1] if v else None
    if first is None:
        result.notes.append("no command")
        result.held = False
        return
    gap = float(np.max(np.abs(first - reference)))
    result.notes.append(f"first command {gap:.3f} from the arm's pose")
    result.delta_violations += int(gap > MAX_DELTA + EPS)


EXPECTED_EXIT = {
    "sigint": 0,
    "sigterm": 0,
    "crash": 1,
    "nan_param": 1,
    "typo_param": 1,
    "bool_stale": 1,
    "bool_delta": 1,
    "namespaced_file": 0,
    "wildcard_file": 0,
    "unbound_file": 1,
    "far_first_command": 0,
}
MAX_HELD_SHARE = 0.05  # jittered_camera: at most this share of the ticks held


def table(rows: list[AttackResult]) -> str:
    head = (
        f"{'mode':<10} {'attack':<19} {'cmds':>5} {'limit':>5} {'delta':>5} {'nonfin':>6} {'moving':>6} "
        f"{'estop':>7} {'jumps':>5} {'latency':>7} {'exit':>4} {'held':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        estop = f"{r.estop_pulses_latched}/{r.estop_pulses_sent}" if r.estop_pulses_sent else "-"
        latency = "-" if r.hold_latency_periods is None else f"{r.hold_latency_periods:.1f}"
        code = "-" if r.exit_code is None else str(r.exit_code)
        lines.append(
            f"{r.mode:<10} {r.attack:<19} {r.commands:>5} {r.limit_violations:>5} {r.delta_violations:>5} "
            f"{r.non_finite:>6} {r.motion_while_holding:>6} {estop:>7} {r.estop_jumps:>5} {latency:>7} {code:>4} "
            f"{'-' if r.held_ticks is None else f'{r.held_ticks}/{r.ticks}':>7}"
        )
    return "\n".join(lines)


def passed(r: AttackResult) -> bool:
    ok = r.limit_violations == r.delta_violations == r.non_finite == r.motion_while_holding == 0
    ok = ok and r.held and r.estop_pulses_latched == r.estop_pulses_sent
    ok = ok and (not r.expect_commands or r.commands > 0)
    ok = ok and (r.held_ticks is None or r.held_ticks <= MAX_HELD_SHARE * max(r.ticks or 0, 1))
    return ok and (r.exit_code is None or r.exit_code == EXPECTED_EXIT.get(r.attack, 0))


def main(args: argparse.Namespace) -> int:
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"--modes {args.modes!r}: {unknown} are not output modes; use {','.join(MODES)}")
    base = int(os.environ.get("ROS_DOMAIN_ID", 0)) or 100 + os.getpid() % 80
    rows: list[AttackResult] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i, mode in enumerate(modes):
            print(f"  {mode}: attacking ...", flush=True)
            rows += run_mode(mode, Path(tmp), base + 10 * i)
    print(table(rows))
    failed = [f"{r.mode}/{r.attack}" for r in rows if not passed(r)]
    record = {
        "benchmark": "bridge_faults",
        "control_rate_hz": RATE_HZ,
        "limits": [LOW, HIGH],
        "max_delta": MAX_DELTA,
        "stale_timeout_s": 0.1,  # derived: 3 periods of the 30 Hz camera
        "camera_jitter_sd_s": CAMERA_JITTER_S,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_1m": os.getloadavg()[0],
        },
        "passed": not failed,
        "failed": failed,
        "results": [asdict(r) for r in rows],
    }
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}" + ("" if not failed else f"; FAILED: {', '.join(failed)}"))
    return 0 if not failed else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        sys.exit(serve(sys.argv[2:]))
    raise SystemExit(
        "usage: python -m ceed_vla.robot_bridge.faults serve --params FILE (see `ceed bench bridge --faults`)"
    )
