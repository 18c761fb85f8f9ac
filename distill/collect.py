"""`ceed distill collect`: the teacher's exact Jacobi trajectories over dataset frames, into zarr.

    ceed distill collect --teacher runs/teacher/final --dataset-root data/mt10 --output runs/traj.zarr \\
        --trajectories 12000 --warm-start 0.5
    torchrun --nproc_per_node 2 -m ceed_vla.cli distill collect ...   # shards by RANK / WORLD_SIZE

The plan is a fixed sequence of sample ids 0..T-1: id s visits frame perm_r[s % M] of a permutation
of the M frames (round r = s // M has its own seeded permutation), so a partial run covers frames
evenly and more trajectories than frames revisit each frame with another initial guess. Rank r
collects the ids s with s % W == r. Every piece of randomness is seeded by the sample id, so a killed
run resumed with the same arguments appends exactly what the uninterrupted run would have, and a
larger --trajectories later extends the same plan.

Initial guesses: a share `warm_start` of samples starts from the previous chunk's unexecuted tail,
as decoding does at run time (`guess_from_previous_chunk`), the chunk of frame t - e with e in [1, K)
executed steps drawn per sample; the rest start from the decoder's constant guess. The previous
chunk (`--warm-start-source`) is the ground truth's (a stand-in for the policy's own) or the
teacher's own greedy chunk decoded at frame t - e. The ground truth's tail continues the demonstration
exactly, so its first step is this frame's; a policy's previous chunk was planned from an older image
and its first step is often not this chunk's, as at run time.

Fused states (`--fused-states`): the recorded trajectory starts from the guess with the prefill's
exact first free token in place, the state every later iteration sees. The fused prefill (one forward
over [prompt, guess block]) decodes from the guess itself; with this flag a sample whose guess holds
another first free token records that guess as its first state, so the student can train on the
state the fused pass sees.

Forced prefixes (`--prefix-prob`, as in `ceed train`): a share of samples is decoded with the chunk's
first d steps given (`decode(..., forced_bins=)`), the ground-truth tokens moved by the prefix noise,
as the scheduler forces the queue's next d steps at run time. Their trajectories end at the
teacher's AR continuation of that prefix; the store records the forced token count per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ceed_vla.policy.data import ObservationLag, PrefixConfig
from ceed_vla.policy.train_args import (
    add_obs_lag_arguments,
    add_prefix_arguments,
    obs_lag_from_args,
    prefix_config_from_args,
)
from tqdm.auto import tqdm

from ceed_vla.atomic import atomic_write_json
from ceed_vla.cli import config_from_args

from .store import StoreError, TeacherMismatchError, TrajectoryBatch, TrajectoryStore, fingerprint

SUMMARY_FILE = "summary_rank{rank:03d}.json"
# Whose previous chunk a warm start shifts: the demonstration's, or the teacher's own greedy chunk.
WARM_SOURCES = ("ground_truth", "teacher")


@dataclass
class CollectConfig:
    """What to collect. `trajectories` is the plan size over all ranks (None = one per frame)."""

    output: str
    trajectories: int | None = None
    batch_size: int = 32
    warm_start: float = 0.5
    delta: float = (
        0.05  # fraction of the q01..q99 range; only for the summary's share, training picks its own
    )
    seed: int = 0
    prefix: PrefixConfig = field(default_factory=PrefixConfig)  # forced prefixes (off by default)
    # images older than the state, drawn per frame from `seed` (`ceed distill train` draws the same)
    obs_lag: ObservationLag = field(default_factory=ObservationLag)
    warm_start_source: str = "ground_truth"  # whose previous chunk a warm start shifts (WARM_SOURCES)
    fused_states: bool = False  # record the guess the fused prefill sees as the first state

    def __post_init__(self) -> None:
        if self.trajectories is not None and self.trajectories < 1:
            raise ValueError(f"trajectories must be >= 1 or None (one per frame), got {self.trajectories}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.warm_start <= 1.0:
            raise ValueError(f"warm_start is a probability in [0, 1], got {self.warm_start}")
        if self.delta < 0:
            raise ValueError(f"delta must be >= 0 (a fraction of the q01..q99 range), got {self.delta}")
        if self.warm_start_source not in WARM_SOURCES:
            raise ValueError(
                f"warm_start_source must be one of {WARM_SOURCES}, got {self.warm_start_source!r}"
            )


def teacher_fingerprint(policy) -> str:
    """Hash of everything that decides the teacher's tokens: config, normaliser, token ids, weights."""
    config = {
        "policy": policy.config.to_dict(),
        "action_tokenizer": policy.action_tokenizer.to_dict(),
        "state_normalizer": policy.state_normalizer.to_dict(),
        "action_token_start": policy.action_token_start,
    }
    return fingerprint(config, policy.state_dict())


