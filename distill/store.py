"""On-disk store of the teacher's Jacobi trajectories (zarr v3, local directory).

Layout (asserted when a store is opened)::

    <root>/                      attrs: format, version, teacher_hash, n_tokens, n_bins, world_size, meta
      rank_000/                  one group per collecting process; attrs: committed = {samples, states}
        sample_id       int64 [N]      position in the collection plan (unique, increasing per rank)
        dataset_index   int64 [N]      index of the dataset frame the sample came from
        state_ends      int64 [N]      end offset of each sample's states in `states`
        states          int16 [S, n]   every Jacobi state, initial guess first, fixed point last
        fixed_point     int16 [N, n]   converged block (== the teacher's greedy AR tokens)
        teacher_tokens  int16 [N, n]   the teacher's tokens used as labels
        gt_tokens       int16 [N, n]   the ground-truth action chunk, tokenised
        l1              float32 [N]    mean |teacher - ground truth| as a fraction of the q01..q99 range
        iterations      int32 [N]      Jacobi iterations the teacher needed
        warm_start      bool [N]       whether the initial guess was a warm start
        forced_tokens   int32 [N]      tokens given as a forced prefix (d * D; 0 = none); every state,
                                       the fixed point and the teacher's tokens begin with them

Version 1 stores (before forced prefixes) lack `forced_tokens`; they read as 0 for every sample, and
samples without a prefix can still be appended to them (resuming an old collection).

Appends are crash-safe: every array is written first, then the group's `committed` attribute (zarr
writes each key atomically). Opening a shard truncates anything past its commit, so a run killed at
any point resumes at the next uncommitted sample with no gap and no duplicate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

FORMAT = "ceed-distill-trajectories"
VERSION = 2
READABLE_VERSIONS = (1, 2)
FORCED = "forced_tokens"  # the column that version 1 lacks

# name -> (dtype, per-sample trailing shape kind): "n" = [n_tokens], "" = scalar
_SAMPLE_ARRAYS: dict[str, tuple[str, str]] = {
    "sample_id": ("int64", ""),
    "dataset_index": ("int64", ""),
    "state_ends": ("int64", ""),
    "fixed_point": ("int16", "n"),
    "teacher_tokens": ("int16", "n"),
    "gt_tokens": ("int16", "n"),
    "l1": ("float32", ""),
    "iterations": ("int32", ""),
    "warm_start": ("bool", ""),
    FORCED: ("int32", ""),
}
_STATE_ARRAY = "states"
# Per-sample columns of a batch, in store order (sample_id first); the Jacobi states are stored apart.
SAMPLE_COLUMNS = (
    "sample_id",
    "dataset_index",
    "fixed_point",
    "teacher_tokens",
    "gt_tokens",
    "l1",
    "iterations",
    "warm_start",
    FORCED,
)
_SAMPLE_CHUNK = 8192
_STATE_CHUNK = 16384


class StoreError(RuntimeError):
    """The trajectory store is missing, malformed or inconsistent with the request."""


class TeacherMismatchError(StoreError):
    """The store was collected with a different teacher than the one given."""


def fingerprint(config: dict[str, Any], state_dict: dict[str, Any]) -> str:
    """sha256 over a JSON config and every tensor of a state dict (name, dtype, shape, bytes)."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class TrajectoryBatch:
    """Samples to append to one shard. N samples, S states in all, n tokens per block."""

    sample_id: np.ndarray  # [N] int64
    dataset_index: np.ndarray  # [N] int64
    states: list[np.ndarray]  # N arrays of [T_i, n]
    fixed_point: np.ndarray  # [N, n]
    teacher_tokens: np.ndarray  # [N, n]
    gt_tokens: np.ndarray  # [N, n]
    l1: np.ndarray  # [N]
    iterations: np.ndarray  # [N]
    warm_start: np.ndarray  # [N] bool
    forced_tokens: np.ndarray | None = None  # [N] forced prefix length in tokens; None = all 0

    def __post_init__(self) -> None:
        n = len(self.sample_id)
        if self.forced_tokens is None:
            self.forced_tokens = np.zeros(n, dtype=np.int32)
        for name in SAMPLE_COLUMNS[1:]:
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows but sample_id has {n}")
        if len(self.states) != n:
            raise ValueError(f"states holds {len(self.states)} trajectories but sample_id has {n}")
        for i, s in enumerate(self.states):
            if s.ndim != 2 or s.shape[0] < 1:
                raise ValueError(f"trajectory {i} must be [T>=1, n], got shape {s.shape}")
            if not np.array_equal(s[-1], self.fixed_point[i]):
                raise ValueError(f"trajectory {i} does not end at its fixed point")
            f = int(self.forced_tokens[i])
            if not 0 <= f < s.shape[1]:
                raise ValueError(f"sample {i} forces {f} tokens; a chunk of {s.shape[1]} needs 0 <= f < n")
            if not (s[:, :f] == self.fixed_point[i, :f]).all():
                raise ValueError(f"trajectory {i} changes its {f} forced tokens")


