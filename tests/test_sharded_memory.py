"""The memory plan: its measured inputs, its arithmetic, and benchmarks/bench_memory.py on the tiny
shape (a one-process sharded run in this process; the 2-process numbers are in benchmarks/results)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_counts_of_the_plan_shapes_match_their_published_sizes():
    from ceed_vla.policy.memory_plan import SHAPES, parameter_counts

    counts = {name: parameter_counts(shape) for name, shape in SHAPES.items()}
    # backbone + tower + projector: Qwen2.5-0.5B 0.49B + SigLIP-B 0.09B; Llama-2-7B 6.74B + So400m 0.43B
    assert counts["0.5b"]["total"] / 1e9 == pytest.approx(0.59, abs=0.01)
    assert counts["7b"]["total"] / 1e9 == pytest.approx(7.19, abs=0.01)
    for c in counts.values():
        assert 0 < c["root"] < c["total"]


def test_sharding_divides_the_state_and_checkpointing_shrinks_the_activations():
    from ceed_vla.policy.memory_plan import (
        TINY,
        Bytes,
        Workload,
        activation_bytes,
        parameter_counts,
        per_process,
    )

    counts, workload = parameter_counts(TINY), Workload(global_batch=8)
    act = activation_bytes(TINY, workload, torch.float32)
    assert act["lm_block"] > act["lm_block_input"] > 0
    one, two = (per_process(counts, act, TINY, workload, Bytes(), n, checkpointing=True) for n in (1, 2))
    assert two["sharded"] == pytest.approx(one["sharded"] / 2)
    assert two["activations"] < one["activations"]  # half the batch per process
    full = per_process(counts, act, TINY, workload, Bytes(), 2, checkpointing=False)
    assert full["activations"] > two["activations"]


def test_bench_memory_plans_and_measures_the_tiny_shape(tmp_path):
    import torch.distributed as dist

    bench = _bench()
    threads = torch.get_num_threads()
    try:
        result = bench.worker("tiny", tmp_path, steps=1, batch=2)  # a sharded group of one process
    finally:
        torch.set_num_threads(threads)
        if dist.is_initialized():
            dist.destroy_process_group()
    assert result["world"] == 1 and len(result["losses"]) == 1
    # every phase sampled (in a long-lived process the trim after sharding can go below start-up)
    phases = ("rss_start", "rss_peak_build", "rss_sharded", "rss_peak_steps", "rss_peak_checkpoint")
    assert all(result[k] > 0 for k in phases)
    assert (tmp_path / "run/checkpoints/step_000001/sharded/.metadata").is_file()
    record = {"shape": {"name": "tiny"}, "processes": 1, "global_batch": 2, "ranks": [result],
              "predicted_bytes_per_process": bench.predicted("tiny", 1, 2)}  # fmt: skip
    (tmp_path / "memory_cpu_tiny.json").write_text(json.dumps(record))

    out = tmp_path / "plan.json"
    argv = ["plan", "--shapes", "tiny", "--gpu-gb", "80", "--checks", str(tmp_path), "--output", str(out)]
    assert bench.main(argv) == 0
    plan = json.loads(out.read_text())
    # measured by one real AdamW step: fp32 weights, gradients and two moments, the CUDA form's
    # temporaries; bf16 for the teacher and the gathered copies
    b = plan["bytes_per_parameter"]
    assert [b[k] for k in ("param", "grad", "optim", "step_transient", "teacher", "gathered")] == [
        4,
        4,
        8,
        4,
        2,
        2,
    ]
    assert [r["gpus"] for r in plan["rows"]] == [1, 2, 4, 8] and all(r["fits_ac"] for r in plan["rows"])
    text = out.with_suffix(".md").read_text()
    assert "| tiny (" in text and "Checked on CPU" in text
