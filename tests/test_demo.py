"""`ceed demo` wiring: stage keys, report assembly and plots (the stages themselves are the jobs'
own tests; `make demo` runs them for real)."""

import json
from dataclasses import replace

import pytest

from ceed_vla import demo
from ceed_vla.pipeline import Pipeline

PROFILE = demo.DemoProfile(
    name="test",
    tasks=("reach", "push"),
    record_episodes=2,
    record_noise=0.0,
    image_size=32,
    teacher_steps=10,
    teacher_batch=8,
    collect_trajectories=16,
    distill_steps=5,
    distill_batch=4,
    eval_episodes=2,
    sigma=3,
    tau=None,
    sweep_sigmas=(2, 3),
)


def _keys(profile, tmp_path):
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    return Pipeline(tmp_path, demo.build_stages(profile, paths)).keys()


def test_changing_distillation_reruns_only_what_depends_on_it(tmp_path):
    before = _keys(PROFILE, tmp_path)
    after = _keys(replace(PROFILE, distill_steps=6), tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"distill", "speed"} | {n for n in before if n.startswith("eval_student")}


def test_changing_recording_reruns_everything(tmp_path):
    before = _keys(PROFILE, tmp_path)
    after = _keys(replace(PROFILE, record_episodes=3), tmp_path)
    assert all(before[n] != after[n] for n in before)


def test_changing_the_eval_wording_reruns_only_the_evaluations(tmp_path):
    before = _keys(PROFILE, tmp_path)
    after = _keys(replace(PROFILE, eval_instructions="eval"), tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    own_wording = {f"eval_{m.name}" for m in PROFILE.modes() if m.instructions}  # e.g. the held-out row
    assert own_wording == {"eval_teacher_ar_heldout_wording"}
    assert changed == {n for n in before if n.startswith("eval_")} - own_wording


def test_every_evaluation_gets_the_profile_wording(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo.StageCommand, "__call__", lambda self, out: calls.append(self.argv))
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    for stage in demo.build_stages(PROFILE, paths):
        if stage.name.startswith("eval_"):
            stage.run(tmp_path)
    assert len(calls) == len(PROFILE.modes())
    wording = {
        argv[argv.index("--output") + 1].rsplit("/", 1)[-1]: argv[argv.index("--instructions") + 1]
        for argv in calls
    }
    assert (
        wording.pop("eval_teacher_ar_heldout_wording") == "eval"
    )  # the one row that asks for the paraphrase
    assert set(wording.values()) == {"train"}
    with pytest.raises(ValueError, match="eval_instructions must be 'train' or 'eval', got 'heldout'"):
        replace(PROFILE, eval_instructions="heldout")


def test_the_speed_stage_times_every_decoder_of_the_table_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo.StageCommand, "__call__", lambda self, out: calls.append(self.argv))
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    profile = replace(PROFILE, student_delays=(2,), execute_steps=2)
    stages = {s.name: s for s in demo.build_stages(profile, paths)}
    stages["speed"].run(tmp_path)
    (argv,) = calls
    assert argv[:2] == ["bench", "speed"] and argv[argv.index("--steps-executed") + 1] == "2"
    modes = [argv[i + 1] for i, a in enumerate(argv) if a == "--mode"]
    assert [m.split(",")[0] for m in modes] == [
        "name=teacher/ar",  # the reference: first
        "name=teacher/jacobi",
        "name=student/jacobi",
        "name=student/early_exit/sigma=3",
        "name=student/early_exit/sigma=2",
        "name=student/early_exit/sigma=1/fused",
    ]  # the real-time, held-out wording and delay rows reuse these decoders
    assert modes[-1].endswith(",decoding=early_exit,sigma=1,fused=1")
    assert f"policy={paths.teacher}" in modes[0] and f"policy={paths.round_student(1)}" in modes[-1]
    before = _keys(profile, tmp_path)
    after = _keys(replace(profile, speed_rounds=9), tmp_path)
    assert {n for n in before if before[n] != after[n]} == {"speed"}