class SamplePlan:
    """Sample id -> (frame index, warm-start guess or not, executed steps e, forced prefix), all
    seeded by the id (each from its own stream, so the prefix draws leave the others unchanged)."""

    def __init__(
        self,
        n_frames: int,
        total: int,
        seed: int,
        warm_start: float,
        chunk_size: int,
        prefix: PrefixConfig | None = None,
    ):
        if n_frames < 1:
            raise ValueError("the dataset has no frames to collect from")
        self.n_frames, self.total, self.seed = n_frames, total, seed
        self.warm_start, self.chunk_size = warm_start, chunk_size
        self.prefix = prefix or PrefixConfig()
        self._perms: dict[int, np.ndarray] = {}

    def ids_for_rank(self, rank: int, world: int) -> np.ndarray:
        return np.arange(rank, self.total, world, dtype=np.int64)

    def frame(self, sample_id: int) -> int:
        r, pos = divmod(int(sample_id), self.n_frames)
        if r not in self._perms:
            self._perms[r] = np.random.default_rng([self.seed, r]).permutation(self.n_frames)
        return int(self._perms[r][pos])

    def guess(self, sample_id: int) -> tuple[bool, int]:
        """(use a warm start, executed steps e in [1, K))."""
        rng = np.random.default_rng([self.seed, 1_000_003, int(sample_id)])
        warm = bool(rng.random() < self.warm_start) and self.chunk_size > 1
        steps = int(rng.integers(1, self.chunk_size)) if self.chunk_size > 1 else 1
        return warm, steps

    def forced(self, sample_id: int, free_limit: int, action_dim: int) -> tuple[int, np.ndarray]:
        """(d forced steps, bin offsets [d, D]); d = 0 without a prefix. free_limit: the most steps
        that leave a real (not padded) step of the frame's chunk free."""
        if not self.prefix.active:
            return 0, np.zeros((0, action_dim), dtype=np.int64)
        rng = np.random.default_rng([self.seed, 2_000_003, int(sample_id)])
        return self.prefix.draw(rng, free_limit, action_dim)


def with_guess_state(states: np.ndarray, forced: int, guess_first: int) -> np.ndarray:
    """The trajectory [T, n] with the state the fused prefill decodes from put first: its first state
    with the first free token (position `forced`) the guess's own. Unchanged where they agree."""
    if int(states[0, forced]) == guess_first:
        return states
    guess = states[0].copy()
    guess[forced] = guess_first
    return np.concatenate([guess[None], states], axis=0)


def trim_trajectory(states: np.ndarray, fixed_point: np.ndarray) -> np.ndarray:
    """Cut a sequence's recorded states [T, n] after the first one equal to its fixed point."""
    hits = np.flatnonzero((states == fixed_point[None]).all(axis=1))
    if not len(hits):
        raise RuntimeError("the recorded Jacobi trajectory never reaches the decoded output")
    return states[: hits[0] + 1]


