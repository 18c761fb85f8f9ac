"""Training samples for distillation: a dataset frame joined with one of its Jacobi trajectories.

Each item is the frame's observation (what the policy's `prefix_embeddings` reads) plus:

    distill.state           [n] long   the state the student learns to jump from
    distill.target          [n] long   the fixed point (global) or the next state (local)
    distill.teacher_tokens  [n] long
    distill.gt_tokens       [n] long
    distill.l1              []  float  mean |teacher - ground truth| of the chunk, fraction of the q01..q99 range
    distill.forced          []  long   tokens of the chunk given as a forced prefix (0 = none); every
                                       state, target and teacher token row begins with them

The state is drawn per (seed, epoch, item): the same item gives the same state in every process and
after a resume, which the shared trainer's reproducibility relies on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .losses import CONSISTENCY_MODES, FORCED, GT, L1, STATE, TARGET, TEACHER
from .store import Trajectories


@dataclass
class StateSampling:
    """How the intermediate state is drawn.

    consistency: "global" (target = fixed point), "local" (target = the next state) or "none".
    noise: probability of replacing the Jacobi state by the fixed point with noise from a random
        position on (each later token moved by 1..noise_bins bins with probability 1/2), which
        trains the student on states near the fixed point that early exit stops at.
    initial: probability of taking the initial guess (the state a first iteration starts from, and
        all that early exit at sigma 1 sees) instead of a uniformly drawn intermediate state.
    first_token: probability that an initial state's first free token is moved by 1..noise_bins
        bins. The recorded initial state holds the prefill's exact first token; the fused prefill
        (one forward over [prompt, guess block]) decodes from the guess itself, whose first token is
        the previous chunk's or the constant one. These states train the student for that pass.
    guess_state: where a trajectory starts with the recorded guess the fused prefill sees (`ceed
        distill collect --fused-states`), the probability that an initial draw takes it rather than
        the state after the prefill, which every later iteration (and so two-pass decoding) sees.
    """

    consistency: str = "global"
    noise: float = 0.0
    noise_bins: int = 3
    n_bins: int = 256
    initial: float = 0.0
    first_token: float = 0.0
    guess_state: float = 1.0

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_MODES:
            raise ValueError(f"consistency must be one of {CONSISTENCY_MODES}, got {self.consistency!r}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise is a probability in [0, 1], got {self.noise}")
        if self.noise_bins < 1:
            raise ValueError(f"noise_bins must be >= 1, got {self.noise_bins}")
        if not 0.0 <= self.initial <= 1.0:
            raise ValueError(f"initial is a probability in [0, 1], got {self.initial}")
        if not 0.0 <= self.first_token <= 1.0:
            raise ValueError(f"first_token is a probability in [0, 1], got {self.first_token}")
        if not 0.0 <= self.guess_state <= 1.0:
            raise ValueError(f"guess_state is a probability in [0, 1], got {self.guess_state}")


def sample_state(
    states: np.ndarray, rng: np.random.Generator, cfg: StateSampling, forced: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """states: [T, n], initial guess first, fixed point last -> (state [n], target [n]).
    forced: the leading tokens given as a prefix (the same in every state; noise never moves them)."""
    fixed = states[-1]
    n = fixed.shape[0]
    if cfg.noise > 0 and n > forced + 1 and rng.random() < cfg.noise:
        return noised_fixed_point(fixed, rng, cfg, forced), fixed.copy()
    if len(states) == 1:  # the guess was already the fixed point: nothing to learn from it
        return fixed.copy(), fixed.copy()
    if cfg.initial > 0 and rng.random() < cfg.initial:
        j = 0  # the initial guess
        if starts_with_guess(states, forced) and cfg.guess_state < 1 and rng.random() >= cfg.guess_state:
            j = 1  # the state after the prefill
    else:
        j = int(rng.integers(0, len(states) - 1))  # an intermediate state, never the fixed point
    target = states[j + 1] if cfg.consistency == "local" else fixed
    state = states[j].copy()
    if j == 0 and cfg.first_token > 0 and n > forced and rng.random() < cfg.first_token:
        shift = int(rng.integers(1, cfg.noise_bins + 1)) * int(rng.choice([-1, 1]))
        state[forced] = _bounced(np.int64(state[forced]), shift, cfg.n_bins)  # the guess's, not the prefill's
    return state, target.copy()


def starts_with_guess(states: np.ndarray, forced: int = 0) -> bool:
    """Whether the trajectory [T, n] starts with a recorded guess (`--fused-states`): the prefill
    makes the first free token final, so only a guess state before it holds another one."""
    n = states.shape[1]
    return len(states) > 1 and forced < n and int(states[0, forced]) != int(states[1, forced])


def noised_fixed_point(
    fixed: np.ndarray, rng: np.random.Generator, cfg: StateSampling, forced: int = 0
) -> np.ndarray:
    """The fixed point [n] with tokens from a random position c in [forced + 1, n) on moved by
    1..noise_bins: the forced tokens are given and the first free one is the prefill's, exact."""
    n = fixed.shape[0]
    c = int(rng.integers(forced + 1, n))
    moved = rng.random(n) < 0.5
    moved[:c] = False
    moved[rng.integers(c, n)] = True  # at least one token differs
    shift = rng.integers(1, cfg.noise_bins + 1, n) * rng.choice([-1, 1], n)
    base = fixed.astype(np.int64)
    return np.where(moved, _bounced(base, shift, cfg.n_bins), base).astype(fixed.dtype)


def _bounced(base: np.ndarray, shift: np.ndarray, n_bins: int) -> np.ndarray:
    """base + shift, or base - shift where that leaves the bin range (bouncing off its ends)."""
    up = base + shift
    return np.clip(np.where((up < 0) | (up >= n_bins), base - shift, up), 0, n_bins - 1)


class DistillDataset(Dataset):
    """Rows `rows` of a trajectory store, joined with their frames from `frame_dataset`.

    frame_dataset: indexable by absolute dataset index (the policy's `ChunkDataset` over every
    episode), giving the observation keys.
    """

    def __init__(
        self, frame_dataset, traj: Trajectories, rows: np.ndarray, sampling: StateSampling, seed: int = 0
    ):
        self.frames, self.traj = frame_dataset, traj
        self.rows = np.asarray(rows, dtype=np.int64)
        self.sampling, self.seed, self.epoch = sampling, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        k = int(self.rows[i])
        t = self.traj
        item = dict(self.frames[int(t.dataset_index[k])])
        rng = np.random.default_rng([self.seed, self.epoch, int(t.sample_id[k])])
        forced = int(t.forced_tokens[k])
        state, target = sample_state(t.trajectory(k), rng, self.sampling, forced)
        item.update(
            {
                STATE: torch.from_numpy(state.astype(np.int64)),
                TARGET: torch.from_numpy(target.astype(np.int64)),
                TEACHER: torch.from_numpy(t.teacher_tokens[k].astype(np.int64)),
                GT: torch.from_numpy(t.gt_tokens[k].astype(np.int64)),
                L1: torch.tensor(float(t.l1[k])),
                FORCED: torch.tensor(forced, dtype=torch.long),
            }
        )
        return item
