"""Configuration and result types of `decode()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Mode = Literal["ar", "jacobi", "early_exit"]
InitStrategy = Literal["constant", "random", "first_token"]
Backend = Literal["auto", "hf", "static", "graphs"]
StepImpl = Literal["auto", "triton", "torch"]

MODES: tuple[str, ...] = ("ar", "jacobi", "early_exit")
INIT_STRATEGIES: tuple[str, ...] = ("constant", "random", "first_token")
BACKENDS: tuple[str, ...] = ("auto", "hf", "static", "graphs")
STEP_IMPLS: tuple[str, ...] = ("auto", "triton", "torch")


class DecodeConfigError(ValueError):
    """A `DecodeConfig` field holds a value that cannot work."""


class DecodeInputError(ValueError):
    """The tensors given to `decode()` do not have the documented shapes or values."""


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode one chunk of action tokens.

    Modes:
      - ``"ar"``: greedy autoregressive decoding, one forward per token after the prefill. The reference.
      - ``"jacobi"``: a block of guesses refined in parallel until it is a fixed point; token for token
        the AR output.
      - ``"early_exit"``: Jacobi stopped early, when the iteration count reaches ``sigma`` and/or when no
        token moved by more than ``tau`` bins since the previous iteration. The converged prefix is exact.

    Initial guess (Jacobi modes, when the caller passes no ``init_guess``):
      - ``"constant"``: every position holds ``init_bin`` (default: the middle bin, action 0);
      - ``"random"``: uniformly random action bins drawn with ``seed`` (CLLM starts from random tokens of
        the prompt's vocabulary; here the block can only hold action bins, so those are drawn);
      - ``"first_token"``: every position repeats the first token, which the prefill gives exactly.
    """

    mode: Mode = "ar"
    n_bins: int = 256
    sigma: int | None = None
    tau: int | None = None
    init: InitStrategy = "constant"
    init_bin: int | None = None
    seed: int = 0
    record_trajectory: bool = False
    backend: Backend = "auto"
    step_impl: StepImpl = "auto"
    fused_prefill: bool = False
    """Jacobi modes: one forward over [prompt, guess block] replaces the prefill and the first
    iteration. The prompt's last position gives the exact first token; the block's rows give the first
    Jacobi update of every other position, conditioned on the guess's first token. Where that guess
    was right this IS the first iteration; where it was not, only position 0 is final after it and the
    iteration goes on (exact Jacobi stays token for token AR either way). Saves one forward per chunk,
    which at sigma 1 halves the passes."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DecodeConfigError(f"mode={self.mode!r} is not one of {MODES}")
        if self.n_bins < 2:
            raise DecodeConfigError(f"n_bins={self.n_bins} must be at least 2")
        if self.mode != "early_exit" and (self.sigma is not None or self.tau is not None):
            raise DecodeConfigError(
                f"sigma={self.sigma}, tau={self.tau} only apply to mode='early_exit' (got mode={self.mode!r}); "
                "set mode='early_exit' or leave both None"
            )
        if self.mode == "early_exit" and self.sigma is None and self.tau is None:
            raise DecodeConfigError(
                "mode='early_exit' needs an iteration cap sigma and/or a bin tolerance tau "
                "(sigma=None, tau=0 is exact Jacobi)"
            )
        if self.sigma is not None and self.sigma < 1:
            raise DecodeConfigError(
                f"sigma={self.sigma} must be >= 1 (the number of Jacobi iterations allowed)"
            )
        if self.tau is not None and not 0 <= self.tau < self.n_bins:
            raise DecodeConfigError(f"tau={self.tau} must be in [0, n_bins={self.n_bins}) bins")
        if self.init not in INIT_STRATEGIES:
            raise DecodeConfigError(f"init={self.init!r} is not one of {INIT_STRATEGIES}")
        if self.init_bin is not None and not 0 <= self.init_bin < self.n_bins:
            raise DecodeConfigError(f"init_bin={self.init_bin} must be in [0, n_bins={self.n_bins})")
        if self.backend not in BACKENDS:
            raise DecodeConfigError(f"backend={self.backend!r} is not one of {BACKENDS}")
        if self.step_impl not in STEP_IMPLS:
            raise DecodeConfigError(f"step_impl={self.step_impl!r} is not one of {STEP_IMPLS}")
        if self.fused_prefill and self.mode == "ar":
            raise DecodeConfigError(
                "fused_prefill=True needs a Jacobi mode ('jacobi' or 'early_exit'): AR has no guess block"
            )
        if self.fused_prefill and self.init == "first_token":
            raise DecodeConfigError(
                "fused_prefill=True cannot use init='first_token': the first token is what the fused pass "
                "computes; use init='constant' or 'random', or pass an init_guess"
            )

    @property
    def is_jacobi(self) -> bool:
        return self.mode in ("jacobi", "early_exit")

    @property
    def constant_bin(self) -> int:
        return self.n_bins // 2 if self.init_bin is None else self.init_bin


STOP_REASONS: tuple[str, ...] = ("complete", "fixed_point", "tau", "sigma", "deadline")


@dataclass
class DecodeStats:
    """What one `decode()` call cost.

    tokens: action tokens per sequence in the chunk (n), the forced ones included.
    iterations: [B] long — per sequence, decoding steps after the prefill: AR steps (n - f - 1) in mode
        "ar", Jacobi iterations in the Jacobi modes (each one forward over the block of free tokens).
    forward_passes: batched model forwards, the prefill included.
    wall_ms: wall-clock time of the call (synchronised on CUDA).
    backend: the forward implementation used ("hf", "static" or "graphs").
    forced: tokens per sequence given by the caller (f = d * D; 0 without a forced prefix).
    stopped_by: what ended the call: "complete" (AR, or nothing left to decode), "fixed_point" (every
        sequence converged), "tau" (some sequence stopped by the bin tolerance, the rest converged),
        "sigma" (the iteration cap), "deadline" (the next iteration would have ended after it).
    """

    tokens: int
    iterations: torch.Tensor
    forward_passes: int
    wall_ms: float
    backend: str = ""
    forced: int = 0
    stopped_by: str = "complete"

    @property
    def decoded(self) -> int:
        """Tokens per sequence the decoder chose (n - f)."""
        return self.tokens - self.forced

    @property
    def tokens_per_forward(self) -> float:
        return self.decoded / max(self.forward_passes, 1)

    @property
    def mean_iterations(self) -> float:
        return float(self.iterations.float().mean()) if self.iterations.numel() else 0.0

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "forced": self.forced,
            "iterations": self.iterations.tolist(),
            "forward_passes": self.forward_passes,
            "wall_ms": self.wall_ms,
            "backend": self.backend,
            "tokens_per_forward": self.tokens_per_forward,
            "stopped_by": self.stopped_by,
        }


@dataclass
class DecodeOutput:
    """bins: [B, n] long in [0, n_bins), the forced tokens first; trajectory: every Jacobi state [B, n]
    (the forced tokens first; the first state is the initial guess with the prefill's token in place,
    the last is the output) when recorded, else None."""

    bins: torch.Tensor
    stats: DecodeStats
    trajectory: list[torch.Tensor] | None = field(default=None)
