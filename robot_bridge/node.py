"""The policy bridge node: ROS 2 topics in and out around `BridgeCore` (which holds the logic).

Lifecycle (rclpy managed node): configure reads the parameters, loads the policy and creates the
subscriptions and publishers; activate starts the control timer and the inference worker; deactivate
stops both after publishing a hold; cleanup releases everything. With `autostart` (the default) the
node configures and activates itself, so it runs without a lifecycle manager.

Topics (names are parameters):
    in   camera_topic       sensor_msgs/Image         sensor-data QoS (best effort, keep last 5)
    in   state_topic        sensor_msgs/JointState    sensor-data QoS (geometry_msgs/PoseStamped
                                                      with state_type "pose")
    in   instruction_topic  std_msgs/String           reliable, transient local (latched)
    in   estop_topic        std_msgs/Bool             reliable, transient local (latched)
    in   estop_reset_topic  std_msgs/Empty            reliable: releases a latched e-stop
    out  command_topic      JointTrajectory | Float64MultiArray | TwistStamped, reliable
    out  diagnostics_topic  diagnostic_msgs/DiagnosticArray
"""

from __future__ import annotations

import sys
import time
from collections import deque

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float32MultiArray, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from . import conversions as conv
from . import ros_params
from .config import BridgeConfig, OutputMode
from .core import BridgeCore, TickResult
from .inference import InferenceWorker
from .policies import load_policy

LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
NODE_NAME = "policy_bridge"