def test_the_student_decodes_exact_the_steps_a_delayed_chunk_runs_past_the_replanning_interval(
    tmp_path, monkeypatch
):
    base = replace(PROFILE, student_delays=(2, 3, 4), teacher_delays=(4,), execute_steps=2)
    profile = replace(base, student_exact_executed=True)
    exact = {m.name: m.exact_steps for m in profile.modes() if m.exact_steps}
    # not at d <= execute_steps, not paused or real time, not today's scheduling, not the teacher
    assert exact == {"student_early_exit_d3_plan_ahead": 3, "student_early_exit_d4_plan_ahead": 4}
    calls = {}
    monkeypatch.setattr(
        demo.StageCommand, "__call__", lambda self, out: calls.__setitem__(out.name, self.argv)
    )
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    for stage in demo.build_stages(profile, paths):
        if stage.name.startswith("eval_") or stage.name == "speed":
            stage.run(tmp_path / stage.name)
    for name, argv in calls.items():
        assert ("--exact-executed" in argv) == (name.removeprefix("eval_") in exact), name
    timed = [a for a in calls["speed"] if a.startswith("name=") and ",exact=" in a]
    student = paths.round_student(1)
    assert timed == [
        f"name=student/early_exit/sigma=3/exact={d},policy={student},decoding=early_exit,sigma=3,exact={d}"
        for d in (3, 4)
    ]  # timed with as many steps exact as the row runs
    # rows without it keep their stage keys; the rows with it rerun, and the speed stage
    before, after = _keys(base, tmp_path), _keys(profile, tmp_path)
    assert {n for n in before if before[n] != after[n]} == {f"eval_{n}" for n in exact} | {"speed"}
    with pytest.raises(ValueError, match="student_exact_executed needs execute_steps"):
        replace(PROFILE, student_exact_executed=True)
    # the report gives those rows their own decoder's speed and says what they decoded
    _write_speed(profile, paths, speedups={"student/early_exit/sigma=3/exact=4": 1.5})
    for mode in profile.modes():
        paths.eval_dir(mode.name).mkdir(parents=True, exist_ok=True)
        rep = _eval_report(0.5, 20.0, 4.5 if mode.exact_steps else 2.0)
        (paths.eval_dir(mode.name) / "report.json").write_text(json.dumps(rep))
    report = demo.build_report(profile, paths, summary={}, commit="c0ffee")
    assert report["modes"]["student_early_exit_d4_plan_ahead"]["speedup_vs_ar"] == 1.5
    assert report["modes"]["student_early_exit_d2_plan_ahead"]["speedup_vs_ar"] == 2.0
    md = demo.report_markdown(report | {"wall_seconds": 60.0})
    assert (
        "decodes them exact (`--exact-executed`), at more iterations per chunk (d = 3: 4.50, d = 4: 4.50)"
        in md
    )


def test_replanning_interval_reaches_every_evaluation_and_reruns_only_them(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo.StageCommand, "__call__", lambda self, out: calls.append(self.argv))
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    profile = replace(PROFILE, execute_steps=4)
    for stage in demo.build_stages(profile, paths):
        if stage.name.startswith("eval_"):
            stage.run(tmp_path)
    assert [argv[argv.index("--execute-steps") + 1] for argv in calls] == ["4"] * len(PROFILE.modes())
    before, after = _keys(PROFILE, tmp_path), _keys(profile, tmp_path)
    # the speed stage too: its warm starts shift out the executed steps
    assert {n for n in before if before[n] != after[n]} == {n for n in before if n.startswith("eval_")} | {
        "speed"
    }
    with pytest.raises(ValueError, match="execute_steps must be >= 1 or None, got 0"):
        replace(PROFILE, execute_steps=0)


