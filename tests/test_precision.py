"""Training precision: what "auto" resolves to, fp32 attention under CPU autocast, bf16 against fp32."""

from __future__ import annotations

import json

import pytest
import torch
from ceed_vla.policy import NextTokenLoss, TrainConfig, Trainer
from ceed_vla.policy import precision as prec
from ceed_vla.policy.bench import _speedups
from ceed_vla.policy.data import ChunkDataset, load_frames

from ceed_vla import cli
from tests.fixtures.policy import random_batch


def test_auto_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert prec.autocast_dtype("fp32", cuda) is None
    assert prec.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert prec.autocast_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert prec.autocast_dtype("auto", cpu) is None
    with pytest.raises(ValueError, match="precision must be one of"):
        prec.autocast_dtype("fp16", cpu)


def test_fp32_attention_is_sdpa_with_the_same_masks(make_policy):
    """In fp32 the swapped attention must give the very same loss: the batch's instructions have
    different lengths, so a lost padding mask would change it."""
    policy = make_policy(seed=0).train()
    batch = random_batch(batch=4, seed=1)
    assert len({len(t) for t in batch["task"]}) > 1
    with torch.no_grad():
        plain, _ = policy(batch)
        with prec.attention_in_fp32(policy):
            assert policy.lm.config._attn_implementation == prec.FP32_ATTENTION
            swapped, _ = policy(batch)
    assert policy.lm.config._attn_implementation == "sdpa"
    assert torch.equal(plain, swapped)


def test_attention_runs_in_fp32_under_bf16_autocast_and_is_restored_on_error(make_policy, monkeypatch):
    """What the SDPA kernel computes in: autocast casts its inputs to bf16 when it is on at the call
    (SDPA is on CPU autocast's bf16 list); with the swap it is off there and the inputs are fp32."""
    policy = make_policy(seed=0).train()
    seen: list[tuple] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    batch = random_batch(batch=2, seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        policy(batch)
        assert seen and all(autocast for autocast, *_ in seen)  # without the swap: bf16 attention
        seen.clear()
        with prec.attention_in_fp32(policy):
            out, _ = policy(batch)
        assert seen and set(seen) == {(False, torch.float32, torch.float32, torch.float32)}
    assert torch.isfinite(out)
    with pytest.raises(RuntimeError, match="boom"), prec.attention_in_fp32(policy):
        raise RuntimeError("boom")
    assert policy.lm.config._attn_implementation == "sdpa"


def _losses(make_policy, frames, out, precision: str, steps: int = 4) -> tuple[list[float], Trainer]:
    train = ChunkDataset(frames, sorted(set(frames.episode.tolist())), seed=0)
    config = TrainConfig(
        output_dir=str(out), steps=steps, batch_size=8, lr=1e-3, warmup_steps=1, save_every=steps,
        val_every=steps, log_every=1, seed=0, precision=precision, device="cpu",
    )  # fmt: skip
    trainer = Trainer(make_policy(seed=0).train(), NextTokenLoss(), train, config)
    batches = trainer._batches()
    return [trainer._train_step(next(batches))["loss"] for _ in range(steps)], trainer


def test_bf16_training_steps_follow_the_fp32_ones(make_policy, policy_dataset, tmp_path):
    """Tolerance: 1% of the loss at each of 4 steps (bf16 keeps 8 bits of mantissa, 0.4% a rounding;
    measured here about 0.01%). A bf16 run whose attention or gradients went wrong drifts far more."""
    frames = load_frames(*policy_dataset, chunk_size=4)
    fp32, t32 = _losses(make_policy, frames, tmp_path / "a", "fp32")
    bf16, t16 = _losses(make_policy, frames, tmp_path / "b", "bf16")
    assert (t32.precision_name, t16.precision_name) == ("fp32", "bf16")
    assert fp32 != bf16  # the bf16 run did compute in bf16
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=1e-2)
    assert t16.model.lm.config._attn_implementation == "sdpa"  # nothing leaks into the saved config
    for p in t16.model.parameters():
        assert p.dtype == torch.float32  # master weights stay fp32


def test_bench_train_compares_precisions_by_their_interleaved_medians(tmp_path):
    rows = [
        {"precision": p, "samples_per_s": v}
        for p, v in [("fp32", 100), ("bf16", 150), ("fp32", 80), ("bf16", 170)]
    ]
    summary = {r["precision"]: r for r in _speedups(rows)}
    assert summary["fp32"]["samples_per_s_median"] == 90 and summary["fp32"]["speedup_vs_fp32"] == 1
    assert summary["bf16"]["rounds"] == 2 and summary["bf16"]["speedup_vs_fp32"] == pytest.approx(160 / 90)
    assert _speedups([{"precision": "bf16", "samples_per_s": 5.0}])[0]["speedup_vs_fp32"] is None

    out = tmp_path / "train.json"
    argv = ["bench", "train", "--image-size", "32", "--batch-size", "4", "--steps", "1", "--chunks", "1"]
    assert cli.main([*argv, "--threads", "1", "--rounds", "2", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [r["precision"] for r in record["train"]] == ["fp32", "bf16", "fp32", "bf16"]
    assert {r["precision"] for r in record["summary"]} == {"fp32", "bf16"}
    with pytest.raises(SystemExit, match="--rounds"):
        cli.main([*argv, "--rounds", "0", "--output", str(out)])
