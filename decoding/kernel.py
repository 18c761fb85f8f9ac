"""The fused Jacobi iteration step as one Triton kernel (same contract as `step.jacobi_step_reference`).

One program per sequence walks the state in tiles of BLOCK_M positions: it loads the logits rows that
predict those positions (the action rows only, V of them), takes the argmax, shifts it into the next
state unless the position is already final, writes the changed flags, and carries the first changed
position and the largest bin move across tiles. The converged-prefix length and the done flag are
written at the end, so the decode loop reads three scalars per sequence instead of launching a dozen
small PyTorch ops.

On CUDA tensors the kernel is compiled. CPU tensors work only when the process started with
``TRITON_INTERPRET=1`` (Triton reads it when first imported): slow (about 60 ms a call), for the equality
tests.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .step import StepResult, check_step_inputs, jacobi_step_reference

_MAX_TILE = 8192  # logits elements per tile: BLOCK_M * BLOCK_V


@triton.jit
def _jacobi_step_kernel(
    logits_ptr,
    prev_ptr,
    fixed_ptr,
    next_ptr,
    changed_ptr,
    move_ptr,
    conv_ptr,
    done_ptr,
    n,
    v,
    stride_lb,
    stride_lm,
    stride_lv,
    stride_pb,
    tau,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    fixed = tl.load(fixed_ptr + b)
    cols = tl.arange(0, BLOCK_V)
    col_ok = cols < v
    zero = b * 0  # an int64 scalar; n, tau and strides may arrive as constexpr (Triton specialises 1)
    first_change = zero + n
    max_move = zero
    for start in range(0, n, BLOCK_M):
        pos = start + tl.arange(0, BLOCK_M).to(tl.int64)  # state positions of this tile
        in_state = pos < n
        prev = tl.load(prev_ptr + b * stride_pb + pos, mask=in_state, other=0)
        has_row = in_state & (pos >= 1)  # logits row pos - 1 predicts position pos
        offs = b * stride_lb + (pos - 1)[:, None] * stride_lm + cols[None, :] * stride_lv
        tile = tl.load(logits_ptr + offs, mask=has_row[:, None] & col_ok[None, :], other=float("-inf"))
        pred = tl.argmax(tile.to(tl.float32), axis=1).to(tl.int64)  # first maximum, like torch.argmax
        keep = (pos < fixed) | (pos == 0)
        nxt = tl.where(keep, prev, pred)
        changed = (nxt != prev) & in_state
        tl.store(next_ptr + b * n + pos, nxt, mask=in_state)
        tl.store(changed_ptr + b * n + pos, changed.to(tl.int8), mask=in_state)
        first_change = tl.minimum(first_change, tl.min(tl.where(changed, pos, n), axis=0))
        max_move = tl.maximum(max_move, tl.max(tl.where(in_state, tl.abs(nxt - prev), 0), axis=0))
    conv = tl.maximum(tl.minimum(first_change + 1, n), tl.minimum(fixed, n))
    done = (conv == n) | (max_move <= tau)
    tl.store(move_ptr + b, max_move)
    tl.store(conv_ptr + b, conv)
    tl.store(done_ptr + b, done.to(tl.int8))


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tile_sizes(n: int, v: int) -> tuple[int, int]:
    block_v = triton.next_power_of_2(v)
    block_m = max(1, min(triton.next_power_of_2(n), _MAX_TILE // block_v))
    return block_m, block_v


def jacobi_step_triton(
    logits: torch.Tensor, prev: torch.Tensor, fixed: torch.Tensor, tau: int = -1
) -> StepResult:
    """Same inputs and outputs as `jacobi_step_reference`, in one kernel launch."""
    check_step_inputs(logits, prev, fixed)
    b, n = prev.shape
    v = logits.shape[-1]
    if b == 0 or n == 1:
        # nothing to predict (a one-token state is final after the prefill): no launch, and no
        # zero-sized logits pointer handed to Triton
        return jacobi_step_reference(logits, prev, fixed, tau)
    prev = prev.contiguous()
    fixed = fixed.contiguous()
    next_state = torch.empty_like(prev)  # [B, n]
    changed = torch.empty((b, n), dtype=torch.int8, device=prev.device)
    max_move = torch.empty(b, dtype=torch.long, device=prev.device)
    converged = torch.empty(b, dtype=torch.long, device=prev.device)
    done = torch.empty(b, dtype=torch.int8, device=prev.device)
    block_m, block_v = tile_sizes(n, v)
    if logits.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"the Triton step got {logits.device.type} tensors: Triton runs on CPU only under its interpreter; "
            "set TRITON_INTERPRET=1 before triton is first imported, or use step_impl='torch'"
        )
    _jacobi_step_kernel[(b,)](
        logits,
        prev,
        fixed,
        next_state,
        changed,
        max_move,
        converged,
        done,
        n,
        v,
        logits.stride(0),
        logits.stride(1),
        logits.stride(2),
        prev.stride(0),
        int(tau),
        BLOCK_M=block_m,
        BLOCK_V=block_v,
    )
    return StepResult(next_state, changed.view(torch.bool), max_move, converged, done.view(torch.bool))
