"""Conversions between ROS messages and the arrays the bridge works on, with input validation.

Every parse function raises `MalformedInputError` with a message saying what was wrong; the node
logs it and holds, it never crashes on a bad message.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint


class MalformedInputError(ValueError):
    """An incoming message cannot be turned into an observation."""


SUPPORTED_ENCODINGS = ("rgb8", "bgr8")


def image_to_array(
    msg: Image, width: int = 0, height: int = 0, size_fix: str = "set image_width/image_height"
) -> np.ndarray:
    """sensor_msgs/Image (rgb8 or bgr8) -> uint8 [H, W, 3] RGB; width/height 0 accept any size.
    `size_fix`: where the expected size is set, for the message of a wrong-size frame."""
    if msg.encoding not in SUPPORTED_ENCODINGS:
        raise MalformedInputError(
            f"image encoding {msg.encoding!r} is not supported: publish one of {SUPPORTED_ENCODINGS}"
        )
    if (width and msg.width != width) or (height and msg.height != height):
        raise MalformedInputError(
            f"image is {msg.width}x{msg.height} but the policy expects {width}x{height}: "
            f"resize upstream or {size_fix}"
        )
    if msg.height == 0 or msg.width == 0 or msg.step < 3 * msg.width:
        raise MalformedInputError(f"image header is inconsistent: {msg.width}x{msg.height}, step {msg.step}")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size != msg.step * msg.height:
        raise MalformedInputError(f"image data has {data.size} bytes; header says {msg.step}x{msg.height}")
    rows = data.reshape(msg.height, msg.step)[:, : 3 * msg.width]
    image = rows.reshape(msg.height, msg.width, 3)  # [H, W, 3]
    return image[..., ::-1].copy() if msg.encoding == "bgr8" else image.copy()


def array_to_image(image: np.ndarray, stamp: Time, frame_id: str = "camera") -> Image:
    """uint8 [H, W, 3] RGB -> sensor_msgs/Image rgb8."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = "rgb8"
    msg.step = 3 * msg.width
    msg.data = image.tobytes()
    return msg


def joint_state_to_vector(msg: JointState, names: list[str]) -> np.ndarray:
    """Pick `names` (in order) out of a JointState's positions -> float32 [S]."""
    if len(msg.position) != len(msg.name):
        raise MalformedInputError(f"JointState has {len(msg.name)} names but {len(msg.position)} positions")
    if len(set(msg.name)) != len(msg.name):
        dup = sorted({n for n in msg.name if list(msg.name).count(n) > 1})
        raise MalformedInputError(
            f"JointState names {dup} more than once (names {list(msg.name)}): which copy is the joint is "
            "ambiguous; publish each joint once"
        )
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise MalformedInputError(
            f"JointState lacks joints {missing} (it has {list(msg.name)}): set state_joint_names to match"
        )
    return _finite_float32([msg.position[index[n]] for n in names], "JointState positions")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite_float32(values, what: str) -> np.ndarray:
    """float32 [N] of `values`, refused (not cast to inf with a warning) when one is not finite or
    beyond float32's range."""
    wide = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(wide)) or np.any(np.abs(wide) > FLOAT32_MAX):
        raise MalformedInputError(f"{what} are not finite numbers in float32's range: {wide.tolist()}")
    return wide.astype(np.float32)


def joint_positions(msg: JointState, names: list[str]) -> np.ndarray | None:
    """The positions of joints `names` [D] (float64) when the message carries all of them, else None
    (a message that carries them must be valid: joint_state_to_vector checked it)."""
    index = {name: i for i, name in enumerate(msg.name)}
    if not names or any(n not in index for n in names):
        return None
    values = [msg.position[index[n]] for n in names]
    _finite_float32(values, "joint positions")
    return np.asarray(values, dtype=np.float64)


def pose_to_vector(msg: PoseStamped) -> np.ndarray:
    """PoseStamped -> float32 [7]: position x, y, z and orientation quaternion x, y, z, w."""
    p, q = msg.pose.position, msg.pose.orientation
    state = _finite_float32([p.x, p.y, p.z, q.x, q.y, q.z, q.w], "pose values")
    if abs(float(np.linalg.norm(state[3:])) - 1.0) > 1e-3:
        raise MalformedInputError(f"pose orientation {state[3:].tolist()} is not a unit quaternion")
    return state


def vector_to_joint_state(values: np.ndarray, names: list[str], stamp: Time) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(v) for v in values]
    return msg


def parse_instruction(text: str, max_chars: int = 1000) -> str:
    """The task in words, stripped; refused when empty or longer than `max_chars` (never truncated:
    half an instruction is another task)."""
    text = text.strip()
    if not text:
        raise MalformedInputError("instruction is empty: publish the task in words on the instruction topic")
    if len(text) > max_chars:
        raise MalformedInputError(
            f"instruction has {len(text)} characters, more than max_instruction_chars={max_chars} "
            f"(it starts {text[:40]!r}): publish a shorter task or raise max_instruction_chars"
        )
    return text


