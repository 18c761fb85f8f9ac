"""Episode seeds: recording, validation and evaluation draw from three disjoint ranges.

A run seed `s` (0 <= s < MAX_RUN_SEEDS) owns `SEEDS_PER_RUN` consecutive episode seeds in each
range, so no evaluation episode ever starts from a layout a recording saw, whatever run seeds
the two used. Validation seeds are for choices made by looking at closed-loop success (which
checkpoint, which sigma): a choice made on them says nothing about the evaluation episodes, which
stay unseen until the report.

    [0, 1e8)      recording        record_seed
    [1e8, 2e8)    evaluation       eval_seed
    [2e8, 3e8)    validation       validation_seed
"""

from __future__ import annotations

SEEDS_PER_RUN = 100_000
MAX_RUN_SEEDS = 1_000
RECORD_SEED_BASE = 0
EVAL_SEED_BASE = RECORD_SEED_BASE + SEEDS_PER_RUN * MAX_RUN_SEEDS  # 10**8: first evaluation seed
VALIDATION_SEED_BASE = EVAL_SEED_BASE + SEEDS_PER_RUN * MAX_RUN_SEEDS  # 2 * 10**8: first validation seed
SPLITS = ("eval", "validation")


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


def validation_seed(run_seed: int, episode: int) -> int:
    """Env seed of validation episode `episode` (for model selection; never reported as evaluation)."""
    _check(run_seed, episode)
    return VALIDATION_SEED_BASE + run_seed * SEEDS_PER_RUN + episode


def split_seed(split: str, run_seed: int, episode: int) -> int:
    """`eval_seed` or `validation_seed` by name."""
    if split == "eval":
        return eval_seed(run_seed, episode)
    if split == "validation":
        return validation_seed(run_seed, episode)
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def is_eval_seed(seed: int) -> bool:
    return EVAL_SEED_BASE <= seed < VALIDATION_SEED_BASE


def is_validation_seed(seed: int) -> bool:
    return VALIDATION_SEED_BASE <= seed < VALIDATION_SEED_BASE + SEEDS_PER_RUN * MAX_RUN_SEEDS
