"""The policy bridge node: ROS 2 topics in and out around `BridgeCore` (which holds the logic).

Lifecycle (rclpy managed node): configure reads the parameters (an unknown name or a bad value
fails it), logs the effective set, loads the policy and creates the subscriptions and publishers;
activate starts the control timer and the inference worker; deactivate brings the output to its
hold through the safety filter, then stops both; cleanup releases everything. With `autostart` (the
default) the node configures and activates itself, so it runs without a lifecycle manager.

Stopping: `main` (and `ceed bridge`) handle SIGINT and SIGTERM themselves, so the context is still
up when the node stops and the last command it publishes is a hold; the exit status is 0 for a
signal and 1 for a crash or a policy that keeps failing (`inference_failure_limit`).

Topics (names are parameters):
    in   camera_topic       sensor_msgs/Image         sensor-data QoS (best effort, keep last 5)
    in   state_topic        sensor_msgs/JointState    sensor-data QoS (geometry_msgs/PoseStamped
                                                      with state_type "pose")
    in   instruction_topic  std_msgs/String           reliable, transient local (latched)
    in   estop_topic        std_msgs/Bool             reliable, transient local, keep last 1000: no
                                                      pulse is overwritten before it is read
    in   estop_reset_topic  std_msgs/Empty            reliable: releases a latched e-stop
    out  command_topic      JointTrajectory | Float64MultiArray | TwistStamped, reliable
    out  diagnostics_topic  diagnostic_msgs/DiagnosticArray
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections import deque

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float32MultiArray, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from ceed_vla.scheduler import (
    policy_accepts_deadline,
    policy_accepts_exact_steps,
    policy_accepts_forced_prefix,
)

from . import conversions as conv
from . import ros_params
from .config import BridgeConfig, OutputMode
from .contract import apply_contract, contract_for, image_size_note
from .core import BridgeCore, TickResult
from .inference import InferenceWorker
from .policies import load_policy

LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Every e-stop message is read, in order: a `true` followed at once by a `false` must still latch.
ESTOP = QoSProfile(
    depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
ESTOP_RESET = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
NODE_NAME = "policy_bridge"
STOP_ACK_TIMEOUT_S = 0.5  # how long a stop waits for subscribers to acknowledge the hold


class PolicyBridgeNode(LifecycleNode):
    """`policy`: an object with the policy API to use instead of the `policy` parameter (tests).
    `forward_model(config) -> PredictState | None`: called at configure with the effective
    `BridgeConfig`, the embodiment's forward model for planning ahead where it applies (the sim robot
    in the same process: `SimRobotNode.forward_model`); None, or a None result: `state_rollforward`."""

    def __init__(self, node_name: str = NODE_NAME, *, policy=None, forward_model=None, **kwargs):
        # every parameter given to the node is declared, so a misspelt one can be refused
        kwargs.setdefault("automatically_declare_parameters_from_overrides", True)
        super().__init__(node_name, **kwargs)
        # what the parameter file or command line set (declared from overrides), before the defaults
        self._given_parameters = set(self.list_parameters([], 0).names)
        ros_params.declare(self, BridgeConfig)
        self.fatal: BaseException | None = None  # set when the node must stop (exit status 1)
        self._active = False
        self._given_policy = policy
        self._forward_model = forward_model
        self._predict_kwargs: dict = {}
        self.config: BridgeConfig | None = None
        self.core: BridgeCore | None = None
        self.policy = None
        self.worker: InferenceWorker | None = None
        self._subs, self._pubs, self._timers = [], {}, []
        self._pending: list = []  # subscriptions whose waiting messages a tick takes first
        self._inputs = MutuallyExclusiveCallbackGroup()
        self._control = MutuallyExclusiveCallbackGroup()
        # one value per chunk, the newest kept: camera stamp -> first command computed from that frame
        self.camera_to_command_s: deque[float] = deque(maxlen=1000)

    # ---- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            # a checkpoint's data contract fills what the parameters leave out, and refuses a contradiction
            self.config = ros_params.read(self, BridgeConfig, self._given_parameters, adjust=apply_contract)
            torch.set_num_threads(self.config.torch_threads)
            self.policy = self._given_policy or load_policy(
                self.config.policy, self.config.action_dim, self.config.control_rate_hz, self.config.device
            )
            self._predict_kwargs = self.config.decode_kwargs(getattr(self.policy, "n_bins", 256))
            # the scheduler's real-time options only for a policy that takes them (the VLA)
            self.config.forced_prefix &= policy_accepts_forced_prefix(self.policy)
            self.config.decode_deadline &= policy_accepts_deadline(self.policy)
            self.config.exact_executed &= policy_accepts_exact_steps(self.policy)
            predict_state = None if self._forward_model is None else self._forward_model(self.config)
        except (ValueError, OSError, ImportError) as exc:  # ConfigError, PolicySpecError, a bad checkpoint
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"parameters: {ros_params.describe(self.config)}")
        contract = contract_for(self.config.policy)
        if contract is not None:
            note = image_size_note(contract)
            if note:
                self.get_logger().warning(note)
            elif contract.image_size:
                self.get_logger().info(
                    f"the policy encodes frames at {contract.image_size} px (its training size)"
                )
        self.core = BridgeCore(self.config, predict_state=predict_state)
        if self.config.plan_ahead:
            model = "the embodiment's forward model" if predict_state else "state_rollforward"
            self.get_logger().info(
                f"planning ahead: each chunk starts after the committed steps, from the state {model} predicts"
            )
        self._create_subscriptions()
        self._create_publishers()
        self.get_logger().info(
            f"configured: policy {self.config.policy}, {self.config.output_mode.value} commands on "
            f"{self.config.published_command_topic} at {self.config.control_rate_hz} Hz"
            + (" (DRY RUN)" if self.config.dry_run else "")
        )
        if not self.config.dry_run:
            self.get_logger().warning(live_banner(self.config))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        self._active = True
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
        self.halt()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        # only reachable from inactive: deactivate already held the output and the publishers are off
        self.halt()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self.halt()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self):
        self.halt()  # the last command is a hold, and the inference thread must not outlive the node
        return super().destroy_node()

    def halt(self) -> None:
        """Stop control and bring the output to its hold through the safety filter: ramp at
        max_delta for at most `stop_ramp_s` (an e-stop or the deadline jumps), then stop inference.
        Idempotent; publishes nothing when the node is not active."""
        for timer in self._timers:
            self.destroy_timer(timer)
        self._timers = []
        core, active = self.core, self._active
        self._active = False
        if core is not None and active and self._pubs:
            try:
                self._ramp_to_hold(core)
            except Exception as exc:  # a context already shut down: nothing can be published any more
                self.get_logger().error(f"could not publish the hold while stopping: {exc}")
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def _ramp_to_hold(self, core: BridgeCore) -> None:
        """Step to the hold once per period for the steps `stop_ramp_s` allows (configure made sure
        they are enough to reach it from anywhere inside the limits); only an e-stop jumps. The
        steps are counted, not timed: a late wake-up must not turn the last step into a jump."""
        c = self.config
        steps = max(1, math.ceil(c.stop_ramp_s / c.period_s - 1e-9))
        jump = core.estop.latched
        for step in range(steps + 1):
            jump = jump or step == steps
            result = core.stop_step(jump=jump)
            if result.command is None:
                break  # nothing was ever published: nothing to hold
            self._publish(result)
            if result.jumped:
                self.get_logger().warning("stop: jumped to the hold (e-stop or stop_ramp_s reached)")
            if core.hold_reached():
                break
            time.sleep(c.period_s)
        # the node may be destroyed next: a reliable sample still unacknowledged then is lost
        for pub in self._pubs.values():
            pub.wait_for_all_acked(Duration(seconds=STOP_ACK_TIMEOUT_S))

    def start(self) -> bool:
        """Configure and activate (what `autostart` does); returns whether the node is active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # ---- ROS entities ----------------------------------------------------------------------------
    def _create_subscriptions(self) -> None:
        c, g = self.config, self._inputs
        # the e-stop first: the executor serves a node's subscriptions in creation order
        estop = self.create_subscription(Bool, c.estop_topic, self._on_estop, ESTOP, callback_group=g)
        reset = self.create_subscription(
            Empty, c.estop_reset_topic, self._on_estop_reset, ESTOP_RESET, callback_group=g
        )
        cameras = [
            self.create_subscription(
                Image,
                cam.topic,
                lambda msg, cam=cam: self._on_image(msg, cam),
                qos_profile_sensor_data,
                callback_group=g,
            )
            for cam in c.cameras
        ]
        state = self.create_subscription(
            PoseStamped if c.state_type == "pose" else JointState,
            c.state_topic,
            self._on_state,
            qos_profile_sensor_data,
            callback_group=g,
        )
        self._subs = [
            estop,
            reset,
            *cameras,
            state,
            self.create_subscription(
                String, c.instruction_topic, self._on_instruction, LATCHED, callback_group=g
            ),
        ]
        self._pending = [(estop, ESTOP.depth), *((camera, 5) for camera in cameras), (state, 5)]
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
        self._subs, self._pubs, self._pending = [], {}, []
        self.policy, self.core = None, None

    def _take_pending(self) -> None:
        """Run the callbacks of e-stop, camera and state messages that have arrived but were not yet
        dispatched. rclpy's executor runs due timers before subscriptions, so a loaded executor would
        otherwise tick on inputs one message late (spurious stale holds) or act on an e-stop a tick
        late."""
        for sub, depth in self._pending:
            for _ in range(depth):
                try:
                    with sub.handle:
                        taken = sub.handle.take_message(sub.msg_type, sub.raw)
                except InvalidHandle:
                    break
                if taken is None:
                    break
                sub.callback(taken[0])

    # ---- callbacks -------------------------------------------------------------------------------
    def _stamp_age(self, stamp) -> float:
        """Age (s) of a header stamp on this node's clock."""
        return self.get_clock().now().nanoseconds * 1e-9 - conv.from_time(stamp)

    def _on_image(self, msg: Image, camera) -> None:
        try:
            image = conv.image_to_array(msg, camera.width, camera.height, self._size_fix(camera))
        except conv.MalformedInputError as exc:
            return self._reject(camera.name, exc)
        problem = self.core.observe_image(
            image,
            conv.from_time(msg.header.stamp),
            time.monotonic(),
            self._stamp_age(msg.header.stamp),
            key=camera.key,
        )
        if problem:
            self.get_logger().warning(f"ignoring a {camera.name} frame: {problem}", throttle_duration_sec=2.0)

    def _size_fix(self, camera) -> str:
        """Where the size a camera must have is set, for the message of a wrong-size frame."""
        if self.config.camera_topics:
            return f"give its size in camera_topics ('{camera.key}={camera.topic}:WIDTHxHEIGHT')"
        return "set image_width/image_height"

    def _on_state(self, msg: JointState | PoseStamped) -> None:
        positions = None
        try:
            if isinstance(msg, PoseStamped):
                state = conv.pose_to_vector(msg)
            else:
                state = conv.joint_state_to_vector(msg, self.config.state_joint_names)
                positions = conv.joint_positions(msg, self.config.joint_names)
        except conv.MalformedInputError as exc:
            return self._reject("state", exc)
        problem = self.core.observe_state(
            state, time.monotonic(), self._stamp_age(msg.header.stamp), positions=positions
        )
        if problem:
            self.get_logger().warning(f"ignoring a state message: {problem}", throttle_duration_sec=2.0)

    def _on_env_state(self, msg: Float32MultiArray) -> None:
        self.core.observe_environment_state(np.asarray(msg.data, dtype=np.float32), time.monotonic())

    def _on_instruction(self, msg: String) -> None:
        try:
            text = conv.parse_instruction(msg.data, self.config.max_instruction_chars)
        except conv.MalformedInputError as exc:
            return self._reject("instruction", exc, throttle=False)  # rare: one line per message
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

    def _reject(self, kind: str, exc: Exception, throttle: bool = True) -> None:
        self.core.invalid_input(kind, str(exc))
        message = f"holding: bad {kind} message: {exc}"
        if not throttle:
            self.get_logger().warning(message)
        elif kind.startswith("camera"):  # one throttle per input: a flood of one must not hide another
            self.get_logger().warning(message, throttle_duration_sec=2.0)
        else:
            self.get_logger().warning(message, throttle_duration_sec=2.0)  # (rclpy throttles per call site)

    def _inference_error(self, exc: Exception) -> None:
        core, limit = self.core, self.config.inference_failure_limit
        failures = core.stats.consecutive_inference_errors if core is not None else 0
        self.get_logger().error(
            f"inference failed ({type(exc).__name__}: {exc}); holding ({failures} in a row)",
            throttle_duration_sec=2.0,
        )
        if limit and failures >= limit and self.fatal is None:
            self.get_logger().fatal(
                f"the policy failed {failures} times in a row (inference_failure_limit={limit}): stopping"
            )
            self.fatal = exc

    def _on_tick(self) -> None:
        core, worker = self.core, self.worker  # deactivate may clear them while a tick is running
        if core is None or worker is None:
            return
        self._take_pending()
        result = core.tick(time.monotonic())
        if result.jumped:
            self.get_logger().warning(f"{result.reason}: jumped to the hold without the delta clamp")
        self._publish(result)
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
                if result.holding:
                    msg = conv.hold_trajectory(result.plan[0], c.joint_names, c.period_s)
                else:
                    msg = conv.trajectory(result.plan, c.joint_names, stamp.to_msg(), c.period_s)
                self._pubs["command"].publish(msg)
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


