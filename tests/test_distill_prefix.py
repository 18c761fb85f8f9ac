"""Distillation with forced prefixes: collection, the store's forced count (and old stores without
it), the state sampling and the losses on free tokens only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from ceed_vla.distill import collect as C
from ceed_vla.distill import losses as L
from ceed_vla.distill.data import DistillDataset, StateSampling, noised_fixed_point, sample_state
from ceed_vla.distill.store import StoreError, TrajectoryBatch, TrajectoryStore
from ceed_vla.policy.data import ChunkDataset, PrefixConfig

from tests.fixtures.distill import make_synthetic_frames, make_tiny_vla, make_trajectory_batch

torch.set_num_threads(1)

CHUNK, DIM = 4, 4
PREFIX = PrefixConfig(prob=0.6, max_steps=2, noise=2.0)


@pytest.fixture(scope="module")
def setup():
    frames = make_synthetic_frames(n_episodes=3, length=10, chunk_size=CHUNK)
    teacher = make_tiny_vla(frames)
    return teacher, frames, ChunkDataset(frames, [0, 1, 2])


def _collect(setup, path, prefix=PREFIX, **cfg):
    teacher, frames, dataset = setup
    config = C.CollectConfig(
        output=str(path), batch_size=8, trajectories=36, warm_start=0.5, prefix=prefix, **cfg
    )
    store = C.open_store_for_rank(
        path, C.teacher_fingerprint(teacher), teacher.chunk_tokens, teacher.n_bins, 0, 1, {}
    )
    collector = C.Collector(teacher, dataset, frames, config)
    return C.collect(collector, store, 0, 1), store, collector


# ------------------------------------------------------------------------------------------ collect


@pytest.fixture(scope="module")
def collected(setup, tmp_path_factory):
    return _collect(setup, tmp_path_factory.mktemp("prefix") / "s")


def test_prefixed_trajectories_end_at_the_teachers_ar_continuation_of_the_prefix(setup, collected):
    from ceed_vla.decoding import DecodeConfig

    teacher, frames, dataset = setup
    summary, store, collector = collected
    traj = store.read()
    forced = traj.forced_tokens
    assert 0.3 < summary["forced_prefix_share"] < 0.9 and set(forced.tolist()) <= {0, DIM, 2 * DIM}
    assert {DIM, 2 * DIM} <= set(forced.tolist())
    plan = collector.plan()
    ar = DecodeConfig(mode="ar", n_bins=teacher.n_bins)
    for i in np.flatnonzero(forced > 0):
        f = int(forced[i])
        index = int(traj.dataset_index[i])
        d, offsets = collector.forced(plan, int(traj.sample_id[i]), index)
        assert d * DIM == f
        # The forced tokens are the ground truth moved by the plan's offsets, clipped to the bins.
        want = np.clip(traj.gt_tokens[i, :f] + offsets.reshape(-1), 0, teacher.n_bins - 1)
        np.testing.assert_array_equal(traj.fixed_point[i, :f], want)
        # The fixed point is the teacher's greedy AR continuation of exactly that prefix.
        obs = torch.utils.data.default_collate([dataset[index]])
        given = torch.from_numpy(traj.fixed_point[i : i + 1, :f].astype(np.int64))
        cont = teacher.actions_to_bins(teacher.predict_action_chunk(obs, decoding=ar, forced_bins=given))
        np.testing.assert_array_equal(traj.fixed_point[i], cont[0].numpy())
        states = traj.trajectory(i)
        assert (states[:, :f] == traj.fixed_point[i, :f]).all()  # no state moves a forced token
        assert not (states[:-1] == traj.fixed_point[i]).all(axis=1).any()  # trimmed at the first hit
        # An episode's last frames leave a real step free: d is below the steps left in the episode.
        assert index + d < int(frames.ep_end[index])


def test_prefix_draws_leave_the_rest_of_the_plan_unchanged(setup, collected, tmp_path):
    _, store, _ = collected
    _, plain, _ = _collect(setup, tmp_path / "plain", prefix=PrefixConfig())
    a, b = store.read(), plain.read()
    np.testing.assert_array_equal(a.dataset_index, b.dataset_index)
    np.testing.assert_array_equal(a.warm_start, b.warm_start)
    assert not b.forced_tokens.any()
    free = a.forced_tokens == 0  # samples without a prefix are the plain collection's, token for token
    np.testing.assert_array_equal(a.fixed_point[free], b.fixed_point[free])
    np.testing.assert_array_equal(a.gt_tokens, b.gt_tokens)


def test_resuming_with_other_prefix_flags_is_refused(setup, tmp_path):
    path = tmp_path / "s"
    teacher, frames, dataset = setup
    config = C.CollectConfig(output=str(path), batch_size=8, trajectories=16, prefix=PREFIX)
    store = C.open_store_for_rank(
        path, C.teacher_fingerprint(teacher), teacher.chunk_tokens, teacher.n_bins, 0, 1, {}
    )
    C.collect(C.Collector(teacher, dataset, frames, config), store, 0, 1)
    config = C.CollectConfig(
        output=str(path), batch_size=8, trajectories=24, prefix=PrefixConfig(prob=0.2, max_steps=2)
    )
    with pytest.raises(StoreError, match="original arguments"):
        C.collect(C.Collector(teacher, dataset, frames, config), store, 0, 1)
    config = C.CollectConfig(output=str(path), batch_size=8, trajectories=24, prefix=PREFIX)
    assert C.collect(C.Collector(teacher, dataset, frames, config), store, 0, 1)["collected_now"] == 8


def test_a_prefix_as_long_as_the_chunk_is_refused(setup, tmp_path):
    teacher, frames, dataset = setup
    config = C.CollectConfig(output=str(tmp_path / "s"), prefix=PrefixConfig(prob=0.5, max_steps=CHUNK))
    with pytest.raises(ValueError, match="leaves no free step"):
        C.Collector(teacher, dataset, frames, config)


# -------------------------------------------------------------------------------------------- store


def _prefixed_batch(ids, forced):
    """make_trajectory_batch's samples, their states made to keep the first `forced` tokens."""
    batch = make_trajectory_batch(ids)
    states = []
    for s, fixed, f in zip(batch.states, batch.fixed_point, forced, strict=True):
        s = s.copy()
        s[:, :f] = fixed[:f]
        states.append(s)
    return TrajectoryBatch(**{**batch.__dict__, "states": states, "forced_tokens": np.asarray(forced)})