@dataclass
class Trajectories:
    """Every committed sample of a store, concatenated over shards and sorted by sample_id."""

    sample_id: np.ndarray  # [N]
    dataset_index: np.ndarray  # [N]
    state_offsets: np.ndarray  # [N + 1] start/end of each sample's states
    states: np.ndarray  # [S, n]
    fixed_point: np.ndarray  # [N, n]
    teacher_tokens: np.ndarray  # [N, n]
    gt_tokens: np.ndarray  # [N, n]
    l1: np.ndarray  # [N]
    iterations: np.ndarray  # [N]
    warm_start: np.ndarray  # [N]
    forced_tokens: np.ndarray | None = None  # [N]; None (a version 1 store) = all 0

    def __post_init__(self) -> None:
        if self.forced_tokens is None:
            self.forced_tokens = np.zeros(len(self.sample_id), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.sample_id)

    def trajectory(self, i: int) -> np.ndarray:
        """States of sample i: [T_i, n], initial guess first, fixed point last."""
        return self.states[self.state_offsets[i] : self.state_offsets[i + 1]]


def _compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


class TrajectoryStore:
    """A zarr directory of Jacobi trajectories, shared by every rank of one collection run.

    Use `TrajectoryStore.create_or_open(...)` to collect and `TrajectoryStore.open(...)` to read.
    """

    def __init__(self, root: zarr.Group, path: Path):
        self._root = root
        self.path = path
        self._assert_layout()

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def create_or_open(
        cls,
        path: str | Path,
        *,
        teacher_hash: str,
        n_tokens: int,
        n_bins: int,
        world_size: int = 1,
        meta: dict[str, Any] | None = None,
    ) -> TrajectoryStore:
        """Open the store at `path` for appending, creating it when absent.

        An existing store must come from the same teacher and the same collection shape, else
        `TeacherMismatchError` / `StoreError` (collect into a new directory, or delete the old one).
        """
        path = Path(path)
        if not path.exists():
            return cls._create(path, teacher_hash, n_tokens, n_bins, world_size, meta or {})
        store = cls.open(path, teacher_hash=teacher_hash)
        attrs = store.attrs
        for key, want in (("n_tokens", n_tokens), ("n_bins", n_bins), ("world_size", world_size)):
            if attrs[key] != want:
                raise StoreError(
                    f"{path} was collected with {key}={attrs[key]}, this run asks for {want}; "
                    f"resume with the same setting or collect into a new directory"
                )
        return store

    @classmethod
    def _create(cls, path, teacher_hash, n_tokens, n_bins, world_size, meta) -> TrajectoryStore:
        if n_tokens < 1 or n_bins < 2 or n_bins > np.iinfo(np.int16).max:
            raise ValueError(f"need n_tokens >= 1 and 2 <= n_bins <= 32767, got {n_tokens=}, {n_bins=}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        root = zarr.open_group(str(path), mode="w-")
        for rank in range(world_size):
            group = root.create_group(_shard_name(rank))
            for name, (dtype, kind) in _SAMPLE_ARRAYS.items():
                shape = (0, n_tokens) if kind == "n" else (0,)
                chunks = (_SAMPLE_CHUNK, n_tokens) if kind == "n" else (_SAMPLE_CHUNK,)
                group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=_compressor())
            group.create_array(
                _STATE_ARRAY,
                shape=(0, n_tokens),
                dtype="int16",
                chunks=(_STATE_CHUNK, n_tokens),
                compressors=_compressor(),
            )
            group.attrs["committed"] = {"samples": 0, "states": 0}
        # The root attributes are written last: a store without them is an interrupted creation.
        root.attrs.update(
            {
                "format": FORMAT,
                "version": VERSION,
                "teacher_hash": teacher_hash,
                "n_tokens": n_tokens,
                "n_bins": n_bins,
                "world_size": world_size,
                "meta": meta,
            }
        )
        return cls(root, path)

    @classmethod
    def open(cls, path: str | Path, *, teacher_hash: str | None = None, mode: str = "r+") -> TrajectoryStore:
        """Open an existing store; with `teacher_hash`, refuse one collected by another teacher."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(
                f"{path} is not a trajectory store (no zarr.json); run `ceed distill collect` first"
            )
        store = cls(zarr.open_group(str(path), mode=mode), path)
        if teacher_hash is not None and store.teacher_hash != teacher_hash:
            raise TeacherMismatchError(
                f"{path} holds trajectories of teacher {store.teacher_hash[:12]}…, not of the given teacher "
                f"{teacher_hash[:12]}…; collect a new store for this teacher (`ceed distill collect`) "
                f"or pass the checkpoint the store was collected with"
            )
        return store

    def _assert_layout(self) -> None:
        attrs = dict(self._root.attrs)
        if attrs.get("format") != FORMAT:
            raise StoreError(
                f"{self.path} is not a complete trajectory store (format={attrs.get('format')!r}); "
                f"delete it and collect again"
            )
        if attrs.get("version") not in READABLE_VERSIONS:
            raise StoreError(
                f"{self.path} has store version {attrs.get('version')}, this code reads {READABLE_VERSIONS}"
            )
        n = attrs["n_tokens"]
        for rank in range(attrs["world_size"]):
            name = _shard_name(rank)
            if name not in self._root:
                raise StoreError(f"{self.path} lacks shard group {name}")
            group = self._root[name]
            for arr, (dtype, kind) in [*_SAMPLE_ARRAYS.items(), (_STATE_ARRAY, ("int16", "n"))]:
                if arr == FORCED and attrs["version"] == 1:
                    continue
                if arr not in group:
                    raise StoreError(f"{self.path}/{name} lacks array {arr!r}")
                a = group[arr]
                want_ndim = 2 if kind == "n" else 1
                if str(a.dtype) != dtype or a.ndim != want_ndim or (want_ndim == 2 and a.shape[1] != n):
                    raise StoreError(
                        f"{self.path}/{name}/{arr} is {a.dtype}{list(a.shape)}, expected {dtype} with "
                        f"{want_ndim} dims{f' and {n} tokens' if want_ndim == 2 else ''}"
                    )
            if "committed" not in group.attrs:
                raise StoreError(f"{self.path}/{name} has no commit record")

    # ---- properties --------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs)

    @property
    def teacher_hash(self) -> str:
        return self._root.attrs["teacher_hash"]

    @property
    def n_tokens(self) -> int:
        return int(self._root.attrs["n_tokens"])

    @property
    def world_size(self) -> int:
        return int(self._root.attrs["world_size"])

    def shard(self, rank: int) -> Shard:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside this store's world size {self.world_size}")
        return Shard(self._root[_shard_name(rank)], self.n_tokens)

    def __len__(self) -> int:
        return sum(len(self.shard(r)) for r in range(self.world_size))

    def read(self) -> Trajectories:
        """Every committed sample of every shard, sorted by sample_id."""
        parts = [self.shard(r).read() for r in range(self.world_size)]
        parts = [p for p in parts if len(p)]
        if not parts:
            raise StoreError(f"{self.path} holds no committed samples; run `ceed distill collect` first")
        return _merge(parts)


class Shard:
    """The samples one rank collected. Appending commits after the data, reading sees commits only."""

    def __init__(self, group: zarr.Group, n_tokens: int):
        self._g = group
        self.n_tokens = n_tokens
        # A version 1 shard has no forced-prefix column: its samples all have none.
        self._columns = {k: v for k, v in _SAMPLE_ARRAYS.items() if k in group}
        self._truncate_to_commit()

    @property
    def committed(self) -> tuple[int, int]:
        c = self._g.attrs["committed"]
        return int(c["samples"]), int(c["states"])

    def __len__(self) -> int:
        return self.committed[0]

    def _truncate_to_commit(self) -> None:
        n, s = self.committed
        for name, (_, kind) in self._columns.items():
            a = self._g[name]
            if a.shape[0] != n:
                a.resize((n, self.n_tokens) if kind == "n" else (n,))
        st = self._g[_STATE_ARRAY]
        if st.shape[0] != s:
            st.resize((s, self.n_tokens))

    def sample_ids(self) -> np.ndarray:
        return self._g["sample_id"][: len(self)]

    def append(self, batch: TrajectoryBatch) -> None:
        """Append samples, then commit them. Sample ids must continue past the last committed one."""
        if not len(batch.sample_id):
            return
        n, s = self.committed
        ids = np.asarray(batch.sample_id, dtype=np.int64)
        last = int(self._g["sample_id"][n - 1]) if n else -1
        if ids[0] <= last or np.any(np.diff(ids) <= 0):
            raise StoreError(f"sample ids must increase past {last}, got {ids[:5].tolist()}…")
        lengths = np.array([len(t) for t in batch.states], dtype=np.int64)
        states = np.concatenate(batch.states).astype(np.int16)  # [S_new, n]
        if states.shape[1] != self.n_tokens:
            raise StoreError(f"states have {states.shape[1]} tokens, the store holds {self.n_tokens}")
        if FORCED not in self._columns and np.any(batch.forced_tokens):
            raise StoreError(
                "this store predates forced prefixes (version 1) and cannot record them; collect "
                "into a new --output, or resume it without --prefix-prob"
            )
        columns = {
            "sample_id": ids,
            "dataset_index": batch.dataset_index,
            "state_ends": s + np.cumsum(lengths),
            "fixed_point": batch.fixed_point,
            "teacher_tokens": batch.teacher_tokens,
            "gt_tokens": batch.gt_tokens,
            "l1": batch.l1,
            "iterations": batch.iterations,
            "warm_start": batch.warm_start,
            FORCED: batch.forced_tokens,
        }
        for name, (dtype, _) in self._columns.items():
            self._g[name].append(np.asarray(columns[name]).astype(dtype))
        self._g[_STATE_ARRAY].append(states)
        self._g.attrs["committed"] = {"samples": n + len(ids), "states": s + len(states)}

    def read(self) -> Trajectories:
        n, s = self.committed
        cols = {name: self._g[name][:n] for name in self._columns}
        offsets = np.concatenate([[0], cols.pop("state_ends")]).astype(np.int64)
        return Trajectories(state_offsets=offsets, states=self._g[_STATE_ARRAY][:s], **cols)


def _shard_name(rank: int) -> str:
    return f"rank_{rank:03d}"


def _merge(parts: list[Trajectories]) -> Trajectories:
    if len(parts) == 1:
        return parts[0]
    lengths = np.concatenate([np.diff(p.state_offsets) for p in parts])
    states = [p.trajectory(i) for p in parts for i in range(len(p))]
    cat = {name: np.concatenate([getattr(p, name) for p in parts]) for name in SAMPLE_COLUMNS}
    order = np.argsort(cat["sample_id"], kind="stable")
    states = [states[i] for i in order]
    offsets = np.concatenate([[0], np.cumsum(lengths[order])]).astype(np.int64)
    return Trajectories(
        state_offsets=offsets, states=np.concatenate(states), **{k: v[order] for k, v in cat.items()}
    )
