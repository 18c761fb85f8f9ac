"""The action queue between background inference and the control timer.

Time is counted in control ticks. A chunk predicted from an observation taken when tick `t_obs` was
next to run holds actions for ticks t_obs, t_obs+1, ... . By the time it arrives some of those ticks
have passed; their actions are dropped. The rest overlaps the tail of the previous chunk: over the
first `blend_steps` overlapping ticks the two are cross-faded linearly (weight of the new chunk
1/(b+1), 2/(b+1), ...), after which the new chunk alone is used. This keeps consecutive commands
continuous when the policy changes its mind between chunks.

    ticks:        t_obs ............ now ............................
    old queue:                       [o o o o o]
    new chunk:    [x x x x x x x x x x x x]
    merged:                          [b b n n n n n n]   (b = blend, n = new)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass
class MergeResult:
    accepted: bool  # False when every action of the chunk was already in the past
    dropped: int  # actions of the chunk whose tick had already passed
    blended: int  # ticks where old and new were cross-faded
    length: int  # queue length after the merge


class ChunkQueue:
    """Thread-safe queue of future actions indexed by control tick."""

    def __init__(self, action_dim: int, blend_steps: int):
        self.action_dim = action_dim
        self.blend_steps = blend_steps
        self._lock = threading.Lock()
        self._start = 0  # tick of self._actions[0]
        self._actions = np.zeros((0, action_dim))  # [T, D]

    def __len__(self) -> int:
        with self._lock:
            return self._actions.shape[0]

    def clear(self) -> None:
        with self._lock:
            self._actions = np.zeros((0, self.action_dim))

    def pop(self, tick: int) -> np.ndarray | None:
        """The action for `tick` ([D]) or None on underrun; actions for earlier ticks are discarded."""
        with self._lock:
            self._drop_before(tick)
            if self._actions.shape[0] == 0 or self._start != tick:
                return None
            action = self._actions[0].copy()
            self._actions = self._actions[1:]
            self._start = tick + 1
            return action

    def remaining(self, tick: int) -> np.ndarray:
        """Actions queued for `tick` and later, [T, D] (a copy)."""
        with self._lock:
            self._drop_before(tick)
            return self._actions.copy() if self._start == tick else np.zeros((0, self.action_dim))

    def merge(self, chunk: np.ndarray, obs_tick: int, now_tick: int) -> MergeResult:
        """Merge a chunk [K, D] predicted for ticks obs_tick.. into the queue, `now_tick` being next."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"chunk has shape {chunk.shape}; expected [K, {self.action_dim}]")
        dropped = max(0, now_tick - obs_tick)
        fresh = chunk[dropped:]  # [K', D] for ticks now_tick..
        with self._lock:
            self._drop_before(now_tick)
            if fresh.shape[0] == 0:
                return MergeResult(False, min(dropped, chunk.shape[0]), 0, self._actions.shape[0])
            old = self._actions if self._start == now_tick else np.zeros((0, self.action_dim))
            blended = min(self.blend_steps, old.shape[0], fresh.shape[0])
            merged = fresh.copy()
            if blended:
                w = (np.arange(1, blended + 1) / (self.blend_steps + 1))[:, None]  # [b, 1]
                merged[:blended] = (1 - w) * old[:blended] + w * fresh[:blended]
            self._actions = merged
            self._start = now_tick
            return MergeResult(True, dropped, blended, merged.shape[0])

    def _drop_before(self, tick: int) -> None:
        behind = tick - self._start
        if behind > 0:
            self._actions = self._actions[behind:]
            self._start = tick
