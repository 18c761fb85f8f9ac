"""Training for planning ahead: samples whose image is older than their state, in `ceed train` and in
distillation (the collected teacher and the student see the same lagged frames)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from ceed_vla.distill.store import StoreError, TrajectoryStore
from ceed_vla.policy.data import ChunkDataset, ObservationLag

from ceed_vla.keys import IMAGE_KEY
from tests.fixtures.distill import make_synthetic_frames
from tests.fixtures.policy import tiny_train_argv

torch.set_num_threads(1)

CHUNK = 4


@pytest.fixture(scope="module")
def frames():
    return make_synthetic_frames(n_episodes=3, length=10, chunk_size=CHUNK)


def _seen_frame(frames, image: torch.Tensor) -> int:
    """The dataset index whose image this sample shows (the synthetic images are all distinct)."""
    hits = [i for i in range(len(frames)) if torch.equal(frames.images[i].float() / 255.0, image)]
    assert len(hits) == 1
    return hits[0]


def test_lag_off_leaves_samples_bit_identical(frames):
    plain = ChunkDataset(frames, [0, 1, 2], seed=3)
    off = ChunkDataset(frames, [0, 1, 2], seed=3, obs_lag=ObservationLag(prob=0.0, max_steps=3))
    for i in range(len(plain)):
        a, b = plain[i], off[i]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]


def test_lagged_samples_show_an_older_frame_of_the_same_episode_and_keep_state_and_chunk(frames):
    plain = ChunkDataset(frames, [0, 1, 2], seed=1)
    lagged = ChunkDataset(frames, [0, 1, 2], seed=1, obs_lag=ObservationLag(prob=1.0, max_steps=3))
    lags = set()
    for i in range(len(lagged)):
        idx = int(lagged.rows[i])
        item, ref = lagged[i], plain[i]
        seen = _seen_frame(frames, item[IMAGE_KEY])
        start = int(frames.ep_start[idx])
        assert start <= seen <= idx and idx - seen <= 3
        assert seen < idx or idx == start  # prob 1: only an episode's first frame shows itself
        for k in ("observation.state", "action", "action_is_pad"):
            assert torch.equal(item[k], ref[k])
        lags.add(idx - seen)
    assert lags == {0, 1, 2, 3}


def test_lag_draws_repeat_per_seed_epoch_and_index_and_follow_the_rate(frames):
    cfg = ObservationLag(prob=0.5, max_steps=2)
    a = ChunkDataset(frames, [0, 1, 2], seed=5, obs_lag=cfg)
    b = ChunkDataset(frames, [0, 1, 2], seed=5, obs_lag=cfg)
    lags = lambda ds: [ds._lag(int(ds.rows[i])) for i in range(len(ds))]  # noqa: E731
    assert lags(a) == lags(b)
    for i in range(len(a)):
        assert torch.equal(a[i][IMAGE_KEY], b[i][IMAGE_KEY])
    b.set_epoch(1)
    assert lags(a) != lags(b)
    share = sum(k > 0 for k in lags(a)) / len(a)
    assert 0.2 < share < 0.8 and set(lags(a)) == {0, 1, 2}


def test_lag_config_is_validated():
    with pytest.raises(ValueError, match="1.5"):
        ObservationLag(prob=1.5)
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        ObservationLag(prob=0.5, max_steps=0)


def test_ceed_train_takes_the_lag_flags(policy_dataset, tmp_path):
    from ceed_vla import cli

    _, root = policy_dataset
    out = tmp_path / "run"
    args = tiny_train_argv(root, out, "--obs-lag-prob", "0.5", "--obs-lag-max-steps", "3")
    assert cli.main(args) == 0
    assert json.loads((out / "final/dataset.json").read_text())["obs_lag"] == {"prob": 0.5, "max_steps": 3}
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        cli.main(args[:-2] + ["--obs-lag-max-steps", "0"])


def test_the_student_learns_from_the_frames_the_teacher_was_collected_on(
    policy_dataset, make_policy, tmp_path
):
    from ceed_vla.distill import train as T
    from ceed_vla.policy import load_policy

    from ceed_vla.cli import main as ceed

    repo_id, root = policy_dataset
    make_policy(seed=0).save_pretrained(tmp_path / "teacher")
    store = tmp_path / "traj.zarr"
    collect = ["distill", "collect", "--teacher", str(tmp_path / "teacher"), "--dataset-root", str(root)]
    collect += ["--repo-id", repo_id, "--output", str(store), "--batch-size", "8", "--threads", "1"]
    lag = ["--obs-lag-prob", "0.7", "--obs-lag-max-steps", "2", "--seed", "4"]
    assert ceed([*collect, "--trajectories", "16", *lag]) == 0
    opened = TrajectoryStore.open(store)
    assert opened.attrs["meta"]["collect"]["obs_lag"] == {"prob": 0.7, "max_steps": 2}

    parser = argparse.ArgumentParser()
    T.configure_parser(parser)
    argv = ["--teacher", str(tmp_path / "teacher"), "--trajectories", str(store), "--output", str(tmp_path)]
    args = parser.parse_args(argv)
    _, train_set, _ = T.build_datasets(args, load_policy(tmp_path / "teacher"), opened)
    frame_set = train_set.frames
    assert frame_set.seed == 4 and frame_set.obs_lag == ObservationLag(prob=0.7, max_steps=2)
    assert any(frame_set._lag(int(i)) > 0 for i in opened.read().dataset_index)

    # resuming the store with other lag flags would mix two observations under one record
    with pytest.raises(StoreError, match="observation lag"):
        ceed([*collect, "--trajectories", "24", "--obs-lag-prob", "0.2", "--seed", "4"])
    assert ceed([*collect, "--trajectories", "24", *lag]) == 0