def test_store_round_trips_the_forced_count_over_shards(tmp_path):
    store = TrajectoryStore.create_or_open(
        tmp_path / "s", teacher_hash="t", n_tokens=4, n_bins=256, world_size=2
    )
    store.shard(0).append(_prefixed_batch([0, 2, 4], [0, 2, 3]))
    store.shard(1).append(_prefixed_batch([1, 3], [1, 0]))
    got = TrajectoryStore.open(tmp_path / "s").read()
    assert got.sample_id.tolist() == [0, 1, 2, 3, 4]
    assert got.forced_tokens.tolist() == [0, 1, 2, 0, 3]
    assert store.attrs["version"] == 2


def test_a_trajectory_that_moves_its_forced_tokens_is_refused():
    batch = make_trajectory_batch([5])  # 2 states, the first one random
    batch.states[0][0, 0] = (batch.fixed_point[0, 0] + 1) % 256
    with pytest.raises(ValueError, match="changes its 2 forced tokens"):
        TrajectoryBatch(**{**batch.__dict__, "forced_tokens": np.array([2])})
    with pytest.raises(ValueError, match="0 <= f < n"):
        TrajectoryBatch(**{**make_trajectory_batch([3]).__dict__, "forced_tokens": np.array([4])})


def _as_version_1(path):
    """Rewrite a store into the layout of version 1: no forced-count column, version attribute 1."""
    root = zarr.open_group(str(path), mode="r+")
    for name in root.group_keys():
        del root[name]["forced_tokens"]
    root.attrs["version"] = 1


