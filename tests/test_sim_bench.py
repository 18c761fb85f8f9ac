"""`ceed bench env`: the measurement and the report, without timing assertions."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.sim


def test_env_bench_reports_why_lerobots_env_is_missing(tmp_path, monkeypatch, capsys):
    import lerobot.envs.metaworld as lerobot_metaworld

    from ceed_vla import cli

    class Broken:
        def __init__(self, **kwargs):
            raise RuntimeError("no MetaWorld assets")

    monkeypatch.setattr(lerobot_metaworld, "MetaworldEnv", Broken)
    out = tmp_path / "env.json"
    argv = ["bench", "env", "--image-size", "32", "--steps", "10", "--lerobot-steps", "2", "--out", str(out)]
    assert cli.main(argv) == 0

    result = json.loads(out.read_text())
    assert result["ours"]["steps"] == 10 and result["ours"]["frame_shape"] == [32, 32, 3]
    assert result["ours"]["steps_per_s"] > 0
    assert "no MetaWorld assets" in result["lerobot"]["error"]
    assert result["speedup"] is None and result["meets_goal"] is None
    assert "no MetaWorld assets" in capsys.readouterr().out


def test_env_bench_table_shows_the_ratio():
    from ceed_vla.sim.bench import format_table

    ours = {"steps": 300, "steps_per_s": 60.0, "frame_shape": [128, 128, 3]}
    theirs = {"steps": 60, "steps_per_s": 6.0, "frame_shape": [480, 480, 3]}
    table = format_table({"ours": ours, "lerobot": theirs, "speedup": 10.0})
    assert "10.0x" in table and "480x480x3" in table and "128x128x3" in table