def test_worker_count_reaches_recording_and_evaluations_and_reruns_only_the_evaluations(
    tmp_path, monkeypatch
):
    calls = {}
    monkeypatch.setattr(
        demo.StageCommand, "__call__", lambda self, out: calls.setdefault(out.name, self.argv)
    )
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    profile = replace(PROFILE, workers=3)
    for stage in demo.build_stages(profile, paths):
        if stage.name == "record" or stage.name.startswith("eval_"):
            stage.run(tmp_path / stage.name)
    assert {name: argv[argv.index("--workers") + 1] for name, argv in calls.items()} == {
        name: "3" for name in calls
    }
    assert len(calls) == 1 + len(PROFILE.modes())
    # the recording is the same whatever the count; evaluation timings are not
    before, after = _keys(PROFILE, tmp_path), _keys(profile, tmp_path)
    assert {n for n in before if before[n] != after[n]} == {n for n in before if n.startswith("eval_")}
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        replace(PROFILE, workers=0)


def test_sweep_skips_the_headline_sigma():
    sweep = [m for m in PROFILE.modes() if m.sweep]
    assert [(m.name, m.sigma, m.fused) for m in sweep] == [
        ("student_sigma2", 2, False),
        ("student_sigma1_fused", 1, True),
    ]
    assert sweep[1].cli_args()[-1] == "--fused-prefill"
    headline = {m.name for m in PROFILE.modes() if not m.sweep}
    assert {"teacher_ar", "teacher_jacobi", "student_jacobi", "student_early_exit"} <= headline
    assert {m.clock for m in PROFILE.modes()} == {"paused", "realtime"}


def test_a_profile_can_leave_the_exact_rows_to_another():
    names = [m.name for m in replace(PROFILE, exact_rows=False).modes()]
    assert "teacher_jacobi" not in names and "student_jacobi" not in names
    assert names[:2] == ["teacher_ar", "student_early_exit"]


def test_the_quick_profile_spends_its_episodes_on_the_rows_it_shows():
    from ceed_vla.demo.profiles import FULL, QUICK

    assert [m.name for m in QUICK.modes()] == [
        "teacher_ar",
        "student_early_exit",
        "teacher_ar_realtime",
        "student_early_exit_realtime",
        "student_sigma1_fused",
        "student_early_exit_d2_plan_ahead",
        "student_early_exit_d4_plan_ahead",
    ]
    assert QUICK.eval_episodes * len(QUICK.tasks) == 50
    full = {m.name for m in FULL.modes()}  # the rows the quick profile leaves out are answered here
    assert {"teacher_jacobi", "student_jacobi", "student_sigma1", "student_early_exit_d2"} <= full


def test_invalid_profile_is_refused_with_the_value():
    with pytest.raises(ValueError, match="teacher_steps must be >= 1, got 0"):
        replace(PROFILE, teacher_steps=0)


def _eval_report(success, ms, iters, wins=(True, True, False, False)):
    overall = {
        "episodes": 4,
        "success_rate": success,
        "success_ci95": [max(0.0, success - 0.3), min(1.0, success + 0.3)],
        "chunk_ms_p50": ms,
        "chunk_ms_p95": ms * 1.2,
        "iterations_per_chunk": iters,
        "tokens_per_chunk": 32.0,
        "actions_per_s": 8000.0 / ms,
    }
    per_task = {"reach": {"success_rate": success}, "push": {"success_rate": 0.0}}
    episodes = [
        {
            "task": "reach",
            "seed": 100 + i,
            "success": w,
            "iterations_per_chunk": [iters, iters + 1.0][: 2 * (i == 0)],
        }
        for i, w in enumerate(wins)
    ]
    return {"overall": overall, "per_task": per_task, "episodes": episodes}