def test_old_stores_read_as_forced_zero_and_take_unforced_samples_only(tmp_path, setup):
    path = tmp_path / "old"
    TrajectoryStore.create_or_open(path, teacher_hash="t", n_tokens=4, n_bins=256).shard(0).append(
        make_trajectory_batch([0, 1, 2])
    )
    _as_version_1(path)
    store = TrajectoryStore.open(path)
    traj = store.read()
    assert traj.forced_tokens.tolist() == [0, 0, 0]
    store.shard(0).append(make_trajectory_batch([3]))  # resuming an old collection without prefixes
    with pytest.raises(StoreError, match="predates forced prefixes"):
        store.shard(0).append(_prefixed_batch([4], [2]))
    again = TrajectoryStore.open(path).read()
    assert again.sample_id.tolist() == [0, 1, 2, 3] and again.forced_tokens.tolist() == [0, 0, 0, 0]
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["version"] = 3
    with pytest.raises(StoreError, match="store version 3"):
        TrajectoryStore.open(path)


# ----------------------------------------------------------------------------------- state sampling


def test_noise_never_moves_the_forced_tokens_or_the_first_free_one():
    rng = np.random.default_rng(0)
    fixed = np.arange(12, dtype=np.int16) * 3
    cfg = StateSampling(noise=1.0, noise_bins=3, n_bins=64)
    for forced in (0, 4, 8, 10):
        for _ in range(50):
            state = noised_fixed_point(fixed, rng, cfg, forced)
            assert (state[: forced + 1] == fixed[: forced + 1]).all() and (state != fixed).any()
    # One free token only: the prefill gives it exactly, so there is nothing to noise.
    states = np.stack([fixed, fixed])
    s, t = sample_state(states, rng, cfg, forced=11)
    assert (s == fixed).all() and (t == fixed).all()


def test_distill_dataset_carries_the_forced_count(setup, collected):
    teacher, _, dataset = setup
    _, store, _ = collected
    traj = store.read()
    ds = DistillDataset(dataset, traj, np.arange(len(traj)), StateSampling(noise=0.5, n_bins=teacher.n_bins))
    for k in range(len(traj)):
        item = ds[k]
        f = int(item[L.FORCED])
        assert f == traj.forced_tokens[k]
        assert torch.equal(item[L.STATE][:f], item[L.TARGET][:f])
        assert torch.equal(item[L.TARGET][:f], torch.from_numpy(traj.fixed_point[k, :f].astype(np.int64)))


# ------------------------------------------------------------------------------------------- losses


