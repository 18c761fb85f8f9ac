"""Trajectory collection and distillation on a tiny random VLA over in-memory frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ceed_vla.distill import collect as C
from ceed_vla.distill.data import DistillDataset, StateSampling, noised_fixed_point, sample_state
from ceed_vla.distill.losses import STATE, TARGET, DistillLoss, DistillLossConfig
from ceed_vla.distill.store import StoreError, TeacherMismatchError, TrajectoryStore

from tests.fixtures.distill import make_tiny_vla


@pytest.fixture(scope="module")
def setup():
    from ceed_vla.policy.data import ChunkDataset

    from tests.fixtures.distill import make_synthetic_frames

    torch.set_num_threads(1)
    frames = make_synthetic_frames()
    teacher = make_tiny_vla(frames)
    return teacher, frames, ChunkDataset(frames, [0, 1, 2])


def _run(setup, path, rank=0, world=1, **cfg):
    teacher, frames, dataset = setup
    config = C.CollectConfig(output=str(path), batch_size=4, trajectories=40, warm_start=0.5, **cfg)
    store = C.open_store_for_rank(
        path, C.teacher_fingerprint(teacher), teacher.chunk_tokens, teacher.n_bins, rank, world, {}
    )
    return C.collect(C.Collector(teacher, dataset, frames, config), store, rank, world), store


def test_collected_trajectories_are_exact_jacobi(setup, tmp_path):
    from ceed_vla.decoding import DecodeConfig

    teacher, _, dataset = setup
    summary, store = _run(setup, tmp_path / "s")
    traj = store.read()
    assert traj.sample_id.tolist() == list(range(40))
    assert summary["samples"] == 40 and 0 < summary["warm_start_share"] < 1
    # 40 samples over 30 frames: the second round revisits frames.
    assert len(set(traj.dataset_index.tolist())) == 30
    rows = [0, 7, 33]
    batch = torch.utils.data.default_collate([dataset[int(traj.dataset_index[i])] for i in rows])
    ar = teacher.actions_to_bins(
        teacher.predict_action_chunk(batch, decoding=DecodeConfig(mode="ar", n_bins=64))
    )
    np.testing.assert_array_equal(traj.fixed_point[rows], ar.numpy())  # fixed point == teacher's AR
    np.testing.assert_array_equal(traj.gt_tokens[rows], teacher.actions_to_bins(batch["action"]).numpy())
    for i in range(40):
        states = traj.trajectory(i)
        np.testing.assert_array_equal(states[-1], traj.fixed_point[i])
        assert not (states[:-1] == traj.fixed_point[i]).all(axis=1).any()  # trimmed at the first hit
        assert len(states) <= traj.iterations[i] + 1


def _interrupted(monkeypatch, run, batches: int) -> None:
    """`run()` killed by a KeyboardInterrupt as its batch `batches + 1` starts."""
    calls = {"n": 0}
    original = C.Collector.run_batch

    def crash(self, plan, ids):
        calls["n"] += 1
        if calls["n"] > batches:
            raise KeyboardInterrupt
        return original(self, plan, ids)

    monkeypatch.setattr(C.Collector, "run_batch", crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(C.Collector, "run_batch", original)


def test_resume_after_interruption_matches_uninterrupted_run(setup, tmp_path, monkeypatch):
    _, full = _run(setup, tmp_path / "full")
    _interrupted(monkeypatch, lambda: _run(setup, tmp_path / "cut"), batches=2)
    assert len(TrajectoryStore.open(tmp_path / "cut").read()) == 8
    summary, resumed = _run(setup, tmp_path / "cut")
    assert summary["collected_now"] == 32
    a, b = full.read(), resumed.read()
    assert b.sample_id.tolist() == list(range(40))
    for name in ("dataset_index", "fixed_point", "states", "state_offsets", "warm_start", "gt_tokens"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(StoreError, match="original arguments"):
        _run(setup, tmp_path / "cut", seed=1)


def test_sharded_collection_covers_the_plan_once(setup, tmp_path):
    for rank in (0, 1):
        _run(setup, tmp_path / "sharded", rank=rank, world=2)
    _, single = _run(setup, tmp_path / "single")
    a, b = TrajectoryStore.open(tmp_path / "sharded").read(), single.read()
    assert a.sample_id.tolist() == list(range(40))
    np.testing.assert_array_equal(a.dataset_index, b.dataset_index)
    np.testing.assert_array_equal(a.fixed_point, b.fixed_point)


def test_store_of_another_teacher_is_refused(setup, tmp_path):
    teacher, frames, dataset = setup
    _run(setup, tmp_path / "s")
    other = make_tiny_vla(frames, seed=1)
    with pytest.raises(TeacherMismatchError, match="collect a new store"):
        C.open_store_for_rank(tmp_path / "s", C.teacher_fingerprint(other), 8, 64, 0, 1, {})


def _run_with_meta(setup, path, **cfg):
    """`_run`, with the store recording its collection config as `ceed distill collect` does."""
    from dataclasses import asdict

    teacher, frames, dataset = setup
    config = C.CollectConfig(output=str(path), batch_size=4, trajectories=40, warm_start=0.5, **cfg)
    store = C.open_store_for_rank(
        path,
        C.teacher_fingerprint(teacher),
        teacher.chunk_tokens,
        teacher.n_bins,
        0,
        1,
        {"collect": asdict(config)},
    )
    collector = C.Collector(teacher, dataset, frames, config)
    return C.collect(collector, store, 0, 1), store, collector


def test_warm_starts_from_the_teachers_own_previous_chunk(setup, tmp_path):
    from ceed_vla.decoding import DecodeConfig, guess_from_previous_chunk

    teacher, frames, dataset = setup
    cfg = C.CollectConfig(output="unused", warm_start=1.0, warm_start_source="teacher")
    collector = C.Collector(teacher, dataset, frames, cfg)
    plan = collector.plan()
    ids = np.arange(12)
    indices = [collector.frame_index(plan, s) for s in ids]
    guesses, warm = collector._warm_guesses(plan, ids, indices)
    assert warm.any()
    for k in np.flatnonzero(warm):
        _, steps = plan.guess(int(ids[k]))
        prev = dataset[indices[k] - steps]
        chunk = teacher.actions_to_bins(
            teacher.predict_action_chunk(
                torch.utils.data.default_collate([prev]), decoding=DecodeConfig(mode="ar", n_bins=64)
            )
        )
        np.testing.assert_array_equal(
            guesses[k].numpy(), guess_from_previous_chunk(chunk, steps, teacher.config.action_dim)[0].numpy()
        )
        assert not np.array_equal(chunk[0].numpy(), teacher.actions_to_bins(prev["action"][None])[0].numpy())
    # the same plan from the demonstration: the same rows are warm, the guesses differ
    gt = C.Collector(teacher, dataset, frames, C.CollectConfig(output="unused", warm_start=1.0))
    gt_guesses, gt_warm = gt._warm_guesses(plan, ids, indices)
    np.testing.assert_array_equal(gt_warm, warm)
    assert not torch.equal(gt_guesses[warm], guesses[warm])


def test_fused_states_start_from_the_guess_the_fused_pass_sees(setup, tmp_path):
    summary, store, _ = _run_with_meta(setup, tmp_path / "f", warm_start_source="teacher", fused_states=True)
    _, plain, _ = _run_with_meta(setup, tmp_path / "p", warm_start_source="teacher")
    a, b = store.read(), plain.read()
    np.testing.assert_array_equal(a.fixed_point, b.fixed_point)  # the same samples, the same teacher
    added = 0
    for i in range(len(a)):
        fused, states = a.trajectory(i), b.trajectory(i)
        if len(fused) == len(states):  # the guess held the exact first token: nothing to add
            np.testing.assert_array_equal(fused, states)
            continue
        added += 1
        np.testing.assert_array_equal(fused[1:], states)
        differs = np.flatnonzero(fused[0] != states[0])
        assert differs.tolist() == [int(a.forced_tokens[i])]  # only the first free token
    # the constant guess's first token is rarely the teacher's, so some samples gain a state
    assert added > 0
    assert 0.0 <= summary["warm_first_token_right_share"] <= 1.0


def test_with_guess_state_puts_the_guess_first_only_where_it_differs():
    states = np.array([[5, 1, 2, 3], [5, 1, 2, 4], [5, 1, 7, 4]])
    np.testing.assert_array_equal(C.with_guess_state(states, 1, 1), states)
    out = C.with_guess_state(states, 1, 9)
    np.testing.assert_array_equal(out[0], [5, 9, 2, 3])
    np.testing.assert_array_equal(out[1:], states)


@pytest.mark.parametrize("key", ["warm_start_source", "fused_states"])
def test_resuming_with_another_guess_recipe_is_refused(setup, tmp_path, monkeypatch, key):
    _interrupted(monkeypatch, lambda: _run_with_meta(setup, tmp_path / "s"), batches=1)
    assert len(TrajectoryStore.open(tmp_path / "s").read()) == 4
    other = {"warm_start_source": "teacher"} if key == "warm_start_source" else {"fused_states": True}
    with pytest.raises(StoreError, match=f"was collected with {key}="):
        _run_with_meta(setup, tmp_path / "s", **other)


def test_an_unknown_warm_start_source_is_refused():
    with pytest.raises(ValueError, match="warm_start_source must be one of"):
        C.CollectConfig(output="x", warm_start_source="policy")


def test_chunk_l1_ignores_padded_steps():
    teacher = torch.zeros(1, 2, 2)
    gt = torch.tensor([[[0.2, 0.4], [9.0, 9.0]]])
    assert C.chunk_l1(teacher, gt, torch.tensor([[False, True]])).item() == pytest.approx(0.3)
    assert C.chunk_l1(teacher, gt).item() == pytest.approx((0.3 + 9.0) / 2)


def test_sample_state_rules():
    states = np.array([[5, 0, 0, 0], [5, 1, 0, 0], [5, 1, 2, 0], [5, 1, 2, 3]])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        s, t = sample_state(states, rng, StateSampling("global"))
        assert t.tolist() == [5, 1, 2, 3] and s.tolist() != t.tolist()
        seen.add(tuple(s))
        s, t = sample_state(states, rng, StateSampling("local"))
        j = [tuple(x) for x in states].index(tuple(s))
        assert t.tolist() == states[j + 1].tolist()
    assert len(seen) == 3  # every intermediate state is drawn
    one = states[-1:]
    s, t = sample_state(one, rng, StateSampling("global"))
    assert s.tolist() == t.tolist() == [5, 1, 2, 3]


def test_initial_state_share_draws_the_initial_guess_that_often():
    states = np.array([[5, 0, 0, 0], [5, 1, 0, 0], [5, 1, 2, 0], [5, 1, 2, 3]])
    rng = np.random.default_rng(0)
    drawn = [tuple(sample_state(states, rng, StateSampling(initial=0.5))[0]) for _ in range(3000)]
    share = drawn.count(tuple(states[0])) / len(drawn)
    assert abs(share - (0.5 + 0.5 / 3)) < 0.03  # 0.5 directly, plus its share of the uniform draws
    assert set(drawn) == {tuple(x) for x in states[:-1]}
    with pytest.raises(ValueError, match="initial"):
        StateSampling(initial=2.0)


def test_guess_state_share_splits_initial_draws_between_the_guess_and_the_state_after_the_prefill():
    from ceed_vla.distill.data import starts_with_guess

    # a recorded guess (first free token 7, position 1 after a forced token), then the prefill's 1
    states = np.array([[5, 7, 0, 0], [5, 1, 0, 0], [5, 1, 2, 0], [5, 1, 2, 3]])
    assert starts_with_guess(states, forced=1) and not starts_with_guess(states[1:], forced=1)

    def initial_draws(share):
        rng = np.random.default_rng(0)
        cfg = StateSampling(initial=1.0, guess_state=share)
        return [tuple(sample_state(states, rng, cfg, forced=1)[0]) for _ in range(2000)]

    assert set(initial_draws(1.0)) == {tuple(states[0])}
    assert set(initial_draws(0.0)) == {tuple(states[1])}
    half = initial_draws(0.5)
    assert abs(half.count(tuple(states[0])) / len(half) - 0.5) < 0.04
    # a trajectory without a recorded guess draws exactly as before, whatever the share
    plain = states[1:]
    a = [
        tuple(sample_state(plain, np.random.default_rng(s), StateSampling(initial=0.5))[0]) for s in range(50)
    ]
    b = [
        tuple(sample_state(plain, np.random.default_rng(s), StateSampling(initial=0.5, guess_state=0.0))[0])
        for s in range(50)
    ]
    assert a == b
    with pytest.raises(ValueError, match="guess_state"):
        StateSampling(guess_state=1.5)


def test_first_guess_noise_moves_only_the_first_free_token_of_initial_states():
    states = np.array([[5, 0, 0, 0], [5, 1, 0, 0], [5, 1, 2, 0], [5, 1, 2, 3]])
    cfg = StateSampling(initial=1.0, first_token=1.0, noise_bins=2, n_bins=8)
    rng = np.random.default_rng(0)
    firsts = set()
    for _ in range(200):
        s, t = sample_state(states, rng, cfg)
        assert t.tolist() == [5, 1, 2, 3] and s[1:].tolist() == [0, 0, 0]
        assert 1 <= abs(int(s[0]) - 5) <= 2  # the first token moved, the rest is the initial guess
        firsts.add(int(s[0]))
    assert firsts == {3, 4, 6, 7}
    edge = np.array([[7, 0, 0], [7, 1, 2]])  # at the top bin the move bounces back into the range
    for _ in range(50):
        s, _ = sample_state(edge, rng, StateSampling(initial=1.0, first_token=1.0, noise_bins=2, n_bins=8))
        assert s[0] in (5, 6)
    # with a forced prefix the first free token moves, never a forced one
    s, _ = sample_state(states, np.random.default_rng(1), cfg, forced=2)
    assert s[:2].tolist() == [5, 0] and s[2] != 0 and s[3] == 0
    # later states keep the prefill's token (the fused pass is the first iteration only); the
    # initial state drawn by the uniform draw is moved like one drawn for `initial`
    drawn = [sample_state(states, rng, StateSampling(first_token=1.0, n_bins=8))[0] for _ in range(60)]
    assert all(x[0] == 5 for x in drawn if x[1] != 0) and all(x[0] != 5 for x in drawn if x[1] == 0)
    assert any(x[1] == 0 for x in drawn) and any(x[1] != 0 for x in drawn)
    # off draws nothing: the stream, and so every other draw, is unchanged
    a = [
        sample_state(states, np.random.default_rng(k), StateSampling(initial=0.5))[0].tolist()
        for k in range(20)
    ]
    b = [sample_state(states, np.random.default_rng(k), StateSampling(initial=0.5, first_token=0.0))[0].tolist()
         for k in range(20)]  # fmt: skip
    assert a == b
    with pytest.raises(ValueError, match="first_token"):
        StateSampling(first_token=1.5)


def test_noised_fixed_point_keeps_a_prefix_and_stays_in_range():
    fixed = np.array([0, 10, 20, 30, 63, 63], dtype=np.int16)
    rng = np.random.default_rng(1)
    cfg = StateSampling(noise=1.0, noise_bins=2, n_bins=64)
    for _ in range(50):
        s = noised_fixed_point(fixed, rng, cfg)
        diff = np.flatnonzero(s != fixed)
        assert len(diff) >= 1 and diff.min() >= 1
        assert np.abs(s.astype(int) - fixed).max() <= 2 and s.min() >= 0 and s.max() <= 63


def test_distillation_through_the_shared_trainer(setup, tmp_path):
    from ceed_vla.policy import load_policy
    from ceed_vla.policy.trainer import TrainConfig, Trainer

    teacher, frames, dataset = setup
    _, store = _run(setup, tmp_path / "s")
    traj = store.read()
    student = make_tiny_vla(frames)
    train_set = DistillDataset(dataset, traj, np.arange(32), StateSampling("global", noise=0.3, n_bins=64))
    item = train_set[3]
    assert item[STATE].shape == item[TARGET].shape == (8,)
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        steps=3,
        batch_size=8,
        lr=1e-3,
        warmup_steps=0,
        save_every=3,
        val_every=3,
        val_batches=1,
        log_every=1,
        device="cpu",
    )
    val_set = DistillDataset(dataset, traj, np.arange(32, 40), StateSampling("global", n_bins=64))
    summary = Trainer(
        student, DistillLoss(DistillLossConfig(w_ar=1.0)), train_set, cfg, val_set=val_set
    ).fit()
    assert summary["steps"] == 3 and np.isfinite(summary["best_val_loss"])
    reloaded = load_policy(tmp_path / "run" / "checkpoints" / "step_000003")
    assert C.teacher_fingerprint(reloaded) != C.teacher_fingerprint(teacher)  # the student moved


def test_measurements_on_held_out_frames(setup):
    from ceed_vla.decoding import DecodeConfig, decode
    from ceed_vla.distill.measure import decode_latency, jacobi_passes

    teacher, _, dataset = setup
    passes = jacobi_passes(teacher, dataset, np.arange(20, 30), batch_size=4, step_impl="torch")
    assert passes["samples"] == 10
    assert passes["fixed_point_equals_ar"] == 1.0  # exact Jacobi is AR token for token
    assert 1 <= passes["mean_iterations"] <= teacher.chunk_tokens - 1
    # the quality guard: the AR chunk's L1 to the dataset's chunk, over valid steps, frame by frame
    errors = []
    for i in range(20, 30):
        item = dataset[i]
        embeds, mask = teacher.prefix_embeddings(torch.utils.data.default_collate([item]))
        out = decode(
            teacher.lm,
            embeds,
            mask,
            teacher.chunk_tokens,
            teacher.action_token_start,
            config=DecodeConfig(mode="ar", n_bins=64),
        )
        err = (teacher.tokens_to_actions(out.bins)[0] - item["action"]).abs().mean(dim=-1)  # [K]
        valid = ~item["action_is_pad"]
        errors.append(float(err[valid].mean()))
    assert passes["ar_action_l1_to_ground_truth"] == pytest.approx(np.mean(errors), rel=1e-5)
    configs = {
        "jacobi": DecodeConfig(mode="jacobi", n_bins=64),
        "ar": DecodeConfig(mode="ar", n_bins=64),
        "early_exit_s1": DecodeConfig(mode="early_exit", n_bins=64, sigma=1),
    }
    lat = decode_latency(teacher, dataset, [0, 1, 2], configs, warmup=1)
    assert lat["ar"]["speedup_vs_ar"] == 1.0
    assert lat["jacobi"]["action_l1_to_own_ar"] == 0.0
    assert lat["early_exit_s1"]["iterations"] == 1.0
    with pytest.raises(ValueError, match="'ar'"):
        decode_latency(teacher, dataset, [0], {"jacobi": configs["jacobi"]})
