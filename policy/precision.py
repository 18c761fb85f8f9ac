"""Which precision a training run computes in, and attention kept in fp32 under CPU autocast.

`TrainConfig.precision` is "fp32", "bf16" or "auto". "auto" is bf16 where the hardware computes it
natively (CUDA; a CPU with AMX or AVX512-BF16) and fp32 elsewhere, where bf16 would be emulated and
slower than fp32. bf16 is autocast: the weights, gradients and optimiser state stay fp32.

On the CPU, bf16 autocast makes the matrix products about 3x faster but PyTorch's bf16 flash
attention backward about 5x slower than its fp32 one (the tiny preset at batch 32, 2 threads:
50 ms against 9 ms a step), which eats half of the gain. Under `attention_in_fp32` the transformer
models' SDPA runs in fp32 (its inputs upcast, autocast off inside, the output cast back), with the
same masks as "sdpa": measured in `ceed bench train` (docs/policy.md, "Training precision").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PRECISIONS = ("auto", "fp32", "bf16")
FP32_ATTENTION = "sdpa_fp32"


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: fp32 throughout)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())):
        return torch.bfloat16
    return None


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """ "sdpa" computed in fp32 whatever autocast is on; the output back in the query's dtype."""
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
    return out.to(query.dtype), weights


AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)  # the same masks as "sdpa"


@contextlib.contextmanager
def attention_in_fp32(module: nn.Module) -> Iterator[None]:
    """Within the block every transformers model inside `module` that attends with "sdpa" attends
    with its fp32 twin; restored on exit, so saved configs and decoding never see it."""
    configs = {
        id(m.config): m.config
        for m in module.modules()
        if isinstance(m, PreTrainedModel) and m.config._attn_implementation == "sdpa"
    }
    for config in configs.values():
        config._attn_implementation = FP32_ATTENTION
    try:
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"
