"""The training job: data path, schedule, checkpoints + exact resume, metrics, the CLI and DDP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ceed_vla.policy import NextTokenLoss, TrainConfig, Trainer, VLAPolicy
from ceed_vla.policy.checkpoint_io import CheckpointError
from ceed_vla.policy.data import (
    ChunkDataset,
    DataConfig,
    DatasetFeatureError,
    load_frames,
    noisy_instruction,
    open_dataset,
    split_episodes,
)
from ceed_vla.policy.trainer import export_raw_weights, lr_lambda
from safetensors.torch import load_file

from tests.fixtures.policy import write_synthetic_dataset

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- data


def test_chunks_follow_lerobot_delta_timestamps(policy_dataset):
    repo_id, root = policy_dataset
    frames = load_frames(repo_id, root, chunk_size=4)
    ours = ChunkDataset(frames, sorted(set(frames.episode.tolist())))
    theirs = open_dataset(repo_id, root, chunk_size=4)
    assert len(ours) == len(theirs) == 96
    for i in (0, 5, 13, 14, 15, 16, 95):  # 16-frame episodes: 13..15 run past the end
        a, b = ours[i], theirs[i]
        assert torch.equal(a["action"], b["action"]), i
        assert torch.equal(a["action_is_pad"], b["action_is_pad"]), i
        assert torch.allclose(a["observation.image"], b["observation.image"], atol=1 / 255 + 1e-6)
        assert torch.equal(a["observation.state"], b["observation.state"])
        assert a["task"] == b["task"]
    assert ours[15]["action_is_pad"].tolist() == [False, True, True, True]


def test_dataset_missing_features_are_named(tmp_path):
    repo_id, root = write_synthetic_dataset(tmp_path / "nostate", episodes=1, length=3, with_state=False)
    with pytest.raises(DatasetFeatureError, match=r"observation\.state"):
        load_frames(repo_id, root, chunk_size=2)


def test_validation_holds_out_whole_episodes():
    train, val = split_episodes(list(range(20)), 0.1)
    assert val == [9, 19]
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(20))
    assert split_episodes([0], 0.5) == ([0], [])


def test_shift_augmentation_is_a_function_of_seed_epoch_and_index(policy_dataset):
    frames = load_frames(*policy_dataset, chunk_size=4)
    ds = ChunkDataset(frames, [0, 1], shift=3, seed=7)
    ds.frames.images[3] = torch.randint(0, 255, ds.frames.images[3].shape, dtype=torch.uint8)
    a = ds[3]["observation.image"]
    assert torch.equal(a, ds[3]["observation.image"])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[3]["observation.image"])


def test_instruction_noise_drops_or_scrambles_words_at_its_rate():
    import numpy as np

    text = "push the puck over to the green target"
    rng = np.random.default_rng(0)
    kept = scrambled = total = 0
    for _ in range(400):
        out = noisy_instruction(text, 0.3, rng).split()
        kept += sum(w in text.split() for w in out)
        scrambled += sum(w not in text.split() for w in out)
        assert all(w.isalpha() and w.islower() and 2 <= len(w) <= 8 for w in out)
        total += len(text.split())
    assert abs(kept / total - 0.7) < 0.03  # each word survives with probability 1 - p
    assert abs(scrambled / total - 0.15) < 0.03  # half the noised words are replaced, half dropped
    assert noisy_instruction(text, 0.0, rng) == text
    assert noisy_instruction(text, 1.0, np.random.default_rng(1)).split()[0] not in text.split()


def test_instruction_noise_is_a_function_of_seed_epoch_and_index_and_only_in_training(policy_dataset):
    frames = load_frames(*policy_dataset, chunk_size=4)
    ds = ChunkDataset(frames, [0, 1], seed=7, instruction_noise=0.5)
    texts = [ds[i]["task"] for i in range(32)]
    assert texts == [ds[i]["task"] for i in range(32)]  # reproducible: another worker sees the same
    assert any(t != frames.tasks[int(ds.rows[i])] for i, t in enumerate(texts))
    ds.set_epoch(1)
    assert texts != [ds[i]["task"] for i in range(32)]
    clean = ChunkDataset(frames, [0, 1], seed=7)
    assert [clean[i]["task"] for i in range(32)] == [frames.tasks[int(clean.rows[i])] for i in range(32)]
    with pytest.raises(ValueError, match="instruction_noise"):
        DataConfig(roots=[policy_dataset[1]], instruction_noise=1.5)


def test_learning_rate_warms_up_then_decays_by_cosine():
    f = lr_lambda(TrainConfig(output_dir="x", steps=110, warmup_steps=10, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


# ------------------------------------------------------------------------------ trainer and resume


def _trainer(make_policy, frames, out: Path, steps: int = 12, ema_decay: float = 0.0) -> Trainer:
    episodes = sorted(set(frames.episode.tolist()))
    train_eps, val_eps = split_episodes(episodes, 0.2)
    train = ChunkDataset(frames, train_eps, shift=2, seed=0)
    val = ChunkDataset(frames, val_eps)
    config = TrainConfig(
        output_dir=str(out), steps=steps, batch_size=8, lr=1e-3, warmup_steps=3,
        save_every=4, val_every=4, val_batches=2, log_every=2, seed=0, ema_decay=ema_decay,
    )  # fmt: skip
    return Trainer(make_policy(seed=0).train(), NextTokenLoss(), train, config, val_set=val)


def test_resumed_run_equals_uninterrupted_run(make_policy, policy_dataset, tmp_path):
    frames = load_frames(*policy_dataset, chunk_size=4)  # 80 train samples: 10 steps per epoch
    straight = _trainer(make_policy, frames, tmp_path / "a")
    straight.fit()

    first = _trainer(make_policy, frames, tmp_path / "b")
    first.fit(until_step=7)  # stops mid-epoch, off the save_every grid
    assert (tmp_path / "b/checkpoints/last").read_text() == "step_000007"
    resumed = _trainer(make_policy, frames, tmp_path / "b")
    resumed.fit(resume=True)

    assert resumed.step == straight.step == 12
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Metrics: validation rows are identical; train rows are window means, so the window cut by the
    # interruption (steps 7-8) differs and every later one is identical again.
    rows_a = [json.loads(r) for r in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows_a] == [(r["split"], r["step"]) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        if ra["split"] == "val" or ra["step"] > 8:
            assert ra["loss"] == rb["loss"], ra


def test_a_checkpoint_the_disk_cannot_hold_is_reported_with_where_to_resume(
    make_policy, policy_dataset, tmp_path, monkeypatch
):
    import shutil

    from ceed_vla.policy import trainer as trainer_module

    frames = load_frames(*policy_dataset, chunk_size=4)
    straight = _trainer(make_policy, frames, tmp_path / "a")
    straight.fit()
    run = _trainer(make_policy, frames, tmp_path / "b")
    real_save, real_usage = torch.save, shutil.disk_usage

    def save(obj, f, *args, **kwargs):  # what torch raised when a full-profile run filled the disk
        if "step_000008" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 456")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=36 * 2**20))
    with pytest.raises(CheckpointError) as failure:
        run.fit()
    message = str(failure.value)
    assert "step_000008" in message and "the disk is full: 36 MiB free" in message
    assert "--resume" in message and "step_000004 (the last complete checkpoint)" in message
    assert "a checkpoint here takes about" in message
    ckpt = tmp_path / "b/checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last", "step_000004"]  # no half-written step_8
    assert (ckpt / "last").read_text() == "step_000004"

    # with room on the disk the message is the library's own, and resuming ends where the straight run does
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    assert "unexpected pos 123 vs 456" in trainer_module.checkpoint_write_failure(
        tmp_path / "b", "step_000008", RuntimeError("unexpected pos 123 vs 456")
    )
    monkeypatch.setattr(torch, "save", real_save)
    resumed = _trainer(make_policy, frames, tmp_path / "b")
    resumed.fit(resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_cli_prints_a_checkpoint_error_without_a_traceback(policy_dataset, tmp_path, capsys):
    from ceed_vla.cli import main

    root = str(policy_dataset[1])
    rc = main(
        ["train", "--dataset-root", root, "--output", str(tmp_path / "run"), "--resume", "--steps", "2"]
    )
    err = capsys.readouterr().err
    last_line = err.strip().splitlines()[-1].split("\r")[-1]
    assert rc == 1 and last_line.startswith("ceed: error: nothing to resume") and "Traceback" not in err, err
    assert "loading frames" not in err  # refused before the dataset is read


def test_ema_run_resumes_exactly_and_saves_the_averaged_weights(make_policy, policy_dataset, tmp_path):
    frames = load_frames(*policy_dataset, chunk_size=4)
    straight = _trainer(make_policy, frames, tmp_path / "a", ema_decay=0.9)
    raw_at_end: dict[str, torch.Tensor] = {}
    fit_steps = straight._train_step

    def spy(batch):  # the raw weights after the last optimizer step, before fit() swaps in the EMA
        info = fit_steps(batch)
        raw_at_end.update({n: p.detach().clone() for n, p in straight.model.named_parameters()})
        return info

    straight._train_step = spy
    straight.fit()
    averaged = {n: p.detach().clone() for n, p in straight.model.named_parameters()}
    assert averaged.keys() == straight.ema.keys()
    assert all(torch.equal(averaged[n], straight.ema[n]) for n in averaged)
    assert any(not torch.equal(averaged[n], raw_at_end[n]) for n in averaged)  # it is not the raw model

    # the checkpoint's model file is the average; its training state keeps the raw weights
    saved = load_file(str(tmp_path / "a/checkpoints/step_000012/model.safetensors"))
    for n, v in averaged.items():
        assert torch.equal(saved[n], v), n
    state = torch.load(tmp_path / "a/checkpoints/step_000012/training_state.pt", weights_only=False)
    assert all(torch.equal(state["raw_weights"][n], raw_at_end[n]) for n in raw_at_end)

    first = _trainer(make_policy, frames, tmp_path / "b", ema_decay=0.9)
    first.fit(until_step=7)
    resumed = _trainer(make_policy, frames, tmp_path / "b", ema_decay=0.9)
    resumed.fit(resume=True)
    for n, p in resumed.model.named_parameters():
        assert torch.equal(p, averaged[n]), n

    plain = _trainer(make_policy, frames, tmp_path / "b")  # resuming it without EMA is refused
    with pytest.raises(CheckpointError, match="--ema-decay"):
        plain.fit(resume=True)


def test_export_raw_weights_writes_the_raw_policy_of_an_ema_checkpoint(make_policy, policy_dataset, tmp_path):
    frames = load_frames(*policy_dataset, chunk_size=4)
    trainer = _trainer(make_policy, frames, tmp_path / "run", steps=4, ema_decay=0.9)
    trainer.fit()
    ckpt = tmp_path / "run/checkpoints/step_000004"
    state = torch.load(ckpt / "training_state.pt", weights_only=False)

    out = export_raw_weights(ckpt, tmp_path / "raw")
    raw = VLAPolicy.from_pretrained(out, device="cpu")
    averaged = VLAPolicy.from_pretrained(ckpt, device="cpu")
    for n, p in raw.named_parameters():
        assert torch.equal(p, state["raw_weights"][n]), n
    assert any(not torch.equal(p, q) for p, q in zip(raw.parameters(), averaged.parameters(), strict=True))
    assert (out / "train_config.json").is_file() and not (out / "training_state.pt").exists()

    with pytest.raises(CheckpointError, match="final/ holds the averaged ones alone"):
        export_raw_weights(tmp_path / "raw", tmp_path / "again")
    plain = _trainer(make_policy, frames, tmp_path / "plain", steps=4)
    plain.fit()
    with pytest.raises(CheckpointError, match="saved without an EMA"):
        export_raw_weights(tmp_path / "plain/checkpoints/step_000004", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_ema_follows_its_warmed_up_decay(make_policy, policy_dataset, tmp_path):
    frames = load_frames(*policy_dataset, chunk_size=4)
    trainer = _trainer(make_policy, frames, tmp_path, steps=2, ema_decay=0.99)
    name, param = next(iter(trainer.model.named_parameters()))
    before = trainer.ema[name].clone()
    batches = trainer._batches()
    trainer._train_step(next(batches))  # step 0: decay min(0.99, 1/10) = 0.1
    expected = 0.1 * before + 0.9 * param.detach()
    assert torch.allclose(trainer.ema[name], expected, atol=1e-7)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(output_dir="x", ema_decay=1.0)


def test_training_writes_metrics_curve_and_loadable_checkpoints(make_policy, policy_dataset, tmp_path):
    frames = load_frames(*policy_dataset, chunk_size=4)
    trainer = _trainer(make_policy, frames, tmp_path, steps=8)
    summary = trainer.fit()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6, 8]
    assert [r["step"] for r in rows if r["split"] == "val"] == [4, 8]
    assert rows[-1]["loss"] < math.log(256)  # it learned something in 8 steps
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert summary["steps"] == 8 and summary["samples_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last",
        "step_000004",
        "step_000008",
    ]
    for d in ("checkpoints/step_000008", "best"):
        policy = VLAPolicy.from_pretrained(tmp_path / d)
        assert policy.chunk_tokens == 16
    assert json.loads((tmp_path / "best/train_config.json").read_text())["steps"] == 8
    with pytest.raises(Exception, match="nothing to resume"):
        _trainer(make_policy, frames, tmp_path / "fresh").fit(resume=True)


# -------------------------------------------------------------------------------------------- CLI


def test_ceed_train_writes_a_complete_run(policy_dataset, tmp_path):
    from ceed_vla import cli

    _, root = policy_dataset
    out = tmp_path / "run"
    args = [
        "train", "--dataset-root", str(root), "--repo-id", "local/synthetic", "--output", str(out),
        "--steps", "4", "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "1", "--log-every", "2",
        "--val-every", "2", "--save-every", "2", "--threads", "1", "--chunk-size", "4", "--val-fraction", "0.2",
    ]  # fmt: skip
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 1
    assert summary["train_samples"] == 80 and summary["val_samples"] == 16
    assert (out / "loss_curve.png").is_file() and (out / "metrics.jsonl").is_file()
    final = VLAPolicy.from_pretrained(out / "final")
    assert final.config.chunk_size == 4 and final.config.action_dim == 4
    assert json.loads((out / "final/dataset.json").read_text())["episodes"] == 6
    # --resume past the end does nothing more and keeps the weights.
    args[args.index("--steps") + 1] = "4"
    assert cli.main(args + ["--resume"]) == 0
    assert torch.equal(
        load_file(out / "final/model.safetensors")["lm.model.embed_tokens.weight"],
        load_file(out / "checkpoints/step_000004/model.safetensors")["lm.model.embed_tokens.weight"],
    )
