"""The trajectory store: layout, teacher check, sharding and crash-safe resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from ceed_vla.distill.store import (
    StoreError,
    TeacherMismatchError,
    TrajectoryStore,
    fingerprint,
)

from tests.fixtures.distill import make_trajectory_batch


def _create(path, world_size=1, teacher="t0"):
    return TrajectoryStore.create_or_open(
        path, teacher_hash=teacher, n_tokens=4, n_bins=256, world_size=world_size
    )


def test_append_and_read_round_trip(tmp_path):
    store = _create(tmp_path / "s")
    batch = make_trajectory_batch([0, 1, 2, 3])
    store.shard(0).append(batch)
    got = TrajectoryStore.open(tmp_path / "s", teacher_hash="t0").read()
    assert got.sample_id.tolist() == [0, 1, 2, 3]
    assert got.dataset_index.tolist() == [0, 10, 20, 30]
    for i in range(4):
        np.testing.assert_array_equal(got.trajectory(i), batch.states[i])
    np.testing.assert_array_equal(got.gt_tokens, batch.gt_tokens)
    np.testing.assert_allclose(got.l1, batch.l1)
    assert got.warm_start.tolist() == [False, True, False, True]


def test_shards_merge_sorted_by_sample_id(tmp_path):
    store = _create(tmp_path / "s", world_size=2)
    store.shard(1).append(make_trajectory_batch([1, 3, 5]))
    store.shard(0).append(make_trajectory_batch([0, 2]))
    got = store.read()
    assert got.sample_id.tolist() == [0, 1, 2, 3, 5]
    np.testing.assert_array_equal(got.trajectory(3), make_trajectory_batch([1, 3, 5]).states[1])
    with pytest.raises(StoreError, match="world_size=2"):
        TrajectoryStore.create_or_open(
            tmp_path / "s", teacher_hash="t0", n_tokens=4, n_bins=256, world_size=3
        )


def test_store_from_another_teacher_is_refused(tmp_path):
    _create(tmp_path / "s", teacher="a" * 64).shard(0).append(make_trajectory_batch([0]))
    with pytest.raises(TeacherMismatchError, match="collect a new store"):
        TrajectoryStore.open(tmp_path / "s", teacher_hash="b" * 64)
    with pytest.raises(TeacherMismatchError):
        TrajectoryStore.create_or_open(tmp_path / "s", teacher_hash="b" * 64, n_tokens=4, n_bins=256)


def test_fingerprint_tracks_config_and_weights():
    sd = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    base = fingerprint({"hidden": 8}, sd)
    assert base == fingerprint({"hidden": 8}, {k: v.clone() for k, v in sd.items()})
    assert base != fingerprint({"hidden": 9}, sd)
    changed = dict(sd, w=sd["w"].clone().index_fill_(0, torch.tensor([1]), 7.0))
    assert base != fingerprint({"hidden": 8}, changed)


def test_constructor_asserts_layout(tmp_path):
    _create(tmp_path / "s")
    meta = tmp_path / "s" / "rank_000" / "l1" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = "int32"
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="l1"):
        TrajectoryStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="not a trajectory store"):
        TrajectoryStore.open(tmp_path / "nothing")


def test_ids_must_increase(tmp_path):
    shard = _create(tmp_path / "s").shard(0)
    shard.append(make_trajectory_batch([0, 1]))
    with pytest.raises(StoreError, match="increase"):
        shard.append(make_trajectory_batch([1, 2]))


def test_uncommitted_writes_are_dropped_on_open(tmp_path, monkeypatch):
    store = _create(tmp_path / "s")
    store.shard(0).append(make_trajectory_batch([0, 1]))
    # A crash after the data arrays grew but before the commit record was written.
    group = store._root["rank_000"]
    for name in ("sample_id", "dataset_index", "l1"):
        group[name].append(np.zeros(3, dtype=group[name].dtype))
    group["states"].append(np.zeros((5, 4), dtype=np.int16))
    shard = TrajectoryStore.open(tmp_path / "s").shard(0)
    assert len(shard) == 2
    shard.append(make_trajectory_batch([2, 3]))
    got = TrajectoryStore.open(tmp_path / "s").read()
    assert got.sample_id.tolist() == [0, 1, 2, 3]
    assert got.dataset_index.tolist() == [0, 10, 20, 30]
    np.testing.assert_array_equal(got.trajectory(3), make_trajectory_batch([2, 3]).states[1])


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ceed_vla.distill.store import TrajectoryBatch, TrajectoryStore
    shard = TrajectoryStore.open(sys.argv[1], teacher_hash="t0").shard(0)
    start = next_id = len(shard)
    while True:
        ids = np.arange(next_id, next_id + 3)
        fixed = (np.arange(4)[None, :] + ids[:, None]) % 256  # [3, 4]
        states = [np.repeat(fixed[k : k + 1], int(i % 3) + 1, axis=0) for k, i in enumerate(ids)]
        shard.append(TrajectoryBatch(sample_id=ids, dataset_index=ids * 10, states=states, fixed_point=fixed,
                                     teacher_tokens=fixed, gt_tokens=fixed, l1=ids / 100.0,
                                     iterations=ids % 3, warm_start=ids % 2 == 1))
        if next_id == start:  # the first batch of this run is committed
            print("appending", flush=True)
        next_id += 3
    """
)


def test_resume_after_sigkill_has_no_gap_and_no_duplicate(tmp_path):
    path = tmp_path / "s"
    _create(path)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    sizes = []
    for delay in (0.05, 0.3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"appending"
        time.sleep(delay)  # killed at an arbitrary point of an append
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = TrajectoryStore.open(path, teacher_hash="t0").read()
        ids = got.sample_id
        assert ids.tolist() == list(range(len(ids)))  # no gap, no duplicate
        assert got.dataset_index.tolist() == (ids * 10).tolist()
        assert got.state_offsets[-1] == len(got.states)
        assert np.diff(got.state_offsets).tolist() == (ids % 3 + 1).tolist()
        np.testing.assert_array_equal(got.fixed_point, (np.arange(4)[None, :] + ids[:, None]) % 256)
        np.testing.assert_array_equal(got.states[got.state_offsets[1:] - 1], got.fixed_point)
        sizes.append(len(ids))
    assert 0 < sizes[0] < sizes[1]
