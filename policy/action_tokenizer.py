"""Actions <-> bins: OpenVLA-style discretisation with per-dimension dataset quantiles.

Each dimension d is normalised with its 1st/99th percentiles to [-1, 1]
(x' = 2 (x - q01) / (q99 - q01) - 1, clipped), then cut into `n_bins` uniform bins. A bin decodes to
its centre, so for any action inside [q01, q99] the round trip is off by at most half a bin:
(q99 - q01) / (2 n_bins) in action units. Bins become token ids `action_token_start + bin` in the
policy; this module only deals with bins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

_MIN_RANGE = 1e-6  # a constant dimension still gets a non-zero bin width


@dataclass
class ActionTokenizer:
    q01: torch.Tensor  # [D]
    q99: torch.Tensor  # [D]
    n_bins: int = 256

    def __post_init__(self) -> None:
        self.q01 = torch.as_tensor(self.q01, dtype=torch.float32).flatten()
        self.q99 = torch.as_tensor(self.q99, dtype=torch.float32).flatten()
        if self.q01.shape != self.q99.shape:
            raise ValueError(f"q01 has shape {tuple(self.q01.shape)} but q99 has {tuple(self.q99.shape)}")
        if bool((self.q99 < self.q01).any()):
            raise ValueError(
                f"q99 must be >= q01 per dimension, got q01={self.q01.tolist()} q99={self.q99.tolist()}"
            )
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")

    @property
    def action_dim(self) -> int:
        return int(self.q01.numel())

    @property
    def bin_width(self) -> torch.Tensor:
        """Width of one bin per dimension in action units: [D]."""
        return 2.0 * self._half_range() / self.n_bins

    def _half_range(self) -> torch.Tensor:
        return ((self.q99 - self.q01) / 2.0).clamp_min(_MIN_RANGE)

    @classmethod
    def fit(cls, actions: torch.Tensor, n_bins: int = 256) -> ActionTokenizer:
        """Quantiles over every row of `actions` ([N, D] or [..., D])."""
        flat = torch.as_tensor(actions, dtype=torch.float32).reshape(-1, actions.shape[-1])
        if flat.shape[0] == 0:
            raise ValueError("cannot fit an action tokenizer on zero actions")
        q = torch.quantile(flat.double(), torch.tensor([0.01, 0.99], dtype=torch.float64), dim=0).float()
        return cls(q01=q[0], q99=q[1], n_bins=n_bins)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """[..., D] action units -> [..., D] in [-1, 1] (clipped)."""
        center = (self.q01 + self.q99).to(actions) / 2.0
        return ((actions - center) / self._half_range().to(actions)).clamp(-1.0, 1.0)

    def unnormalize(self, normed: torch.Tensor) -> torch.Tensor:
        center = (self.q01 + self.q99).to(normed) / 2.0
        return normed * self._half_range().to(normed) + center

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """[..., D] float actions -> [..., D] long bins in [0, n_bins)."""
        self._check_dim(actions)
        normed = self.normalize(actions.float())
        bins = torch.floor((normed + 1.0) / 2.0 * self.n_bins).long()
        return bins.clamp(0, self.n_bins - 1)

    def decode(self, bins: torch.Tensor) -> torch.Tensor:
        """[..., D] long bins -> [..., D] float actions at the bin centres."""
        self._check_dim(bins)
        if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= self.n_bins):
            raise ValueError(
                f"bins must lie in [0, {self.n_bins}), got range [{int(bins.min())}, {int(bins.max())}]"
            )
        normed = (bins.float() + 0.5) * (2.0 / self.n_bins) - 1.0
        return self.unnormalize(normed)

    def _check_dim(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.action_dim:
            raise ValueError(
                f"last dimension {x.shape[-1]} does not match the tokenizer's action_dim {self.action_dim}"
            )

    def to_dict(self) -> dict:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist(), "n_bins": self.n_bins}

    @classmethod
    def from_dict(cls, data: dict) -> ActionTokenizer:
        return cls(q01=torch.tensor(data["q01"]), q99=torch.tensor(data["q99"]), n_bins=int(data["n_bins"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


@dataclass
class StateNormalizer:
    """Mean/std normalisation of the proprio state, applied outside the network."""

    mean: torch.Tensor  # [S]
    std: torch.Tensor  # [S]

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(self.std, dtype=torch.float32).flatten().clamp_min(1e-4)

    @classmethod
    def fit(cls, states: torch.Tensor) -> StateNormalizer:
        flat = torch.as_tensor(states, dtype=torch.float32).reshape(-1, states.shape[-1])
        return cls(mean=flat.mean(0), std=flat.std(0) if flat.shape[0] > 1 else torch.ones(flat.shape[1]))

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        return (state - self.mean.to(state)) / self.std.to(state)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> StateNormalizer:
        return cls(mean=torch.tensor(data["mean"]), std=torch.tensor(data["std"]))
