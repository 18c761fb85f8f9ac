"""Safety pieces of the bridge, free of ROS: the output filter, the e-stop latch and the watchdog.

Nothing leaves the bridge without passing `SafetyFilter`: policy actions, holds, ramps and the
stop on shutdown alike. In that order a command is checked finite, clipped to the per-dimension
limits, and moved at most `max_delta` from its reference: where the arm is. `rebase` sets that
reference before a step: the measured joint positions when they are fresh (the first command,
entering or leaving a hold, a new plan), and what the controller executes now (the last published
command, or the point of the running plan at this tick). A hold is a target like any other: it
ramps there at `max_delta`, except where it must not wait (an e-stop), where it jumps and counts
the jump.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SafetyConfig


@dataclass
class FilterResult:
    command: np.ndarray | None  # [D] float64, None when the action was rejected
    clamped: bool  # a limit or the delta clamp changed the action
    rejected_reason: str = ""  # "non_finite" or "wrong_dim" when command is None
    jumped: bool = False  # a hold skipped the delta clamp (an e-stop)
    at_target: bool = True  # the command is the target itself (a ramp has arrived)


class SafetyFilter:
    """Finite check, limits and per-step delta clamp, chained over the published commands.

    `last` is the last command published ([D]); None until one is, unless `initial_command` or the
    zero-held dimensions say where the actuator starts.
    """

    def __init__(self, config: SafetyConfig):
        self.config = config
        self.low = np.asarray(config.action_low, dtype=np.float64)  # [D]
        self.high = np.asarray(config.action_high, dtype=np.float64)  # [D]
        self.max_delta = np.asarray(config.max_delta, dtype=np.float64)  # [D]
        self.zero_hold = np.asarray(config.zero_hold, dtype=bool)  # [D]
        self.last: np.ndarray | None = None  # [D] the reference: what the controller executes now
        # [D] x 2: where the next step may land (set by `rebase`, used by the next step only)
        self.window: tuple[np.ndarray, np.ndarray] | None = None
        self.clamped_count = 0
        self.rejected_count = 0
        self.jump_count = 0
        self.reset()

    def reset(self) -> None:
        """Back to the start reference: `initial_command`, else zero when every dimension is zero-held
        (a velocity interface at rest), else unknown (the first command is only clipped)."""
        init = self.config.initial_command
        self.window = None
        if init:
            self.last = np.clip(np.asarray(init, dtype=np.float64), self.low, self.high)
        elif self.zero_hold.any():
            # velocities start at rest; in twist mode the gripper starts from zero too (no better guess)
            self.last = np.clip(np.zeros_like(self.low), self.low, self.high)
        else:
            self.last = None

    def rebase(self, executing: np.ndarray | None, measured: np.ndarray | None = None) -> None:
        """Set the reference of the next step from where the arm is, on the dimensions that are not
        zero-held (positions): `executing` [D] is what the controller executes now (the running
        plan's point at this tick), `measured` [D] the arm's fresh joint positions (None: not known
        or not fresh). The next step lands within max_delta of the measured position, and also of
        the executing command where the two allow it (a tracking error up to 2 max_delta); a hold
        stays at the executing command moved into that window (never behind it while the arm keeps
        up). With neither known nothing changes (the last command stays the reference)."""
        pos = ~self.zero_hold
        if not pos.any():
            return
        ref = measured if measured is not None else executing
        if ref is None:
            return
        ref = np.asarray(ref, dtype=np.float64)
        lo, hi = ref - self.max_delta, ref + self.max_delta
        if measured is not None and executing is not None:
            both_lo = np.maximum(lo, executing - self.max_delta)
            both_hi = np.minimum(hi, executing + self.max_delta)
            agree = both_lo <= both_hi + 1e-12
            lo, hi = np.where(agree, both_lo, lo), np.where(agree, both_hi, hi)
        last = self.last if self.last is not None else np.where(pos, ref, 0.0)
        # the zero-held dimensions keep their own reference: the last command, max_delta either side
        lo = np.where(pos, lo, last - self.max_delta)
        hi = np.where(pos, hi, last + self.max_delta)
        # the reference point itself (where a hold stays): what the controller executes, moved into
        # the window, so a hold lags behind the command only where the arm does (by over max_delta)
        base = np.asarray(executing if executing is not None else ref, dtype=np.float64)
        self.last = np.clip(np.where(pos, np.clip(base, lo, hi), last), self.low, self.high)
        self.window = (np.minimum(lo, self.last), np.maximum(hi, self.last))

    def check(
        self,
        action: np.ndarray,
        previous: np.ndarray | None,
        window: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FilterResult:
        """Filter one action against `previous` (or into `window`) without changing any state."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)  # [D]
        if action.shape != self.low.shape:
            return FilterResult(None, False, "wrong_dim")
        if not np.all(np.isfinite(action)):
            return FilterResult(None, False, "non_finite")
        out = np.clip(action, self.low, self.high)
        if window is not None:
            out = np.clip(np.clip(out, *window), self.low, self.high)
        elif previous is not None:
            step = out - previous
            within = np.abs(step) <= self.max_delta + 1e-9  # reachable this step: land on it exactly
            out = np.where(within, out, previous + np.clip(step, -self.max_delta, self.max_delta))
            out = np.clip(out, self.low, self.high)
        return FilterResult(out, bool(np.any(out != action)), at_target=bool(np.all(out == action)))

    def apply(self, action: np.ndarray) -> FilterResult:
        """Filter one action and, when it passes, make it the new previous command."""
        result = self.check(action, self.last, self.window)
        self._count(result)
        if result.command is not None:
            self.last, self.window = result.command, None
        return result

    def plan(self, actions: np.ndarray) -> np.ndarray:
        """Filter a sequence [T, D] chained from the reference (the first point into the window),
        stopping before the first rejected action; returns the accepted prefix [T', D]. State is not
        changed: ticks commit each step."""
        previous, window = self.last, self.window
        out = []
        for action in actions:
            result = self.check(action, previous, window)
            if result.command is None:
                break
            out.append(result.command)
            previous, window = result.command, None
        return np.stack(out) if out else np.zeros((0, self.low.shape[0]))

    def hold_target(self) -> np.ndarray | None:
        """Where a hold goes, [D]: zero on the zero-held dimensions, the last command elsewhere
        (inside the limits); None when nothing was ever published and there is no reference."""
        if self.last is None:
            return None
        target = np.where(self.zero_hold, 0.0, self.last)
        return np.clip(target, self.low, self.high)

    def hold(self, jump: bool = False) -> FilterResult | None:
        """One step of a hold, committed: toward the hold target at `max_delta`, or straight to it with
        `jump` (counted when the step exceeds `max_delta`). None when there is nothing to hold."""
        target = self.hold_target()
        if target is None:
            return None
        window, self.window = self.window, None
        if jump:
            jumped = bool(np.any(np.abs(target - self.last) > self.max_delta + 1e-12))
            self.jump_count += int(jumped)
            self.last = target
            return FilterResult(target.copy(), False, jumped=jumped)
        result = self.check(target, self.last, window)  # a ramp step is not counted as a clamped action
        self.last = result.command
        return result

    def _count(self, result: FilterResult) -> None:
        if result.command is None:
            self.rejected_count += 1
        elif result.clamped:
            self.clamped_count += 1


class EStopLatch:
    """Once the e-stop input is asserted the latch stays set until `reset()` while the input is clear.

    Every `true` latches, however quickly a `false` follows it: the subscription keeps every message
    (reliable, deep queue) and each one passes through `update` in order.
    """

    def __init__(self):
        self.input_asserted = False
        self.latched = False
        self.latch_count = 0  # times the latch went from released to set

    def update(self, asserted: bool) -> None:
        self.input_asserted = bool(asserted)
        if self.input_asserted:
            self.latch_count += int(not self.latched)
            self.latched = True

    def reset(self) -> bool:
        """Release the latch; refused (returns False) while the e-stop input is still asserted."""
        if self.input_asserted:
            return False
        self.latched = False
        return True


class StaleWatchdog:
    """Tracks when each required input last arrived and how old its header stamp was then.

    An input is stale if it never arrived, arrived longer than `timeout_s` ago, or its stamp is older
    than `timeout_s + stamp_tolerance_s` (a camera re-publishing an old frame is stale however often
    it publishes). `stamp_tolerance_s` absorbs transport latency and clock skew between machines.
    """

    def __init__(self, required: list[str], timeout_s: float, stamp_tolerance_s: float = 0.1):
        if not (timeout_s > 0 and np.isfinite(timeout_s)):
            raise ValueError(f"timeout_s={timeout_s}: need a finite value > 0")
        if not (stamp_tolerance_s >= 0 and np.isfinite(stamp_tolerance_s)):
            raise ValueError(f"stamp_tolerance_s={stamp_tolerance_s}: need a finite value >= 0")
        self.required = list(required)
        self.timeout_s = timeout_s
        self.stamp_tolerance_s = stamp_tolerance_s
        self.last_seen: dict[str, float] = {}
        self.stamp_age: dict[str, float] = {}  # header age at arrival (s); absent for unstamped inputs

    def stamp_problem(self, name: str, stamp_age: float) -> str | None:
        """Why a message whose header stamp was `stamp_age` s old on arrival cannot count as fresh."""
        if stamp_age < -self.stamp_tolerance_s:
            return (
                f"{name} stamp is {-stamp_age:.3f} s in the future (more than stamp_tolerance_s="
                f"{self.stamp_tolerance_s}): synchronise the clocks of the sender and this machine"
            )
        if stamp_age > self.timeout_s + self.stamp_tolerance_s:
            zero = " (a zero stamp: stamp messages when they are captured)" if stamp_age > 1e8 else ""
            return (
                f"{name} stamp is {stamp_age:.3f} s old on arrival (more than stale_timeout_s + "
                f"stamp_tolerance_s = {self.timeout_s + self.stamp_tolerance_s:.3f} s){zero}: a re-sent old "
                "message or a sender clock behind this one; treated as stale"
            )
        return None

    def feed(self, name: str, now: float, stamp_age: float | None = None) -> None:
        self.last_seen[name] = now
        if stamp_age is None:
            self.stamp_age.pop(name, None)
        else:
            self.stamp_age[name] = stamp_age

    def clear(self) -> None:
        self.last_seen.clear()
        self.stamp_age.clear()

    def stale_inputs(self, now: float) -> list[str]:
        """Names of the required inputs that never arrived, or whose arrival or stamp is too old."""
        limit = self.timeout_s + self.stamp_tolerance_s
        return [
            name
            for name in self.required
            if name not in self.last_seen
            or now - self.last_seen[name] > self.timeout_s
            or self.stamp_age.get(name, -np.inf) + (now - self.last_seen[name]) > limit
        ]

    def oldest_age(self, now: float) -> float:
        ages = [now - self.last_seen[n] for n in self.required if n in self.last_seen]
        return max(ages) if len(ages) == len(self.required) else float("inf")
