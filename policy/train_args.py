"""The training flags of both trainers' command lines (`ceed train`, `ceed distill train`): one
definition, read into the shared trainer's `TrainConfig`. Each job keeps its own defaults for the
few flags where teacher training and distillation differ (steps, learning rate, validation)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ceed_vla.cli import config_from_args

from .data import ObservationLag, PrefixConfig
from .precision import PRECISIONS
from .trainer import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
# TrainConfig fields set by a flag of the same name (the others keep TrainConfig's defaults)
_FLAGS = (
    "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "ema_decay", "precision",
    "save_every", "val_every", "val_batches", "log_every", "seed", "num_workers", "device",
    "sharding", "activation_checkpointing",
)  # fmt: skip


def add_training_arguments(group, **defaults) -> None:
    """Add the trainer's flags to `group` (a parser or an argument group); `defaults` overrides
    `TrainConfig`'s defaults by field name (e.g. `steps=2000, lr=1e-4`)."""
    unknown = set(defaults) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"no TrainConfig field named {sorted(unknown)}")
    d = {**_DEFAULTS, **defaults}
    group.add_argument("--steps", type=int, default=d["steps"])
    group.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help="global batch over all processes"
    )
    group.add_argument("--lr", type=float, default=d["lr"])
    group.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    group.add_argument("--warmup-steps", type=int, default=d["warmup_steps"])
    group.add_argument(
        "--min-lr-ratio", type=float, default=d["min_lr_ratio"], help="cosine decays to lr * this"
    )
    group.add_argument(
        "--ema-decay",
        type=float,
        default=d["ema_decay"],
        help="exponential moving average of the weights, saved as the policy (0 = off; 0.999 is typical)",
    )
    group.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=d["precision"],
        help="bf16 autocast (fp32 weights) or fp32; auto: bf16 on CUDA and on CPUs with AMX or AVX512-BF16",
    )
    group.add_argument("--save-every", type=int, default=d["save_every"])
    group.add_argument("--val-every", type=int, default=d["val_every"])
    group.add_argument("--val-batches", type=int, default=d["val_batches"])
    group.add_argument("--log-every", type=int, default=d["log_every"])
    group.add_argument("--seed", type=int, default=d["seed"])
    group.add_argument("--num-workers", type=int, default=d["num_workers"])
    group.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    group.add_argument("--device", default=d["device"])
    group.add_argument("--resume", action="store_true", help="continue from <output>/checkpoints/last")
    group.add_argument(
        "--sharding",
        choices=["none", "fsdp"],
        default=d["sharding"],
        help="fsdp: shard weights, gradients and optimiser state (and a distillation teacher) across "
        "the processes (FSDP2); none: each process holds the whole model (DDP)",
    )
    group.add_argument(
        "--activation-checkpointing",
        action="store_true",
        default=d["activation_checkpointing"],
        help="recompute the transformer blocks' activations in the backward pass (less memory, ~1/3 more compute)",
    )


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` of parsed flags (`args.output` is the run directory)."""
    return config_from_args(TrainConfig, args, *_FLAGS, output_dir=args.output)


def add_prefix_arguments(group) -> None:
    """The forced-prefix flags (real-time chunking), shared by `ceed train` (training samples) and
    `ceed distill collect` (collected trajectories); off unless --prefix-prob is above 0."""
    d = PrefixConfig()
    group.add_argument(
        "--prefix-prob",
        type=float,
        default=d.prob,
        help="share of samples whose first d steps are given (forced, no loss) rather than predicted (0 = off)",
    )
    group.add_argument(
        "--prefix-max-steps",
        type=int,
        default=d.max_steps,
        help="d is drawn uniformly in 1..this (below the chunk size)",
    )
    group.add_argument(
        "--prefix-noise",
        type=float,
        default=d.noise,
        help="standard deviation, in bins, of the offset added to each forced ground-truth token",
    )


def prefix_config_from_args(args: argparse.Namespace) -> PrefixConfig:
    return PrefixConfig(prob=args.prefix_prob, max_steps=args.prefix_max_steps, noise=args.prefix_noise)


def add_obs_lag_arguments(group) -> None:
    """The observation-lag flags (training for planning ahead), shared by `ceed train` (training
    samples) and `ceed distill collect` (the frames the teacher decodes and the student learns from);
    off unless --obs-lag-prob is above 0."""
    d = ObservationLag()
    group.add_argument(
        "--obs-lag-prob",
        type=float,
        default=d.prob,
        help="share of samples whose cameras show a frame k steps before the state's (0 = off)",
    )
    group.add_argument(
        "--obs-lag-max-steps",
        type=int,
        default=d.max_steps,
        help="k is drawn uniformly in 1..this (the most steps a scheduler plans ahead)",
    )


def obs_lag_from_args(args: argparse.Namespace) -> ObservationLag:
    return ObservationLag(prob=args.obs_lag_prob, max_steps=args.obs_lag_max_steps)
