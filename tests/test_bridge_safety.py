"""Safety of the bridge's logic under faults and bad input, without DDS: every command passes the
one output filter (holds, ramps and stops included), parameters are strict, stamps feed the
watchdog, and bad messages are refused. A fake clock drives `BridgeCore`."""

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from ceed_vla.robot_bridge import conversions as conv
from ceed_vla.robot_bridge import ros_params
from ceed_vla.robot_bridge.config import BridgeConfig, ConfigError
from ceed_vla.robot_bridge.core import BridgeCore
from sensor_msgs.msg import JointState

PERIOD = 0.05  # s, 20 Hz


def _core(**kw) -> BridgeCore:
    base = dict(control_rate_hz=1 / PERIOD, instruction="reach the goal", blend_steps=0)
    base.update(kw)
    low, high = base.get("action_low", [-1.0] * 4), base.get("action_high", [1.0] * 4)
    base.setdefault("initial_command", np.clip(0.0, low, high).tolist())  # where the arm starts
    return BridgeCore(BridgeConfig(**base))


def _feed(core: BridgeCore, now: float, stamp_age: float | None = None) -> None:
    stamped = {} if stamp_age is None else {"stamp_age": stamp_age}
    core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=now, now=now, **stamped)
    core.observe_state(np.zeros(4, np.float32), now=now, **stamped)


def _serve(core: BridgeCore, now: float, chunk: np.ndarray) -> None:
    request = core.inference_request(now)
    assert request is not None, core.status(now)["state"]
    core.deliver(request, chunk, latency_s=0.001, iterations=1.0)


def _run(core: BridgeCore, t0: float, ticks: int, chunk=None, feed=True) -> list:
    """Tick `ticks` periods from t0, feeding inputs (unless `feed` is False) and serving `chunk`
    whenever the core asks; returns the TickResults."""
    out = []
    for i in range(ticks):
        now = t0 + i * PERIOD
        if feed:
            _feed(core, now)
        if chunk is not None and core.inference_request(now) is not None:
            core.scheduler.cancel()  # the request above was only a probe: serve it properly
            _serve(core, now, chunk)
        out.append(core.tick(now))
    return out


def _steps(results) -> np.ndarray:
    commands = np.asarray([r.command for r in results if r.command is not None])  # [N, D]
    return np.abs(np.diff(commands, axis=0))  # [N-1, D]


# ---- holds obey the filter ------------------------------------------------------------------


def test_entering_and_leaving_a_zero_hold_ramps_at_max_delta():
    core = _core(hold_mode="zero", max_delta=[0.05])
    chunk = np.full((40, 4), 0.9)
    moving = _run(core, 0.0, 30, chunk)  # ramps up from rest to 0.9
    assert np.allclose(moving[-1].command, 0.9)
    stale = _run(core, 30 * PERIOD, 25, feed=False)  # inputs stop: hold
    assert stale[-1].holding and stale[-1].reason.startswith("stale")
    np.testing.assert_allclose(stale[-1].command, 0.0)  # arrived at the hold target ...
    resumed = _run(core, 55 * PERIOD, 30, chunk)  # ... and leaves it the same way
    assert not resumed[-1].holding
    steps = _steps(moving + stale + resumed)
    assert steps.max() <= 0.05 + 1e-9, f"a step of {steps.max():.3f} against max_delta 0.05"
    assert not any(r.jumped for r in moving + stale + resumed)


def test_an_estop_jumps_to_the_hold_and_says_so():
    core = _core(hold_mode="zero", max_delta=[0.05])
    _run(core, 0.0, 30, np.full((40, 4), 0.9))
    core.set_estop(True)
    result = core.tick(30 * PERIOD)
    assert result.holding and result.reason == "estop" and result.jumped
    np.testing.assert_allclose(result.command, 0.0)
    status = core.status(30 * PERIOD)
    assert status["hold_jumps"] == 1 and status["estop_latches"] == 1


