"""benchmarks/bench_distill.py `curve`: passes per chunk along a finished distillation run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.distill import make_synthetic_frames, make_tiny_vla

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_distill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_distill", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _frames_npz(frames, path: Path) -> Path:
    arrays = {k: v.numpy() for k, v in dataclasses.asdict(frames).items() if torch.is_tensor(v)}
    np.savez_compressed(
        path, **arrays, tasks=np.array(frames.tasks), delta=np.array(frames.delta), fps=np.array(frames.fps)
    )
    return path


def _saved_teacher(tmp_path):
    """Synthetic frames as an .npz and a tiny teacher saved to tmp_path/teacher."""
    torch.set_num_threads(1)
    frames = make_synthetic_frames(n_episodes=4, length=6)
    npz = _frames_npz(frames, tmp_path / "frames.npz")
    teacher = make_tiny_vla(frames, seed=0)
    teacher.save_pretrained(tmp_path / "teacher")
    return frames, npz, teacher


def test_curve_measures_the_teacher_and_every_checkpoint(bench, tmp_path):
    frames, npz, teacher = _saved_teacher(tmp_path)
    run = tmp_path / "run"
    teacher.save_pretrained(run / "checkpoints" / "step_000010")  # unchanged weights: same passes
    make_tiny_vla(frames, seed=1).save_pretrained(run / "checkpoints" / "step_000005")
    out = tmp_path / "curve.json"
    argv = ["curve", "--frames", str(npz), "--teacher", str(tmp_path / "teacher"), "--run", str(run)]
    argv += ["--chunk-size", "2", "--val-fraction", "0.5", "--eval-samples", "6", "--device", "cpu"]
    assert bench.main([*argv, "--out-json", str(out)]) == 0

    record = json.loads(out.read_text())
    assert [p["step"] for p in record["curve"]] == [0, 5, 10]  # numeric order, teacher first
    teacher_point, _, last = record["curve"]
    assert last["mean_iterations"] == teacher_point["mean_iterations"]
    assert record["teacher_over_final"] == pytest.approx(1.0)
    assert record["val_episodes"] == 2 and record["eval_samples"] == 6
    assert all(p["fixed_point_equals_ar"] == 1.0 for p in record["curve"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_curve_refuses_a_directory_without_checkpoints(bench, tmp_path):
    with pytest.raises(SystemExit, match="no step_\\* checkpoints"):
        bench.main(["curve", "--frames", "x.npz", "--teacher", "t", "--run", str(tmp_path)])


def _run_argv(root, work: Path, out: Path, *extra: str) -> list[str]:
    argv = ["run", "--dataset-root", str(root), "--chunk-size", "4", "--val-fraction", "0.34"]
    argv += ["--steps", "2", "--eval-every", "1", "--eval-samples", "4", "--latency-samples", "1"]
    argv += ["--batch-size", "2", "--threads", "1", "--device", "cpu", "--work", str(work)]
    return [*argv, "--out-json", str(out), *extra]


def test_run_calls_the_pipeline_jobs_from_teacher_to_variants(bench, policy_dataset, tmp_path):
    """No teacher, no store: `ceed train`, `ceed distill collect` and one `ceed distill train` per
    variant run as jobs, and every checkpoint of each run is measured."""
    repo_id, root = policy_dataset
    work, out = tmp_path / "work", tmp_path / "bench.json"
    extra = ["--repo-id", repo_id, "--teacher-steps", "2", "--trajectories", "16", "--collect-batch", "8"]
    extra += ["--variants", "main,constant_guess_only,traj_3"]
    assert bench.main(_run_argv(root, work, out, *extra)) == 0

    record = json.loads(out.read_text())
    assert record["teacher"]["trained_here"]["steps"] == 2  # the job's own summary.json
    assert (work / "teacher_run" / "final" / "model.safetensors").is_file()
    assert record["collection"]["samples"] == 16 and (work / "traj.zarr").is_dir()
    main, constant, first3 = (record["variants"][n] for n in ("main", "constant_guess_only", "traj_3"))
    assert [p["step"] for p in main["curve"]] == [1, 2]  # both saved checkpoints, in order
    assert (work / "student_main" / "final" / "distill.json").is_file()
    assert main["latency"] and "early_exit_s2" in main["latency"]
    # What each variant trained on is what the distillation job says it trained on.
    assert main["trajectories"] == record["collection"]["train_samples"] < 16
    traj = json.loads((work / "student_traj_3" / "summary.json").read_text())
    assert traj["samples_used"] == 3 and first3["trajectories"] <= 3
    assert 0 < constant["trajectories"] < main["trajectories"]  # warm-started rows are left out


def test_run_on_a_stored_collection_trains_only_on_training_episodes(
    bench, policy_dataset, make_policy, tmp_path
):
    from ceed_vla.cli import main as ceed

    torch.set_num_threads(1)
    repo_id, root = policy_dataset
    make_policy(seed=0).save_pretrained(tmp_path / "teacher")
    store = tmp_path / "traj.zarr"  # every episode, as the demo collects
    collect = ["distill", "collect", "--teacher", str(tmp_path / "teacher"), "--dataset-root", str(root)]
    collect += ["--repo-id", repo_id, "--output", str(store), "--trajectories", "24", "--batch-size", "8"]
    assert ceed([*collect, "--threads", "1"]) == 0

    work, out = tmp_path / "work", tmp_path / "bench.json"
    extra = ["--repo-id", repo_id, "--teacher", str(tmp_path / "teacher"), "--store", str(store)]
    assert bench.main(_run_argv(root, work, out, *extra, "--variants", "main")) == 0

    from ceed_vla.distill.store import TrajectoryStore
    from ceed_vla.policy.data import load_frames, split_episodes

    record = json.loads(out.read_text())
    stored = TrajectoryStore.open(store).read()
    frames = load_frames(repo_id, root, 4)
    train_eps, _ = split_episodes(sorted(set(frames.episode.tolist())), 0.34)
    in_train = np.isin(frames.episode.numpy()[stored.dataset_index], train_eps)
    assert record["collection"]["samples"] == 24
    assert record["collection"]["train_samples"] == int(in_train.sum()) < 24
    assert record["variants"]["main"]["trajectories"] == int(in_train.sum())
    assert not (work / "traj.zarr").exists() and not (work / "teacher_run").exists()  # neither was redone


def test_run_on_a_store_needs_its_teacher(bench, tmp_path):
    with pytest.raises(SystemExit, match="--store needs --teacher"):
        bench.main(["run", "--dataset-root", "x", "--store", str(tmp_path)])


def test_variant_names_set_what_they_say(bench):
    import argparse

    args = argparse.Namespace(w_ar=10.0, steps=5, variants="main,w_ar_1,traj_7,local,gt_labels")
    vs = {v["name"]: v for v in bench.variants(args, 100)}
    assert vs["main"]["w_ar"] == 10.0 and vs["w_ar_1"]["w_ar"] == 1.0
    assert vs["traj_7"]["rows"] == 7 and vs["main"]["rows"] == "all"
    assert vs["local"]["consistency"] == "local" and vs["gt_labels"]["labels"] == "gt"
    with pytest.raises(SystemExit, match="unknown variant 'bogus'"):
        bench.variants(argparse.Namespace(w_ar=10.0, steps=5, variants="main,bogus"), 100)
