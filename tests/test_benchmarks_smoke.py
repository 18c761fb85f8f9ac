"""Every script in benchmarks/ runs on tiny inputs, so that a renamed function or option breaks CI
instead of a user. The measurements themselves are not checked (benchmarks measure, tests assert);
what is checked is that each script gets through its real code path and writes the record it
promises.

The lever benchmarks start `ceed` jobs as processes; here those jobs are replaced by one that writes
what the real job writes (a trained run's final/ and summary.json, or an evaluation report built by
`ceed_vla.sim.report.build_report` itself), so the scripts read reports of the real shape.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# Scripts with their own test module: script -> the test that runs it.
COVERED_ELSEWHERE = {
    "bench_distill.py": "test_distill_bench.py",
    "bench_gpu.py": "test_gpu_costmodel.py",
    "bench_gpu_report.py": "test_gpu_costmodel.py",
    "bench_memory.py": "test_sharded_memory.py",
}
THIN_WRAPPERS = {
    "bench_env.py": ("ceed bench env", "--lerobot-steps"),
    "bench_decode.py": ("ceed bench decode", "--checkpoint"),
    "bench_train.py": ("ceed bench train", "--steps"),
    "bench_bridge.py": ("ceed bench bridge", "--rates"),
}
SMOKED = {
    "bench_teacher.py",
    "bench_student.py",
    "bench_replan.py",
    "bench_realtime.py",
    "bench_compile.py",
    "bench_video_load.py",
    "bench_forward_model.py",
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), BENCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_script_is_smoked():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert (
        scripts - set(COVERED_ELSEWHERE) - set(THIN_WRAPPERS) - SMOKED == set()
    )  # a new script needs a test
    assert set(THIN_WRAPPERS) | SMOKED <= scripts
    tests = Path(__file__).resolve().parent
    assert all((tests / COVERED_ELSEWHERE[name]).is_file() for name in scripts & set(COVERED_ELSEWHERE))


@pytest.mark.parametrize("script", sorted(THIN_WRAPPERS))
def test_thin_wrapper_reaches_its_job(script, monkeypatch, capsys):
    prog, option = THIN_WRAPPERS[script]
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog}") and option in out


# ------------------------------------------------------------------------ the lever benchmarks


def _arg(argv: list[str], flag: str, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


def fake_job(calls: list[list[str]]):
    """Stands in for `ceed_vla.pipeline.run_job`: writes the outputs the real job would."""
    from ceed_vla.sim.report import build_report
    from ceed_vla.sim.runner import EpisodeResult, EvalConfig
    from ceed_vla.sim.seeds import split_seed

    def run(argv, log=None, env=None) -> float:
        argv = [str(a) for a in argv]
        calls.append(argv)
        out = Path(_arg(argv, "--output"))
        out.mkdir(parents=True, exist_ok=True)
        if argv[0] == "eval":
            cfg = EvalConfig(
                tasks=_arg(argv, "--tasks"),
                episodes_per_task=int(_arg(argv, "--episodes")),
                split=_arg(argv, "--split", "eval"),
            )
            episodes = []
            for spec in cfg.specs:
                for i in range(cfg.episodes_per_task):
                    seed = split_seed(cfg.split, cfg.seed, i)
                    ep = EpisodeResult(
                        spec.name, seed, i % 2 == 0, 10, 2, [5.0, 6.0], 8, 2, 0, 0.01, 0.1, 0.2
                    )
                    if _arg(argv, "--decoding"):  # a VLA reports its decoding per chunk
                        ep.decode_ms, ep.decode_iterations = [5.0, 6.0], [3.0, 2.0]
                        ep.decode_tokens, ep.decode_warm = [32.0, 32.0], [False, True]
                    episodes.append(ep)
            (out / "report.json").write_text(json.dumps(build_report(cfg, episodes, {})))
        else:  # `train` or `distill train`: a finished run
            (out / "final").mkdir(exist_ok=True)
            (out / "final" / "config.json").write_text("{}")
            (out / "summary.json").write_text(json.dumps({"train_seconds": 1.0, "steps": 1}))
        return 0.0

    return run


@pytest.fixture
def jobs(monkeypatch):
    from ceed_vla.sim import levers

    calls: list[list[str]] = []
    monkeypatch.setattr(levers, "run_job", fake_job(calls))
    return calls


def test_bench_teacher_trains_evaluates_compares_and_tables(tmp_path, monkeypatch, jobs, capsys):
    bench = _load("bench_teacher.py")
    monkeypatch.setattr(bench, "run_job", fake_job(jobs))
    results = tmp_path / "levers.json"
    argv = ["--name", "lever", "--dataset-root", str(tmp_path / "data"), "--work", str(tmp_path / "work")]
    argv += [
        "--tasks",
        "reach,push",
        "--eval-episodes",
        "2",
        "--execute-steps",
        "8,4",
        "--output",
        str(results),
    ]
    monkeypatch.setattr(sys, "argv", ["bench_teacher.py", *argv, "--", "--steps", "1"])
    assert bench.main() == 0

    train, *evals = jobs
    assert train[0] == "train" and train[-2:] == ["--steps", "1"]
    assert [_arg(e, "--execute-steps") for e in evals] == ["8", "4"]
    assert all(_arg(e, "--split") == "validation" for e in evals)
    record = json.loads(results.read_text())["levers"]["lever"]
    assert set(record["evaluations"]) == {"final/exec8", "final/exec4"}
    assert record["evaluations"]["final/exec8"]["success_rate"] == pytest.approx(0.5)  # 2 of 4

    comparisons = bench.compare(results, ["lever/final/exec8:lever/final/exec4"])
    pair = comparisons["lever/final/exec8 vs lever/final/exec4"]
    assert (pair["both"], pair["neither"]) == (2, 2)  # the same episodes, the same outcomes
    assert "comparisons" in json.loads(results.read_text())
    assert bench.table(results) == 0
    assert "| lever final/exec4 | 0.50" in capsys.readouterr().out


def test_bench_student_pairs_every_mode_with_the_teacher(tmp_path, monkeypatch, jobs):
    bench = _load("bench_student.py")
    monkeypatch.setattr(bench, "run_job", fake_job(jobs))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    results = tmp_path / "student_levers.json"
    argv = ["--name", "s1", "--teacher", str(teacher), "--trajectories", str(tmp_path / "t.zarr")]
    argv += ["--dataset-root", str(tmp_path / "data"), "--work", str(tmp_path / "work")]
    argv += ["--modes", "jacobi,sigma2@4", "--tasks", "reach", "--eval-episodes", "2"]
    argv += ["--teacher-name", "t", "--output", str(results)]
    monkeypatch.setattr(sys, "argv", ["bench_student.py", *argv, "--", "--steps", "1"])
    assert bench.main() == 0

    decoding = [(e[0], _arg(e, "--decoding"), _arg(e, "--sigma")) for e in jobs]
    assert decoding == [
        ("eval", "ar", None),  # the teacher's AR rollouts
        ("distill", None, None),
        ("eval", "jacobi", None),
        ("eval", "early_exit", "2"),
    ]
    saved = json.loads(results.read_text())
    assert set(saved["levers"]["s1"]["evaluations"]) == {"jacobi", "sigma2@4"}
    assert set(saved["comparisons"]) == {f"teacher_t/ar vs s1/{m}" for m in ("jacobi", "sigma2@4")}
    with pytest.raises(SystemExit, match="unknown mode 'sigma'"):
        bench.mode_args("sigma")


def test_bench_realtime_decomposes_against_the_paused_row(tmp_path, monkeypatch, jobs, capsys):
    bench = _load("bench_realtime.py")
    out = tmp_path / "realtime.json"
    argv = ["--policy", "expert", "--decoding", "early_exit", "--sigma", "2", "--tasks", "reach"]
    argv += [
        "--episodes",
        "2",
        "--delays",
        "2,3",
        "--realtime",
        "--busy-cores",
        "1",
        "--work",
        str(tmp_path / "w"),
        "--output",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", ["bench_realtime.py", *argv])
    assert bench.main() == 0

    record = json.loads(out.read_text())
    variants = ("today", "no_blend", "no_warm_start", "prefix", "plan_ahead", "plan_ahead_kinematic")
    expected = {
        "paused",
        "realtime_today",
        "realtime_plan_ahead",
        "realtime_plan_ahead_kinematic",
        "realtime_prefix",
        "realtime_prefix_deadline",
    } | {f"d{d}_{v}" for d in (2, 3) for v in variants}
    assert set(record["rows"]) == expected
    assert all(_arg(e, "--split") == "validation" for e in jobs)  # a study never looks at evaluation seeds
    by_row = {Path(_arg(e, "--output")).name: e for e in jobs}
    assert (
        _arg(by_row["d3_no_blend"], "--delay-ticks") == "3"
        and _arg(by_row["d3_no_blend"], "--blend-steps") == "0"
    )
    assert (
        "--no-forced-prefix" in by_row["d2_no_warm_start"]
        and _arg(by_row["d2_no_warm_start"], "--init") == "constant"
    )
    assert (
        "--forced-prefix" in by_row["d2_prefix"] and _arg(by_row["realtime_today"], "--clock") == "realtime"
    )
    assert "--plan-ahead" in by_row["d3_plan_ahead"] and "--forced-prefix" not in by_row["d3_plan_ahead"]
    assert "--no-plan-ahead" in by_row["d2_today"] and "--no-plan-ahead" in by_row["realtime_today"]
    assert "--plan-ahead" in by_row["realtime_plan_ahead"]
    assert _arg(by_row["d2_plan_ahead"], "--forward-model") == "arm"
    assert _arg(by_row["realtime_plan_ahead_kinematic"], "--forward-model") == "kinematic"
    assert "--decode-deadline" in by_row["realtime_prefix_deadline"]
    assert "--decode-deadline" not in by_row["realtime_prefix"]
    # the load runs beside the measured-clock rows only
    assert (
        record["rows"]["realtime_today"]["busy_cores"] == 1 and record["rows"]["d2_today"]["busy_cores"] == 0
    )
    assert record["rows"]["d2_today"]["vs_paused"]["both"] == 1  # the same episodes, paired
    assert "| d2_prefix | 0.50 (" in capsys.readouterr().out
    assert out.with_suffix(".png").stat().st_size > 1000


def test_bench_realtime_runs_only_the_variants_asked_for(tmp_path, monkeypatch, jobs):
    bench = _load("bench_realtime.py")
    out = tmp_path / "realtime.json"
    argv = ["--policy", "expert", "--tasks", "reach", "--episodes", "1", "--delays", "2"]
    argv += ["--variants", "prefix", "--work", str(tmp_path / "w"), "--output", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench_realtime.py", *argv, "--fused-prefill"])
    assert bench.main() == 0
    record = json.loads(out.read_text())
    assert set(record["rows"]) == {"paused", "d2_prefix"}
    assert all("--fused-prefill" in e for e in jobs) and record["decoding"]["fused_prefill"] is True

    monkeypatch.setattr(sys, "argv", ["bench_realtime.py", *argv[:-6], "--variants", "prefx"])
    with pytest.raises(SystemExit):
        bench.main()


def test_bench_replan_writes_rows_and_plot(tmp_path, monkeypatch, jobs):
    bench = _load("bench_replan.py")
    out = tmp_path / "replan.json"
    argv = ["--teacher", "expert", "--student", "expert", "--tasks", "reach", "--episodes", "2"]
    argv += [
        "--intervals",
        "2,4",
        "--clocks",
        "paused",
        "--work",
        str(tmp_path / "work"),
        "--output",
        str(out),
    ]
    monkeypatch.setattr(sys, "argv", ["bench_replan.py", *argv])
    assert bench.main() == 0

    record = json.loads(out.read_text())
    assert set(record["rows"]) == {
        "teacher_ar/paused/exec2",
        "student_early_exit/paused/exec2",
        "teacher_ar/paused/exec4",
        "student_early_exit/paused/exec4",
        "student_jacobi/paused/init_tail",
        "student_jacobi/paused/init_constant",
    }
    assert record["rows"]["teacher_ar/paused/exec4"]["success_rate"] == pytest.approx(0.5)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert all("--save-rollouts" in e for e in jobs)


# ------------------------------------------------------------------------ the measuring scripts


def test_bench_compile_times_every_shape(tmp_path, monkeypatch):
    import torch

    bench = _load("bench_compile.py")
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # compiling alone takes minutes on CPU
    out = tmp_path / "compile.json"
    monkeypatch.setattr(
        sys, "argv", ["bench_compile.py", "--repeats", "2", "--threads", "1", "--out", str(out)]
    )
    try:
        assert bench.main() == 0
    finally:
        torch.set_num_threads(threads)
    record = json.loads(out.read_text())
    assert set(record["speedup"]) == {"prefill", "ar_step", "jacobi_block"}
    assert all(record["identical"].values())  # the same function both ways


def test_bench_video_load_writes_and_loads_an_arm_dataset(tmp_path):
    bench = _load("bench_video_load.py")
    root = tmp_path / "arm"
    assert bench.write(root, episodes=1, length=3) > 0
    loaded = bench.load(root, image_size=16, block=256)
    assert loaded["frames"] == 3
    assert {k: v[-2:] for k, v in loaded["image_shapes"].items()} == {k: [16, 16] for k in bench.CAMERAS}


def test_bench_forward_model_finds_the_arm_model_closer_than_the_kinematic_one(tmp_path, monkeypatch, capsys):
    bench = _load("bench_forward_model.py")
    out = tmp_path / "fm.json"
    argv = ["--tasks", "reach", "--episodes", "1", "--delays", "2", "--max-steps", "20", "--output", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench_forward_model.py", *argv])
    assert bench.main() == 0
    rows = json.loads(out.read_text())["tasks"]["reach"]
    arm, kinematic = rows["d2/arm"], rows["d2/kinematic"]
    assert arm["predictions"] == kinematic["predictions"] == 19  # every step with 2 taken after it
    assert arm["hand_mm_mean"] < 0.01 < kinematic["hand_mm_mean"]  # free space: the arm model is exact
    assert "| reach | 2 | arm |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["bench_forward_model.py", "--delays", "0"])
    with pytest.raises(SystemExit):
        bench.main()
