"""Training data: a LeRobotDataset on disk -> in-memory frames -> action-chunk samples.

Chunks follow the dataset's own delta-timestamp machinery: the dataset is opened with
`delta_timestamps={"action": [0, 1/fps, ..., (K-1)/fps]}` and its resolved `delta_indices` are
applied with LeRobot's rule (indices clamped to the episode, `action_is_pad` where they run past it).
The frames themselves are decoded once into memory (uint8 images; video a block of an episode at a
time), because LeRobot's per-item path costs about 10 ms a sample here — more than a training step
of the tiny model.

Validation holds out whole episodes, so validation loss measures generalisation to new initial
conditions rather than to neighbouring frames of a training episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ceed_vla.keys import (
    ACTION_KEY,
    FINAL_STATE_KEY,
    IMAGE_KEY,
    PREFIX_OFFSET_KEY,
    PREFIX_STEPS_KEY,
    STATE_KEY,
    TASK_KEY,
)

REQUIRED_FEATURES = (STATE_KEY, ACTION_KEY)  # plus at least one camera


class DatasetFeatureError(ValueError):
    """The dataset lacks a feature the policy needs."""


@dataclass
class PrefixConfig:
    """Training for a forced prefix (real-time chunking): with probability `prob` per sample, the
    chunk's first d steps (d uniform in 1..max_steps, and short enough to leave at least one real
    step of the episode free) are given as input and carry no loss.

    Where the prefix comes from: at run time it is the policy's older plan for those ticks. A
    demonstration has one plan only: the ground-truth chunk of frame t - d, re-indexed to tick t, is
    the same ground truth as frame t's own first d steps, so a clean prefix differs from plain
    teacher forcing in the loss mask alone. The older plan's error is modelled as noise instead:
    each forced token moves by round(N(0, noise)) bins (clipped to the bin range), and the free
    steps still learn the ground truth, i.e. to continue from a prefix that is slightly off.
    """

    prob: float = 0.0
    max_steps: int = 4
    noise: float = 0.0  # standard deviation of each forced token's offset, in bins

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prefix prob is a probability in [0, 1], got {self.prob!r}")
        if self.max_steps < 1:
            raise ValueError(f"prefix max_steps must be >= 1, got {self.max_steps!r}")
        if self.noise < 0:
            raise ValueError(f"prefix noise is a standard deviation in bins, >= 0; got {self.noise!r}")

    @property
    def active(self) -> bool:
        return self.prob > 0

    def check_chunk(self, chunk_size: int) -> None:
        if self.active and self.max_steps >= chunk_size:
            raise ValueError(
                f"prefix max_steps={self.max_steps} leaves no free step of a {chunk_size}-step chunk; "
                f"use at most {chunk_size - 1}"
            )

    def draw(self, rng: np.random.Generator, free_limit: int, action_dim: int) -> tuple[int, np.ndarray]:
        """(d, offsets [d, D] int64) for one sample; d = 0 (and no offsets) when it gets no prefix.

        free_limit: the largest d that leaves a real (not padded) step free in this sample's chunk.
        One generator call order for every sample, so the draws do not depend on the episode's end.
        """
        use = rng.random() < self.prob
        d = min(int(rng.integers(1, self.max_steps + 1)), free_limit)
        z = rng.standard_normal((self.max_steps, action_dim))
        if not use or d < 1:
            return 0, np.zeros((0, action_dim), dtype=np.int64)
        return d, np.rint(z[:d] * self.noise).astype(np.int64)


@dataclass
class ObservationLag:
    """Training for planning ahead: with probability `prob` per sample, the cameras show frame t - k
    (k uniform in 1..max_steps, clamped to the episode's first frame) while the state and the action
    chunk are frame t's.

    A real-time scheduler that plans ahead (docs/sim.md) asks for the chunk that starts after the d
    steps already committed, from the state those steps lead to, but the only image it has is the one
    taken when it asked: d ticks older than the state. A policy trained on synchronous frames has
    never seen the arm in one place in the state and in another in the image; these samples show it
    that pairing, with the demonstration's own continuation from the newer state as the target.
    """

    prob: float = 0.0
    max_steps: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"observation lag prob is a probability in [0, 1], got {self.prob!r}")
        if self.max_steps < 1:
            raise ValueError(f"observation lag max_steps must be >= 1, got {self.max_steps!r}")

    @property
    def active(self) -> bool:
        return self.prob > 0

    def draw(self, rng: np.random.Generator) -> int:
        """k, the frames the image lags behind the state (0: no lag); one generator call order."""
        use = rng.random() < self.prob
        k = int(rng.integers(1, self.max_steps + 1))
        return k if use else 0


@dataclass
class DataConfig:
    roots: list[str]  # one or more local LeRobotDataset roots (their episodes are concatenated)
    repo_ids: list[str] | None = None  # default: local/<root folder name>
    chunk_size: int = 8
    val_fraction: float = 0.1  # share of episodes held out for validation (whole episodes)
    shift: int = 4  # random-shift augmentation in pixels (0 = off)
    instruction_noise: float = 0.0  # per-word probability of dropping or scrambling a training word
    max_episodes: int | None = None  # use only the first N episodes (quick runs)
    image_keys: list[str] | None = None  # cameras to use, by feature key (default: every camera)
    image_size: int | None = None  # resize frames to this square size as they load (bounded memory)
    prefix: PrefixConfig | None = None  # forced-prefix training samples (None = off)
    obs_lag: ObservationLag | None = None  # images older than the state (None = off)

    def __post_init__(self) -> None:
        if self.prefix is not None:
            self.prefix.check_chunk(self.chunk_size)
        self.roots = [str(r) for r in ([self.roots] if isinstance(self.roots, str | Path) else self.roots)]
        if not self.roots:
            raise ValueError("DataConfig.roots is empty; pass at least one dataset root")
        for root in self.roots:
            if not Path(root).is_dir():
                raise FileNotFoundError(
                    f"dataset root {root!r} does not exist; record one with `ceed record`"
                )
        if self.repo_ids is None:
            self.repo_ids = [f"local/{Path(r).name}" for r in self.roots]
        if len(self.repo_ids) != len(self.roots):
            raise ValueError(f"{len(self.repo_ids)} repo ids for {len(self.roots)} roots: {self.repo_ids!r}")
        if self.chunk_size <= 0:
            raise ValueError(f"DataConfig.chunk_size must be positive, got {self.chunk_size!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"DataConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.shift < 0:
            raise ValueError(f"DataConfig.shift must be >= 0, got {self.shift!r}")
        if not 0.0 <= self.instruction_noise <= 1.0:
            raise ValueError(
                f"DataConfig.instruction_noise is a probability in [0, 1], got {self.instruction_noise!r}"
            )
        if self.max_episodes is not None and self.max_episodes <= 0:
            raise ValueError(f"DataConfig.max_episodes must be positive or None, got {self.max_episodes!r}")


@dataclass
class Frames:
    """Every frame of the dataset, in memory; row i is the dataset's absolute index i."""

    images: torch.Tensor  # [N, 3, H, W] uint8
    states: torch.Tensor  # [N, S] float32
    actions: torch.Tensor  # [N, D] float32
    episode: torch.Tensor  # [N] long
    ep_start: torch.Tensor  # [N] long: first index of the row's episode
    ep_end: torch.Tensor  # [N] long: one past the last index of the row's episode
    tasks: list[str]  # [N]
    delta: list[int]  # action offsets resolved from delta timestamps, length K
    fps: float
    cameras: dict[str, torch.Tensor] | None = None  # key -> [N, 3, H, W] uint8; None = {IMAGE_KEY: images}
    image_shapes: dict[str, tuple[int, int, int]] | None = None  # key -> [C, H, W] as recorded
    state_names: list[str] | None = None
    action_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.cameras is None:
            self.cameras = {IMAGE_KEY: self.images}
        if self.image_shapes is None:
            self.image_shapes = {k: tuple(v.shape[1:]) for k, v in self.cameras.items()}

    @property
    def image_keys(self) -> list[str]:
        return list(self.cameras)

    def __len__(self) -> int:
        return int(self.states.shape[0])


def camera_keys(features: dict) -> list[str]:
    return [k for k, ft in features.items() if ft.get("dtype") in ("image", "video")]


def check_features(features: dict, root: str | Path, image_keys: list[str] | None = None) -> list[str]:
    """The camera keys to use (`image_keys`, default every camera), after checking the features."""
    missing = [k for k in REQUIRED_FEATURES if k not in features]
    cams = camera_keys(features)
    if missing or not cams:
        raise DatasetFeatureError(
            f"dataset at {root} is missing feature(s) {missing or ['a camera']} (has {sorted(features)}); "
            f"the policy needs {list(REQUIRED_FEATURES)} and at least one camera — see docs/interfaces.md"
        )
    keys = list(image_keys) if image_keys else cams
    unknown = [k for k in keys if k not in cams]
    if unknown:
        raise DatasetFeatureError(
            f"--image-keys {unknown} are not cameras of the dataset at {root}; its cameras are {cams}"
        )
    return keys


def open_dataset(repo_id: str, root: str | Path, chunk_size: int, image_keys: list[str] | None = None):
    """The LeRobotDataset with the action-chunk delta timestamps, after checking its features."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(repo_id, root=root)
    check_features(meta.features, root, image_keys)
    delta = {ACTION_KEY: [i / meta.fps for i in range(chunk_size)]}
    return LeRobotDataset(repo_id, root=root, delta_timestamps=delta)


def _resize_uint8(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """[N, 3, H, W] uint8 -> [N, 3, size, size] uint8 (antialiased), or unchanged when size is None."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((*images.shape[:-2], size, size), dtype=torch.uint8)
    for lo in range(0, images.shape[0], 32):  # float copies of 32 frames at a time, not the block's
        x = images[lo : lo + 32].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[lo : lo + 32] = x.round().clamp(0, 255).to(torch.uint8)
    return out


def _to_uint8_chw(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8:
        images = (
            (images.float() * (255.0 if images.max() <= 1.0 else 1.0)).round().clamp(0, 255).to(torch.uint8)
        )
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    return images.contiguous()


def load_frames(
    repo_id: str,
    root: str | Path,
    chunk_size: int,
    block: int = 256,
    image_keys: list[str] | None = None,
    image_size: int | None = None,
) -> Frames:
    """Decode the dataset into memory (images as uint8, resized to `image_size` as each block or
    frame is read, so memory is bounded by the model's size, not the camera's), with LeRobot's
    delta indices. `image_keys` picks cameras by feature key (default: every camera)."""
    ds = open_dataset(repo_id, root, chunk_size, image_keys)
    keys = check_features(ds.meta.features, root, image_keys)
    reader = ds._ensure_reader()
    if reader.hf_dataset is None:
        reader.load_and_activate()
    delta = list(reader.delta_indices[ACTION_KEY])
    hf = ds.hf_dataset.with_format("torch")
    n = len(hf)
    video = [k for k in keys if k in ds.meta.video_keys]
    stored = [k for k in keys if k not in video]
    columns = [STATE_KEY, ACTION_KEY, "episode_index", "task_index"] + (["timestamp"] if video else [])
    parts: dict[str, list[torch.Tensor]] = {c: [] for c in columns + stored}
    for lo in tqdm(range(0, n, block), desc="loading frames", unit="block", leave=False):
        rows = hf.select_columns(columns + stored)[lo : lo + block]
        for c in columns:
            parts[c].append(torch.as_tensor(rows[c]))
        for c in stored:
            parts[c].append(_resize_uint8(_to_uint8_chw(torch.as_tensor(rows[c])), image_size))
    if video:
        timestamps = torch.cat(parts.pop("timestamp"))
        episodes = torch.cat(parts["episode_index"]).long()
        for k in video:
            parts[k] = _decode_video(ds, k, episodes, timestamps, block, image_size)
    cols = {c: torch.cat(v) for c, v in parts.items()}
    task_names = {
        int(row): str(name)
        for name, row in zip(ds.meta.tasks.index, ds.meta.tasks["task_index"], strict=True)
    }
    episode = cols["episode_index"].long()
    starts, ends = _episode_bounds(episode)
    cameras = {k: cols[k].contiguous() for k in keys}
    feats = ds.meta.features
    return Frames(
        images=cameras[keys[0]],
        states=cols[STATE_KEY].float(),
        actions=cols[ACTION_KEY].float(),
        episode=episode,
        ep_start=starts,
        ep_end=ends,
        tasks=[task_names[int(t)] for t in cols["task_index"]],
        delta=delta,
        fps=float(ds.fps),
        cameras=cameras,
        image_shapes={k: _chw(feats[k]) for k in keys},
        state_names=_names(feats[STATE_KEY]),
        action_names=_names(feats[ACTION_KEY]),
    )


def _decode_video(
    ds, key: str, episodes: torch.Tensor, timestamps: torch.Tensor, block: int, image_size: int | None
) -> list[torch.Tensor]:
    """Every row's frame of camera `key`, decoded `block` frames at a time per episode (one seek and a
    sequential decode, instead of one seek per frame) and resized before the next block is read."""
    from lerobot.datasets.video_utils import decode_video_frames, get_safe_default_video_backend

    backend = get_safe_default_video_backend()
    out: list[torch.Tensor] = []
    runs, counts = torch.unique_consecutive(episodes, return_counts=True)
    lo = 0
    with tqdm(total=episodes.numel(), desc=f"decoding {key}", unit="frame", leave=False) as bar:
        for ep, count in zip(runs.tolist(), counts.tolist(), strict=True):
            path = Path(ds.root) / ds.meta.get_video_file_path(ep, key)
            offset = float(ds.meta.episodes[ep][f"videos/{key}/from_timestamp"])
            for b in range(lo, lo + count, block):
                ts = (timestamps[b : min(b + block, lo + count)].double() + offset).tolist()
                frames = decode_video_frames(path, ts, ds.tolerance_s, backend, return_uint8=True)
                out.append(_resize_uint8(_to_uint8_chw(frames), image_size))
                bar.update(len(ts))
            lo += count
    return out


def _chw(feature: dict) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in feature["shape"])
    names = feature.get("names") or []
    return shape if list(names)[:1] == ["channels"] or shape[0] == 3 else (shape[2], shape[0], shape[1])


def _names(feature: dict) -> list[str] | None:
    names = feature.get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if names else None


def load_policy_frames(policy, root: str | Path, repo_id: str | None = None) -> Frames:
    """The dataset's frames in the shape a trained policy reads: its chunk size, cameras and image size."""
    return load_frames(
        repo_id or f"local/{Path(root).name}",
        root,
        policy.config.chunk_size,
        image_keys=list(policy.config.image_keys),
        image_size=policy.config.vision.image_size,
    )


def _episode_bounds(episode: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the [start, end) index range of its episode (episodes are contiguous on disk)."""
    n = episode.numel()
    change = torch.nonzero(episode[1:] != episode[:-1]).flatten() + 1
    bounds = torch.cat([torch.tensor([0]), change, torch.tensor([n])])
    lengths = bounds[1:] - bounds[:-1]
    return bounds[:-1].repeat_interleave(lengths), bounds[1:].repeat_interleave(lengths)


def split_episodes(episodes: list[int], val_fraction: float) -> tuple[list[int], list[int]]:
    """Hold out every k-th episode (k = round(1 / val_fraction)), spread over the recording order."""
    if val_fraction <= 0 or len(episodes) < 2:
        return list(episodes), []
    k = max(2, round(1.0 / val_fraction))
    val = [e for i, e in enumerate(episodes) if i % k == k - 1]
    train = [e for e in episodes if e not in set(val)]
    return train, val


class ChunkDataset(Dataset):
    """Samples `{image, state, action [K, D], action_is_pad [K], task}` from chosen episodes.

    Augmentations, each drawn from a generator seeded by (seed, epoch, index), so a sample looks the
    same whichever process or worker loads it (what makes resumed and multi-process runs reproduce
    single-process ones):
    - `shift`: a random shift of every image (replicate-pad by `shift` px, crop back);
    - `instruction_noise`: each word of the instruction is, with this probability, dropped or
      replaced by a random string of letters (`noisy_instruction`);
    - `prefix` (`PrefixConfig`): a forced prefix of d steps, as `action_prefix_steps` [] long and
      `action_prefix_offset` [K, D] long (bin offsets of the forced steps, 0 elsewhere). Both keys
      are there for every sample (d = 0 without a prefix) when the prefix is on, and absent when off;
    - `obs_lag` (`ObservationLag`): the cameras show a frame up to k steps before the state's.
    """

    def __init__(
        self,
        frames: Frames,
        episodes: list[int],
        shift: int = 0,
        seed: int = 0,
        instruction_noise: float = 0.0,
        prefix: PrefixConfig | None = None,
        obs_lag: ObservationLag | None = None,
    ):
        self.frames = frames
        keep = torch.isin(frames.episode, torch.tensor(sorted(episodes), dtype=torch.long))
        self.rows = torch.nonzero(keep).flatten()  # [M] absolute dataset indices
        self.delta = torch.tensor(frames.delta, dtype=torch.long)  # [K]
        self.shift = shift
        self.instruction_noise = instruction_noise
        self.prefix = prefix if prefix is not None and prefix.active else None
        if self.prefix is not None:
            self.prefix.check_chunk(len(frames.delta))
        self.obs_lag = obs_lag if obs_lag is not None and obs_lag.active else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __getitem__(self, i: int) -> dict:
        f = self.frames
        idx = int(self.rows[i])
        target = idx + self.delta  # [K]
        start, end = int(f.ep_start[idx]), int(f.ep_end[idx])
        pad = (target < start) | (target >= end)  # [K]
        action = f.actions[target.clamp(start, end - 1)]  # [K, D]
        seen = max(start, idx - self._lag(idx))  # the frame the cameras show
        sample = {}
        for c, (key, images) in enumerate(f.cameras.items()):
            image = images[seen].float() / 255.0  # [3, H, W]
            sample[key] = self._shift(image, idx * 31 + c if c else idx) if self.shift else image
        item = {
            **sample,
            STATE_KEY: f.states[idx],
            ACTION_KEY: action,
            f"{ACTION_KEY}_is_pad": pad,
            TASK_KEY: self._instruction(f.tasks[idx], idx),
            FINAL_STATE_KEY: f.states[end - 1],  # [S]: where the demonstration ends
        }
        if self.prefix is not None:
            item.update(self._prefix(idx, pad, action.shape[-1]))
        return item

    def _prefix(self, idx: int, pad: torch.Tensor, action_dim: int) -> dict[str, torch.Tensor]:
        """The forced-prefix keys of sample `idx`, drawn from a generator seeded by (seed, epoch, idx)."""
        rng = np.random.default_rng([self.seed, self.epoch, idx, 2])
        real = int((~pad).sum())  # steps before the episode's end; padded steps carry no loss
        d, offsets = self.prefix.draw(rng, real - 1, action_dim)
        offset = torch.zeros((len(self.delta), action_dim), dtype=torch.long)  # [K, D]
        offset[:d] = torch.from_numpy(offsets)
        return {PREFIX_STEPS_KEY: torch.tensor(d, dtype=torch.long), PREFIX_OFFSET_KEY: offset}

    def _lag(self, idx: int) -> int:
        """Frames the cameras lag behind sample `idx`'s state, drawn from (seed, epoch, idx); 0 when off."""
        if self.obs_lag is None:
            return 0
        return self.obs_lag.draw(np.random.default_rng([self.seed, self.epoch, idx, 3]))

    def _instruction(self, text: str, idx: int) -> str:
        if not self.instruction_noise:
            return text
        rng = np.random.default_rng([self.seed, self.epoch, idx, 1])
        return noisy_instruction(text, self.instruction_noise, rng)

    def _shift(self, image: torch.Tensor, idx: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, idx)) & 0x7FFF_FFFF_FFFF_FFFF)
        dx, dy = torch.randint(0, 2 * self.shift + 1, (2,), generator=g).tolist()
        _, h, w = image.shape
        padded = F.pad(image[None], (self.shift,) * 4, mode="replicate")[0]
        return padded[:, dy : dy + h, dx : dx + w]