def _batch(p, forced, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, n = len(forced), p.chunk_tokens
    fixed = torch.randint(0, p.n_bins, (b, n), generator=g)
    state = fixed.clone()
    for k, f in enumerate(forced):  # a Jacobi state: the forced tokens and one more are exact
        state[k, max(2, f + 1) :] = torch.randint(0, p.n_bins, (n - max(2, f + 1),), generator=g)
    return {
        "observation.state": torch.randn(b, 4, generator=g),
        L.STATE: state,
        L.TARGET: fixed,
        L.TEACHER: fixed.clone(),
        L.GT: torch.randint(0, p.n_bins, (b, n), generator=g),
        L.L1: torch.tensor([0.0, 1.0, 0.0])[:b],  # teacher labels, ground truth, teacher
        L.FORCED: torch.as_tensor(forced),
    }


def test_zero_forced_counts_leave_the_loss_bit_identical(tiny_block_policy):
    batch = _batch(tiny_block_policy, [0, 0, 0])
    old = {k: v for k, v in batch.items() if k != L.FORCED}
    for cfg in (L.DistillLossConfig(w_ar=0.5), L.DistillLossConfig(w_ar=1.0, consistency="none")):
        a, info_a = L.DistillLoss(cfg)(tiny_block_policy, batch)
        b, info_b = L.DistillLoss(cfg)(tiny_block_policy, old)
        assert torch.equal(a, b) and info_a == info_b


def test_ar_loss_covers_free_tokens_after_the_forced_inputs(tiny_block_policy):
    p = tiny_block_policy
    forced = [2, 3, 0]
    batch = _batch(p, forced)
    cfg = L.DistillLossConfig(w_ar=1.0, consistency="none", delta=0.5)
    loss, _ = L.DistillLoss(cfg)(p, batch)
    # Other labels at the forced positions, teacher's and ground truth alike: the same loss.
    other = dict(batch)
    for key in (L.TEACHER, L.GT):
        other[key] = batch[key].clone()
        other[key][0, :2] = (batch[key][0, :2] + 5) % p.n_bins
        other[key][1, :3] = (batch[key][1, :3] + 9) % p.n_bins
    assert torch.equal(loss, L.DistillLoss(cfg)(p, other)[0])
    # The value: CE on the free positions, the inputs being the forced tokens (from the fixed point),
    # then the labels: the teacher's for samples 0 and 2, the ground truth for sample 1.
    labels = torch.stack([batch[L.TEACHER][0], batch[L.GT][1], batch[L.TEACHER][2]])
    n = p.chunk_tokens
    free = torch.arange(n)[None] >= torch.tensor(forced)[:, None]
    inputs = torch.where(free, labels, batch[L.TARGET])
    with torch.no_grad():
        prefix, mask = p.prefix_embeddings(batch)
        ce = torch.nn.functional.cross_entropy(
            p.action_logits(prefix, mask, inputs).flatten(0, 1), labels.flatten(), reduction="none"
        )
    want = ce[free.flatten()].mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_consistency_covers_free_tokens_only(tiny_block_policy):
    import copy

    student = tiny_block_policy
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for w in student.lm.parameters():
            w.add_(0.05 * torch.randn_like(w))
    forced = [3, 1, 0]
    batch = _batch(student, forced)
    n = student.chunk_tokens
    free = torch.arange(n)[None] >= torch.tensor(forced)[:, None]
    # The teacher as target counts every position without a prefix; with one, the free ones only.
    cfg = L.DistillLossConfig(w_ar=0.0, target="teacher")
    loss, info = L.DistillLoss(cfg, teacher=teacher)(student, batch)
    assert info["consistency_positions"] == pytest.approx(free.float().mean().item())
    with torch.no_grad():
        prefix, mask = student.prefix_embeddings(batch)
        want = L.consistency_loss(
            student.action_logits(prefix, mask, batch[L.STATE]),
            teacher.action_logits(*teacher.prefix_embeddings(batch), batch[L.TARGET]),
            free,
        )
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # Self-targets already skip the converged prefix, which a forced prefix is part of.
    self_target = L.DistillLoss(L.DistillLossConfig(w_ar=0.0))
    with_prefix = self_target(student, batch)
    without = self_target(student, {k: v for k, v in batch.items() if k != L.FORCED})
    assert torch.equal(with_prefix[0], without[0]) and with_prefix[1] == without[1]


# ---------------------------------------------------------------------------------------------- CLI


def test_ceed_distill_collect_and_train_with_prefixes(policy_dataset, make_policy, tmp_path):
    import json

    from ceed_vla.cli import main as ceed

    repo_id, root = policy_dataset
    make_policy(seed=0).save_pretrained(tmp_path / "teacher")
    store = tmp_path / "traj.zarr"
    teacher = ["--teacher", str(tmp_path / "teacher")]
    collect = ["distill", "collect", *teacher, "--dataset-root", str(root), "--repo-id", repo_id]
    flags = ["--trajectories", "16", "--batch-size", "8", "--threads", "1"]
    prefix = ["--prefix-prob", "0.5", "--prefix-max-steps", "2", "--prefix-noise", "1"]
    assert ceed([*collect, "--output", str(store), *flags, *prefix]) == 0
    summary = json.loads((store / "summary_rank000.json").read_text())
    assert 0 < summary["forced_prefix_share"] < 1 and summary["mean_iterations_forced_prefix"] >= 1
    opened = TrajectoryStore.open(store)
    assert opened.attrs["meta"]["collect"]["prefix"] == {"prob": 0.5, "max_steps": 2, "noise": 1.0}

    out = tmp_path / "student"
    train = ["distill", "train", *teacher, "--trajectories", str(store), "--output", str(out)]
    steps = ["--steps", "2", "--batch-size", "4", "--save-every", "2", "--val-every", "2", "--threads", "1"]
    assert ceed([*train, *steps, "--val-fraction", "0.3"]) == 0
    result = json.loads((out / "summary.json").read_text())
    assert result["forced_prefix_share"] == pytest.approx(float((opened.read().forced_tokens > 0).mean()))
