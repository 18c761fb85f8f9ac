"""Configuration of the policy bridge: one validated dataclass, filled from ROS parameters.

Every field is also a ROS parameter of the `policy_bridge` node with the same name, so a parameter
YAML (`launch/config/*.yaml`) and this dataclass describe the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum

from ceed_vla.scheduler import INIT_CHOICES, ROBOT_BLEND_STEPS, ROBOT_REFILL_MARGIN_TICKS

DEFAULT_ACTION_DIM = 4  # the simulator's end-effector deltas and gripper: the default limits' length


@dataclass(frozen=True)
class CameraInput:
    key: str  # the policy's feature key, e.g. observation.images.front
    topic: str
    width: int  # 0 = any
    height: int
    name: str  # the input's name in holds and diagnostics: "camera", or "camera:<key>" with several


def parse_camera_topics(entries: list[str]) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """["KEY=TOPIC" or "KEY=TOPIC:WIDTHxHEIGHT", ...] -> {key: (topic, (width, height) or None)}."""
    out: dict[str, tuple[str, tuple[int, int] | None]] = {}
    for entry in entries:
        key, sep, rest = str(entry).partition("=")
        key, (topic, colon, size) = key.strip(), rest.strip().partition(":")
        parsed = None
        if colon:
            w, x, h = size.partition("x")
            if not (x and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
                parsed = False
            else:
                parsed = (int(w), int(h))
        if not sep or not key or not topic or parsed is False:
            raise ConfigError(
                f"camera_topics entry {entry!r}: write KEY=TOPIC or KEY=TOPIC:WIDTHxHEIGHT, e.g. "
                "'observation.images.front=/front/image_raw:640x480'"
            )
        if key in out:
            raise ConfigError(f"camera_topics names {key!r} twice")
        out[key] = (topic, parsed)
    return out


class ConfigError(ValueError):
    """A bridge or sim-robot parameter has a value the node cannot run with."""


class OutputMode(StrEnum):
    TRAJECTORY = "trajectory"  # trajectory_msgs/JointTrajectory -> JointTrajectoryController
    FORWARD = "forward"  # std_msgs/Float64MultiArray per tick -> forward command controller
    TWIST = "twist"  # geometry_msgs/TwistStamped per tick -> MoveIt Servo


class HoldMode(StrEnum):
    LAST = "last"  # stay at the last published command (position interfaces)
    ZERO = "zero"  # ramp to zero (velocity / end-effector delta interfaces)


# What a hold is for each output, and which hold modes make sense there (docs/robot_bridge.md):
#   trajectory  JointTrajectoryController, positions: stay at the last published point ("last")
#   forward     forward command controller: "last" on a position interface, "zero" on a velocity one
#   twist       MoveIt Servo velocities: a zero twist ("zero"); a repeated twist would keep moving.
#               The gripper dimensions keep their last value: a zero there would open/close the hand.
HOLD_MODES = {
    OutputMode.TRAJECTORY: (HoldMode.LAST,),
    OutputMode.FORWARD: (HoldMode.LAST, HoldMode.ZERO),
    OutputMode.TWIST: (HoldMode.ZERO,),
}


DEFAULT_COMMAND_TOPICS = {
    OutputMode.TRAJECTORY: "/joint_trajectory_controller/joint_trajectory",
    OutputMode.FORWARD: "/forward_position_controller/commands",
    OutputMode.TWIST: "/servo_node/delta_twist_cmds",
}


@dataclass
class SafetyConfig:
    """Limits applied to every command before it leaves the bridge.

    action_low / action_high: per-dimension bounds, [D]. max_delta: the largest change of one
    dimension between two consecutive published commands, [D] (a single value is broadcast).
    zero_hold: [D] which dimensions a hold brings to zero (the others stay at their last value);
    empty = every dimension when hold_mode is "zero", none when it is "last".
    initial_command: [D] the command the actuator is at before the bridge publishes anything; empty =
    zero for the dimensions held at zero (a velocity interface starts at rest), unknown otherwise.
    """

    action_low: list[float]
    action_high: list[float]
    max_delta: list[float]
    hold_mode: HoldMode = HoldMode.LAST
    initial_command: list[float] = field(default_factory=list)
    zero_hold: list[bool] = field(default_factory=list)

    def __post_init__(self):
        self.hold_mode = parse_enum(HoldMode, self.hold_mode, "hold_mode")
        dim = len(self.action_low)
        if dim == 0:
            raise ConfigError("action_low is empty: give one lower bound per action dimension")
        if len(self.action_high) != dim:
            raise ConfigError(
                f"action_high has {len(self.action_high)} values but action_low has {dim}: give one bound per dimension"
            )
        if len(self.max_delta) == 1:
            self.max_delta = list(self.max_delta) * dim
        if len(self.max_delta) != dim:
            raise ConfigError(f"max_delta has {len(self.max_delta)} values; expected 1 or {dim}")
        for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high, strict=True)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"action bounds of dimension {i} are [{lo}, {hi}]: need finite low < high")
        bad = [d for d in self.max_delta if not (math.isfinite(d) and d > 0)]
        if bad:
            raise ConfigError(f"max_delta={self.max_delta} has non-positive or non-finite values {bad}")
        if self.initial_command:
            if len(self.initial_command) != dim:
                raise ConfigError(
                    f"initial_command has {len(self.initial_command)} values; expected {dim} or none"
                )
            outside = [
                i
                for i, (v, lo, hi) in enumerate(
                    zip(self.initial_command, self.action_low, self.action_high, strict=True)
                )
                if not (math.isfinite(v) and lo <= v <= hi)
            ]
            if outside:
                raise ConfigError(
                    f"initial_command={self.initial_command} is non-finite or outside [action_low, action_high] "
                    f"in dimensions {outside}: give the actuator's current command"
                )
        if not self.zero_hold:
            self.zero_hold = [self.hold_mode is HoldMode.ZERO] * dim
        if len(self.zero_hold) != dim:
            raise ConfigError(f"zero_hold has {len(self.zero_hold)} values; expected {dim}")
        no_zero = [
            i
            for i, (z, lo, hi) in enumerate(
                zip(self.zero_hold, self.action_low, self.action_high, strict=True)
            )
            if z and not lo <= 0.0 <= hi
        ]
        if no_zero:
            raise ConfigError(
                f"hold_mode=zero but zero is outside [action_low, action_high] in dimensions {no_zero} "
                f"(action_low={self.action_low}, action_high={self.action_high}): a zero hold would leave the "
                "limits; widen the limits or use hold_mode: last"
            )

    @property
    def dim(self) -> int:
        return len(self.action_low)


@dataclass
class BridgeConfig:
    """Everything the policy bridge node reads from its ROS parameters."""

    policy: str = "sine"  # "sine[:amplitude]", "expert", "checkpoint:DIR" (see policies.py)
    device: str = "cpu"
    torch_threads: int = 1
    # VLA decoding: "" = the policy's default (AR), else "ar" | "jacobi" | "early_exit"
    decoding_mode: str = ""
    decoding_sigma: int = 0  # early_exit: iteration cap (0 = none)
    decoding_tau: int = -1  # early_exit: bin tolerance (-1 = none)
    # Jacobi initial guess: "tail" = the previous chunk's unexecuted tail (warm start), "constant" =
    # the decoder's own constant guess
    decoding_init: str = "tail"
    decoding_fused_prefill: bool = False  # Jacobi modes: the prefill carries the guess block (one forward)
    instruction: str = ""  # used until one arrives on instruction_topic; "" = wait for it
    control_rate_hz: float = 20.0
    output_mode: OutputMode = OutputMode.FORWARD
    # commands go to "<command_topic>/dry_run" only; a live run needs an explicit `dry_run: false`
    dry_run: bool = True
    command_topic: str = ""  # "" = the default for output_mode
    gripper_topic: str = "/gripper_controller/commands"  # twist mode: dimensions after x, y, z
    # one per action dim, in the controller's order: trajectory mode's joints, and in every position
    # output the JointState entries (on state_topic) that say where the arm is
    joint_names: list[str] = field(default_factory=list)
    twist_frame_id: str = "base_link"
    twist_scale: float = 1.0  # twist mode: m/s per action unit
    camera_topic: str = "/camera/image_raw"
    camera_key: str = "observation.image"  # the policy feature camera_topic feeds (one camera)
    # several cameras: one "KEY=TOPIC" or "KEY=TOPIC:WIDTHxHEIGHT" per camera (replaces camera_topic)
    camera_topics: list[str] = field(default_factory=list)
    state_topic: str = "/joint_states"
    state_type: str = (
        "joint_state"  # "joint_state" (named entries) or "pose" (PoseStamped: x y z qx qy qz qw)
    )
    # The JointState entries that form the policy's state vector, in order (the sim robot's defaults).
    state_joint_names: list[str] = field(default_factory=lambda: ["ee_x", "ee_y", "ee_z", "gripper"])
    instruction_topic: str = "/instruction"
    estop_topic: str = "/estop"
    estop_reset_topic: str = "/estop_reset"
    environment_state_topic: str = ""  # sim only: the raw sim state for the scripted expert
    diagnostics_topic: str = "/diagnostics"
    diagnostics_rate_hz: float = 2.0
    image_width: int = 0  # 0 = accept any width
    image_height: int = 0
    stale_timeout_s: float = 0.0  # 0 = STALE_INPUT_PERIODS periods of the inputs (input_rate_hz)
    input_rate_hz: float = (
        0.0  # the cameras' and state's rate; 0 = the checkpoint's fps, else the control rate
    )
    # a header stamp may be this far ahead of the node's clock (clock skew), and no older on arrival
    # than stale_timeout_s plus this; beyond either the message is refused
    stamp_tolerance_s: float = 0.1
    max_instruction_chars: int = 1000  # a longer instruction is refused (hold), not truncated
    blend_steps: int = ROBOT_BLEND_STEPS  # ticks over which a new chunk is cross-faded into the old one
    refill_margin_ticks: int = (
        ROBOT_REFILL_MARGIN_TICKS  # start inference this many ticks before the queue would run dry
    )
    replan_every_ticks: int = 0  # also observe this many ticks after the last observation (0 = off)
    # real-time chunking (ceed_vla/scheduler.py): the queue's next d steps are committed and given to
    # the decoder as the chunk's forced first steps, d = floor(latency quantile / period) + margin;
    # switched off at configure for a policy that does not take a prefix
    forced_prefix: bool = False
    # planning ahead (ceed_vla/scheduler.py): the queue's next d steps are committed, the policy is
    # given the state they lead to (core.state_rollforward, or the embodiment's forward model) and the
    # chunk starts right after them, neither dropped as stale nor cross-faded; any policy. Exclusive
    # with forced_prefix; None (the default) = on unless forced_prefix, resolved here
    plan_ahead: bool | None = None
    latency_quantile: float = 0.9  # of the last 20 latencies, for d and the refill (prefix or plan-ahead)
    prefix_margin_ticks: int = 0
    # Jacobi modes: the decoder stops iterating when the queue would run dry, less deadline_margin_s
    decode_deadline: bool = False
    deadline_margin_s: float = 0.0
    # early exit: the steps each chunk runs before the next one (max(replan_every_ticks, d) of them)
    # are left exact, the model's AR actions; needs replan_every_ticks; switched off at configure for
    # a policy that does not take it
    exact_executed: bool = False
    action_low: list[float] = field(default_factory=lambda: [-1.0] * DEFAULT_ACTION_DIM)
    action_high: list[float] = field(default_factory=lambda: [1.0] * DEFAULT_ACTION_DIM)
    max_delta: list[float] = field(default_factory=lambda: [0.5])
    hold_mode: str = ""  # "" = the output's natural hold: last (trajectory, forward), zero (twist)
    initial_command: list[float] = field(default_factory=list)
    # on deactivate / shutdown: the longest ramp to the hold; 0 = what the limits need at max_delta
    stop_ramp_s: float = 0.0
    # units: a command for the controller = action * unit_scale * (pi/180 for deg_to_rad, 180/pi for
    # rad_to_deg) + unit_offset, per dimension (one value = all); the state's entries named in
    # joint_names are converted back. action_low/high, max_delta and initial_command are in the
    # controller's units.
    unit_conversion: list[str] = field(default_factory=list)
    unit_scale: list[float] = field(default_factory=list)
    unit_offset: list[float] = field(default_factory=list)
    inference_failure_limit: int = 3  # consecutive policy failures that stop the node (0 = never)
    autostart: bool = True  # configure and activate on start (no lifecycle manager needed)

    def __post_init__(self):
        require_finite(self)
        self.output_mode = parse_enum(OutputMode, self.output_mode, "output_mode")
        if self.hold_mode in ("", None):
            self.hold_mode = HOLD_MODES[self.output_mode][0]
        self.hold_mode = parse_enum(HoldMode, self.hold_mode, "hold_mode")
        if self.hold_mode not in HOLD_MODES[self.output_mode]:
            allowed = ", ".join(m.value for m in HOLD_MODES[self.output_mode])
            why = {
                OutputMode.TRAJECTORY: "zero positions would drive the arm to its zero pose",
                OutputMode.TWIST: "repeating the last twist keeps the arm moving",
            }[self.output_mode]
            raise ConfigError(
                f"hold_mode={self.hold_mode.value!r} does not hold with output_mode={self.output_mode.value}: "
                f"{why}; use {allowed} (or leave hold_mode empty)"
            )
        if not self.policy:
            raise ConfigError("policy is empty: use 'sine', 'expert' or 'checkpoint:DIR'")
        require_range(self.control_rate_hz, "control_rate_hz", 0.0, 1000.0, low_open=True)
        require_range(self.diagnostics_rate_hz, "diagnostics_rate_hz", 0.0, 100.0, low_open=True)
        require_positive(self.twist_scale, "twist_scale")
        if self.decoding_mode not in ("", "ar", "jacobi", "early_exit"):
            raise ConfigError(f"decoding_mode={self.decoding_mode!r}: use '', 'ar', 'jacobi' or 'early_exit'")
        if self.decoding_sigma < 0 or self.decoding_tau < -1:
            raise ConfigError(
                f"decoding_sigma={self.decoding_sigma}, decoding_tau={self.decoding_tau}: need sigma >= 0 "
                "(0 = no cap) and tau >= -1 (-1 = none)"
            )
        if self.torch_threads < 1:
            raise ConfigError(f"torch_threads={self.torch_threads}: need at least 1")
        require_range(self.input_rate_hz, "input_rate_hz", 0.0, 1000.0, hint="(0 = the control rate)")
        require_range(
            self.stale_timeout_s,
            "stale_timeout_s",
            0.0,
            MAX_STALE_TIMEOUT_S,
            hint=f"(0 = {STALE_INPUT_PERIODS} periods of the inputs)",
        )
        if self.stale_timeout_s == 0:
            self.stale_timeout_s = default_stale_timeout(
                self.input_rate_hz or self.control_rate_hz, self.period_s
            )
        require_range(self.stamp_tolerance_s, "stamp_tolerance_s", 0.0, 10.0)
        require_range(self.stop_ramp_s, "stop_ramp_s", 0.0, 10.0, hint="(0 = what the limits need)")
        if not 1 <= self.max_instruction_chars <= 100_000:
            raise ConfigError(f"max_instruction_chars={self.max_instruction_chars}: need 1 to 100000")
        if self.inference_failure_limit < 0:
            raise ConfigError(
                f"inference_failure_limit={self.inference_failure_limit}: need >= 0 (0 = never stop)"
            )
        if self.image_width < 0 or self.image_height < 0:
            raise ConfigError(f"image size {self.image_width}x{self.image_height}: need >= 0 (0 = any)")
        if self.blend_steps < 0 or self.refill_margin_ticks < 0 or self.replan_every_ticks < 0:
            raise ConfigError(
                f"blend_steps={self.blend_steps}, refill_margin_ticks={self.refill_margin_ticks}, "
                f"replan_every_ticks={self.replan_every_ticks}: need >= 0"
            )
        if self.decoding_fused_prefill and self.decoding_mode not in ("jacobi", "early_exit"):
            raise ConfigError(
                f"decoding_fused_prefill=true needs decoding_mode 'jacobi' or 'early_exit' "
                f"(got {self.decoding_mode!r}): AR has no guess block"
            )
        if self.plan_ahead is None:
            self.plan_ahead = not self.forced_prefix
        if self.plan_ahead and self.forced_prefix:
            raise ConfigError(
                "plan_ahead=true and forced_prefix=true: both condition the chunk on the committed steps "
                "(plan_ahead through the state they lead to, forced_prefix through the decoder's tokens); choose "
                "one: set plan_ahead: false to force the prefix, or drop forced_prefix: true to plan ahead"
            )
        require_range(self.latency_quantile, "latency_quantile", 0.0, 1.0)
        if self.prefix_margin_ticks < 0:
            raise ConfigError(f"prefix_margin_ticks={self.prefix_margin_ticks}: need >= 0")
        require_range(self.deadline_margin_s, "deadline_margin_s", 0.0, 10.0)
        if self.decode_deadline and self.decoding_mode not in ("jacobi", "early_exit"):
            raise ConfigError(
                f"decode_deadline=true needs decoding_mode 'jacobi' or 'early_exit' (got {self.decoding_mode!r}): "
                "AR has no whole chunk before its last step"
            )
        if self.exact_executed and (self.decoding_mode != "early_exit" or not self.replan_every_ticks):
            raise ConfigError(
                f"exact_executed=true needs decoding_mode 'early_exit' and replan_every_ticks > 0 (got "
                f"{self.decoding_mode!r}, {self.replan_every_ticks}): the other modes are exact already, and "
                "without a replanning interval the whole chunk runs (decode it with 'jacobi')"
            )
        if self.decoding_init not in INIT_CHOICES:
            raise ConfigError(
                f"decoding_init={self.decoding_init!r}: use 'tail' (warm start from the previous chunk) or "
                "'constant'"
            )
        topics = parse_camera_topics(self.camera_topics)
        if topics:
            several = len(topics) > 1
            self.cameras = [
                CameraInput(key, topic, *(size or (0, 0)), name=f"camera:{key}" if several else "camera")
                for key, (topic, size) in topics.items()
            ]
        else:
            if not self.camera_key.strip():
                raise ConfigError("camera_key is empty: name the policy feature camera_topic feeds")
            self.cameras = [
                CameraInput(self.camera_key, self.camera_topic, self.image_width, self.image_height, "camera")
            ]
        if not self.command_topic:
            self.command_topic = DEFAULT_COMMAND_TOPICS[self.output_mode]
        dim = len(self.action_low)
        zero_hold = [self.hold_mode is HoldMode.ZERO] * dim
        if self.output_mode is OutputMode.TWIST:
            zero_hold = [i < 3 for i in range(dim)]  # x, y, z stop; the gripper keeps its command
        self.safety = SafetyConfig(
            action_low=list(self.action_low),
            action_high=list(self.action_high),
            max_delta=list(self.max_delta),
            hold_mode=self.hold_mode,
            initial_command=list(self.initial_command),
            zero_hold=zero_hold,
        )
        if (self.output_mode is OutputMode.TRAJECTORY or self.joint_names) and len(self.joint_names) != dim:
            raise ConfigError(
                f"joint_names={self.joint_names} has {len(self.joint_names)} names for {dim} action dimensions: "
                f"give one joint name per action dimension (output_mode={self.output_mode.value} needs them"
                + (")" if self.output_mode is OutputMode.TRAJECTORY else " only to read the arm's position)")
            )
        require_unique(self.joint_names, "joint_names")
        self.unit_scale_array, self.unit_offset_array = unit_conversion(
            self.unit_conversion, self.unit_scale, self.unit_offset, dim
        )
        needed = self.period_s * stop_ramp_ticks(self.safety)
        if self.stop_ramp_s == 0:
            self.stop_ramp_s = needed
        elif self.stop_ramp_s < needed - 1e-9:
            raise ConfigError(
                f"stop_ramp_s={self.stop_ramp_s} is shorter than the stop needs: {stop_ramp_ticks(self.safety)} "
                f"ticks at max_delta={self.safety.max_delta} from the limits to the hold = {needed:.3f} s; a "
                f"shorter ramp would end in a jump. Set stop_ramp_s >= {needed:.3f} or 0 (derived)"
            )
        if self.output_mode is OutputMode.TWIST and dim < 3:
            raise ConfigError(f"output_mode=twist needs at least 3 action dimensions (x, y, z); got {dim}")
        if self.state_type not in ("joint_state", "pose"):
            raise ConfigError(f"state_type={self.state_type!r}: use 'joint_state' or 'pose'")
        if self.state_type == "joint_state" and not self.state_joint_names:
            raise ConfigError("state_joint_names is empty: name the JointState entries that form the state")
        require_unique(self.state_joint_names, "state_joint_names")
        positions = self.output_mode is not OutputMode.TWIST and not all(self.safety.zero_hold)
        if positions and not self.joint_names and not self.initial_command:
            raise ConfigError(
                f"output_mode={self.output_mode.value} with hold_mode={self.hold_mode.value} commands positions, "
                "and the first command has no reference to clamp it to: set joint_names (the JointState "
                "entries on state_topic that say where the arm is) or initial_command (where it is now)"
            )

    def decode_kwargs(self, n_bins: int) -> dict:
        """Keyword arguments for `predict_action_chunk` selecting the decoding mode (empty: default)."""
        if not self.decoding_mode:
            return {}
        from ceed_vla.decoding import DecodeConfig

        sigma = self.decoding_sigma or None
        tau = None if self.decoding_tau < 0 else self.decoding_tau
        config = DecodeConfig(
            mode=self.decoding_mode,
            n_bins=n_bins,
            sigma=sigma,
            tau=tau,
            fused_prefill=self.decoding_fused_prefill,
        )
        return {"decoding": config}

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def action_dim(self) -> int:
        return self.safety.dim

    @property
    def published_command_topic(self) -> str:
        return f"{self.command_topic}/dry_run" if self.dry_run else self.command_topic

    @property
    def published_gripper_topic(self) -> str:
        return f"{self.gripper_topic}/dry_run" if self.dry_run else self.gripper_topic


STALE_INPUT_PERIODS = 3  # a normal camera's gaps stay well under 3 periods; a lost one is found in 3


def default_stale_timeout(input_rate_hz: float, control_period_s: float) -> float:
    """STALE_INPUT_PERIODS periods of the inputs, and never under two control periods: one period
    would trip on normal jitter (about half the gaps of a 30 Hz camera exceed 33.3 ms)."""
    return min(MAX_STALE_TIMEOUT_S, max(STALE_INPUT_PERIODS / input_rate_hz, 2 * control_period_s))


def stop_ramp_ticks(safety: SafetyConfig) -> int:
    """Ticks a stop needs to reach its hold at max_delta from anywhere inside the limits: the
    zero-held dimensions ramp from their farthest limit to zero; the others hold where they are."""
    ticks = 1
    for zero, lo, hi, delta in zip(
        safety.zero_hold, safety.action_low, safety.action_high, safety.max_delta, strict=True
    ):
        if zero:
            ticks = max(ticks, math.ceil(max(abs(lo), abs(hi)) / delta - 1e-9))
    return ticks


UNIT_FACTORS = {"": 1.0, "none": 1.0, "deg_to_rad": math.pi / 180.0, "rad_to_deg": 180.0 / math.pi}


def unit_conversion(names: list[str], scale: list[float], offset: list[float], dim: int):
    """Per-dimension scale [D] and offset [D] from the policy's units to the controller's."""

    def per_dim(values, key, fill):
        if not values:
            return [fill] * dim
        if len(values) == 1:
            return list(values) * dim
        if len(values) != dim:
            raise ConfigError(
                f"{key} has {len(values)} values; expected 1 or {dim} (one per action dimension)"
            )
        return list(values)

    unknown = sorted({n for n in names if n not in UNIT_FACTORS})
    if unknown:
        raise ConfigError(
            f"unit_conversion names {unknown}: use deg_to_rad, rad_to_deg or '' (none), one per action "
            "dimension or one for all"
        )
    factors = [UNIT_FACTORS[n] for n in per_dim(names, "unit_conversion", "")]
    scales = per_dim(scale, "unit_scale", 1.0)
    bad = [s for s in scales if not (math.isfinite(s) and s != 0)]
    if bad:
        raise ConfigError(
            f"unit_scale={scale} has zero or non-finite values {bad}: give a finite, non-zero scale"
        )
    offsets = per_dim(offset, "unit_offset", 0.0)
    return [f * s for f, s in zip(factors, scales, strict=True)], offsets


def parse_enum(kind, value, name):
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(f"{name}={value!r} is not one of: {choices}") from None


MAX_STALE_TIMEOUT_S = 2.0  # a watchdog slower than this is no watchdog for an arm
NUMBER_TYPES = ("float", "int", "list[float]")


def require_positive(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value}: need a finite value > 0")


def require_range(
    value: float, name: str, low: float, high: float, *, low_open: bool = False, hint: str = ""
) -> None:
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        bound = "(" if low_open else "["
        raise ConfigError(f"{name}={value}: need a finite value in {bound}{low}, {high}] {hint}".rstrip())


def require_unique(names: list[str], name: str) -> None:
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise ConfigError(f"{name}={names} names {dup} more than once: give each entry once")


def require_finite(config) -> None:
    """Every number (and list of numbers) of a config dataclass is finite, and no boolean stands in
    for one: NaN or inf would silently disable a comparison (a NaN timeout never expires), and
    `true` would read as 1.0."""
    for f in fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, list) else [value]
        if str(f.type) in NUMBER_TYPES and any(isinstance(v, bool) for v in values):
            raise ConfigError(
                f"{f.name}={value!r} is a boolean where a {f.type} is needed: write the number (true is not 1)"
            )
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ConfigError(f"{f.name}={value!r} is not finite: give a finite number")
