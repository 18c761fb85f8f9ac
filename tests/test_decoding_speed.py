"""The interleaved speed measurement (`ceed bench speed`): ratios come from rounds in which every
decoder ran, the order rotates, warm starts follow each run, and the job's record and errors."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import torch
from ceed_vla.decoding import DecodeConfig
from ceed_vla.decoding import speed as S
from ceed_vla.decoding.bench import synthetic_observations
from ceed_vla.policy.bench_speed import parse_mode


def test_a_real_measurement_holds_every_decoder_and_the_counts(tiny_decode_policy):
    torch.set_num_threads(1)
    n_bins = tiny_decode_policy.n_bins
    entries = [
        S.SpeedEntry("ar", tiny_decode_policy, DecodeConfig(mode="ar", n_bins=n_bins)),
        S.SpeedEntry("jacobi", tiny_decode_policy, DecodeConfig(mode="jacobi", n_bins=n_bins)),
        S.SpeedEntry("sigma1_fused", tiny_decode_policy, DecodeConfig(mode="early_exit", sigma=1, n_bins=n_bins, fused_prefill=True)),
        S.SpeedEntry("sigma1_fused_exact", tiny_decode_policy, DecodeConfig(mode="early_exit", sigma=1, n_bins=n_bins, fused_prefill=True), exact_steps=99),
    ]  # fmt: skip
    obs = synthetic_observations(tiny_decode_policy, 4, seed=1)
    out = S.measure_interleaved(entries, obs, runs=[0, 0, 1, 1], steps_executed=2, rounds=2, warmup=0)
    rows = out["entries"]
    assert out["reference"] == "ar" and out["rounds"] == 2 and out["samples"] == 4
    assert rows["ar"]["speedup_vs_reference"] == 1.0 and rows["ar"]["speedups_per_round"] == [1.0, 1.0]
    assert rows["ar"]["forward_passes_per_chunk"] == tiny_decode_policy.chunk_tokens
    assert rows["sigma1_fused"]["forward_passes_per_chunk"] == 1
    assert rows["jacobi"]["iterations_per_chunk"] <= tiny_decode_policy.chunk_tokens
    # the whole chunk asked exact (99 steps, capped at the chunk): iterated to the fixed point
    assert rows["sigma1_fused_exact"]["forward_passes_per_chunk"] > 1
    for r in rows.values():
        assert len(r["round_means_ms"]) == 2 and 0 < r["ms_p50"] <= r["ms_p95"]
        assert r["speedup_min"] <= r["speedup_vs_reference"] <= r["speedup_max"]


def _fake_decode(calls, ms_by_mode):
    """A stand-in for `decode` that takes a fixed time per mode and records each call."""

    def fake(lm, embeds, mask, n, start, config, init_guess=None, exact_tokens=0):
        calls.append((config.mode, None if init_guess is None else init_guess.clone(), float(embeds.sum())))
        stats = SimpleNamespace(wall_ms=ms_by_mode[config.mode](), mean_iterations=1.0, forward_passes=2)
        return SimpleNamespace(stats=stats, bins=torch.zeros(1, n, dtype=torch.long))

    return fake


def _fake_policy():
    return SimpleNamespace(
        lm=None,
        chunk_tokens=4,
        action_token_start=0,
        config=SimpleNamespace(action_dim=2),
        prefix_embeddings=lambda obs: (obs["x"], torch.ones(1, 1, dtype=torch.bool)),
    )


def test_the_speedup_is_the_median_of_per_round_ratios_and_the_order_rotates(monkeypatch):
    # AR takes 10, 30, 20 ms in rounds 1-3 (the machine's load drifting), Jacobi always 5 ms: the
    # per-round ratios are 2, 6, 4; their median 4, range 2-6. A ratio of separately timed means
    # would have said 20 / 5 = 4 by chance; the spread says how much the load moved.
    ar_times = iter([10.0] * 3 + [30.0] * 3 + [20.0] * 3)
    calls = []
    monkeypatch.setattr(
        S, "decode", _fake_decode(calls, {"ar": lambda: next(ar_times), "jacobi": lambda: 5.0})
    )
    policy = _fake_policy()
    entries = [
        S.SpeedEntry("ar", policy, DecodeConfig(mode="ar", n_bins=8)),
        S.SpeedEntry("jacobi", policy, DecodeConfig(mode="jacobi", n_bins=8)),
    ]
    obs = [{"x": torch.full((1, 1, 1), float(i))} for i in range(3)]
    out = S.measure_interleaved(entries, obs, runs=[0, 0, 1], steps_executed=2, rounds=3, warmup=0)
    jacobi = out["entries"]["jacobi"]
    assert jacobi["speedups_per_round"] == [2.0, 6.0, 4.0]
    assert (jacobi["speedup_vs_reference"], jacobi["speedup_min"], jacobi["speedup_max"]) == (4.0, 2.0, 6.0)
    modes = [c[0] for c in calls]
    assert modes == ["ar"] * 3 + ["jacobi"] * 3 + ["jacobi"] * 3 + ["ar"] * 3 + ["ar"] * 3 + ["jacobi"] * 3
    # Jacobi warm-starts from its own previous chunk within a run, and starts cold at a run's first frame
    jacobi_calls = [c for c in calls if c[0] == "jacobi"][:3]
    assert [c[1] is None for c in jacobi_calls] == [True, False, True]
    assert all(c[1] is None for c in calls if c[0] == "ar")  # AR takes no guess


def test_bad_measurements_are_refused():
    policy = _fake_policy()
    entry = S.SpeedEntry("a", policy, DecodeConfig(mode="ar", n_bins=8))
    obs = [{"x": torch.zeros(1, 1, 1)}]
    with pytest.raises(ValueError, match="names repeat"):
        S.measure_interleaved([entry, entry], obs, [0], 2)
    with pytest.raises(ValueError, match="one per observation"):
        S.measure_interleaved([entry], obs, [0, 1], 2)
    with pytest.raises(ValueError, match="reference 'b'"):
        S.measure_interleaved([entry], obs, [0], 2, reference="b")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name=a,policy=p", "lacks \\['decoding'\\]"),
        ("name=a,policy=p,decoding=beam", "decoding must be one of"),
        ("name=a,policy=p,decoding=ar,sigma=2", "AR takes no sigma"),
        ("name=a,policy=p,decoding=early_exit,sigam=2", "unknown key 'sigam'"),
        ("name=a,policy=p,decoding=early_exit,fused=yes", "fused is 0 or 1"),
        ("name=a,name=b,policy=p,decoding=ar", "'name' given twice"),
        ("name=a,policy=p,decoding=jacobi,exact=2", "exact .* is for decoding=early_exit"),
        ("name=a,policy=p,decoding=early_exit,sigma=1,exact=two", "exact are integers"),
    ],
)
def test_mode_specs_are_checked(text, match):
    with pytest.raises(argparse.ArgumentTypeError, match=match):
        parse_mode(text)
    assert parse_mode("name=s1,policy=p,decoding=early_exit,sigma=1,fused=1") == {
        "name": "s1", "policy": "p", "decoding": "early_exit", "sigma": 1, "fused": True,
    }  # fmt: skip
    assert parse_mode("name=s1,policy=p,decoding=early_exit,sigma=1,exact=2")["exact"] == 2


def test_ceed_bench_speed_writes_its_record(policy_dataset, make_policy, tmp_path):
    from ceed_vla.cli import main as ceed

    repo_id, root = policy_dataset
    make_policy(seed=0).save_pretrained(tmp_path / "teacher")
    make_policy(seed=1).save_pretrained(tmp_path / "student")
    out = tmp_path / "speed.json"
    argv = ["bench", "speed", "--dataset", str(root), "--repo-id", repo_id, "--out", str(out)]
    argv += ["--runs", "2", "--run-length", "2", "--rounds", "2", "--warmup", "0"]
    argv += ["--mode", f"name=teacher/ar,policy={tmp_path / 'teacher'},decoding=ar"]
    argv += ["--mode", f"name=student/ee,policy={tmp_path / 'student'},decoding=early_exit,sigma=1,fused=1"]
    assert ceed(argv) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "speed_interleaved" and record["threads"] == 1
    assert record["reference"] == "teacher/ar" and record["samples"] == 4
    assert list(record["entries"]) == ["teacher/ar", "student/ee"]
    assert record["entries"]["student/ee"]["forward_passes_per_chunk"] == 1
    assert record["modes"]["student/ee"]["sigma"] == 1
    with pytest.raises(SystemExit, match="episodes; ask for at most"):
        ceed(argv[:8] + ["--runs", "99"] + argv[10:])