def test_a_hold_never_leaves_the_limits():
    with pytest.raises(ConfigError, match=r"zero is outside \[action_low, action_high\] in dimensions \[0"):
        BridgeConfig(hold_mode="zero", action_low=[0.2, -1, -1, -1], action_high=[1, 1, 1, 1])
    # twist: x, y, z stop at zero, the gripper keeps its command (here limits that exclude zero)
    core = _core(output_mode="twist", action_low=[-1, -1, -1, 0.2], action_high=[1, 1, 1, 1.0])
    results = _run(core, 0.0, 20, np.tile([0.5, -0.5, 0.3, 0.8], (40, 1)))
    results += _run(core, 20 * PERIOD, 10, feed=False)
    commands = np.asarray([r.command for r in results if r.command is not None])
    assert np.all(commands >= [-1, -1, -1, 0.2]) and np.all(commands <= 1.0)
    np.testing.assert_allclose(results[-1].command, [0, 0, 0, 0.8])  # stopped, the grip kept


@pytest.mark.parametrize(
    "mode, hold, why",
    [("trajectory", "zero", "zero pose"), ("twist", "last", "keeps the arm moving")],
)
def test_a_hold_mode_that_does_not_hold_the_output_is_refused(mode, hold, why):
    with pytest.raises(ConfigError, match=why):
        BridgeConfig(output_mode=mode, hold_mode=hold, joint_names=["a", "b", "c", "d"])


def test_every_command_passes_the_filter_through_a_run_of_faults():
    """Out-of-range and non-finite chunks, stale inputs, an e-stop and a reset, a stop: every command
    is finite, inside the limits and within max_delta of the one before, except the declared
    e-stop jumps."""
    low, high, delta = [-0.5, -0.5, -0.5, -0.5], [0.5, 0.5, 0.5, 0.5], 0.1
    core = _core(hold_mode="zero", action_low=low, action_high=high, max_delta=[delta])
    rng = np.random.default_rng(0)
    wild = rng.normal(0, 3, (12, 4))
    wild[5, 2] = np.nan
    results, t = [], 0.0
    for phase in range(12):
        if phase == 4:
            core.set_estop(True)
            core.set_estop(False)
        if phase == 5:
            assert core.reset_estop()
        feed = phase not in (2, 7)
        results += _run(core, t, 8, wild if phase % 3 else np.full((12, 4), 9.0), feed=feed)
        t += 8 * PERIOD
    results.append(core.stop_step())
    commands = np.asarray([r.command for r in results if r.command is not None])
    assert np.all(np.isfinite(commands))
    assert np.all(commands >= low) and np.all(commands <= high)
    jumped = [r.jumped for r in results if r.command is not None][1:]
    over = np.any(_steps(results) > delta + 1e-9, axis=1)
    assert not np.any(over & ~np.asarray(jumped)), "a step beyond max_delta that was not an e-stop jump"
    assert core.stats.inference_errors == 0 and core.safety.rejected_count > 0


def test_an_inference_failure_holds_at_once_and_a_good_chunk_resumes():
    core = _core(hold_mode="zero", max_delta=[1.0])
    _run(core, 0.0, 2, np.full((40, 4), 0.5))
    assert len(core.queue) > 10  # plenty of queued actions from the same policy ...
    core.inference_failed()
    held = core.tick(2 * PERIOD)
    assert held.holding and held.reason == "inference_error"  # ... but none of them is played
    assert core.stats.consecutive_inference_errors == 1
    assert core.inference_request(2 * PERIOD) is not None  # inference keeps trying
    core.scheduler.cancel()
    resumed = _run(core, 3 * PERIOD, 2, np.full((40, 4), 0.5))
    assert not resumed[-1].holding and core.stats.consecutive_inference_errors == 0


def test_a_stop_ramps_to_the_hold():
    core = _core(hold_mode="zero", max_delta=[0.1])
    _run(core, 0.0, 12, np.full((40, 4), 0.8))
    steps = []
    while not core.hold_reached():
        steps.append(core.stop_step().command)
        assert len(steps) < 20
    assert len(steps) == 8 and np.allclose(steps[-1], 0.0)
    assert np.abs(np.diff(steps, axis=0)).max() <= 0.1 + 1e-9


