"""A MuJoCo (MetaWorld) robot behind the same topics as a real arm, so the whole loop runs over ROS 2.

The node steps one `ceed_vla.sim` task at a fixed wall-clock rate and applies the newest command at
every step (zero-order hold; a command older than `command_timeout_s` becomes a zero action, as a
robot driver's own watchdog would do). The sim keeps moving while the policy thinks: latency costs
success here as it does on a real arm. MetaWorld's step is 12.5 ms of sim time, so `step_rate_hz`
80 is real time; the default matches the bridge's control rate instead, one command per step.

    out  camera_topic             sensor_msgs/Image rgb8, camera_rate_hz     (sensor-data QoS)
                                  several cameras (`camera: corner2,gripperPOV`): one topic each,
                                  /camera/<name>/image_raw (`camera_topics()`)
    out  state_topic              sensor_msgs/JointState ee_x, ee_y, ee_z, gripper, with each frame
    out  environment_state_topic  std_msgs/Float32MultiArray, MetaWorld's raw state (for the expert)

Image, state and raw state are published together from one snapshot at the camera rate, with the
same header stamp, so an observation never mixes two instants.
    out  instruction_topic        std_msgs/String, latched
    out  success_topic            std_msgs/Bool, latched, on every change and at episode end
    in   command_topic            Float64MultiArray | JointTrajectory | TwistStamped (command_mode)

A policy bridge in the same process (`ceed bridge --params launch/config/sim.yaml`) plans ahead with
the simulator's own forward model (`forward_model`: `MetaWorldEnv.predict_state` with the arm's own
dynamics, as `ceed eval` does) where its state and commands are this robot's; otherwise it uses its
`state_rollforward`.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from ceed_vla.sim.env import DEFAULT_CAMERA, DEFAULT_GOAL_MARKER_RADIUS, camera_feature_keys
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from . import conversions as conv
from . import ros_params
from .config import (
    DEFAULT_COMMAND_TOPICS,
    ConfigError,
    OutputMode,
    parse_enum,
    require_finite,
    require_positive,
)
from .node import LATCHED, RELIABLE, run

NODE_NAME = "sim_robot"
STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper"]
ACTION_DIM = 4


@dataclass
class SimRobotConfig:
    task: str = "reach"
    seed: int = 100_000_000  # the first evaluation seed: a layout no recording saw
    instruction: str = ""  # "" = the task's held-out paraphrase
    image_size: int = 64
    camera: str = DEFAULT_CAMERA
    goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS
    step_rate_hz: float = 20.0
    camera_rate_hz: float = 30.0
    max_episode_steps: int = 250
    command_mode: OutputMode = OutputMode.FORWARD
    command_topic: str = ""  # "" = the default for command_mode
    gripper_topic: str = "/gripper_controller/commands"  # twist mode
    twist_scale: float = 1.0
    command_timeout_s: float = 0.25
    camera_topic: str = "/camera/image_raw"
    state_topic: str = "/joint_states"
    environment_state_topic: str = "/sim/environment_state"
    instruction_topic: str = "/instruction"
    success_topic: str = "/sim/success"

    def __post_init__(self):
        require_finite(self)
        self.command_mode = parse_enum(OutputMode, self.command_mode, "command_mode")
        for name in ("step_rate_hz", "camera_rate_hz", "twist_scale", "command_timeout_s"):
            require_positive(getattr(self, name), name)
        if not self.command_topic:
            self.command_topic = DEFAULT_COMMAND_TOPICS[self.command_mode]
        try:
            camera_feature_keys(self.camera)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def camera_topics(self) -> dict[str, str]:
        """Feature key -> image topic: `camera_topic` for one camera, /camera/<name>/image_raw for several
        (the bridge's `camera_topics` then lists `KEY=TOPIC` for each)."""
        keys = camera_feature_keys(self.camera)
        if len(keys) == 1:
            return {key: self.camera_topic for key in keys.values()}
        return {key: f"/camera/{name}/image_raw" for name, key in keys.items()}


class CommandBuffer:
    """Newest command per sim step: a single held command, or a timed trajectory sampled in time."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._command = np.zeros(ACTION_DIM)  # [4]
        self._received = -np.inf
        self._times = np.zeros(0)  # [T] absolute due times (s, ROS clock) of trajectory points
        self._points = np.zeros((0, ACTION_DIM))  # [T, 4]
        self.count = 0

    def set(self, command: np.ndarray, now: float) -> None:
        self._command, self._received = command, now
        self._times = np.zeros(0)
        self.count += 1

    def set_partial(self, values: np.ndarray, start: int, now: float) -> None:
        command = self._command.copy()
        command[start : start + len(values)] = values
        self.set(command, now)

    def set_trajectory(self, times: np.ndarray, points: np.ndarray, now: float) -> None:
        self._times, self._points, self._received = times, points, now
        self.count += 1

    def current(self, now: float) -> np.ndarray:
        """Command for a step at `now` (zeros when nothing fresh arrived)."""
        if self._times.size:
            due = np.searchsorted(self._times, now, side="right") - 1
            if due < 0 or now - self._times[-1] > self.timeout_s:
                return np.zeros(ACTION_DIM)
            return self._points[due]
        if now - self._received > self.timeout_s:
            return np.zeros(ACTION_DIM)
        return self._command


class SimRobotNode(Node):
    """The sim runs in one thread of its own: MuJoCo's EGL context belongs to the thread that made
    it, so stepping and rendering cannot move between executor threads."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        kwargs.setdefault("automatically_declare_parameters_from_overrides", True)  # refuse misspelt names
        super().__init__(node_name, **kwargs)
        ros_params.declare(self, SimRobotConfig)
        self.config = ros_params.read(self, SimRobotConfig)
        from ceed_vla.sim.tasks import get_task

        self.instruction = self.config.instruction or get_task(self.config.task).eval_instruction
        self.commands = CommandBuffer(self.config.command_timeout_s)
        self.success = False
        self.done = False
        self.steps = 0
        self._lock = threading.Lock()  # guards self.commands
        # guards the simulator's physics: the sim thread steps and renders it, a policy bridge in this
        # process rolls the arm forward model from it (`forward_model`)
        self._physics_lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._env = None  # the MetaWorldEnv, made in the sim thread
        self._make_entities()
        self._thread = threading.Thread(target=self._run, name="ceed-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            super().destroy_node()
            raise self._error
        c = self.config
        self.get_logger().info(
            f"sim robot: {c.task} seed {c.seed}, {c.step_rate_hz} Hz, '{self.instruction}'"
        )

    def _make_entities(self) -> None:
        c = self.config
        self.camera_pubs = {
            key: self.create_publisher(Image, topic, qos_profile_sensor_data)
            for key, topic in c.camera_topics().items()
        }
        self.state_pub = self.create_publisher(JointState, c.state_topic, qos_profile_sensor_data)
        self.env_state_pub = self.create_publisher(
            Float32MultiArray, c.environment_state_topic, qos_profile_sensor_data
        )
        self.instruction_pub = self.create_publisher(String, c.instruction_topic, LATCHED)
        self.success_pub = self.create_publisher(Bool, c.success_topic, LATCHED)
        kind = {
            OutputMode.FORWARD: Float64MultiArray,
            OutputMode.TRAJECTORY: JointTrajectory,
            OutputMode.TWIST: TwistStamped,
        }
        self.create_subscription(kind[c.command_mode], c.command_topic, self._on_command, RELIABLE)
        if c.command_mode is OutputMode.TWIST:
            self.create_subscription(Float64MultiArray, c.gripper_topic, self._on_gripper, RELIABLE)
        self.instruction_pub.publish(String(data=self.instruction))
        self.success_pub.publish(Bool(data=False))

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---- commands (executor threads) ---------------------------------------------------------
    def _on_command(self, msg) -> None:
        mode, now = self.config.command_mode, self._now()
        try:
            with self._lock:
                if mode is OutputMode.FORWARD:
                    self.commands.set(conv.float_array_to_vector(msg, ACTION_DIM), now)
                elif mode is OutputMode.TWIST:
                    self.commands.set_partial(conv.twist_to_vector(msg, self.config.twist_scale), 0, now)
                else:
                    self._on_trajectory(msg, now)
        except conv.MalformedInputError as exc:
            self.get_logger().warning(f"ignoring command: {exc}", throttle_duration_sec=2.0)

    def _on_trajectory(self, msg: JointTrajectory, now: float) -> None:
        points = np.asarray([p.positions for p in msg.points], dtype=np.float64)  # [T, 4]
        if points.ndim != 2 or points.shape[1] != ACTION_DIM or not np.all(np.isfinite(points)):
            raise conv.MalformedInputError(
                f"trajectory points have shape {points.shape}; expected [T, {ACTION_DIM}]"
            )
        start = conv.from_time(msg.header.stamp) or now  # a zero stamp means "now"
        times = start + np.asarray([conv.from_duration(p.time_from_start) for p in msg.points])  # [T]
        self.commands.set_trajectory(times, points, now)

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        with self._lock:
            self.commands.set_partial(np.asarray(msg.data[:1], dtype=np.float64), 3, self._now())

    # ---- the sim thread ----------------------------------------------------------------------
    def _run(self) -> None:
        from ceed_vla.sim.env import EnvConfig, MetaWorldEnv, quiet_metaworld_warnings

        c = self.config
        try:
            quiet_metaworld_warnings()
            env = MetaWorldEnv(
                EnvConfig(
                    c.task,
                    image_size=c.image_size,
                    camera=c.camera,
                    max_episode_steps=c.max_episode_steps,
                    goal_marker_radius=c.goal_marker_radius,
                )
            )
            env.reset(c.seed)
            self._env = env
        except BaseException as exc:  # handed to the constructor, which raises it
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        step_dt, camera_dt = 1.0 / c.step_rate_hz, 1.0 / c.camera_rate_hz
        next_step = next_camera = time.monotonic()
        try:
            while not self._stop.is_set() and self.context.ok():
                now = time.monotonic()
                if now >= next_camera:
                    self._publish_observation(env)
                    next_camera += camera_dt
                if now >= next_step:
                    self._step(env)
                    next_step += step_dt
                self._stop.wait(max(0.0, min(next_step, next_camera) - time.monotonic()))
        except Exception:
            if self.context.ok():  # a real failure, not a publish racing the shutdown
                raise
        finally:
            env.close()

    def _step(self, env) -> None:
        if self.done:
            return
        with self._lock:
            action = self.commands.current(self._now())
        with self._physics_lock:
            result = env.step(action, render=False)
        self.steps = env.steps
        if result.success and not self.success:
            self.success = True
            self.get_logger().info(f"task succeeded after {env.steps} steps")
        if result.success or result.truncated:
            self.done = True
            self.success_pub.publish(Bool(data=self.success))
            self.get_logger().info(f"episode over: success={self.success} after {env.steps} steps")

    def _publish_observation(self, env) -> None:
        with self._physics_lock:
            obs = env.observe()  # one snapshot: images [H, W, 3] each, state [4], environment_state [39]
        stamp = self.get_clock().now().to_msg()
        for key, image in obs.images.items():
            self.camera_pubs[key].publish(conv.array_to_image(image, stamp))
        self.state_pub.publish(conv.vector_to_joint_state(obs.state, STATE_NAMES, stamp))
        self.env_state_pub.publish(Float32MultiArray(data=obs.environment_state.astype(np.float32).tolist()))

    def forward_model(self, bridge):
        """The state rollforward of a policy bridge (`BridgeConfig` `bridge`) driving this robot, for
        planning ahead: (state [4], committed actions [d, 4], the policy's units) -> the state [4]
        after them, by `MetaWorldEnv.predict_state`'s arm model (the arm's own dynamics, contacts off)
        from the simulator's physics at the call, with each command applied for the sim steps of one
        bridge tick (zero-order hold); the state argument is not read (the physics are newer). None
        where it would not predict the bridge's state: the bridge reads another state layout or topic,
        commands another topic (a dry run reaches no robot) or another mode, converts units, or ticks
        at a rate that is not a whole number of sim steps."""
        c, env = self.config, self._env
        steps = c.step_rate_hz / bridge.control_rate_hz  # sim steps per bridge tick
        same = (
            env is not None
            and bridge.state_type == "joint_state"
            and list(bridge.state_joint_names) == STATE_NAMES
            and bridge.state_topic == c.state_topic
            and bridge.action_dim == ACTION_DIM
            and bridge.output_mode is c.command_mode
            and bridge.published_command_topic == c.command_topic
            and (
                c.command_mode is not OutputMode.TWIST
                or (bridge.twist_scale == c.twist_scale and bridge.published_gripper_topic == c.gripper_topic)
            )
            and all(v == 1.0 for v in bridge.unit_scale_array)
            and all(v == 0.0 for v in bridge.unit_offset_array)
            and round(steps) >= 1
            and abs(steps - round(steps)) < 1e-6
        )
        if not same:
            return None
        repeat = round(steps)

        def predict_state(state: np.ndarray, committed: np.ndarray) -> np.ndarray:
            # the arm model, as `ceed eval` plans ahead: rolled from the robot's physics as they are now
            # (the measured `state` may be a camera period older), with the sim thread held still
            actions = np.repeat(np.asarray(committed).reshape(-1, ACTION_DIM), repeat, 0)
            with self._physics_lock:
                return env.predict_state(env.raw_state[:4].astype(np.float32), actions, model="arm")

        return predict_state

    def destroy_node(self):
        self._stop.set()
        self._thread.join(5.0)
        return super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script `ceed-sim-robot`: `ceed-sim-robot --ros-args --params-file FILE`."""

    def make(stop):
        try:
            return [SimRobotNode()]
        except ValueError as exc:  # ConfigError, an unknown task or camera
            print(f"sim robot: {exc}", file=sys.stderr)
            return 1

    return run(make, sys.argv if args is None else args)


if __name__ == "__main__":
    sys.exit(main())
