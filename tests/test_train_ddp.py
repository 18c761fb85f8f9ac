"""DDP: 2 gloo processes on CPU make the same updates as one process with the same global batch.

The file is also the worker that `torchrun` starts (`python -m torch.distributed.run ... this_file`),
so the multi-process run and the in-process reference share every line of set-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
STEPS, GLOBAL_BATCH = 3, 8


def synthetic_frames(episodes: int = 4, length: int = 12):
    """In-memory frames (no LeRobot import, so worker start-up stays short)."""
    from ceed_vla.policy.data import Frames, _episode_bounds

    g = torch.Generator().manual_seed(0)
    n = episodes * length
    episode = torch.arange(episodes).repeat_interleave(length)
    start, end = _episode_bounds(episode)
    return Frames(
        images=torch.randint(0, 256, (n, 3, 24, 24), dtype=torch.uint8, generator=g),
        states=torch.rand(n, 4, generator=g),
        actions=torch.rand(n, 4, generator=g) * 2 - 1,
        episode=episode,
        ep_start=start,
        ep_end=end,
        tasks=["open the top drawer" if e % 2 else "push the red puck" for e in episode.tolist()],
        delta=[0, 1, 2, 3],
        fps=10.0,
    )


def train_once(out: Path) -> dict:
    from ceed_vla.policy import (
        ActionTokenizer,
        NextTokenLoss,
        StateNormalizer,
        TrainConfig,
        Trainer,
        VLAPolicy,
    )
    from ceed_vla.policy.data import ChunkDataset
    from ceed_vla.policy.text_tokenizer import train_instruction_tokenizer

    from tests.fixtures.policy import tiny_test_config

    torch.set_num_threads(1)
    torch.manual_seed(0)  # identical initial weights in every process
    frames = synthetic_frames()
    tokenizer = train_instruction_tokenizer(sorted(set(frames.tasks)), vocab_size=48)
    policy = VLAPolicy.build(
        tiny_test_config(), tokenizer, ActionTokenizer.fit(frames.actions), StateNormalizer.fit(frames.states)
    )
    train = ChunkDataset(frames, [0, 1, 2, 3], shift=2, seed=0)
    config = TrainConfig(
        output_dir=str(out), steps=STEPS, batch_size=GLOBAL_BATCH, lr=1e-3, warmup_steps=1,
        log_every=1, save_every=STEPS, val_every=STEPS, precision="fp32", device="cpu",
    )  # fmt: skip
    trainer = Trainer(policy.train(), NextTokenLoss(), train, config)
    summary = trainer.fit()
    return {"world": trainer.info.world, **summary}


def _train_losses(out: Path) -> list[float]:
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / f"checkpoints/step_{STEPS:06d}/model.safetensors")


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(tmp_path / "ddp")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    single = train_once(tmp_path / "single")  # runs while the workers start up
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["world"] == 2
    assert single["world"] == 1

    assert _train_losses(tmp_path / "single") == pytest.approx(_train_losses(tmp_path / "ddp"), abs=1e-5)
    a, b = _final_weights(tmp_path / "single"), _final_weights(tmp_path / "ddp")
    assert a.keys() == b.keys()
    # Float sums run in another order across processes; Adam divides by sqrt(v), which magnifies that
    # rounding where a gradient is near zero, hence a bound rather than equality.
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, f"DDP and single-process weights differ by up to {worst}"
    mean = sum(float((a[k] - b[k]).abs().sum()) for k in a) / sum(v.numel() for v in a.values())
    assert mean < 1e-7, f"DDP and single-process weights differ by {mean} on average"


if __name__ == "__main__":
    result = train_once(Path(sys.argv[1]))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"world": result["world"], "steps": result["steps"]}))
