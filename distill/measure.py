"""What distillation is for, measured on dataset frames: Jacobi passes per chunk and decode latency.

- `jacobi_passes`: exact Jacobi from the constant guess over many frames (batched): mean
  iterations per chunk, how often the fixed point equals the policy's own AR output, and the AR
  output's action L1 to the dataset's chunk. Few passes mean nothing if that error grows: a policy
  that ignores its context converges in one pass.
- `decode_latency`: one frame at a time (as a controller calls it) for AR and each given Jacobi
  config: ms per chunk, iterations, and the early-exit action error against the policy's own AR.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch
from ceed_vla.decoding import DecodeConfig, decode


def _batch(dataset, indices) -> dict[str, Any]:
    return torch.utils.data.default_collate([dataset[int(i)] for i in indices])


def _decode(policy, batch, config: DecodeConfig):
    embeds, mask = policy.prefix_embeddings(batch)  # [B, P, H], [B, P]
    return decode(policy.lm, embeds, mask, policy.chunk_tokens, policy.action_token_start, config=config)


@torch.no_grad()
def jacobi_passes(
    policy, dataset, indices, batch_size: int = 128, init: str = "constant", **decode_kwargs
) -> dict[str, float]:
    """Mean exact-Jacobi iterations per chunk over `indices`, the share equal to AR token for token,
    and the AR chunk's mean action L1 to the ground truth (valid steps only).
    decode_kwargs: extra `DecodeConfig` fields (backend, step_impl)."""
    from ceed_vla.policy.modeling import ACTION_KEY

    from .collect import chunk_l1

    policy.eval()
    iters, same, l1 = [], [], []
    jacobi = DecodeConfig(mode="jacobi", n_bins=policy.n_bins, init=init, **decode_kwargs)
    ar = DecodeConfig(mode="ar", n_bins=policy.n_bins, **decode_kwargs)
    for lo in range(0, len(indices), batch_size):
        batch = _batch(dataset, indices[lo : lo + batch_size])
        out = _decode(policy, batch, jacobi)
        ref = _decode(policy, batch, ar)
        iters.append(out.stats.iterations.float().cpu())
        same.append((out.bins == ref.bins).all(dim=1).float().cpu())
        actions = policy.tokens_to_actions(ref.bins)  # [B, K, D]
        l1.append(chunk_l1(actions, batch[ACTION_KEY], batch.get(f"{ACTION_KEY}_is_pad")))
    it = torch.cat(iters)
    return {
        "samples": int(it.numel()),
        "mean_iterations": float(it.mean()),
        "iterations_p90": float(it.quantile(0.9)),
        "fixed_point_equals_ar": float(torch.cat(same).mean()),
        "ar_action_l1_to_ground_truth": float(torch.cat(l1).mean()),
    }


@torch.no_grad()
def decode_latency(
    policy, dataset, indices, configs: dict[str, DecodeConfig], warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Batch-1 decoding of each frame with every config; `configs` must include "ar"."""
    if "ar" not in configs:
        raise ValueError(f"configs must include 'ar' (the reference), got {sorted(configs)}")
    if len(indices) == 0:
        raise ValueError("decode_latency needs at least one frame index, got none")
    warmup = min(warmup, len(indices) - 1)  # a short list still measures its last frame
    policy.eval()
    names = ["ar"] + [n for n in configs if n != "ar"]
    rows: dict[str, dict[str, list[float]]] = {name: {"ms": [], "it": [], "l1": []} for name in names}
    for k, i in enumerate(indices):
        batch = _batch(dataset, [i])
        ref_actions = None
        for name in names:
            out = _decode(policy, batch, configs[name])
            actions = policy.tokens_to_actions(out.bins)  # [1, K, D]
            if name == "ar":
                ref_actions = actions
            if k >= warmup:
                rows[name]["ms"].append(out.stats.wall_ms)
                rows[name]["it"].append(float(out.stats.iterations.float().mean()))
                rows[name]["l1"].append(float((actions - ref_actions).abs().mean()))
    result = {}
    for name, r in rows.items():
        result[name] = {
            "ms_mean": statistics.fmean(r["ms"]),
            "ms_p50": float(np.percentile(r["ms"], 50)),
            "ms_p95": float(np.percentile(r["ms"], 95)),
            "iterations": statistics.fmean(r["it"]),
            "action_l1_to_own_ar": statistics.fmean(r["l1"]),
        }
    ar_ms = result["ar"]["ms_mean"]
    for r in result.values():
        r["speedup_vs_ar"] = ar_ms / r["ms_mean"]
    return result