class Collector:
    """Runs the teacher's exact Jacobi decoding over planned samples and appends them to a shard."""

    def __init__(self, teacher, dataset, frames, config: CollectConfig, indices=None, decode_kwargs=None):
        """teacher: VLAPolicy; dataset: ChunkDataset over every frame (row i = dataset index i);
        frames: the `Frames` it reads (episode bounds for warm starts); indices: the dataset indices
        to collect from (default: all); decode_kwargs: extra `DecodeConfig` fields (backend, step_impl)."""
        from ceed_vla.decoding import DecodeConfig

        self.teacher, self.dataset, self.frames, self.config = teacher, dataset, frames, config
        self.indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.decode_config = DecodeConfig(
            mode="jacobi", n_bins=teacher.n_bins, record_trajectory=True, **(decode_kwargs or {})
        )
        self.chunk_size = teacher.config.chunk_size
        self.action_dim = teacher.config.action_dim
        config.prefix.check_chunk(self.chunk_size)
        # [warm starts, of which the guess's first free token was the teacher's] over run_batch calls
        self.warm_first_token = [0, 0]

    def plan(self) -> SamplePlan:
        cfg = self.config
        total = cfg.trajectories or len(self.indices)
        return SamplePlan(len(self.indices), total, cfg.seed, cfg.warm_start, self.chunk_size, cfg.prefix)

    def frame_index(self, plan: SamplePlan, sample_id: int) -> int:
        return int(self.indices[plan.frame(sample_id)])

    def forced(self, plan: SamplePlan, sample_id: int, index: int) -> tuple[int, np.ndarray]:
        """(d, offsets [d, D]) of the sample's forced prefix at dataset frame `index`."""
        delta = torch.as_tensor(self.frames.delta)
        real = int((index + delta < int(self.frames.ep_end[index])).sum())  # steps before the episode ends
        return plan.forced(sample_id, real - 1, self.action_dim)

    def forced_tokens(self, plan: SamplePlan, ids: np.ndarray) -> np.ndarray:
        """[N] forced token counts (d * D) the plan gives the samples `ids`."""
        counts = [self.forced(plan, s, self.frame_index(plan, s))[0] * self.action_dim for s in ids]
        return np.asarray(counts, dtype=np.int64)

    def _warm_guesses(self, plan: SamplePlan, ids: np.ndarray, indices: list[int]):
        """(guesses [B, n] bins, warm [B] bool): the tail of frame (index - e)'s chunk where the plan
        gives a warm start inside the episode, else the constant guess."""
        from ceed_vla.decoding import guess_from_previous_chunk

        n = self.teacher.chunk_tokens
        guesses = torch.full((len(ids), n), self.decode_config.constant_bin, dtype=torch.long)  # [B, n]
        warm = np.zeros(len(ids), dtype=bool)
        previous: dict[int, tuple[int, int]] = {}  # row -> (frame index - e, e)
        for k, s in enumerate(ids):
            use_warm, steps = plan.guess(s)
            prev = indices[k] - steps
            if use_warm and prev >= int(self.frames.ep_start[indices[k]]):
                previous[k] = (prev, steps)
        if not previous:
            return guesses, warm
        frames = [prev for prev, _ in previous.values()]
        if self.config.warm_start_source == "teacher":
            chunks = self._teacher_chunks(frames)  # [W, n]
        else:
            chunks = [self.teacher.actions_to_bins(self.dataset[p]["action"][None])[0] for p in frames]
        for (k, (_, steps)), chunk in zip(previous.items(), chunks, strict=True):
            guesses[k] = guess_from_previous_chunk(chunk[None], steps, self.action_dim)[0]
            warm[k] = True
        return guesses, warm

    def _teacher_chunks(self, frames: list[int]) -> torch.Tensor:
        """[W, n] the teacher's greedy (AR) chunk at each dataset frame, as it saw the frame."""
        from ceed_vla.decoding import DecodeConfig, decode

        batch = torch.utils.data.default_collate([self.dataset[i] for i in frames])
        embeds, mask = self.teacher.prefix_embeddings(batch)
        config = DecodeConfig(mode="ar", n_bins=self.teacher.n_bins, backend=self.decode_config.backend)
        out = decode(
            self.teacher.lm, embeds, mask, self.teacher.chunk_tokens, self.teacher.action_token_start, config
        )
        return out.bins.cpu()

    @torch.no_grad()
    def run_batch(self, plan: SamplePlan, ids: np.ndarray) -> TrajectoryBatch:
        indices = [self.frame_index(plan, s) for s in ids]
        items = [self.dataset[i] for i in indices]
        batch = torch.utils.data.default_collate(items)
        guesses, warm = self._warm_guesses(plan, ids, indices)  # [B, n], [B]
        gt_actions = batch["action"].float()  # [B, K, D]
        gt_bins = self.teacher.actions_to_bins(gt_actions)  # [B, n]
        forced = np.zeros(len(ids), dtype=np.int64)  # [B] forced tokens
        forced_bins = gt_bins.clone()  # [B, n]; the first forced[k] tokens of row k are its prefix
        for k, s in enumerate(ids):
            d, offsets = self.forced(plan, s, indices[k])
            forced[k] = d * self.action_dim
            moved = gt_bins[k, : forced[k]] + torch.from_numpy(offsets).reshape(-1)
            forced_bins[k, : forced[k]] = moved.clamp(0, self.teacher.n_bins - 1)
        embeds, mask = self.teacher.prefix_embeddings(batch)  # [B, P, H], [B, P]
        fixed, states, iterations = self._decode(embeds, mask, guesses, forced_bins, forced)
        trajectories = [trim_trajectory(states[k], fixed[k].numpy()) for k in range(len(ids))]
        # the first free token as the guess held it, before the prefill's exact token replaced it
        guess_first = guesses[torch.arange(len(ids)), torch.from_numpy(forced)].numpy()  # [B]
        right = guess_first == fixed.numpy()[np.arange(len(ids)), forced]  # [B]
        self.warm_first_token[0] += int(warm.sum())
        self.warm_first_token[1] += int((right & warm).sum())
        if self.config.fused_states:
            trajectories = [
                with_guess_state(t, int(f), int(g))
                for t, f, g in zip(trajectories, forced, guess_first, strict=True)
            ]
        pad = batch.get("action_is_pad")
        pad = torch.zeros(gt_actions.shape[:2], dtype=torch.bool) if pad is None else pad.bool()
        given = torch.arange(self.chunk_size)[None, :] * self.action_dim < torch.from_numpy(forced)[:, None]
        l1 = range_fraction_l1(  # over the decoded steps: the forced ones are no label
            self.teacher.action_tokenizer, self.teacher.tokens_to_actions(fixed), gt_actions, pad | given
        )
        return TrajectoryBatch(
            sample_id=ids,
            dataset_index=np.asarray(indices, dtype=np.int64),
            states=trajectories,
            fixed_point=fixed.numpy(),
            teacher_tokens=fixed.numpy(),
            gt_tokens=gt_bins.numpy(),
            l1=l1.numpy(),
            iterations=iterations,
            warm_start=warm,
            forced_tokens=forced,
        )

    def _decode(self, embeds, mask, guesses, forced_bins, forced):
        """Exact Jacobi per group of samples that force the same number of tokens (a decode call takes
        one prefix length). -> (fixed points [B, n] long, B recorded state arrays [T_k, n], iterations [B])."""
        from ceed_vla.decoding import decode

        b, n = guesses.shape
        fixed = torch.empty((b, n), dtype=torch.long)
        rows_states: list[np.ndarray] = [np.zeros((0, n), dtype=np.int64)] * b
        iterations = np.zeros(b, dtype=np.int64)
        for f in np.unique(forced):
            rows = np.flatnonzero(forced == f)
            sel = torch.from_numpy(rows).to(embeds.device)
            out = decode(
                self.teacher.lm,
                embeds[sel],
                mask[sel],
                n,
                self.teacher.action_token_start,
                config=self.decode_config,
                init_guess=guesses[rows].to(embeds.device),
                forced_bins=forced_bins[rows, :f].to(embeds.device) if f else None,
            )
            fixed[rows] = out.bins.cpu()
            states = torch.stack(out.trajectory, dim=1).cpu().numpy()  # [b_f, T_f, n]
            iterations[rows] = out.stats.iterations.cpu().numpy()
            for j, k in enumerate(rows):
                rows_states[k] = states[j]
        return fixed, rows_states, iterations


