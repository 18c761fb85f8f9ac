"""Safety pieces of the bridge, free of ROS: the command filter, the e-stop latch and the watchdog.

Nothing leaves the bridge without passing `SafetyFilter`: a command is finite, inside the
per-dimension limits, and at most `max_delta` away from the previous published command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import HoldMode, SafetyConfig


@dataclass
class FilterResult:
    command: np.ndarray | None  # [D] float64, None when the action was rejected
    clamped: bool  # a limit or the delta clamp changed the action
    rejected_reason: str = ""  # "non_finite" or "wrong_dim" when command is None


class SafetyFilter:
    """Limits, per-step delta clamp and a non-finite guard, chained over published commands."""

    def __init__(self, config: SafetyConfig):
        self.config = config
        self.low = np.asarray(config.action_low, dtype=np.float64)  # [D]
        self.high = np.asarray(config.action_high, dtype=np.float64)  # [D]
        self.max_delta = np.asarray(config.max_delta, dtype=np.float64)  # [D]
        self.last: np.ndarray | None = None  # [D] the last command that was published
        self.clamped_count = 0
        self.rejected_count = 0
        self.reset()

    def reset(self) -> None:
        """Forget the last command; the next one is clamped against `initial_command` if given."""
        init = self.config.initial_command
        self.last = np.clip(np.asarray(init, dtype=np.float64), self.low, self.high) if init else None

    def check(self, action: np.ndarray, previous: np.ndarray | None) -> FilterResult:
        """Filter one action against `previous` without changing any state."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)  # [D]
        if action.shape != self.low.shape:
            return FilterResult(None, False, "wrong_dim")
        if not np.all(np.isfinite(action)):
            return FilterResult(None, False, "non_finite")
        out = np.clip(action, self.low, self.high)
        if previous is not None:
            out = previous + np.clip(out - previous, -self.max_delta, self.max_delta)
            out = np.clip(out, self.low, self.high)
        return FilterResult(out, bool(np.any(out != action)))

    def apply(self, action: np.ndarray) -> FilterResult:
        """Filter one action and, when it passes, make it the new previous command."""
        result = self.check(action, self.last)
        self._count(result)
        if result.command is not None:
            self.last = result.command
        return result

    def plan(self, actions: np.ndarray) -> np.ndarray:
        """Filter a sequence [T, D] chained from the last command, stopping before the first rejected
        action; returns the accepted prefix [T', D]. State is not changed: ticks commit each step."""
        previous = self.last
        out = []
        for action in actions:
            result = self.check(action, previous)
            if result.command is None:
                break
            out.append(result.command)
            previous = result.command
        return np.stack(out) if out else np.zeros((0, self.low.shape[0]))

    def hold_command(self) -> np.ndarray | None:
        """What to publish while holding: zeros, or the last command (None if there never was one)."""
        if self.config.hold_mode is HoldMode.ZERO:
            return np.zeros_like(self.low)
        return None if self.last is None else self.last.copy()

    def _count(self, result: FilterResult) -> None:
        if result.command is None:
            self.rejected_count += 1
        elif result.clamped:
            self.clamped_count += 1


class EStopLatch:
    """Once the e-stop input is asserted the latch stays set until `reset()` while the input is clear."""

    def __init__(self):
        self.input_asserted = False
        self.latched = False

    def update(self, asserted: bool) -> None:
        self.input_asserted = bool(asserted)
        if self.input_asserted:
            self.latched = True

    def reset(self) -> bool:
        """Release the latch; refused (returns False) while the e-stop input is still asserted."""
        if self.input_asserted:
            return False
        self.latched = False
        return True


class StaleWatchdog:
    """Tracks when each required input last arrived; stale if any is missing or older than timeout."""

    def __init__(self, required: list[str], timeout_s: float):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s}: need > 0")
        self.required = list(required)
        self.timeout_s = timeout_s
        self.last_seen: dict[str, float] = {}

    def feed(self, name: str, now: float) -> None:
        self.last_seen[name] = now

    def clear(self) -> None:
        self.last_seen.clear()

    def stale_inputs(self, now: float) -> list[str]:
        """Names of the required inputs that never arrived or are older than the timeout."""
        return [
            name
            for name in self.required
            if name not in self.last_seen or now - self.last_seen[name] > self.timeout_s
        ]

    def oldest_age(self, now: float) -> float:
        ages = [now - self.last_seen[n] for n in self.required if n in self.last_seen]
        return max(ages) if len(ages) == len(self.required) else float("inf")