def live_banner(config: BridgeConfig) -> str:
    """The one loud line of a live run: what moves, where the commands go, how to stop it."""
    return (
        "\n" + "!" * 78 + f"\n!! LIVE: dry_run is false: {config.output_mode.value} commands go to "
        f"{config.published_command_topic} and the arm WILL MOVE.\n!! Stop: publish true on {config.estop_topic}, "
        "or Ctrl-C (the bridge ramps to its hold first).\n" + "!" * 78
    )


def spin(nodes: list, executor=None, stop: threading.Event | None = None) -> int:
    """Spin nodes until `stop` is set (a signal), the context shuts down, or a node reports a fatal
    fault; then destroy them (a bridge publishes its hold first). Returns 0, or 1 after a fatal
    fault; an exception from a callback (a crash) propagates after the nodes are stopped."""
    # One thread: callbacks here are short (inference has its own worker thread), and rclpy's
    # MultiThreadedExecutor spins hot on few cores, starving timers (measured: 7 of 60 ticks in 3 s).
    executor = executor or SingleThreadedExecutor(context=nodes[0].context)
    stop = stop or threading.Event()
    for node in nodes:
        executor.add_node(node)
    code = 0
    try:
        while not stop.is_set() and executor.context.ok():
            executor.spin_once(timeout_sec=0.1)
            if any(getattr(node, "fatal", None) is not None for node in nodes):
                code = 1
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # With rclpy's own signal handlers (a caller that did not opt out), Ctrl-C shuts the context
        # down first; a timer that was already due then publishes on it and raises: not a fault.
        if all(node.context.ok() for node in nodes):
            raise
    finally:
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
    return code


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop` instead of shutting rclpy down, so the nodes can still publish
    their holds. Use with `rclpy.init(signal_handler_options=SignalHandlerOptions.NO)`."""

    def handler(signum, frame):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def run(make_nodes, args: list[str] | None = None) -> int:
    """The main of a process of nodes: init rclpy without its signal handlers, create the nodes
    (`make_nodes(stop)` returns them, or an int exit status when they could not be made), spin them
    until a signal or a fault. Exit status: 0 after a signal or shutdown, 1 after a crash or a
    fatal fault; the nodes are stopped safely in every case."""
    for path in ros_params.params_files(args or []):
        try:
            ros_params.load_param_file(path)  # rcl's parser would only say "Couldn't parse params file"
        except (OSError, ValueError) as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"bad parameter file: {exc}")
            return 2
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        nodes = make_nodes(stop)
        if isinstance(nodes, int):
            return nodes
        try:
            return spin(nodes, stop=stop)
        except Exception as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"crashed: {type(exc).__name__}: {exc}")
            import traceback

            traceback.print_exc()
            return 1
    finally:
        rclpy.try_shutdown()


def main(args: list[str] | None = None) -> int:
    """Console script `ceed-policy-bridge`: `ceed-policy-bridge --ros-args --params-file FILE`."""

    argv = sys.argv if args is None else args

    def make(stop):
        node = PolicyBridgeNode()
        problem = ros_params.binding_problem(ros_params.params_files(argv), node.get_fully_qualified_name())
        if problem is not None:
            node.get_logger().fatal(f"refusing to run on code defaults: {problem}")
            node.destroy_node()
            return 1
        if node.config is None and node.get_parameter("autostart").value and not node.start():
            node.get_logger().fatal("could not configure the policy bridge; see the error above")
            node.destroy_node()
            return 1
        return [node]

    return run(make, argv)


if __name__ == "__main__":
    sys.exit(main())