def chunk_l1(teacher: torch.Tensor, gt: torch.Tensor, is_pad: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |teacher - gt| over the valid steps of each chunk. [B, K, D] x2 (+ [B, K] pad) -> [B]."""
    err = (teacher.float() - gt.float()).abs().mean(dim=-1)  # [B, K]
    valid = torch.ones_like(err) if is_pad is None else (~is_pad.bool()).float()
    return (err * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


def range_fraction_l1(tokenizer, teacher: torch.Tensor, gt: torch.Tensor, is_pad=None) -> torch.Tensor:
    """`chunk_l1` in normalised units: each dimension's error as a fraction of its q01..q99 range, so
    one delta means the same on joints in degrees, metres or MetaWorld's [-1, 1]. [B, K, D] -> [B]."""
    return chunk_l1(tokenizer.normalize(teacher.float()) / 2.0, tokenizer.normalize(gt.float()) / 2.0, is_pad)


def _guess_recipe(collect: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """What a sample's frames and initial guess depend on besides the plan, from a collection config
    as `asdict(CollectConfig)` writes it into the store's metadata (an older store lacks the later
    keys: their defaults). -> {name: (value, the flags that set it)}; a resume must keep each."""
    lag = ObservationLag(**collect.get("obs_lag", {}))
    return {
        "observation lag": (asdict(lag) if lag.active else "off", "--obs-lag-* flags"),
        "warm_start_source": (collect.get("warm_start_source", "ground_truth"), "--warm-start-source"),
        "fused_states": (collect.get("fused_states", False), "--fused-states"),
    }


def collect(collector: Collector, store: TrajectoryStore, rank: int, world: int) -> dict[str, Any]:
    """Collect this rank's remaining samples; returns the summary of everything its shard holds."""
    cfg = collector.config
    plan = collector.plan()
    shard = store.shard(rank)
    planned = plan.ids_for_rank(rank, world)
    done = shard.sample_ids()
    traj_done = shard.read()
    if not (
        np.array_equal(done, planned[: len(done)])
        and np.array_equal(traj_done.dataset_index, [collector.frame_index(plan, s) for s in done])
        and np.array_equal(traj_done.forced_tokens, collector.forced_tokens(plan, done))
    ):
        raise StoreError(
            f"{store.path} rank {rank} holds samples that this plan does not produce (seed, dataset "
            f"or world size changed?); resume with the original arguments or use a new --output"
        )
    was, now = _guess_recipe(store.attrs.get("meta", {}).get("collect", {})), _guess_recipe(asdict(cfg))
    for name, (before, flags) in was.items():
        if len(done) and before != now[name][0]:
            raise StoreError(
                f"{store.path} was collected with {name}={before!r}, not {now[name][0]!r}; resume with "
                f"the original {flags} or use a new --output"
            )
    todo = planned[len(done) :]
    t0 = time.perf_counter()
    with tqdm(
        total=len(planned), initial=len(done), desc=f"collect r{rank}", unit="traj", dynamic_ncols=True
    ) as bar:
        for lo in range(0, len(todo), cfg.batch_size):
            ids = todo[lo : lo + cfg.batch_size]
            shard.append(collector.run_batch(plan, ids))
            bar.update(len(ids))
    seconds = time.perf_counter() - t0
    summary = summarize(shard.read(), cfg.delta)
    warm_now, right_now = collector.warm_first_token
    summary.update(
        rank=rank,
        world_size=world,
        collected_now=int(len(todo)),
        # of the warm starts collected now: the guess's first free token was the teacher's own
        warm_first_token_right_share=right_now / warm_now if warm_now else None,
        seconds=seconds,
        trajectories_per_s=len(todo) / seconds if seconds > 0 and len(todo) else None,
    )
    return summary


def summarize(traj, delta: float) -> dict[str, Any]:
    """Mean iterations (all, constant-guess, warm-start) and the share of teachers within delta."""
    it = traj.iterations.astype(np.float64)
    warm = traj.warm_start.astype(bool)
    forced = traj.forced_tokens > 0
    return {
        "samples": int(len(traj)),
        "states": int(len(traj.states)),
        "mean_iterations": float(it.mean()) if len(it) else None,
        "mean_iterations_constant_guess": float(it[~warm].mean()) if (~warm).any() else None,
        "mean_iterations_warm_start": float(it[warm].mean()) if warm.any() else None,
        "warm_start_share": float(warm.mean()) if len(warm) else None,
        "forced_prefix_share": float(forced.mean()) if len(forced) else None,
        "mean_iterations_forced_prefix": float(it[forced].mean()) if forced.any() else None,
        "delta": delta,
        "share_within_delta": float((traj.l1 <= delta).mean()) if len(traj) else None,
        "mean_l1": float(traj.l1.mean()) if len(traj) else None,
    }


# ------------------------------------------------------------------------------------------ job


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher checkpoint directory (from `ceed train`)")
    parser.add_argument("--dataset-root", required=True, help="local LeRobotDataset root")
    parser.add_argument("--repo-id", default=None, help="dataset repo id (default: local/<root folder name>)")
    parser.add_argument("--output", required=True, help="zarr store directory (created, or resumed)")
    parser.add_argument(
        "--trajectories", type=int, default=None, help="plan size over all ranks (default: one per frame)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--warm-start", type=float, default=0.5, help="share of samples with a warm-start guess"
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=0.05,
        help="L1 threshold (fraction of the q01..q99 range) for the summary",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warm-start-source",
        choices=WARM_SOURCES,
        default="ground_truth",
        help="whose previous chunk a warm start shifts: the demonstration's, or the teacher's own greedy "
        "chunk at that frame (planned from an older image, as the policy's is at run time)",
    )
    parser.add_argument(
        "--fused-states",
        action="store_true",
        help="record the guess the fused prefill decodes from (its own first free token) as the first state",
    )
    add_prefix_arguments(parser.add_argument_group("forced prefixes (real-time chunking)"))
    add_obs_lag_arguments(parser.add_argument_group("observation lag (planning ahead)"))
    parser.add_argument("--rank", type=int, default=None, help="this process's rank (default: $RANK or 0)")
    parser.add_argument(
        "--world-size", type=int, default=None, help="number of processes (default: $WORLD_SIZE or 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")


def open_store_for_rank(
    path: str | Path, teacher_hash: str, n_tokens: int, n_bins: int, rank: int, world: int, meta: dict
) -> TrajectoryStore:
    """Rank 0 creates (or reopens) the store; the other ranks wait up to a minute for it to appear."""
    kwargs = dict(teacher_hash=teacher_hash, n_tokens=n_tokens, n_bins=n_bins, world_size=world)
    if rank == 0:
        return TrajectoryStore.create_or_open(path, meta=meta, **kwargs)
    deadline = time.monotonic() + 60.0
    while True:
        if Path(path).exists():
            try:
                return TrajectoryStore.create_or_open(path, **kwargs)
            except TeacherMismatchError:
                raise
            except StoreError:  # rank 0 is still writing it
                if time.monotonic() > deadline:
                    raise
        if time.monotonic() > deadline:
            raise StoreError(
                f"rank 0 did not create {path} within 60 s; is it running with the same --output?"
            )
        time.sleep(0.5)


def main(args: argparse.Namespace) -> int:
    from ceed_vla.policy import load_policy
    from ceed_vla.policy.data import ChunkDataset, load_policy_frames

    if args.threads:
        torch.set_num_threads(args.threads)
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", "0"))
    world = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise SystemExit(f"rank {rank} must lie in [0, world size {world})")
    cfg = config_from_args(
        CollectConfig,
        args,
        "output",
        "trajectories",
        "batch_size",
        "warm_start",
        "delta",
        "seed",
        "warm_start_source",
        "fused_states",
        prefix=prefix_config_from_args(args),
        obs_lag=obs_lag_from_args(args),
    )
    teacher = load_policy(args.teacher, device=args.device).eval()
    root = Path(args.dataset_root)
    repo_id = args.repo_id or f"local/{root.name}"
    frames = load_policy_frames(teacher, root, repo_id)
    dataset = ChunkDataset(frames, sorted(set(frames.episode.tolist())), seed=cfg.seed, obs_lag=cfg.obs_lag)
    meta = {
        "teacher": str(Path(args.teacher).resolve()),
        "dataset_root": str(root.resolve()),
        "repo_id": repo_id,
        "collect": asdict(cfg),
    }
    store = open_store_for_rank(
        args.output, teacher_fingerprint(teacher), teacher.chunk_tokens, teacher.n_bins, rank, world, meta
    )
    summary = collect(Collector(teacher, dataset, frames, cfg), store, rank, world)
    atomic_write_json(Path(args.output) / SUMMARY_FILE.format(rank=rank), summary)
    print(json.dumps(summary, indent=2))
    return 0
