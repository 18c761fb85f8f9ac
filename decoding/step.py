"""One Jacobi iteration step after the forward: the pure-PyTorch reference and the dispatch.

Given the block's logits over the action rows and the previous state, a step

  - takes the argmax at every block row (row i predicts state position i + 1; position 0 is the prefill's
    token and never changes),
  - shifts the predictions into the next state, keeping the positions already known to be final,
  - flags the positions that changed and measures the largest bin move,
  - finds the converged prefix: when positions 0..m-1 did not change, they are a fixed point of the
    prefix map and therefore the greedy AR tokens, and position m was computed from them, so the first
    min(m + 1, n) positions of the next state are final,
  - and says, per sequence, whether decoding is done: the whole state converged, or no token moved by
    more than ``tau`` bins (``tau < 0`` disables that rule).

The Triton kernel in `kernel.py` computes the same thing in one launch; `jacobi_step` picks one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class StepResult(NamedTuple):
    next_state: torch.Tensor  # [B, n] long
    changed: torch.Tensor  # [B, n] bool
    max_move: torch.Tensor  # [B] long, largest |next - prev| in bins
    converged: torch.Tensor  # [B] long, length of the final prefix of next_state
    done: torch.Tensor  # [B] bool


class StepInputError(ValueError):
    """The tensors given to a Jacobi step do not fit together."""


def check_step_inputs(logits: torch.Tensor, prev: torch.Tensor, fixed: torch.Tensor) -> None:
    if logits.dim() != 3 or prev.dim() != 2 or fixed.dim() != 1:
        raise StepInputError(
            f"expected logits [B, n-1, V], prev [B, n], fixed [B]; got {tuple(logits.shape)}, "
            f"{tuple(prev.shape)}, {tuple(fixed.shape)}"
        )
    b, n = prev.shape
    if logits.shape[0] != b or logits.shape[1] != n - 1 or fixed.shape[0] != b:
        raise StepInputError(
            f"logits {tuple(logits.shape)} must be [B={b}, n-1={n - 1}, V] and fixed {tuple(fixed.shape)} [B={b}]"
        )
    if prev.dtype != torch.long or fixed.dtype != torch.long:
        raise StepInputError(f"prev and fixed must be torch.long; got {prev.dtype} and {fixed.dtype}")


def jacobi_step_reference(
    logits: torch.Tensor, prev: torch.Tensor, fixed: torch.Tensor, tau: int = -1
) -> StepResult:
    """logits: [B, n-1, V] action-row logits of the block; prev: [B, n] long state; fixed: [B] long number
    of leading positions already final (>= 1: the prefill's token; n freezes the sequence)."""
    check_step_inputs(logits, prev, fixed)
    b, n = prev.shape
    pos = torch.arange(n, device=prev.device)  # [n]
    pred = logits.argmax(dim=-1)  # [B, n-1]
    shifted = torch.cat([prev[:, :1], pred], dim=1)  # [B, n]
    keep = pos[None, :] < fixed[:, None]  # [B, n]
    next_state = torch.where(keep, prev, shifted)  # [B, n]
    changed = next_state != prev  # [B, n]
    max_move = (next_state - prev).abs().amax(dim=1)  # [B]
    first_change = torch.where(changed, pos[None, :], n).amin(dim=1)  # [B]
    converged = torch.maximum((first_change + 1).clamp(max=n), fixed.clamp(max=n))  # [B]
    done = (converged == n) | (max_move <= tau)  # [B]
    return StepResult(next_state, changed, max_move, converged, done)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_step_impl(impl: str, device: torch.device) -> str:
    """The one place that chooses the step implementation: Triton on CUDA, the reference elsewhere.
    ``"triton"`` forces the kernel (on CPU tensors it runs under Triton's interpreter: correctness only)."""
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton" and not triton_available():
        raise RuntimeError("step_impl='triton' was forced but triton is not installed; use 'auto' or 'torch'")
    if impl not in ("triton", "torch"):
        raise ValueError(f"step impl {impl!r} is not one of 'auto', 'triton', 'torch'")
    return impl


def jacobi_step(
    logits: torch.Tensor, prev: torch.Tensor, fixed: torch.Tensor, tau: int = -1, impl: str = "auto"
) -> StepResult:
    """Dispatch one Jacobi step to the Triton kernel or the PyTorch reference (see `resolve_step_impl`)."""
    if resolve_step_impl(impl, logits.device) == "triton":
        from .kernel import jacobi_step_triton

        return jacobi_step_triton(logits, prev, fixed, tau)
    return jacobi_step_reference(logits, prev, fixed, tau)
