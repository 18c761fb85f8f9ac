"""`ceed bench train`: training throughput (samples/s) and AR decode latency (ms per chunk).

Training runs the real `Trainer` (data path, augmentation, AdamW, clipping) on synthetic frames of
the recorded shape, so the number is the trainer's and not the disk's. Each precision is timed
`--rounds` times, the precisions in turn, and compared by its median (bf16 on the CPU includes the
fp32 attention of `precision.py`). Decode latency is
`predict_action_chunk` at batch 1 with AR decoding, the reference mode. Writes one JSON record.

    ceed bench train --preset tiny --image-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ceed_vla.keys import IMAGE_KEY, STATE_KEY, TASK_KEY

from .checkpoint_io import atomic_write_text
from .config import VisionConfig, make_config
from .data import ChunkDataset, Frames, _episode_bounds
from .fresh import fresh_policy
from .modeling import VLAPolicy
from .trainer import METRICS_FILE, NextTokenLoss, TrainConfig, Trainer

TASKS = ["reach the red goal", "push the puck to the goal", "open the drawer", "close the window"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per precision")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument(
        "--rounds", type=int, default=2, help="the precisions timed in turn this many times (interleaved)"
    )
    parser.add_argument("--chunks", type=int, default=20, help="timed AR decodes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/train.json"))


def synthetic_frames(image_size: int, chunk: int, episodes: int = 16, length: int = 40) -> Frames:
    g = torch.Generator().manual_seed(0)
    n = episodes * length
    episode = torch.arange(episodes).repeat_interleave(length)
    start, end = _episode_bounds(episode)
    return Frames(
        images=torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=g),
        states=torch.rand(n, 4, generator=g),
        actions=torch.rand(n, 4, generator=g) * 2 - 1,
        episode=episode,
        ep_start=start,
        ep_end=end,
        tasks=[TASKS[e % len(TASKS)] for e in episode.tolist()],
        delta=list(range(chunk)),
        fps=80.0,
    )


def build_policy(args: argparse.Namespace, frames: Frames) -> VLAPolicy:
    config = make_config(args.preset, chunk_size=args.chunk_size)
    config.vision = VisionConfig(**{**config.vision.__dict__, "image_size": args.image_size})
    return fresh_policy(config, TASKS, frames.actions, frames.states)


def train_throughput(args: argparse.Namespace, frames: Frames, precision: str) -> dict:
    torch.manual_seed(0)
    policy = build_policy(args, frames)
    dataset = ChunkDataset(frames, list(range(16)), shift=4)
    with tempfile.TemporaryDirectory() as out:
        warm = 5
        config = TrainConfig(
            output_dir=out, steps=warm + args.steps, batch_size=args.batch_size, log_every=warm + args.steps,
            save_every=10**6, val_every=10**6, warmup_steps=1, precision=precision, device=args.device,
        )  # fmt: skip
        trainer = Trainer(policy.train(), NextTokenLoss(), dataset, config)
        trainer.fit(until_step=warm)  # warm-up: allocator, autocast caches, first-call overheads
        trainer.fit(resume=True)  # its one metrics row times exactly the `args.steps` steps
        rows = [json.loads(r) for r in (Path(out) / METRICS_FILE).read_text().splitlines()]
    return {
        "precision": precision,
        "samples_per_s": rows[-1]["samples_per_s"],
        "loss_last": rows[-1]["loss"],
        "parameters": policy.num_parameters(),
    }


def _speedups(train: list[dict]) -> list[dict]:
    """Per precision: median samples/s over its rounds and the ratio to fp32's median (None without
    an fp32 row). The rounds alternate precisions, so a machine busy for a while slows both."""
    by: dict[str, list[float]] = {}
    for row in train:
        by.setdefault(row["precision"], []).append(row["samples_per_s"])
    fp32 = statistics.median(by["fp32"]) if "fp32" in by else None
    return [
        {
            "precision": name,
            "rounds": len(values),
            "samples_per_s_median": statistics.median(values),
            "speedup_vs_fp32": statistics.median(values) / fp32 if fp32 else None,
        }
        for name, values in by.items()
    ]


def decode_latency(args: argparse.Namespace, frames: Frames) -> dict:
    torch.manual_seed(0)
    policy = build_policy(args, frames).to(args.device).eval()
    ms = []
    for i in range(args.chunks + 2):
        obs = {
            IMAGE_KEY: frames.images[i : i + 1].float() / 255,
            STATE_KEY: frames.states[i : i + 1],
            TASK_KEY: [frames.tasks[i]],
        }
        t0 = time.perf_counter()
        policy.predict_action_chunk(obs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:  # the first calls pay one-time costs
            ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "mode": "ar",
        "chunk_tokens": policy.chunk_tokens,
        "ms_per_chunk_p50": statistics.median(ms),
        "ms_per_chunk_mean": statistics.fmean(ms),
        "ms_per_token_p50": statistics.median(ms) / policy.chunk_tokens,
        "decode_wall_ms_last": float(policy.last_decode_stats.wall_ms),
    }


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = synthetic_frames(args.image_size, args.chunk_size)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.rounds < 1 or not precisions:
        raise SystemExit("ceed bench train: --rounds must be >= 1 and --precisions name at least one")
    train = [train_throughput(args, frames, p) for _ in range(args.rounds) for p in precisions]
    summary = _speedups(train)
    decode = decode_latency(args, frames)
    record = {
        "benchmark": "train",
        "preset": args.preset,
        "image_size": args.image_size,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "train": train,
        "summary": summary,
        "decode": decode,
    }
    print(f"\n{args.preset} preset, {train[0]['parameters'] / 1e6:.2f}M parameters, {args.image_size}px, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.device}")  # fmt: skip
    print("| precision | train samples/s |")
    print("| --- | ---: |")
    for row in train:
        print(f"| {row['precision']} | {row['samples_per_s']:.1f} |")
    for row in summary:
        ratio = f", {row['speedup_vs_fp32']:.2f}x fp32" if row["speedup_vs_fp32"] else ""
        print(f"{row['precision']}: median {row['samples_per_s_median']:.1f} samples/s over "
              f"{row['rounds']} round(s){ratio}")  # fmt: skip
    print(f"\nAR decode, {decode['chunk_tokens']} tokens: {decode['ms_per_chunk_p50']:.1f} ms/chunk p50 "
          f"({decode['ms_per_token_p50']:.2f} ms/token), mean {decode['ms_per_chunk_mean']:.1f} ms")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(record, indent=2))
    print(f"wrote {args.output}")
    return 0