# ---- strict parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"stale_timeout_s": math.nan}, "stale_timeout_s=nan"),
        ({"stale_timeout_s": math.inf}, "stale_timeout_s=inf"),
        ({"initial_command": [math.nan, 0.0, 0.0, 0.0]}, "initial_command=[nan"),
        ({"initial_command": [2.0, 0.0, 0.0, 0.0]}, "outside [action_low, action_high]"),
        ({"control_rate_hz": math.inf}, "control_rate_hz=inf"),
        ({"twist_scale": math.nan}, "twist_scale=nan"),
        ({"stamp_tolerance_s": -0.1}, "stamp_tolerance_s=-0.1"),
        ({"max_instruction_chars": 0}, "max_instruction_chars=0"),
        ({"state_joint_names": ["a", "a"]}, "names ['a'] more than once"),
        ({"decoding_sigma": -2}, "decoding_sigma=-2"),
        ({"decoding_init": "tial"}, "decoding_init='tial'"),
        ({"decoding_fused_prefill": True}, "decoding_fused_prefill=true needs decoding_mode"),
        ({"replan_every_ticks": -1}, "replan_every_ticks=-1"),
        ({"latency_quantile": 1.5}, "latency_quantile=1.5"),
        ({"prefix_margin_ticks": -1}, "prefix_margin_ticks=-1"),
        ({"deadline_margin_s": math.nan}, "deadline_margin_s=nan"),
        ({"decode_deadline": True}, "decode_deadline=true needs decoding_mode"),
        (
            {"exact_executed": True, "replan_every_ticks": 2},
            "exact_executed=true needs decoding_mode 'early_exit'",
        ),
        (
            {"exact_executed": True, "decoding_mode": "early_exit", "decoding_sigma": 2},
            "and replan_every_ticks > 0",
        ),
    ],
)
def test_config_refuses_non_finite_and_out_of_range_values(kwargs, quoted):
    with pytest.raises(ConfigError) as err:
        BridgeConfig(**kwargs)
    assert quoted in str(err.value)


def test_ros_values_are_checked_finite_when_read():
    with pytest.raises(ConfigError, match="stale_timeout_s=nan is not finite"):
        ros_params.coerce("stale_timeout_s", "float", float("nan"))
    with pytest.raises(ConfigError, match="non-finite"):
        ros_params.coerce("max_delta", "list[float]", [0.1, float("inf")])


def test_real_time_chunking_parameters_are_read_strictly_and_reach_the_scheduler():
    with pytest.raises(ConfigError, match="forced_prefix=1 is not a valid bool"):
        ros_params.from_dict(BridgeConfig, {"forced_prefix": 1})
    with pytest.raises(ConfigError, match="true/false are not numbers"):
        ros_params.from_dict(BridgeConfig, {"prefix_margin_ticks": True})
    params = {
        "forced_prefix": False,
        "latency_quantile": 0.95,
        "prefix_margin_ticks": 1,
        "initial_command": [0.0] * 4,
    }
    params |= {"decoding_mode": "jacobi", "decode_deadline": True, "deadline_margin_s": 0.005}
    config = ros_params.from_dict(BridgeConfig, params)
    scheduler = BridgeCore(config).scheduler.config
    assert (scheduler.forced_prefix, scheduler.latency_quantile, scheduler.prefix_margin_ticks) == (
        False,
        0.95,
        1,
    )
    assert scheduler.decode_deadline and scheduler.deadline_margin_s == 0.005 and not scheduler.exact_executed
    exact = {
        "decoding_mode": "early_exit",
        "decoding_sigma": 2,
        "replan_every_ticks": 2,
        "exact_executed": True,
    }
    assert BridgeCore(ros_params.from_dict(BridgeConfig, {**params, **exact})).scheduler.config.exact_executed
    with pytest.raises(ConfigError, match="exact_executed=.yes. is not a valid bool"):
        ros_params.from_dict(BridgeConfig, {"exact_executed": "yes"})
    # off by default (on validation seeds it cost teacher AR success, docs/sim.md)
    assert not BridgeConfig(initial_command=[0.0] * 4).forced_prefix


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("dryrun", "dry_run"),
        ("action_hihg", "action_high"),
        ("max_detla", "max_delta"),
        ("forced_prefx", "forced_prefix"),
    ],
)
def test_unknown_parameter_names_are_refused_with_the_closest_valid_one(key, suggestion):
    with pytest.raises(ConfigError, match=f"'{key}' \\(did you mean {suggestion}\\?\\)"):
        ros_params.from_dict(BridgeConfig, {key: True if key in ("dryrun", "forced_prefx") else [0.1]})


