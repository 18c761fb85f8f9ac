"""Sharded training (FSDP2) on CPU: 2 gloo processes distil the tiny policy from a frozen, sharded
teacher and must match one unsharded process on the same global batch; their checkpoint loads in one
process and decodes as the single-process run's does; a run stopped and resumed is bit for bit the
uninterrupted one.

The file is also the worker that `torchrun` starts, so both sides share every line of set-up.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS, STOP, GLOBAL_BATCH = 4, 2, 8
# Losses of the first steps, sharded vs one process: float sums over another split of the batch.
LOSS_TOL = 1e-5


class DistillSamples(torch.utils.data.Dataset):
    """Chunk samples plus the `distill.*` keys of a Jacobi trajectory, drawn from the sample index
    (the same in every process, as `DistillDataset`'s are)."""

    def __init__(self, chunks, n_tokens: int, n_bins: int):
        self.chunks, self.n, self.n_bins = chunks, n_tokens, n_bins

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict:
        from ceed_vla.distill.losses import GT, L1, STATE, TARGET, TEACHER

        g = torch.Generator().manual_seed(1000 + i)
        fixed = torch.randint(0, self.n_bins, (self.n,), generator=g)
        state = fixed.clone()
        state[int(torch.randint(0, self.n, (), generator=g)) :] = torch.randint(
            0, self.n_bins, (), generator=g
        )
        gt = torch.randint(0, self.n_bins, (self.n,), generator=g)
        l1 = torch.rand((), generator=g) * 0.1
        return {**self.chunks[i], STATE: state, TARGET: fixed, TEACHER: fixed, GT: gt, L1: l1}


def build(seed: int = 0):
    """(student, teacher, training set): the teacher a frozen copy of the student's start."""
    from ceed_vla.policy import ActionTokenizer, StateNormalizer, VLAPolicy
    from ceed_vla.policy.data import ChunkDataset
    from ceed_vla.policy.text_tokenizer import train_instruction_tokenizer

    from tests.fixtures.policy import tiny_test_config
    from tests.test_train_ddp import synthetic_frames

    torch.manual_seed(seed)  # identical initial weights in every process
    frames = synthetic_frames()
    tokenizer = train_instruction_tokenizer(sorted(set(frames.tasks)), vocab_size=48)
    student = VLAPolicy.build(
        tiny_test_config(), tokenizer, ActionTokenizer.fit(frames.actions), StateNormalizer.fit(frames.states)
    )
    teacher = copy.deepcopy(student).eval()
    chunks = ChunkDataset(frames, [0, 1, 2, 3], shift=2, seed=0)
    return student.train(), teacher, DistillSamples(chunks, student.chunk_tokens, student.n_bins)


def trainer_for(out: Path, sharding: str):
    from ceed_vla.distill.losses import DistillLoss, DistillLossConfig
    from ceed_vla.policy import TrainConfig, Trainer

    student, teacher, train = build()
    config = TrainConfig(
        output_dir=str(out), steps=STEPS, batch_size=GLOBAL_BATCH, lr=1e-3, warmup_steps=1, log_every=1,
        save_every=STOP, val_every=STEPS, precision="fp32", device="cpu", sharding=sharding,
        activation_checkpointing=sharding == "fsdp",
    )  # fmt: skip
    loss = DistillLoss(DistillLossConfig(w_ar=0.5, target="teacher"), teacher=teacher)
    return Trainer(student, loss, train, config, frozen=teacher), student, teacher


def local_numel(module: torch.nn.Module) -> int:
    """Elements of `module`'s parameters that this process holds (its shards under FSDP)."""
    from torch.distributed.tensor import DTensor

    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in module.parameters())


def run(root: Path, sharding: str) -> dict:
    """Train STEPS steps in root/full; in root/resumed stop at STOP, then resume to STEPS."""
    torch.set_num_threads(1)
    trainer, student, teacher = trainer_for(root / "full", sharding)
    shares = {"student": local_numel(student), "teacher": local_numel(teacher)}
    summary = trainer.fit()
    trainer_for(root / "resumed", sharding)[0].fit(until_step=STOP)
    trainer_for(root / "resumed", sharding)[0].fit(resume=True)
    return {"world": trainer.info.world, "local_numel": shares, **summary}


def _train_rows(out: Path) -> list[dict]:
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def _weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / f"checkpoints/step_{step:06d}/model.safetensors")


