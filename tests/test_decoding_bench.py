"""`ceed bench decode` on a tiny policy: the record it writes and what must hold in it."""

from __future__ import annotations

import json

import pytest
import torch
from ceed_vla.decoding.bench import BenchConfigError, DecodeBenchConfig, format_table, plot, run


def test_bench_record_table_and_plot(tiny_decode_policy, tmp_path):
    torch.set_num_threads(1)
    cfg = DecodeBenchConfig(
        samples=2, repeats=1, warmup=0, sigmas=(1,), taus=(3,), inits=("constant", "prev_tail"),
        fused_sigmas=(1,),
    )  # fmt: skip
    record = run(cfg, policy=tiny_decode_policy)
    rows = {r["name"]: r for r in record["results"]}
    assert list(rows) == [
        "ar", "jacobi/constant", "jacobi/prev_tail", "ee/sigma=1", "ee/tau=3",
        "jacobi/prev_tail/fused", "ee/sigma=1/fused",
    ]  # fmt: skip
    # the prefill carries the guess block: exact Jacobi unchanged, sigma 1 in one forward
    assert rows["jacobi/prev_tail/fused"]["identical_to_ar"] == 1.0
    assert rows["ee/sigma=1/fused"]["forward_passes_per_chunk"] == 1
    assert record["prefill_ms_p50"] > 0
    assert (
        record["sigma1_fused_over_prefill"] == rows["ee/sigma=1/fused"]["ms_p50"] / record["prefill_ms_p50"]
    )
    assert record["observations"].startswith("synthetic")
    assert record["chunk_tokens"] == 12 and record["steps_executed_between_chunks"] == 2
    assert rows["ar"]["speedup_vs_ar"] == 1.0 and rows["ar"]["iterations_per_chunk"] == 11
    for name in ("jacobi/constant", "jacobi/prev_tail"):
        assert rows[name]["identical_to_ar"] == 1.0 and rows[name]["action_deviation_from_ar"] == 0.0
        assert rows[name]["iterations_per_chunk"] <= 11
    assert (
        rows["ee/sigma=1"]["iterations_per_chunk"] == 1
        and rows["ee/sigma=1"]["forward_passes_per_chunk"] == 2
    )
    assert rows["ee/sigma=1"]["tokens_per_forward"] == 6.0
    for r in rows.values():
        assert 0 < r["ms_p50"] <= r["ms_p95"]
    assert (
        set(record["jacobi_step_us"]) == {"torch"} and record["jacobi_step_us"]["torch"] > 0
    )  # no Triton off CUDA
    table = format_table(record)
    assert "ee/sigma=1" in table and "speedup" in table
    json.dumps(record)  # serialisable as written
    png = tmp_path / "decode.png"
    plot(record, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"samples": 0}, "samples=0"),
        ({"sigmas": (0,)}, "sigmas"),
        ({"sweep_init": "zeros"}, "zeros"),
        ({"dtype": "int8"}, "int8"),
    ],
)
def test_bench_config_rejects_bad_values(kwargs, match):
    with pytest.raises(BenchConfigError, match=match):
        DecodeBenchConfig(**kwargs)


def test_saved_observations_round_trip(tiny_decode_policy, tmp_path):
    """Observations saved by one run are decoded by another with the same results, and a file with too
    few of them, or not of this format, is refused with the fix in the message."""
    torch.set_num_threads(1)
    obs = tmp_path / "obs.pt"
    common = dict(samples=3, repeats=1, warmup=0, sigmas=(2,), taus=(), inits=("constant",), plot=False)
    first = run(DecodeBenchConfig(seed=7, save_observations=str(obs), **common), policy=tiny_decode_policy)
    second = run(DecodeBenchConfig(seed=99, observations=str(obs), **common), policy=tiny_decode_policy)
    assert second["observations"].startswith("file:obs.pt (synthetic")
    for a, b in zip(first["results"], second["results"], strict=True):
        for key in ("iterations_per_chunk", "forward_passes_per_chunk", "identical_to_ar"):
            assert a[key] == b[key], (a["name"], key)
    from ceed_vla.decoding.bench import load_observations, synthetic_observations

    saved, source = load_observations(obs, 3)
    assert source.startswith("synthetic") and len(saved) == 3
    seed7, seed99 = (
        synthetic_observations(tiny_decode_policy, 3, 7),
        synthetic_observations(tiny_decode_policy, 3, 99),
    )
    for s, a, b in zip(saved, seed7, seed99, strict=True):
        assert torch.equal(s["observation.image"], a["observation.image"]) and s["task"] == a["task"]
        assert not torch.equal(s["observation.image"], b["observation.image"])  # the seed was ignored
    with pytest.raises(BenchConfigError, match="pass --samples 3"):
        run(DecodeBenchConfig(observations=str(obs), **{**common, "samples": 4}), policy=tiny_decode_policy)
    junk = tmp_path / "junk.pt"
    torch.save({"something": 1}, junk)
    with pytest.raises(BenchConfigError, match="--save-observations"):
        run(DecodeBenchConfig(observations=str(junk), **common), policy=tiny_decode_policy)
    with pytest.raises(BenchConfigError, match="not both"):
        DecodeBenchConfig(observations=str(obs), dataset=str(tmp_path))
    with pytest.raises(BenchConfigError, match="is not a file"):
        DecodeBenchConfig(observations=str(tmp_path / "missing.pt"))
