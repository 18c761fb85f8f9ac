"""Small statistics used by evaluation reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ceed_vla.stats import percentile as percentile  # one definition, for every part

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is informative at 0/n and n/n,
    which is what small evaluation runs produce. Returns (0, 1) for zero trials.
    """
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes!r}, trials={trials!r}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    z2 = z * z
    denom = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denom
    # Mathematically low <= p <= high; clamp the rounding (10/10 otherwise gives high = 0.9999999999999999).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts.

    Under the null (both policies equally likely to win a discordant episode) the number of
    episodes only A solves is Binomial(only_a + only_b, 1/2); the p-value doubles the smaller tail
    (capped at 1). No discordant pairs give 1.0: nothing distinguishes the two.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got only_a={only_a!r}, only_b={only_b!r}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


class UnpairedEpisodesError(ValueError):
    """Two evaluations that were meant to be paired did not run the same episodes."""


def paired_outcomes(a: dict, b: dict) -> dict:
    """Paired comparison of two policies on the same episodes.

    `a` and `b` map an episode key (e.g. `(task, seed)`) to success. Returns the counts of episodes
    both solve, only A, only B and neither, the two success rates and the exact McNemar p-value.
    """
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b), key=repr)[:5]
        raise UnpairedEpisodesError(
            f"the two evaluations ran different episodes ({len(a)} vs {len(b)}; e.g. {missing}); "
            "run both modes on the same tasks, seeds and episode counts"
        )
    both = sum(1 for k in a if a[k] and b[k])
    only_a = sum(1 for k in a if a[k] and not b[k])
    only_b = sum(1 for k in a if b[k] and not a[k])
    n = len(a)
    return {
        "episodes": n,
        "both": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": n - both - only_a - only_b,
        "success_a": (both + only_a) / n if n else None,
        "success_b": (both + only_b) / n if n else None,
        "mcnemar_p": mcnemar_exact(only_a, only_b),
    }


def episode_outcomes(report: dict) -> dict:
    """`{(task, seed): success}` from an evaluation report's `episodes` list."""
    return {(e["task"], int(e["seed"])): bool(e["success"]) for e in report["episodes"]}