def _decode(checkpoint: Path) -> torch.Tensor:
    from ceed_vla.decoding import DecodeConfig
    from ceed_vla.policy import load_policy

    from tests.fixtures.policy import random_batch

    policy = load_policy(checkpoint)
    tasks = ("push the red puck", "open the top drawer")
    obs = {k: v for k, v in random_batch(batch=4, seed=3, tasks=tasks).items() if not k.startswith("action")}
    policy.predict_action_chunk(obs, decoding=DecodeConfig(mode="ar", n_bins=policy.n_bins))
    return policy.last_decode_output.bins


@pytest.mark.slow
def test_two_sharded_gloo_processes_match_one_process_and_resume_bit_for_bit(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path / "fsdp")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainer, student, _ = trainer_for(tmp_path / "single", "none")  # runs while the workers start up
    trainer.fit()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-4000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["world"] == 2

    # Sharded: each process holds about half of the student and half of the teacher.
    total = sum(p.numel() for p in student.parameters())
    for name in ("student", "teacher"):
        assert total / 2 <= result["local_numel"][name] < total / 2 + 1000, result["local_numel"]

    single, sharded = _train_rows(tmp_path / "single"), _train_rows(tmp_path / "fsdp/full")
    assert [r["step"] for r in sharded] == list(range(1, STEPS + 1))
    for key in ("loss", "loss_ar", "loss_consistency", "grad_norm"):
        assert [r[key] for r in sharded] == pytest.approx([r[key] for r in single], abs=LOSS_TOL), key

    # The gathered checkpoint is the one policy layout: it loads in one process and decodes the
    # single-process run's tokens; its weights are the single-process run's up to float rounding.
    a, b = _weights(tmp_path / "single", STEPS), _weights(tmp_path / "fsdp/full", STEPS)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, f"sharded and single-process weights differ by up to {worst}"
    ckpt = f"checkpoints/step_{STEPS:06d}"
    assert torch.equal(_decode(tmp_path / "fsdp/full" / ckpt), _decode(tmp_path / "single" / ckpt))
    assert sorted(p.name for p in (tmp_path / "fsdp/full" / ckpt / "sharded").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp",
    ]  # fmt: skip

    # Stopped at STOP and resumed from the sharded checkpoint: the same losses and weights, exactly.
    resumed = _train_rows(tmp_path / "fsdp/resumed")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in sharded]
    c = _weights(tmp_path / "fsdp/resumed", STEPS)
    assert all(torch.equal(b[k], c[k]) for k in b), "the resumed run's weights differ"


def test_a_sharded_checkpoint_refuses_an_unsharded_resume(tmp_path):
    from ceed_vla.policy import CheckpointError
    from ceed_vla.policy.trainer import TRAINING_STATE_FILE

    trainer, *_ = trainer_for(tmp_path, "none")
    trainer.fit(until_step=1)
    state_file = tmp_path / "checkpoints/step_000001" / TRAINING_STATE_FILE
    state = torch.load(state_file, weights_only=False)
    assert state["sharding"] == "none" and len(state["rng"]) == 1
    state["sharding"] = "fsdp"
    torch.save(state, state_file)
    with pytest.raises(CheckpointError, match="--sharding fsdp"):
        trainer_for(tmp_path, "none")[0].fit(resume=True)


def test_blocks_are_the_decoder_layers_deepest_first(make_policy):
    from ceed_vla.policy.sharding import blocks

    policy = make_policy()
    found = blocks(policy)
    assert found == list(policy.lm.model.layers)
    assert blocks(torch.nn.Linear(2, 2)) == []


def test_sharding_flags_reach_the_train_config():
    import argparse

    from ceed_vla.policy.train_args import add_training_arguments, train_config_from_args

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    parser.add_argument("--output", default="runs/x")
    cfg = train_config_from_args(parser.parse_args(["--sharding", "fsdp", "--activation-checkpointing"]))
    assert cfg.sharding == "fsdp" and cfg.activation_checkpointing
    assert train_config_from_args(parser.parse_args([])).sharding == "none"
    with pytest.raises(ValueError, match="'zero3'"):
        cfg.__class__(output_dir="x", sharding="zero3")


if __name__ == "__main__":
    result = run(Path(sys.argv[1]), "fsdp")
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