def _write_speed(profile, paths, speedups=None):
    """The speed stage's record for every decoder of `profile`: speedups by decoder (default 2.0)."""
    speedups = speedups or {}
    entries = {}
    for name in profile.decoders():
        x = 1.0 if name == "teacher/ar" else speedups.get(name, 2.0)
        entries[name] = {
            "ms_p50": 60.0 / x, "ms_p95": 70.0 / x, "speedup_vs_reference": x, "speedup_min": x * 0.9,
            "speedup_max": x * 1.1, "forward_passes_per_chunk": 1.0 if name.endswith("fused") else 2.0,
        }  # fmt: skip
    paths.speed.parent.mkdir(parents=True, exist_ok=True)
    record = {"reference": "teacher/ar", "rounds": 7, "samples": 20, "threads": 1, "runs": 5, "run_length": 4}
    paths.speed.write_text(json.dumps({**record, "entries": entries}))


def test_report_has_every_key_and_speedup_against_teacher_ar(tmp_path):
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    _write_speed(PROFILE, paths, {"student/jacobi": 3.5})
    timings = {"teacher_ar": 80.0, "teacher_jacobi": 50.0, "student_jacobi": 30.0}
    for mode in PROFILE.modes():
        out = paths.eval_dir(mode.name)
        out.mkdir(parents=True)
        ms = timings.get(mode.name, 20.0)
        wins = (False, True, True, True) if mode.name == "student_jacobi" else (True, True, False, False)
        rep = _eval_report(0.5, ms, 4.0, wins)
        if mode.clock == "realtime":
            rep["overall"].update(held_fraction=0.25, late_chunks=3, mean_seconds_to_success=1.5)
        (out / "report.json").write_text(json.dumps(rep))
    report = demo.build_report(PROFILE, paths, summary={"record": {"seconds": 1.0, "skipped": False}})
    paired = report["modes"]["student_jacobi"]["paired_vs_teacher_ar"]
    assert (paired["both"], paired["only_a"], paired["only_b"], paired["neither"]) == (1, 1, 2, 0)
    assert paired["mcnemar_p"] == pytest.approx(1.0)  # 1 vs 2 discordant: no evidence either way
    assert report["modes"]["teacher_ar"]["paired_vs_teacher_ar"]["only_b"] == 0
    for row in report["modes"].values():
        assert set(demo.REPORT_KEYS) <= set(row)
    # speed comes from the one interleaved run, never from the evaluations' own timings (80 / 30 ms)
    assert report["modes"]["teacher_ar"]["speedup_vs_ar"] == pytest.approx(1.0)
    assert report["modes"]["student_jacobi"]["speedup_vs_ar"] == pytest.approx(3.5)
    assert report["modes"]["student_jacobi"]["speedup_range"] == pytest.approx([3.15, 3.85])
    assert report["modes"]["teacher_ar_heldout_wording"]["speedup_vs_ar"] == 1.0  # the same decoder
    assert report["modes"]["student_sigma1_fused"]["forwards_per_chunk"] == 1.0
    assert report["modes"]["student_jacobi"]["ms_per_chunk_p50"] == 30.0  # kept, as a secondary column
    assert report["config"]["tasks"] == ["reach", "push"] or report["config"]["tasks"] == ("reach", "push")
    paths.reports.mkdir()
    plots = demo.write_plots(report, paths.reports)
    assert [p.name for p in plots] == ["pareto.png", "success_per_task.png", "iterations_hist.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    assert report["modes"]["student_jacobi"]["chunk_iterations"] == [4.0, 5.0]
    on_disk = json.loads(json.dumps(report, sort_keys=True))  # what report.json holds
    assert demo.mode_order(on_disk) == [m.name for m in PROFILE.modes()]
    md = demo.report_markdown(report)
    assert "| student_early_exit | paused | 0.50" in md
    assert "| 17.1 | 3.50x (3.15-3.85) | 2.00 | 4.00 | 30.0 / 36.0 | 267 | - | - | 1 / 1 / 2 / 0 | 1 |" in md
    assert "one interleaved run (`ceed bench speed`)" in md and "20 recorded observations" in md
    assert "| teacher_ar_realtime | realtime (plan ahead) | 0.50 (0.20-0.80) | 4 | 1.50 |" in md
    assert "| 25% / 3 |" in md  # held share and late chunks of the real-time rows


def test_the_delay_curve_has_its_rows_table_and_plot(tmp_path):
    assert [m.name for m in replace(PROFILE, student_delays=(2,)).delay_modes()] == [
        "student_early_exit_d2",
        "student_early_exit_d2_plan_ahead",
    ]  # the default schedulings
    profile = replace(
        PROFILE,
        student_delays=(2, 4),
        teacher_delays=(2,),
        realtime_with_prefix=True,
        delay_schedulings=("today", "plan_ahead", "prefix"),
    )
    names = [m.name for m in profile.modes()]
    assert names[-9:] == [
        "teacher_ar_d2",
        "teacher_ar_d2_plan_ahead",
        "teacher_ar_d2_prefix",
        "student_early_exit_d2",
        "student_early_exit_d2_plan_ahead",
        "student_early_exit_d2_prefix",
        "student_early_exit_d4",
        "student_early_exit_d4_plan_ahead",
        "student_early_exit_d4_prefix",
    ]
    by_name = {m.name: m for m in profile.modes()}
    assert by_name["student_early_exit_d4"].cli_args()[:8] == [
        "--decoding",
        "early_exit",
        "--clock",
        "delay",
        "--delay-ticks",
        "4",
        "--no-forced-prefix",
        "--no-plan-ahead",
    ]  # today's scheduling asks for it: plan-ahead is `ceed eval`'s default
    assert by_name["student_early_exit_d4_plan_ahead"].cli_args()[6:8] == [
        "--no-forced-prefix",
        "--plan-ahead",
    ]
    assert by_name["student_early_exit_d4_prefix"].cli_args()[6:8] == ["--forced-prefix", "--no-plan-ahead"]
    assert "--plan-ahead" in by_name["student_early_exit_realtime"].cli_args()
    assert "student_early_exit_realtime_prefix" in names
    with pytest.raises(ValueError, match="delay_schedulings"):
        replace(PROFILE, delay_schedulings=("today", "planahead"))
    # today's scheduling only where `today_delays` says; the other schedulings at every d
    assert [m.name for m in replace(PROFILE, student_delays=(1, 2), today_delays=(2,)).delay_modes()] == [
        "student_early_exit_d1_plan_ahead",
        "student_early_exit_d2",
        "student_early_exit_d2_plan_ahead",
    ]
    with pytest.raises(ValueError, match="delays must be >= 1"):
        replace(PROFILE, today_delays=(0,))
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    _write_speed(profile, paths)
    success = {
        "student_early_exit": 0.75,
        "student_early_exit_d2": 0.5,
        "student_early_exit_d2_prefix": 0.75,
        "student_early_exit_d4_plan_ahead": 0.5,
    }
    for mode in profile.modes():
        out = paths.eval_dir(mode.name)
        out.mkdir(parents=True)
        rep = _eval_report(success.get(mode.name, 0.25), 20.0, 2.0)
        rep["overall"]["jerk"] = 0.01 if mode.delay_ticks is None else 0.02
        if mode.clock == "realtime" and mode.forced_prefix:
            rep["overall"]["forced_steps_per_chunk"] = 2.5
        (out / "report.json").write_text(json.dumps(rep))
    report = demo.build_report(profile, paths, summary={}, commit="c0ffee")
    report["wall_seconds"] = 60.0
    md = demo.report_markdown(report)
    assert "| student_early_exit_d2 |" not in md  # the curve's points are in its own table
    assert "| mode | d = 0 (paused) | d = 2 | d = 4 |" in md
    assert (
        "| student early exit, forced prefix | 0.75 (jerk 0.010) | 0.75 (jerk 0.020) | 0.25 (jerk 0.020) |"
        in md
    )
    assert "| teacher AR, not planned ahead | 0.25 (jerk 0.010) | 0.25 (jerk 0.020) | - |" in md
    assert (
        "| student early exit, planned ahead | 0.75 (jerk 0.010) | 0.25 (jerk 0.020) | 0.50 (jerk 0.020) |"
        in md
    )
    assert report["modes"]["student_early_exit_d2_plan_ahead"]["mode"]["scheduling"] == "plan_ahead"
    assert "scheduling" not in report["modes"]["student_early_exit"]["mode"]  # paused: nothing to schedule
    assert "| student_early_exit_realtime_prefix | realtime (prefix) |" in md
    assert "| student_early_exit_realtime | realtime (plan ahead) |" in md
    paths.reports.mkdir()
    plots = demo.write_plots(report, paths.reports)
    assert "success_vs_delay.png" in [p.name for p in plots]
    readme = tmp_path / "README.md"
    begin, end = demo.readme_markers(profile.name)
    readme.write_text(f"{begin}\n{end}\n")
    demo.update_readme(readme, report, paths.reports)
    text = readme.read_text()
    assert "(reports/success_vs_delay.png)" in text and "| mode | d = 0 (paused) |" in text
    with pytest.raises(ValueError, match="delays must be >= 1"):
        replace(PROFILE, student_delays=(0, 2))


def test_report_only_redraws_from_report_json_without_running_a_stage(tmp_path, monkeypatch):
    import argparse

    monkeypatch.setattr(demo, "Pipeline", lambda *a, **k: pytest.fail("--report-only must not run stages"))
    paths = demo.DemoPaths(work=tmp_path / "work", reports=tmp_path / "reports")
    _write_speed(PROFILE, paths)
    for mode in PROFILE.modes():
        paths.eval_dir(mode.name).mkdir(parents=True)
        (paths.eval_dir(mode.name) / "report.json").write_text(json.dumps(_eval_report(0.5, 40.0, 4.0)))
    report = demo.build_report(PROFILE, paths, summary={}, commit="c0ffee")
    report["wall_seconds"] = 600.0
    paths.reports.mkdir()
    (paths.reports / "report.json").write_text(json.dumps(report))
    begin, end = demo.readme_markers(PROFILE.name)  # the block of the report's own profile
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{begin}\n{end}\n")

    parser = argparse.ArgumentParser()
    demo.configure_parser(parser)
    argv = ["--profile", "full", "--reports", str(paths.reports), "--report-only", "--readme", str(readme)]
    assert demo.main(parser.parse_args(argv)) == 0
    assert "Commit `c0ffee`" in (paths.reports / "report.md").read_text()
    assert (paths.reports / "pareto.png").stat().st_size > 1000
    assert "| teacher_ar | paused | 0.50" in readme.read_text()

    empty = tmp_path / "nothing"
    argv = ["--profile", "full", "--reports", str(empty), "--report-only"]
    assert demo.main(parser.parse_args(argv)) == 2


def test_missing_eval_report_names_the_file(tmp_path):
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    with pytest.raises(FileNotFoundError, match="speed.json is missing: the demo's speed stage"):
        demo.build_report(PROFILE, paths, summary={})
    _write_speed(PROFILE, paths)
    with pytest.raises(FileNotFoundError, match="eval_teacher_ar"):
        demo.build_report(PROFILE, paths, summary={})


def test_readme_block_is_replaced_and_the_rest_kept(tmp_path):
    report = {
        "profile": "quick",
        "git_commit": "abc",
        "machine": {"platform": "x", "cpu_count": 2, "torch": "t", "cuda": None},
        "config": {"tasks": ["reach"], "eval_episodes": 4, "eval_instructions": "train", "unknown_field": 1},
        "stages": {
            "record": {"skipped": True, "seconds": 0.0, "recorded_seconds": 300.0},
            "teacher": {"skipped": False, "seconds": 120.0, "recorded_seconds": 120.0},
        },
        "wall_seconds": 120.0,
        "modes": {
            "teacher_ar": {
                "mode": {"clock": "paused"},
                "success_rate": 0.5,
                "success_ci95": [0.2, 0.8],
                "episodes": 4,
                "ms_per_chunk_p50": 10.0,
                "ms_per_chunk_p95": 12.0,
                "iterations_per_chunk": 31.0,
                "actions_per_s": 800.0,
                "speedup_vs_ar": 1.0,
            }
        },
    }
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{demo.README_BEGIN}\nold table\n{demo.README_END}\noutro\n")
    demo.update_readme(readme, report, tmp_path / "reports" / "full")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "old table" not in text
    assert "| teacher_ar | paused | 0.50 (0.20-0.80) | 4 |" in text
    assert "(reports/full/pareto.png)" in text
    assert "stages 7 min (this run 2 min;" in text  # a skipped stage counts what it took when it ran
    assert "Stage time: 7.0 min for all stages" in demo.report_markdown(report)
    assert "record 5.0, teacher 2.0" in demo.report_markdown(report)
    bare = tmp_path / "BARE.md"
    bare.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- demo-report:begin -->"):
        demo.update_readme(bare, report, tmp_path)

    # Another profile writes its own block and leaves the quick one alone.
    begin, end = demo.readme_markers("full")
    readme.write_text(text + f"{begin}\nold full\n{end}\n")
    demo.update_readme(readme, {**report, "profile": "full"}, tmp_path / "reports" / "full")
    both = readme.read_text()
    assert "old full" not in both
    assert both.count("| teacher_ar | paused | 0.50 (0.20-0.80) | 4 |") == 2
    assert both.index(demo.README_END) < both.index(begin)
    with pytest.raises(ValueError, match="demo-report-full:begin"):
        demo.update_readme(bare, {**report, "profile": "full"}, tmp_path)


def test_git_commit_dirty_only_for_code(tmp_path):
    """The report's commit is marked dirty when tracked code changed, not when the demo's own outputs
    (reports/, the README block) did; outside a checkout it is None."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    for name in ("code.py", "README.md", "reports/report.md"):
        (tmp_path / name).write_text("v1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = demo.git_commit(tmp_path)
    assert head is not None and len(head) == 40
    (tmp_path / "reports" / "report.md").write_text("v2\n")
    (tmp_path / "README.md").write_text("v2\n")
    assert demo.git_commit(tmp_path) == head
    assert demo.git_commit(tmp_path / "reports") == head  # from a subfolder too
    (tmp_path / "code.py").write_text("v2\n")
    assert demo.git_commit(tmp_path) == head + "-dirty"
    outside = tmp_path.parent / f"{tmp_path.name}_plain"
    outside.mkdir()
    assert demo.git_commit(outside) is None


def test_a_second_round_distils_the_student_on_its_own_trajectories(tmp_path, monkeypatch):
    two = replace(PROFILE, distill_rounds=2, refine_steps=7, extra_refine_args=("--w-ar", "0.1"))
    before = _keys(two, tmp_path)
    assert [n for n in before if "_r2" in n] == ["collect_r2", "distill_r2"]
    assert {n for n in before if n not in _keys(PROFILE, tmp_path)} >= {"collect_r2", "distill_r2"}
    after = _keys(replace(two, refine_steps=8), tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"distill_r2", "speed"} | {n for n in before if n.startswith("eval_student")}

    calls = {}
    monkeypatch.setattr(
        demo.StageCommand, "__call__", lambda self, out: calls.setdefault(out.name, self.argv)
    )
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    for stage in demo.build_stages(two, paths):
        if stage.name in ("collect_r2", "distill_r2", "eval_student_jacobi", "eval_teacher_ar"):
            stage.run(tmp_path / stage.name)
    first_student = str(tmp_path / "distill" / "run" / "final")
    collect, distill = calls["collect_r2"], calls["distill_r2"]
    assert collect[collect.index("--teacher") + 1] == first_student
    assert collect[collect.index("--output") + 1] == str(tmp_path / "collect_r2" / "trajectories.zarr")
    assert distill[distill.index("--teacher") + 1] == first_student
    assert distill[distill.index("--trajectories") + 1] == str(tmp_path / "collect_r2" / "trajectories.zarr")
    assert distill[distill.index("--steps") + 1] == "7" and distill[-2:] == ["--w-ar", "0.1"]
    student = calls["eval_student_jacobi"]
    assert student[student.index("--policy") + 1] == str(tmp_path / "distill_r2" / "run" / "final")
    teacher = calls["eval_teacher_ar"]
    assert teacher[teacher.index("--policy") + 1] == str(tmp_path / "teacher" / "run" / "final")
    with pytest.raises(ValueError, match="distill_rounds must be >= 1, got 0"):
        replace(PROFILE, distill_rounds=0)


def test_collect_flags_reach_every_round_and_rerun_only_what_follows_collection(tmp_path, monkeypatch):
    lag = ("--obs-lag-prob", "0.5", "--obs-lag-max-steps", "4")
    two = replace(PROFILE, distill_rounds=2)
    before = _keys(two, tmp_path)
    after = _keys(replace(two, extra_collect_args=lag), tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"collect", "distill", "collect_r2", "distill_r2", "speed"} | {
        n for n in before if n.startswith("eval_student")
    }
    # without the flags the collect stages' config is what it was before the field existed, so a
    # finished run's trajectories are reused
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    stages = {s.name: s for s in demo.build_stages(two, paths)}
    assert stages["collect"].config == {"collect_trajectories": two.collect_trajectories}

    calls = {}
    monkeypatch.setattr(
        demo.StageCommand, "__call__", lambda self, out: calls.setdefault(out.name, self.argv)
    )
    for stage in demo.build_stages(replace(two, extra_collect_args=lag), paths):
        if stage.name in ("collect", "collect_r2", "distill"):
            stage.run(tmp_path / stage.name)
    assert calls["collect"][-4:] == list(lag) and calls["collect_r2"][-4:] == list(lag)
    assert "--obs-lag-prob" not in calls["distill"]  # the student reads the lag from the store


def test_only_the_full_profile_trains_and_collects_with_the_observation_lag(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(
        demo.StageCommand, "__call__", lambda self, out: calls.__setitem__(out.name, self.argv)
    )
    paths = demo.DemoPaths(work=tmp_path, reports=tmp_path / "reports")
    for profile, lagged in ((demo.PROFILES["full"], True), (demo.PROFILES["quick"], False)):
        for stage in demo.build_stages(profile, paths):
            if stage.name in ("teacher", "collect", "distill"):
                stage.run(tmp_path / stage.name)
        for name in ("teacher", "collect"):
            argv = calls[name]
            assert ("--obs-lag-prob" in argv) == lagged, (profile.name, name)
            if lagged:
                assert argv[argv.index("--obs-lag-prob") + 1] == "0.5"
                assert argv[argv.index("--obs-lag-max-steps") + 1] == "4"
        assert "--obs-lag-prob" not in calls["distill"]


def test_the_report_names_the_forward_model_each_planned_ahead_row_used():
    from ceed_vla.demo.report import _forward_model_words, mode_row

    def eval_report(**settings):
        overall = {"success_rate": 0.5, "success_ci95": [0.2, 0.8], "episodes": 2}
        return {"overall": overall, "per_task": {}, "settings": settings}

    assert mode_row(eval_report(plan_ahead=True, forward_model="arm"))["forward_model"] == "arm"
    assert mode_row(eval_report(plan_ahead=True))["forward_model"] == "kinematic"  # before the choice
    assert mode_row(eval_report(plan_ahead=False, forward_model="arm"))["forward_model"] is None
    arm = {"modes": {"a": {"forward_model": "arm", "mode": {"plan_ahead": True}}, "b": {"mode": {}}}}
    assert "arm's own dynamics" in _forward_model_words(arm) and "kinematic" not in _forward_model_words(arm)
    old = {"modes": {"a": {"mode": {"plan_ahead": True}}}}  # a report written before the key existed
    assert "`--forward-model kinematic`" in _forward_model_words(old)
    assert _forward_model_words({"modes": {"a": {"mode": {}}}}) == "no row planned ahead"