class PolicyBridgeNode(LifecycleNode):
    """`policy`: an object with the policy API to use instead of the `policy` parameter (tests)."""

    def __init__(self, node_name: str = NODE_NAME, *, policy=None, **kwargs):
        super().__init__(node_name, **kwargs)
        ros_params.declare(self, BridgeConfig)
        self._given_policy = policy
        self._predict_kwargs: dict = {}
        self.config: BridgeConfig | None = None
        self.core: BridgeCore | None = None
        self.policy = None
        self.worker: InferenceWorker | None = None
        self._subs, self._pubs, self._timers = [], {}, []
        self._inputs = MutuallyExclusiveCallbackGroup()
        self._control = MutuallyExclusiveCallbackGroup()
        # one value per chunk, the newest kept: camera stamp -> first command computed from that frame
        self.camera_to_command_s: deque[float] = deque(maxlen=1000)

    # ---- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.config = ros_params.read(self, BridgeConfig)
            torch.set_num_threads(self.config.torch_threads)
            self.policy = self._given_policy or load_policy(
                self.config.policy, self.config.action_dim, self.config.control_rate_hz, self.config.device
            )
            self._predict_kwargs = self.config.decode_kwargs(getattr(self.policy, "n_bins", 256))
        except (ValueError, OSError, ImportError) as exc:  # ConfigError, PolicySpecError, a bad checkpoint
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.core = BridgeCore(self.config)
        self._create_subscriptions()
        self._create_publishers()
        self.get_logger().info(
            f"configured: policy {self.config.policy}, {self.config.output_mode.value} commands on "
            f"{self.config.published_command_topic} at {self.config.control_rate_hz} Hz"
            + (" (DRY RUN)" if self.config.dry_run else "")
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        self.core.restart_clock()
        self.worker = InferenceWorker(
            self.policy,
            self.core,
            self.config.period_s / 4,
            self._inference_error,
            predict_kwargs=self._predict_kwargs,
        )
        self.worker.start()
        self._timers = [
            self.create_timer(self.config.period_s, self._on_tick, callback_group=self._control),
            self.create_timer(
                1.0 / self.config.diagnostics_rate_hz, self._on_diagnostics, callback_group=self._inputs
            ),
        ]
        return result

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_control()
        if self.core is not None:
            self.core.queue.clear()
            self._publish_hold()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_control()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        self._stop_control()  # the inference thread must not outlive the node
        return super().destroy_node()

    def start(self) -> bool:
        """Configure and activate (what `autostart` does); returns whether the node is active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # ---- ROS entities ----------------------------------------------------------------------------
    def _create_subscriptions(self) -> None:
        c, g = self.config, self._inputs
        self._subs = [
            self.create_subscription(
                Image, c.camera_topic, self._on_image, qos_profile_sensor_data, callback_group=g
            ),
            self.create_subscription(
                PoseStamped if c.state_type == "pose" else JointState,
                c.state_topic,
                self._on_state,
                qos_profile_sensor_data,
                callback_group=g,
            ),
            self.create_subscription(
                String, c.instruction_topic, self._on_instruction, LATCHED, callback_group=g
            ),
            self.create_subscription(Bool, c.estop_topic, self._on_estop, LATCHED, callback_group=g),
            self.create_subscription(
                Empty, c.estop_reset_topic, self._on_estop_reset, RELIABLE, callback_group=g
            ),
        ]
        if c.environment_state_topic:
            self._subs.append(
                self.create_subscription(
                    Float32MultiArray,
                    c.environment_state_topic,
                    self._on_env_state,
                    qos_profile_sensor_data,
                    callback_group=g,
                )
            )

    def _create_publishers(self) -> None:
        c = self.config
        kind = {
            OutputMode.TRAJECTORY: JointTrajectory,
            OutputMode.FORWARD: Float64MultiArray,
            OutputMode.TWIST: TwistStamped,
        }
        self._pubs = {
            "command": self.create_lifecycle_publisher(
                kind[c.output_mode], c.published_command_topic, RELIABLE
            ),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, c.diagnostics_topic, RELIABLE),
        }
        if c.output_mode is OutputMode.TWIST and c.action_dim > 3:
            self._pubs["gripper"] = self.create_lifecycle_publisher(
                Float64MultiArray, c.published_gripper_topic, RELIABLE
            )

    def _release(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._subs, self._pubs = [], {}
        self.policy, self.core = None, None

    def _stop_control(self) -> None:
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    # ---- callbacks -------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        try:
            image = conv.image_to_array(msg, self.config.image_width, self.config.image_height)
        except conv.MalformedInputError as exc:
            return self._reject("camera", exc)
        self.core.observe_image(image, conv.from_time(msg.header.stamp), time.monotonic())

    def _on_state(self, msg: JointState | PoseStamped) -> None:
        try:
            if isinstance(msg, PoseStamped):
                state = conv.pose_to_vector(msg)
            else:
                state = conv.joint_state_to_vector(msg, self.config.state_joint_names)
        except conv.MalformedInputError as exc:
            return self._reject("state", exc)
        self.core.observe_state(state, time.monotonic())

    def _on_env_state(self, msg: Float32MultiArray) -> None:
        self.core.observe_environment_state(np.asarray(msg.data, dtype=np.float32), time.monotonic())

    def _on_instruction(self, msg: String) -> None:
        try:
            text = conv.parse_instruction(msg.data)
        except conv.MalformedInputError as exc:
            return self._reject("instruction", exc)
        self.core.set_instruction(text)
        self.get_logger().info(f"instruction: {text!r}")

    def _on_estop(self, msg: Bool) -> None:
        self.core.set_estop(msg.data)
        if msg.data:
            self.get_logger().warning("E-STOP asserted: holding until the input clears and a reset arrives")

    def _on_estop_reset(self, msg: Empty) -> None:
        if self.core.reset_estop():
            self.get_logger().info("e-stop reset: resuming")
        else:
            self.get_logger().warning("e-stop reset refused: the e-stop input is still asserted")

    def _reject(self, kind: str, exc: Exception) -> None:
        self.core.invalid_input(kind, str(exc))
        self.get_logger().warning(f"holding: bad {kind} message: {exc}", throttle_duration_sec=2.0)

    def _inference_error(self, exc: Exception) -> None:
        self.get_logger().error(
            f"inference failed ({type(exc).__name__}: {exc}); holding", throttle_duration_sec=2.0
        )

    def _on_tick(self) -> None:
        core, worker = self.core, self.worker  # deactivate may clear them while a tick is running
        if core is None or worker is None:
            return
        self._publish(core.tick(time.monotonic()))
        worker.wake()

    def _on_diagnostics(self) -> None:
        status = self.core.status(time.monotonic())
        if self.camera_to_command_s:
            status["camera_to_command_ms"] = float(np.median(list(self.camera_to_command_s)[-50:]) * 1e3)
        status["dry_run"] = self.config.dry_run
        level = DiagnosticStatus.OK
        if status["estop_latched"] or status["state"].startswith("invalid"):
            level = DiagnosticStatus.ERROR
        elif status["holding"]:
            level = DiagnosticStatus.WARN
        msg = conv.diagnostics(
            self.get_clock().now().to_msg(),
            f"{self.get_name()}: policy bridge",
            level,
            status["state"],
            status,
        )
        self._pubs["diagnostics"].publish(msg)

    # ---- output -----------------------------------------------------------------------------------
    def _publish(self, result: TickResult) -> None:
        c, stamp = self.config, self.get_clock().now()
        if result.image_stamp is not None:
            self.camera_to_command_s.append(stamp.nanoseconds * 1e-9 - result.image_stamp)
        if c.output_mode is OutputMode.TRAJECTORY:
            if result.plan is not None and len(result.plan):
                self._pubs["command"].publish(
                    conv.trajectory(result.plan, c.joint_names, stamp.to_msg(), c.period_s)
                )
            return
        if result.command is None:
            return
        if c.output_mode is OutputMode.FORWARD:
            self._pubs["command"].publish(conv.float_array(result.command))
            return
        self._pubs["command"].publish(
            conv.twist(result.command, stamp.to_msg(), c.twist_frame_id, c.twist_scale)
        )
        if "gripper" in self._pubs:
            self._pubs["gripper"].publish(conv.float_array(result.command[3:], label="gripper"))

    def _publish_hold(self) -> None:
        command = self.core.safety.hold_command()
        if command is not None and self._pubs:
            self._publish(TickResult(-1, command, True, "inactive", plan=command[None]))


def spin(nodes: list, executor=None) -> int:
    """Spin nodes until shutdown; the standard handling of Ctrl-C and external shutdown."""
    # One thread: callbacks here are short (inference has its own worker thread), and rclpy's
    # MultiThreadedExecutor spins hot on few cores, starving timers (measured: 7 of 60 ticks in 3 s).
    executor = executor or SingleThreadedExecutor()
    for node in nodes:
        executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C/SIGTERM shuts the context down first (rclpy's signal handler); a timer that was
        # already due then publishes on the invalid context and raises. That is shutdown, not a fault.
        if all(node.context.ok() for node in nodes):
            raise
    finally:
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
    return 0


def main(args: list[str] | None = None) -> int:
    """Console script `ceed-policy-bridge`: `ceed-policy-bridge --ros-args --params-file FILE`."""
    rclpy.init(args=sys.argv if args is None else args)
    node = PolicyBridgeNode()
    try:
        if node.config is None and node.get_parameter("autostart").value and not node.start():
            node.get_logger().fatal("could not configure the policy bridge; see the error above")
            node.destroy_node()
            return 1
        return spin([node])
    finally:
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
