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


def test_run_on_a_stored_collection_trains_only_on_training_episodes(bench, tmp_path):
    from ceed_vla.distill import collect as C
    from ceed_vla.policy.data import ChunkDataset

    frames, npz, teacher = _saved_teacher(tmp_path)
    store_path = tmp_path / "traj.zarr"
    config = C.CollectConfig(output=str(store_path), batch_size=8, trajectories=24, warm_start=0.5)
    store = C.open_store_for_rank(
        store_path, C.teacher_fingerprint(teacher), teacher.chunk_tokens, teacher.n_bins, 0, 1, {}
    )
    dataset = ChunkDataset(frames, [0, 1, 2, 3])
    C.collect(C.Collector(teacher, dataset, frames, config), store, 0, 1)  # every episode, as the demo does

    out = tmp_path / "bench.json"
    argv = ["run", "--frames", str(npz), "--teacher", str(tmp_path / "teacher"), "--store", str(store_path)]
    argv += ["--chunk-size", "2", "--val-fraction", "0.5", "--variants", "main,traj_3", "--steps", "2"]
    argv += ["--eval-every", "2", "--eval-samples", "4", "--latency-samples", "1", "--batch-size", "2"]
    argv += ["--work", str(tmp_path / "work"), "--out-json", str(out), "--device", "cpu"]
    assert bench.main(argv) == 0

    record = json.loads(out.read_text())
    stored = store.read()
    held_out = np.isin(frames.episode.numpy()[stored.dataset_index], [1, 3])  # k = 2: every 2nd episode
    assert record["collection"]["samples"] == 24
    assert record["collection"]["train_samples"] == int((~held_out).sum()) < 24
    assert record["variants"]["main"]["trajectories"] == record["collection"]["train_samples"]
    assert record["variants"]["traj_3"]["trajectories"] == 3
    assert not (tmp_path / "work" / "traj.zarr").exists()  # nothing was collected


def test_run_on_a_store_needs_its_teacher(bench, tmp_path):
    with pytest.raises(SystemExit, match="--store needs --teacher"):
        bench.main(["run", "--frames", "x.npz", "--store", str(tmp_path)])


def test_variant_names_set_what_they_say(bench):
    import argparse

    args = argparse.Namespace(w_ar=10.0, steps=5, variants="main,w_ar_1,traj_7,local,gt_labels")
    vs = {v["name"]: v for v in bench.variants(args, 100)}
    assert vs["main"]["w_ar"] == 10.0 and vs["w_ar_1"]["w_ar"] == 1.0
    assert vs["traj_7"]["rows"] == 7 and vs["main"]["rows"] == "all"
    assert vs["local"]["consistency"] == "local" and vs["gt_labels"]["labels"] == "gt"
    with pytest.raises(SystemExit, match="unknown variant 'bogus'"):
        bench.variants(argparse.Namespace(w_ar=10.0, steps=5, variants="main,bogus"), 100)