def noisy_instruction(text: str, p: float, rng: np.random.Generator) -> str:
    """`text` with each word, with probability p, dropped or replaced by 2-8 random letters (even odds).

    A policy trained on a few fixed phrasings per task learns to read the exact words; a paraphrase
    with words it never saw (which the tokenizer cuts into unfamiliar pieces) then reads as another
    task. Noised words teach it that any one word may be missing or unknown, and that the scene,
    which tells these tasks apart by itself, is what to trust.
    """
    words = []
    for word in text.split():
        if rng.random() >= p:
            words.append(word)
        elif rng.random() < 0.5:
            letters = rng.integers(ord("a"), ord("z") + 1, int(rng.integers(2, 9)))
            words.append("".join(map(chr, letters)))
    return " ".join(words)


def concat_frames(parts: list[Frames]) -> Frames:
    """Frames of several datasets as one: indices and episode numbers are offset to stay unique."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for p in parts[1:]:
        if p.image_keys != first.image_keys:
            raise DatasetFeatureError(
                f"datasets have different cameras: {p.image_keys} vs {first.image_keys}; pass --image-keys"
            )
        if p.images.shape[1:] != first.images.shape[1:] or p.delta != first.delta:
            raise DatasetFeatureError(
                f"datasets differ: images {tuple(p.images.shape[1:])} vs {tuple(first.images.shape[1:])}, "
                f"action offsets {p.delta} vs {first.delta}; record them with the same settings"
            )
    offsets = [0]
    ep_offsets = [0]
    for p in parts[:-1]:
        offsets.append(offsets[-1] + len(p))
        ep_offsets.append(ep_offsets[-1] + int(p.episode.max()) + 1)
    cameras = {k: torch.cat([p.cameras[k] for p in parts]) for k in first.image_keys}
    return Frames(
        images=cameras[first.image_keys[0]],
        states=torch.cat([p.states for p in parts]),
        actions=torch.cat([p.actions for p in parts]),
        episode=torch.cat([p.episode + e for p, e in zip(parts, ep_offsets, strict=True)]),
        ep_start=torch.cat([p.ep_start + o for p, o in zip(parts, offsets, strict=True)]),
        ep_end=torch.cat([p.ep_end + o for p, o in zip(parts, offsets, strict=True)]),
        tasks=[t for p in parts for t in p.tasks],
        delta=first.delta,
        fps=first.fps,
        cameras=cameras,
        image_shapes=first.image_shapes,
        state_names=first.state_names,
        action_names=first.action_names,
    )


def build_datasets(config: DataConfig, seed: int = 0) -> tuple[Frames, ChunkDataset, ChunkDataset | None]:
    parts = [
        load_frames(r, root, config.chunk_size, image_keys=config.image_keys, image_size=config.image_size)
        for r, root in zip(config.repo_ids, config.roots, strict=True)
    ]
    frames = concat_frames(parts)
    episodes = sorted(set(frames.episode.tolist()))
    if config.max_episodes is not None:
        episodes = episodes[: config.max_episodes]
    train_eps, val_eps = split_episodes(episodes, config.val_fraction)
    train = ChunkDataset(
        frames,
        train_eps,
        shift=config.shift,
        seed=seed,
        instruction_noise=config.instruction_noise,
        prefix=config.prefix,
        obs_lag=config.obs_lag,
    )
    val = ChunkDataset(frames, val_eps, shift=0, seed=seed) if val_eps else None
    return frames, train, val


def train_statistics(frames: Frames, dataset: ChunkDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions [M, D] and states [M, S] of the training rows (statistics never see validation data)."""
    return frames.actions[dataset.rows], frames.states[dataset.rows]


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, math.floor(n_samples / batch_size))


__all__ = [
    "ChunkDataset",
    "DataConfig",
    "DatasetFeatureError",
    "Frames",
    "PrefixConfig",
    "build_datasets",
    "concat_frames",
    "check_features",
    "load_frames",
    "open_dataset",
    "split_episodes",
    "train_statistics",
]
