"""Episode seeds: recording and evaluation draw from disjoint ranges.

A run seed `s` (0 <= s < MAX_RUN_SEEDS) owns `SEEDS_PER_RUN` consecutive episode seeds in each
range, so no evaluation episode ever starts from a layout a recording saw, whatever run seeds
the two used.
"""

from __future__ import annotations

SEEDS_PER_RUN = 100_000
MAX_RUN_SEEDS = 1_000
RECORD_SEED_BASE = 0
EVAL_SEED_BASE = RECORD_SEED_BASE + SEEDS_PER_RUN * MAX_RUN_SEEDS  # 10**8: first evaluation seed


def _check(run_seed: int, index: int) -> None:
    if not 0 <= run_seed < MAX_RUN_SEEDS:
        raise ValueError(f"run seed must be in [0, {MAX_RUN_SEEDS}), got {run_seed!r}")
    if not 0 <= index < SEEDS_PER_RUN:
        raise ValueError(f"episode index must be in [0, {SEEDS_PER_RUN}), got {index!r}")


def record_seed(run_seed: int, attempt: int) -> int:
    """Env seed of recording attempt `attempt` (failed attempts consume seeds too)."""
    _check(run_seed, attempt)
    return RECORD_SEED_BASE + run_seed * SEEDS_PER_RUN + attempt


def eval_seed(run_seed: int, episode: int) -> int:
    """Env seed of evaluation episode `episode`."""
    _check(run_seed, episode)
    return EVAL_SEED_BASE + run_seed * SEEDS_PER_RUN + episode


def is_eval_seed(seed: int) -> bool:
    return seed >= EVAL_SEED_BASE
