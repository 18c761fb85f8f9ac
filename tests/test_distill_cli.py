"""`ceed distill collect` and `ceed distill train` end to end on a small LeRobotDataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ceed_vla.distill.store import TeacherMismatchError, TrajectoryStore

from ceed_vla.cli import main as ceed


def _collect(policy_dataset, make_policy, tmp_path, trajectories: int) -> tuple[list[str], Path]:
    """A saved teacher and `ceed distill collect` from it: (the `--teacher` flags, the store path)."""
    torch.set_num_threads(1)
    repo_id, root = policy_dataset
    make_policy(seed=0).save_pretrained(tmp_path / "teacher")
    store = tmp_path / "traj.zarr"
    common = ["--teacher", str(tmp_path / "teacher")]
    collect = ["distill", "collect", *common, "--dataset-root", str(root), "--repo-id", repo_id]
    flags = ["--trajectories", str(trajectories), "--batch-size", "8", "--threads", "1"]
    assert ceed([*collect, "--output", str(store), *flags]) == 0
    return common, store


def test_collect_then_train(policy_dataset, make_policy, tmp_path):
    common, store = _collect(policy_dataset, make_policy, tmp_path, 24)
    summary = json.loads((store / "summary_rank000.json").read_text())
    assert summary["samples"] == 24 and summary["mean_iterations"] >= 1
    assert len(TrajectoryStore.open(store).read()) == 24

    out = tmp_path / "student"
    train = ["distill", "train", *common, "--trajectories", str(store), "--output", str(out)]
    flags = ["--steps", "2", "--batch-size", "4", "--save-every", "2", "--val-every", "2", "--threads", "1"]
    assert ceed([*train, *flags, "--device", "cpu", "--val-fraction", "0.3"]) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["steps"] == 2 and result["samples_used"] == 24
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "distill.json").is_file()

    make_policy(seed=1).save_pretrained(tmp_path / "other")
    with pytest.raises(TeacherMismatchError):
        ceed(
            [
                "distill",
                "train",
                "--teacher",
                str(tmp_path / "other"),
                "--trajectories",
                str(store),
                "--output",
                str(tmp_path / "x"),
            ]
        )


def test_distill_train_ema_saves_the_averaged_student(policy_dataset, make_policy, tmp_path):
    from safetensors.torch import load_file

    common, store = _collect(policy_dataset, make_policy, tmp_path, 16)
    train = ["distill", "train", *common, "--trajectories", str(store), "--device", "cpu", "--threads", "1"]
    flags = ["--steps", "3", "--batch-size", "4", "--save-every", "3", "--val-every", "3", "--lr", "1e-2"]
    weights = {}
    for name, ema in (("plain", []), ("ema", ["--ema-decay", "0.5"])):
        assert ceed([*train, *flags, *ema, "--output", str(tmp_path / name)]) == 0
        weights[name] = load_file(tmp_path / name / "final" / "model.safetensors")
    teacher = load_file(tmp_path / "teacher" / "model.safetensors")
    moved = [n for n in teacher if not torch.equal(teacher[n], weights["plain"][n])]
    assert moved, "the plain student did not train"
    # The averaged student is neither the teacher it starts from nor the raw weights it averages.
    assert all(not torch.equal(weights["ema"][n], weights["plain"][n]) for n in moved)
    assert all(not torch.equal(weights["ema"][n], teacher[n]) for n in moved)

    with pytest.raises(ValueError, match="ema_decay must be in"):
        ceed([*train, *flags, "--ema-decay", "1.0", "--output", str(tmp_path / "bad")])
