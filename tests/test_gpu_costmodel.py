"""The GPU check's cost model, latency table and training-throughput code on tiny shapes (CPU), and the
cost model's graphs path on CUDA (`gpu`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ceed_vla.decoding import costmodel
from ceed_vla.decoding.costmodel import CostConfig, CostModelError, Decoder

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "reports" / "full" / "report.json"

DECODERS = [
    Decoder("teacher_ar", "teacher", "ar", 7.0, success=0.9),
    Decoder("student_early_exit", "student", "early_exit", 2.0, sigma=2, success=0.8),
]


def fake_shape_record(prefill=10.0, step=2.0, block=3.0, fused=11.0, n=8) -> dict:
    ms = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
    forward = {
        "chunk_tokens": n,
        "prefill_ms": ms(prefill),
        "ar_step_ms": ms(step),
        "jacobi_pass_ms": ms(block),
        "fused_ms": ms(fused),
        "pass_over_step": block / step,
    }
    return {"parameters": 1000, "forwards": [forward]}


def test_projection_is_the_sum_of_the_measured_forwards():
    rows = {r["decoder"]: r for r in costmodel.project(fake_shape_record(), DECODERS, 8)}
    assert rows["teacher_ar"]["ms_per_chunk"] == pytest.approx(10.0 + 7 * 2.0)
    assert rows["student_early_exit"]["ms_per_chunk"] == pytest.approx(10.0 + 2 * 3.0)
    assert rows["student_early_exit/fused"]["ms_per_chunk"] == pytest.approx(11.0 + 1 * 3.0)
    assert rows["student_early_exit/fused"]["forwards"] == 2.0
    assert rows["teacher_ar"]["chunks_per_s"] == pytest.approx(1e3 / 24.0)
    assert rows["student_early_exit"]["speedup_vs_ar"] == pytest.approx(24.0 / 16.0)
    assert "teacher_ar/fused" not in rows  # AR has no guess block


def test_projection_refuses_a_chunk_size_it_did_not_measure():
    with pytest.raises(CostModelError, match="n=32"):
        costmodel.project(fake_shape_record(n=8), DECODERS, 32)


def test_committed_report_gives_decoders_sigmas_and_chunk_size():
    report = json.loads(REPORT.read_text())
    decoders = {d.name: d for d in costmodel.decoders_from_report(report)}
    assert decoders["teacher_ar"].mode == "ar" and decoders["teacher_ar"].iterations == 31.0
    assert decoders["student_early_exit"].sigma == report["config"]["sigma"]
    assert 1.0 <= decoders["student_early_exit"].iterations <= report["config"]["sigma"]
    assert costmodel.report_chunk_tokens(report) == 32
    assert report["config"]["sigma"] in costmodel.profile_sigmas(report)


def test_config_quotes_bad_values():
    with pytest.raises(CostModelError, match="unknown shapes"):
        CostConfig(shapes=("70b",))
    with pytest.raises(CostModelError, match="chunk_tokens"):
        CostConfig(chunk_tokens=(1,))


def test_shapes_are_the_sizes_they_are_named():
    for name, low, high in (("0.5b", 0.4e9, 0.6e9), ("1b", 1.0e9, 1.4e9), ("7b", 6.5e9, 7.0e9)):
        assert low < costmodel.SHAPES[name].approx_parameters < high, name


def test_tiny_shape_measured_on_cpu_counts_its_parameters_and_projects(tmp_path):
    torch.set_num_threads(1)
    cfg = CostConfig(
        shapes=("tiny",), prompt=6, chunk_tokens=(4, 8), device="cpu", dtype="fp32", warmup=0, rounds=1,
        calls=1, ar_chunk_check=8,
    )  # fmt: skip
    record = costmodel.run(cfg, DECODERS, 8, log=lambda _: None)
    tiny = record["shapes"]["tiny"]
    assert "error" not in tiny, tiny.get("error")
    assert tiny["backend"] == "static" and record["backend"] == "static"
    assert tiny["parameters"] == costmodel.SHAPES["tiny"].approx_parameters
    assert [f["chunk_tokens"] for f in tiny["forwards"]] == [4, 8]
    for f in tiny["forwards"]:
        for key in ("prefill_ms", "ar_step_ms", "jacobi_pass_ms", "fused_ms"):
            assert 0 < f[key]["min"] <= f[key]["median"] <= f[key]["max"]
    assert "ar_chunk_measured_ms" in tiny["forwards"][1]
    assert {r["decoder"] for r in tiny["projection"]} == {
        "teacher_ar", "student_early_exit", "student_early_exit/fused"
    }  # fmt: skip
    costmodel.plot(record, tmp_path / "costmodel.png")
    assert (tmp_path / "costmodel.png").stat().st_size > 0
    assert "tiny" in costmodel.format_projection(record)


def test_a_failing_shape_is_recorded_and_the_others_still_run(monkeypatch):
    real = costmodel.measure_shape

    def measure(cfg, name, log):
        if name == "broken":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cfg, name, log)

    monkeypatch.setattr(costmodel, "measure_shape", measure)
    broken = costmodel.ModelShape("broken", 64, 1, 4, 4, 64, 300)
    cfg = CostConfig(
        shapes=("broken", "tiny"), prompt=4, chunk_tokens=(4,), device="cpu", dtype="fp32", warmup=0,
        rounds=1, calls=1, ar_chunk_check=None, extra_shapes={"broken": broken},
    )  # fmt: skip
    saved = []
    record = costmodel.run(
        cfg, DECODERS[:1], 4, log=lambda _: None, on_shape=lambda r: saved.append(list(r["shapes"]))
    )
    assert saved == [["broken"], ["broken", "tiny"]]  # partial results after each shape
    assert "out of memory" in record["shapes"]["broken"]["error"]
    assert record["shapes"]["tiny"]["projection"][0]["decoder"] == "teacher_ar"


def test_graphs_failing_falls_back_to_eager_timing_and_says_so():
    cfg = CostConfig(
        shapes=("tiny",), prompt=4, chunk_tokens=(4,), device="cpu", dtype="fp32", backend="graphs",
        warmup=0, rounds=1, calls=1, ar_chunk_check=None,
    )  # fmt: skip
    record = costmodel.run(cfg, DECODERS[:1], 4, log=lambda _: None)
    tiny = record["shapes"]["tiny"]
    assert tiny["backend"] == "static" and record["backend"] == "static"
    assert "graphs" in tiny["graphs_error"] and tiny["projection"]


def test_delay_curves_read_both_layouts_and_interpolate():
    report = {
        "success_vs_delay": [
            {"decoder": "student_early_exit", "delay_ticks": 0, "success_rate": 0.9},
            {"decoder": "student_early_exit", "delay_ticks": 4, "success_rate": 0.5},
        ],
        "modes": {
            "teacher_ar_d2": {
                "success_rate": 0.7,
                "mode": {"policy": "teacher", "decoding": "ar", "delay_ticks": 2, "clock": "delay"},
            }
        },
    }
    curves = costmodel.delay_curves(report)
    assert curves == {"student_early_exit": [(0.0, 0.9), (4.0, 0.5)], "teacher_ar": [(2.0, 0.7)]}
    assert costmodel.success_at(curves["student_early_exit"], 1.0) == pytest.approx(0.8)
    assert costmodel.success_at(curves["student_early_exit"], 5.0) is None  # beyond the curve
    assert costmodel.delay_curves({"modes": {}}) == {}


def test_latency_table_reads_success_off_the_curve_or_says_pending():
    record = {
        "device": "test",
        "config": {"dtype": "bf16", "prompt": 300},
        "backend": "graphs",
        "report_chunk_tokens": 8,
        "shapes": {
            "7b": {"parameters": 7e9, "projection": costmodel.project(fake_shape_record(), DECODERS, 8)}
        },
    }
    curve = {
        "success_vs_delay": {"student_early_exit": [[0, 0.8], [1, 0.78], [6, 0.2]]},
        "modes": {
            "student_early_exit_realtime": {
                "success_rate": 0.58,
                "ms_per_chunk_p50": 31.25,
                "mode": {"policy": "student", "decoding": "early_exit", "clock": "realtime"},
            }
        },
    }
    text, table = costmodel.latency_table(record, curve, (10.0, 80.0), sim_hz=80.0)
    row = next(r for r in table["rows"] if r["decoder"] == "student_early_exit")
    assert row["ms_per_chunk"] == pytest.approx(16.0)
    at10, at80 = row["rates"]["10"], row["rates"]["80"]
    assert at10["delay_ticks"] == pytest.approx(0.16) and at80["delay_ticks"] == pytest.approx(1.28)
    assert at10["curves"]["student_early_exit"]["keeps"] is True  # 0.797 against 0.8 paused
    assert at80["curves"]["student_early_exit"]["keeps"] is False  # about 0.75
    assert table["realtime"][0]["delay_ticks"] == pytest.approx(2.5)
    assert "pending" not in text and "| 7b | student_early_exit |" in text
    pending, _ = costmodel.latency_table(record, {"modes": curve["modes"]}, (10.0,))
    assert "**pending**" in pending and "student_early_exit_realtime" in pending


def test_training_throughput_on_tiny_shapes(tmp_path):
    from ceed_vla.distill import throughput
    from ceed_vla.policy.config import LMConfig

    torch.set_num_threads(1)
    cfg = throughput.ThroughputConfig(
        device="cpu", precision="fp32", image_size=16, teacher_batches=(2,), teacher_steps=1, warmup_steps=1,
        distill_batch=2, distill_steps=1, distill_warmup=0, distill_grid=2,
        distill_lm=LMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    )  # fmt: skip
    (teacher,) = throughput.teacher_throughput(cfg, log=lambda _: None)
    assert teacher["batch_size"] == 2 and teacher["samples_per_s"] > 0
    assert torch.isfinite(torch.tensor(teacher["loss_last"]))
    distill = throughput.distill_step(cfg, log=lambda _: None)
    assert distill["prompt_positions"] >= 2 * 2 + 1  # image grid tokens, instruction, proprio
    assert distill["lm"]["hidden_size"] == 32 and distill["samples_per_s"] > 0
    assert torch.isfinite(torch.tensor(distill["loss_last"]))


def test_bench_gpu_entry_points_run_tiny(tmp_path):
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    torch.set_num_threads(1)
    bench = load("bench_gpu")
    if torch.cuda.is_available():
        pytest.skip("the tiny entry-point run is for CPU machines; make gpu-check runs the full one")
    assert bench.main(["costmodel", "--tiny", "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "costmodel.json").read_text())
    assert record["shapes"]["tiny"]["projection"]
    assert bench.main(["decode", "--tiny", "--out-dir", str(tmp_path)]) == 0
    decode = json.loads((tmp_path / "decode_tiny.json").read_text())
    sigma = json.loads(REPORT.read_text())["config"]["sigma"]
    assert sigma in decode["sigmas"]
    static = decode["backends"]["static"]
    names = {row["name"] for row in static["results"]}
    assert {"ar", "jacobi/prev_tail", f"ee/sigma={sigma}", f"ee/sigma={sigma}/fused"} <= names
    assert decode["summary"]["ar"]["iterations"] == static["chunk_tokens"] - 1
    report = load("bench_gpu_report")
    assert report.main(["--costmodel", str(tmp_path / "costmodel.json")]) == 0
    assert "teacher_ar" in (tmp_path / "latency_table.md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make gpu-check)")
def test_cost_model_replays_graphs_on_cuda():
    from ceed_vla.decoding import graphs

    cfg = CostConfig(
        shapes=("tiny",), prompt=6, chunk_tokens=(8,), device="cuda", dtype="bf16", warmup=1, rounds=2,
        calls=2, ar_chunk_check=8,
    )  # fmt: skip
    record = costmodel.run(cfg, DECODERS, 8, log=lambda _: None)
    tiny = record["shapes"]["tiny"]
    assert "error" not in tiny, tiny.get("error")
    assert tiny["backend"] == "graphs" and tiny["peak_memory_bytes"] > 0
    assert not graphs._STATES  # the model's graphs were released with it