def float_array(values: np.ndarray, label: str = "action") -> Float64MultiArray:
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(values), stride=len(values))]
    msg.data = [float(v) for v in values]
    return msg


def float_array_to_vector(msg: Float64MultiArray, dim: int) -> np.ndarray:
    values = np.asarray(msg.data, dtype=np.float64)
    if values.shape != (dim,):
        raise MalformedInputError(f"command has {values.size} values; expected {dim}")
    if not np.all(np.isfinite(values)):
        raise MalformedInputError(f"command is not finite: {values.tolist()}")
    return values


def to_duration(seconds: float) -> Duration:
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def from_duration(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def from_time(t: Time) -> float:
    return t.sec + t.nanosec * 1e-9


def trajectory(points: np.ndarray, joint_names: list[str], stamp: Time, period_s: float) -> JointTrajectory:
    """Commands [T, D] for consecutive ticks, T >= 2 -> JointTrajectory starting at `stamp`.

    Point i is due at stamp + i * period (the first point at the stamp itself, so a controller that
    receives it late starts from the current command). A single command goes out as `hold_trajectory`:
    a one-point trajectory due at its own stamp already ends in the past when it arrives, and a
    JointTrajectoryController rejects it.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return hold_trajectory(points[-1], joint_names, period_s)
    msg = JointTrajectory()
    msg.header.stamp = stamp
    msg.joint_names = list(joint_names)
    for i, values in enumerate(points):
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in values]
        point.time_from_start = to_duration(i * period_s)
        msg.points.append(point)
    return msg


def hold_trajectory(position: np.ndarray, joint_names: list[str], period_s: float) -> JointTrajectory:
    """A hold for a JointTrajectoryController: go to `position` [D] and stay. The stamp is zero
    ("start when received", so it cannot arrive in the past whatever the clocks and the latency),
    and the point is due one control period later (a smooth stop from the running plan)."""
    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    point = JointTrajectoryPoint()
    point.positions = [float(v) for v in position]
    point.time_from_start = to_duration(period_s)
    msg.points.append(point)
    return msg


def trajectory_rejection(msg: JointTrajectory, now: float, joints: list[str] | None = None) -> str | None:
    """Why a ros2_controllers JointTrajectoryController would refuse `msg` arriving at `now` (s, the
    controller's clock), or None if it takes it. Its checks, as documented by the controller: joint
    names known and unique, one finite position per joint in every point, time_from_start strictly
    increasing, and, for a non-zero stamp, an end (stamp + last time_from_start) not in the past."""
    names = list(msg.joint_names)
    if not names or len(set(names)) != len(names):
        return f"joint names {names} are empty or repeated"
    if joints is not None and set(names) - set(joints):
        return f"joints {sorted(set(names) - set(joints))} are not the controller's"
    if not msg.points:
        return "no points"
    times = [from_duration(p.time_from_start) for p in msg.points]
    if any(b <= a for a, b in zip(times, times[1:], strict=False)):
        return f"time_from_start {times} is not strictly increasing"
    for p in msg.points:
        if len(p.positions) != len(names) or not np.all(np.isfinite(p.positions)):
            return f"a point has positions {list(p.positions)} for joints {names}"
        if p.velocities and len(p.velocities) != len(names):
            return "velocities do not match the joints"
    if msg.points[-1].velocities and any(abs(v) > 0 for v in msg.points[-1].velocities):
        return "the last point's velocity is not zero"
    start = from_time(msg.header.stamp)
    if start != 0.0 and start + times[-1] < now:
        return f"stamped {start:.3f} with its end {start + times[-1]:.3f} in the past (now {now:.3f})"
    return None


def twist(command: np.ndarray, stamp: Time, frame_id: str, scale: float) -> TwistStamped:
    """The first three action dimensions, times `scale`, as an end-effector linear velocity."""
    msg = TwistStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) * scale for v in command[:3])
    return msg


def twist_to_vector(msg: TwistStamped, scale: float) -> np.ndarray:
    lin = msg.twist.linear
    return np.asarray([lin.x, lin.y, lin.z], dtype=np.float64) / scale


def diagnostics(
    stamp: Time, name: str, level: int, message: str, values: dict[str, object]
) -> DiagnosticArray:
    status = DiagnosticStatus(name=name, hardware_id="ceed_vla", level=level, message=message)
    status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in values.items()]
    out = DiagnosticArray()
    out.header.stamp = stamp
    out.status = [status]
    return out


def diagnostic_values(msg: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for status in msg.status for kv in status.values}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