# ---- input validation ---------------------------------------------------------------------------


def test_a_joint_state_naming_a_joint_twice_is_refused():
    msg = conv.vector_to_joint_state(
        np.array([0.1, 0.2, 0.3, 0.4, 9.0]), ["ee_x", "ee_y", "ee_z", "gripper", "ee_x"], Time()
    )
    with pytest.raises(conv.MalformedInputError, match=r"names \['ee_x'\] more than once"):
        conv.joint_state_to_vector(msg, ["ee_x", "ee_y", "ee_z", "gripper"])
    assert isinstance(msg, JointState)


def test_an_over_long_instruction_is_refused_in_one_short_message():
    with pytest.raises(conv.MalformedInputError) as err:
        conv.parse_instruction("pick " * 20_000)  # the default cap: 1000 characters
    text = str(err.value)
    assert "99999 characters" in text and len(text) < 300  # the message does not quote it whole
    assert conv.parse_instruction("  push the puck ", max_chars=1000) == "push the puck"


def test_the_watchdog_reads_header_stamps_as_well_as_arrival():
    core = _core(stale_timeout_s=0.1, stamp_tolerance_s=0.05)
    _feed(core, 0.0)
    _serve(core, 0.0, np.zeros((40, 4)))
    assert not core.tick(0.0).holding
    # a camera re-sending a frame stamped 10 s ago, however often: refused, so the input goes stale
    for i in range(1, 6):
        now = i * PERIOD
        problem = core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=-10.0, now=now, stamp_age=10.0)
        core.observe_state(np.zeros(4, np.float32), now=now, stamp_age=0.0)
        assert problem is not None and "10.000 s old on arrival" in problem
        result = core.tick(now)
    assert result.holding and result.reason == "stale_camera"
    future = core.observe_image(np.zeros((8, 8, 3), np.uint8), stamp=9.0, now=0.3, stamp_age=-3.0)
    assert "3.000 s in the future" in future and "synchronise the clocks" in future
    # a stamp that was fresh on arrival ages with the clock: stale once it is older than the limit
    _feed(core, 1.0, stamp_age=0.1)
    assert core.watchdog.stale_inputs(1.0) == []
    assert core.watchdog.stale_inputs(1.06) == ["camera", "state"]


# ---- JointTrajectoryController ------------------------------------------------------------------


def test_trajectory_holds_are_messages_a_joint_trajectory_controller_accepts():
    names = ["j1", "j2", "j3", "j4"]
    hold = conv.hold_trajectory(np.array([0.1, 0.2, 0.3, 0.4]), names, PERIOD)
    # however late it arrives, on whatever clock: a zero stamp starts "now"
    assert conv.trajectory_rejection(hold, now=1e9, joints=names) is None
    assert conv.from_duration(hold.points[0].time_from_start) == pytest.approx(PERIOD)
    single = conv.trajectory(np.zeros((1, 4)), names, Time(sec=100), PERIOD)  # one point left of a plan
    assert conv.trajectory_rejection(single, now=100.02, joints=names) is None
    plan = conv.trajectory(np.zeros((5, 4)), names, Time(sec=100), PERIOD)
    assert conv.trajectory_rejection(plan, now=100.02, joints=names) is None
    # what the controller refuses, so the model above is not vacuous
    old_hold = conv.trajectory(np.zeros((2, 4)), names, Time(sec=100), PERIOD)
    del old_hold.points[1]
    assert "in the past" in conv.trajectory_rejection(old_hold, now=100.001, joints=names)
    assert "not the controller's" in conv.trajectory_rejection(plan, now=100.0, joints=["j1"])
