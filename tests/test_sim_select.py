"""`ceed select`: checkpoint choice by closed-loop success, on validation seeds only."""

import json

import pytest
from ceed_vla.sim.evaluate import EvalConfig
from ceed_vla.sim.seeds import is_validation_seed, split_seed
from ceed_vla.sim.select import SELECTION_FILE, SelectionError, candidates, select_checkpoint, write_selected


def _fake_run(tmp_path, steps=(250, 500, 750)):
    run = tmp_path / "run"
    for s in steps:
        d = run / "checkpoints" / f"step_{s:06d}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_text(f"weights of {s}")
        (d / "training_state.pt").write_text("optimizer")
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    return run


def _fake_evaluate(success_by_step):
    """A stand-in for the rollout: records what it was asked and returns a report of that shape."""
    calls = []

    def evaluate(path, config):
        calls.append((path.name, config.split))
        step = int(path.name.split("_")[1])
        episodes = []
        for task in config.tasks:
            for i in range(config.episodes_per_task):
                won = i < round(success_by_step[step] * config.episodes_per_task)
                episodes.append(
                    {"task": task, "seed": split_seed(config.split, config.seed, i), "success": won}
                )
        wins = sum(e["success"] for e in episodes)
        return {
            "overall": {"success_rate": wins / len(episodes), "successes": wins, "episodes": len(episodes)},
            "per_task": {t: {"success_rate": wins / len(episodes)} for t in config.tasks},
            "episodes": episodes,
        }

    return evaluate, calls


def test_candidates_are_step_checkpoints_in_order(tmp_path):
    run = _fake_run(tmp_path, steps=(1000, 250, 500))
    assert [c[0] for c in candidates(run)] == ["step_000250", "step_000500", "step_001000"]
    with pytest.raises(SelectionError, match="no checkpoint"):
        candidates(tmp_path / "empty")


def test_selection_takes_the_best_validation_success_and_later_on_ties(tmp_path):
    run = _fake_run(tmp_path)
    config = EvalConfig(tasks=("reach", "push"), episodes_per_task=4, split="validation")
    evaluate, calls = _fake_evaluate({250: 0.5, 500: 0.75, 750: 0.75})
    sel = select_checkpoint(run, config, evaluate)
    assert [c for c, _ in calls] == ["step_000250", "step_000500", "step_000750"]
    assert {split for _, split in calls} == {"validation"}
    assert sel["selected"] == "step_000750"  # tie with 500: the later one
    assert all(is_validation_seed(s) for c in sel["candidates"] for s in c["seeds"])

    out = write_selected(sel, tmp_path / "selected")
    assert (out / "model.safetensors").read_text() == "weights of 750"
    assert not (out / "training_state.pt").exists()
    assert json.loads((out / SELECTION_FILE).read_text())["selected"] == "step_000750"


def test_selection_refuses_evaluation_seeds(tmp_path):
    run = _fake_run(tmp_path)
    evaluate, calls = _fake_evaluate({250: 1.0, 500: 1.0, 750: 1.0})
    with pytest.raises(SelectionError, match="validation seeds"):
        select_checkpoint(run, EvalConfig(tasks=("reach",), episodes_per_task=1, split="eval"), evaluate)
    assert calls == []  # refused before a single rollout

    def leaky(path, config):  # an evaluator that ignores the split it was given
        report = evaluate(path, config)
        for e in report["episodes"]:
            e["seed"] = split_seed("eval", 0, 0)
        return report

    with pytest.raises(SelectionError, match="non-validation seeds"):
        select_checkpoint(run, EvalConfig(tasks=("reach",), episodes_per_task=1, split="validation"), leaky)


@pytest.mark.sim
def test_select_rolls_out_a_real_checkpoint_on_validation_seeds(make_policy, tmp_path):
    from ceed_vla.sim.select import rollout

    policy = make_policy(action_dim=4, state_dim=4)
    run = tmp_path / "run"
    policy.save_pretrained(run / "checkpoints" / "step_000010")
    config = EvalConfig(
        tasks=("reach",), episodes_per_task=2, max_episode_steps=6, image_size=24, split="validation", seed=3
    )
    sel = select_checkpoint(run, config, rollout)
    (only,) = sel["candidates"]
    assert only["seeds"] == [split_seed("validation", 3, 0), split_seed("validation", 3, 1)]
    assert sel["selected"] == "step_000010" and only["episodes"] == 2


def test_select_cli_evaluates_on_validation_seeds_and_keeps_output_for_the_copy(tmp_path, monkeypatch):
    import argparse

    from ceed_vla.sim import select

    run = _fake_run(tmp_path)
    seen = {}

    def fake_select(run_dir, config, evaluate, every=1):
        seen["config"] = config
        return {"selected": "step_000750", "selected_success_rate": 1.0, "candidates": [{"episodes": 3}]}

    monkeypatch.setattr(select, "select_checkpoint", fake_select)
    monkeypatch.setattr(select, "write_selected", lambda sel, out: seen.setdefault("out", out))
    parser = argparse.ArgumentParser()
    select.configure_parser(parser)
    argv = ["--run", str(run), "--output", str(tmp_path / "sel"), "--tasks", "reach,push", "--episodes", "3"]
    assert select.main(parser.parse_args(argv)) == 0
    config = seen["config"]
    assert config.split == "validation" and config.output is None  # reports are not written into the copy
    assert config.tasks == ("reach", "push") and config.episodes_per_task == 3
    assert seen["out"] == tmp_path / "sel"
