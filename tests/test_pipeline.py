import json
import os
import time

import pytest

from ceed_vla.demo.report import _earlier_attempts_words
from ceed_vla.pipeline import ATTEMPTS_FILE, Pipeline, Stage, StageError


def _recorder(calls, name, fail=False):
    def run(out):
        calls.append(name)
        if fail:
            raise RuntimeError("boom")
        (out / "result.txt").write_text(name)

    return run


def _stages(calls, cfg_b=1, fail_b=False):
    return [
        Stage("a", _recorder(calls, "a"), {"x": 1}),
        Stage("b", _recorder(calls, "b", fail_b), {"y": cfg_b}, depends_on=["a"]),
        Stage("c", _recorder(calls, "c"), {}, depends_on=["b"]),
    ]


def test_rerun_skips_finished_stages(tmp_path):
    calls = []
    Pipeline(tmp_path, _stages(calls)).run()
    assert calls == ["a", "b", "c"]
    calls.clear()
    summary = Pipeline(tmp_path, _stages(calls)).run()
    assert calls == []
    assert all(s["skipped"] for s in summary.values())
    # a skipped stage costs this run nothing but keeps what it took when it ran
    for name, s in summary.items():
        ran = json.loads((tmp_path / name / ".stage.json").read_text())["seconds"]
        assert s["seconds"] == 0.0 and s["recorded_seconds"] == ran > 0


def test_changed_config_reruns_stage_and_downstream(tmp_path):
    calls = []
    Pipeline(tmp_path, _stages(calls)).run()
    calls.clear()
    Pipeline(tmp_path, _stages(calls, cfg_b=2)).run()
    assert calls == ["b", "c"]


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    calls = []
    with pytest.raises(StageError, match="stage 'b' failed"):
        Pipeline(tmp_path, _stages(calls, fail_b=True)).run()
    assert calls == ["a", "b"]
    assert not (tmp_path / "b" / ".stage.json").exists()
    calls.clear()
    Pipeline(tmp_path, _stages(calls)).run()
    assert calls == ["b", "c"]
    assert json.loads((tmp_path / "c" / ".stage.json").read_text())["key"]


def test_dependency_on_later_stage_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not earlier stages"):
        Pipeline(tmp_path, [Stage("a", lambda o: None, depends_on=["b"]), Stage("b", lambda o: None)])


def test_a_stage_that_needed_several_attempts_reports_what_the_unfinished_ones_took(tmp_path):
    calls = []
    with pytest.raises(StageError):
        Pipeline(tmp_path, _stages(calls, fail_b=True)).run()
    failed = json.loads((tmp_path / "b" / ATTEMPTS_FILE).read_text())
    assert [a["ended"] for a in failed] == ["failed"] and failed[0]["seconds"] >= 0
    # a second attempt killed outright (no end recorded), 100 s after it began, its last file written at 60 s
    key = failed[0]["key"]
    started = time.time() - 1000
    killed = {"key": key, "started": started, "seconds": None}
    (tmp_path / "b" / ATTEMPTS_FILE).write_text(json.dumps([*failed, killed]))
    (tmp_path / "b" / "checkpoint.bin").write_text("x")
    os.utime(tmp_path / "b" / "checkpoint.bin", (started + 60, started + 60))

    summary = Pipeline(tmp_path, _stages(calls)).run()
    b = summary["b"]
    assert b["earlier_attempts"] == 2
    assert b["earlier_attempts_seconds"] == pytest.approx(failed[0]["seconds"] + 60, abs=1.0)
    marker = json.loads((tmp_path / "b" / ".stage.json").read_text())
    assert (
        marker["earlier_attempts"] == 2
        and marker["earlier_attempts_seconds"] == b["earlier_attempts_seconds"]
    )
    assert summary["a"]["earlier_attempts"] == 0  # skipped, never redone
    assert [a["ended"] for a in json.loads((tmp_path / "b" / ATTEMPTS_FILE).read_text())] == [
        "failed",
        "killed",
        "done",
    ]
    # a rerun with nothing changed keeps what the stage's attempts took
    again = Pipeline(tmp_path, _stages(calls)).run()
    assert again["b"]["skipped"] and again["b"]["earlier_attempts_seconds"] == b["earlier_attempts_seconds"]
    words = _earlier_attempts_words(again)
    assert (
        words.startswith(" Unfinished earlier attempts")
        and "b 1.0 min in 2" in words
        and "a 0.0" not in words
    )
    assert _earlier_attempts_words({"a": again["a"]}) == ""
    # a forced rerun that finishes at once owes nothing to the attempts of the run before it
    forced = Pipeline(tmp_path, _stages(calls)).run(force=["b"])
    assert forced["b"]["earlier_attempts"] == 0 and forced["b"]["earlier_attempts_seconds"] == 0
