"""Teacher training for a forced prefix (real-time chunking): the samples, the loss mask, the flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ceed_vla.policy.data import ChunkDataset, DataConfig, PrefixConfig

from ceed_vla.keys import PREFIX_OFFSET_KEY, PREFIX_STEPS_KEY
from tests.fixtures.distill import make_synthetic_frames, make_tiny_vla
from tests.fixtures.policy import tiny_train_argv

torch.set_num_threads(1)

CHUNK = 4


@pytest.fixture(scope="module")
def frames():
    return make_synthetic_frames(n_episodes=3, length=10, chunk_size=CHUNK)


@pytest.fixture(scope="module")
def policy(frames):
    return make_tiny_vla(frames)


def _batch(dataset, rows):
    return torch.utils.data.default_collate([dataset[i] for i in rows])


def _loss(policy, batch):
    torch.manual_seed(0)
    return policy(batch)[0]


# ------------------------------------------------------------------------------------------ samples


def test_prefix_off_leaves_samples_and_loss_bit_identical(frames, policy):
    plain = ChunkDataset(frames, [0, 1, 2], shift=2, seed=3)
    off = ChunkDataset(frames, [0, 1, 2], shift=2, seed=3, prefix=PrefixConfig(prob=0.0, noise=3.0))
    rows = list(range(0, len(plain), 3))
    for i in rows:
        a, b = plain[i], off[i]
        assert a.keys() == b.keys() and PREFIX_STEPS_KEY not in b
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
    a, b = _batch(plain, rows), _batch(off, rows)
    assert torch.equal(_loss(policy, a), _loss(policy, b))


def test_prefix_draws_stay_inside_the_chunk_and_the_episode(frames):
    cfg = PrefixConfig(prob=1.0, max_steps=3, noise=2.0)
    ds = ChunkDataset(frames, [0, 1, 2], seed=1, prefix=cfg)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        d = int(item[PREFIX_STEPS_KEY])
        offset = item[PREFIX_OFFSET_KEY]  # [K, D]
        real = int((~item["action_is_pad"]).sum())
        assert 0 <= d <= min(cfg.max_steps, real - 1)  # at least one real step stays free
        assert d >= 1 or real == 1  # with prob 1 only the episode's last frame goes without
        assert offset.shape == (CHUNK, 4) and offset.dtype == torch.long
        assert not offset[d:].any()
        seen.add(d)
    assert seen == {0, 1, 2, 3}


def test_prefix_draws_repeat_per_seed_epoch_and_index_and_follow_the_rate(frames):
    cfg = PrefixConfig(prob=0.5, max_steps=2, noise=3.0)
    a = ChunkDataset(frames, [0, 1, 2], seed=5, prefix=cfg)
    b = ChunkDataset(frames, [0, 1, 2], seed=5, prefix=cfg)
    steps = lambda ds: torch.stack([ds[i][PREFIX_STEPS_KEY] for i in range(len(ds))])  # noqa: E731
    offsets = lambda ds: torch.stack([ds[i][PREFIX_OFFSET_KEY] for i in range(len(ds))])  # noqa: E731
    assert torch.equal(steps(a), steps(b)) and torch.equal(offsets(a), offsets(b))
    b.set_epoch(1)
    assert not torch.equal(offsets(a), offsets(b))
    share = (steps(a) > 0).float().mean().item()
    assert 0.2 < share < 0.8
    forced = offsets(a)[:, :1][steps(a) > 0].float()  # the first step's offsets, always forced
    assert 1.5 < forced.std().item() < 4.5  # about the 3-bin standard deviation asked for
    clean = ChunkDataset(frames, [0, 1, 2], seed=5, prefix=PrefixConfig(prob=1.0, max_steps=2))
    assert not offsets(clean).any()  # noise 0: the ground truth itself


def test_prefix_config_is_validated():
    with pytest.raises(ValueError, match="leaves no free step"):
        DataConfig(roots=["."], chunk_size=4, prefix=PrefixConfig(prob=0.5, max_steps=4))
    DataConfig(roots=["."], chunk_size=4, prefix=PrefixConfig(prob=0.0, max_steps=4))  # off: no check
    with pytest.raises(ValueError, match="1.5"):
        PrefixConfig(prob=1.5)
    with pytest.raises(ValueError, match="-1"):
        PrefixConfig(noise=-1.0)


# --------------------------------------------------------------------------------------------- loss


def _with_prefix(batch, steps, offset=None):
    out = dict(batch)
    out[PREFIX_STEPS_KEY] = torch.as_tensor(steps, dtype=torch.long)
    b, k, d = batch["action"].shape
    out[PREFIX_OFFSET_KEY] = torch.zeros(b, k, d, dtype=torch.long) if offset is None else offset
    return out


def test_forced_positions_carry_no_loss(frames, policy):
    ds = ChunkDataset(frames, [0, 1, 2])
    batch = _batch(ds, [0, 11, 22])
    steps = [2, 1, 0]
    base = _with_prefix(batch, steps)
    bins = policy.actions_to_bins(batch["action"]).view(3, CHUNK, 4)
    # Other targets on the forced steps, with offsets that keep the inputs the same bins as before:
    # only what the forced positions would be scored against changes.
    moved_actions = batch["action"].clone()
    moved_actions[0, :2] = -batch["action"][0, :2]
    moved_actions[1, :1] = batch["action"][1, :1] * 0.5 + 0.3
    moved_bins = policy.actions_to_bins(moved_actions).view(3, CHUNK, 4)
    moved = _with_prefix({**batch, "action": moved_actions}, steps, bins - moved_bins)
    assert not torch.equal(moved_bins[:, :2], bins[:, :2])
    assert torch.equal(_loss(policy, base), _loss(policy, moved))
    # Without the prefix, the same change of targets changes the loss.
    assert not torch.equal(_loss(policy, batch), _loss(policy, {**batch, "action": moved_actions}))


def test_loss_is_the_free_tokens_cross_entropy_after_the_moved_prefix(frames, policy):
    import torch.nn.functional as F

    ds = ChunkDataset(frames, [0, 1, 2])
    batch = _batch(ds, [1, 12])
    offset = torch.zeros(2, CHUNK, 4, dtype=torch.long)
    offset[0, :3] = torch.tensor([5, -7, 2, 300])  # 300 clips at the top bin
    offset[1, :1] = torch.tensor([-3, 1, 0, -300])
    steps = torch.tensor([3, 1])
    loss = _loss(policy, _with_prefix(batch, steps, offset))

    bins = policy.actions_to_bins(batch["action"])  # [B, n]
    forced = torch.arange(bins.shape[1])[None] < steps[:, None] * 4  # [B, n]
    inputs = torch.where(forced, (bins + offset.view(2, -1)).clamp(0, policy.n_bins - 1), bins)
    with torch.no_grad():
        prefix, mask = policy.prefix_embeddings(batch)
        logits = policy.action_logits(prefix, mask, inputs)  # [B, n, V]
    ce = F.cross_entropy(logits.float().transpose(1, 2), bins, reduction="none")  # [B, n]
    free = (~forced).float()
    want = ((ce * free).sum(1) / free.sum(1)).mean()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-6, atol=1e-6)
    # The forced inputs are what the model conditions on: other offsets, another loss.
    assert not torch.equal(loss, _loss(policy, _with_prefix(batch, steps)))


# ---------------------------------------------------------------------------------------------- CLI


def test_ceed_train_takes_the_prefix_flags(policy_dataset, tmp_path):
    from ceed_vla import cli

    _, root = policy_dataset
    out = tmp_path / "run"
    args = tiny_train_argv(
        root, out, "--prefix-prob", "0.5", "--prefix-max-steps", "3", "--prefix-noise", "1.5"
    )
    assert cli.main(args) == 0
    info = json.loads((out / "final/dataset.json").read_text())
    assert info["prefix"] == {"prob": 0.5, "max_steps": 3, "noise": 1.5}
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]  # fmt: skip
    assert losses and np.isfinite(losses).all()
    with pytest.raises(ValueError, match="leaves no free step"):
        cli.main(args[:-6] + ["--prefix-prob", "0.5", "--prefix-max-steps", "4"])
