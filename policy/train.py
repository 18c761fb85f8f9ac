"""`ceed train`: train the VLA teacher on a LeRobotDataset recorded by `ceed record`.

    ceed train --dataset-root data/mt10 --output runs/teacher --preset tiny --steps 1500
    torchrun --nproc_per_node 2 -m ceed_vla.cli train ...    # DDP (gloo on CPU, NCCL on GPU)
    ceed train --output runs/teacher --resume ...             # continue from checkpoints/last

The output directory holds `checkpoints/step_N/` (loadable policies + training state), `best/` (lowest
validation loss), `final/` (the last weights), `metrics.jsonl`, `loss_curve.png` and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ceed_vla.cli import config_from_args

from .checkpoint_io import atomic_write_text
from .config import VisionConfig, VLAConfig, make_config, spatial_vision
from .data import DataConfig, build_datasets, train_statistics
from .fresh import fresh_policy
from .modeling import VLAPolicy
from .train_args import (
    add_obs_lag_arguments,
    add_prefix_arguments,
    add_training_arguments,
    obs_lag_from_args,
    prefix_config_from_args,
    train_config_from_args,
)
from .trainer import NextTokenLoss, Trainer, last_checkpoint


def configure_parser(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset-root", required=True, nargs="+", help="local LeRobotDataset root(s) from `ceed record`"
    )
    data.add_argument(
        "--repo-id", nargs="+", default=None, help="repo id per root (default: local/<folder name>)"
    )
    data.add_argument("--val-fraction", type=float, default=0.1, help="share of episodes held out")
    data.add_argument("--shift", type=int, default=4, help="random-shift augmentation in pixels (0 = off)")
    data.add_argument(
        "--instruction-noise",
        type=float,
        default=0.0,
        help="per-word probability of dropping or scrambling an instruction word in training (0 = off)",
    )
    data.add_argument("--max-episodes", type=int, default=None, help="use only the first N episodes")
    data.add_argument(
        "--image-keys",
        nargs="+",
        default=None,
        help="camera feature keys to use, each encoded to its own tokens (default: every camera)",
    )

    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=["tiny", "small", "pretrained"], default="tiny")
    model.add_argument("--chunk-size", type=int, default=8, help="K action steps per chunk")
    model.add_argument(
        "--n-action-steps", type=int, default=None, help="steps executed per chunk (default K)"
    )
    model.add_argument("--image-size", type=int, default=None, help="resize camera images to this size")
    model.add_argument(
        "--vision",
        choices=["spatial", "conv"],
        default=None,
        help="image encoder of the tiny/small presets (default: the preset's)",
    )
    model.add_argument("--keypoints", type=int, default=None, help="spatial encoder: keypoint tokens")
    model.add_argument("--grid", type=int, default=None, help="encoder grid tokens per side")
    model.add_argument(
        "--coords",
        action="store_true",
        default=None,
        help="conv/spatial encoder: append pixel x, y channels to the image (CoordConv)",
    )
    model.add_argument(
        "--aux-final-state",
        type=float,
        default=0.0,
        help="weight of the auxiliary loss predicting the episode's final state from the image (0 = off)",
    )
    model.add_argument(
        "--lm-path", default=None, help="local pretrained causal LM directory (preset pretrained)"
    )
    model.add_argument("--vision-tower-path", default=None, help="local pretrained vision model directory")

    train = parser.add_argument_group("training")
    train.add_argument("--output", required=True, help="run directory")
    train.add_argument(
        "--first-step-weight",
        type=float,
        default=1.0,
        help="loss weight of the chunk's first step (default 1)",
    )
    add_training_arguments(train, steps=1500, lr=3e-4, val_every=100)
    add_prefix_arguments(parser.add_argument_group("forced prefix (training for real-time chunking)"))
    add_obs_lag_arguments(parser.add_argument_group("observation lag (training for planning ahead)"))


def model_config(args: argparse.Namespace, action_dim: int, state_dim: int, contract=None) -> VLAConfig:
    common = dict(
        chunk_size=args.chunk_size,
        n_action_steps=args.n_action_steps,
        action_dim=action_dim,
        state_dim=state_dim,
        aux_final_state_weight=getattr(args, "aux_final_state", 0.0),
        **(contract or {}),
    )
    if args.preset == "pretrained":  # `check_model_args` made sure --lm-path is there
        config = make_config("pretrained", lm_path=args.lm_path, tower_path=args.vision_tower_path, **common)
        if config.vision.kind != "pretrained" and getattr(args, "image_size", None) is not None:
            # the conv encoder runs at the size its frames were trained at, wherever it is deployed
            config.vision = VisionConfig(**{**config.vision.__dict__, "image_size": args.image_size})
        return config
    config = make_config(args.preset, **common)
    vision = dict(config.vision.__dict__)
    if args.vision and args.vision != vision["kind"]:
        vision = dict((spatial_vision() if args.vision == "spatial" else VisionConfig()).__dict__)
    for key in ("image_size", "keypoints", "grid", "coords"):
        if getattr(args, key, None) is not None:
            vision[key] = getattr(args, key)
    config.vision = VisionConfig(**vision)
    return config


def build_policy(args: argparse.Namespace, frames, train_set) -> VLAPolicy:
    actions, states = train_statistics(frames, train_set)
    contract = dict(
        image_keys=tuple(frames.image_keys),
        image_shapes=tuple(frames.image_shapes[k] for k in frames.image_keys),
        state_names=frames.state_names,
        action_names=frames.action_names,
        fps=frames.fps,
    )
    config = model_config(args, actions.shape[-1], states.shape[-1], contract)
    return fresh_policy(config, sorted(set(frames.tasks)), actions, states)


def check_model_args(args: argparse.Namespace) -> None:
    """Refuse model options that cannot work before any data is loaded (loading takes minutes)."""
    from pathlib import Path

    if args.preset == "pretrained" and not args.lm_path:
        raise SystemExit("ceed train: --preset pretrained needs --lm-path (a local causal LM directory)")
    for flag, value in (("--lm-path", args.lm_path), ("--vision-tower-path", args.vision_tower_path)):
        if value and not (Path(value) / "config.json").is_file():
            raise SystemExit(
                f"ceed train: {flag} {value} is not a local model directory (no config.json); nothing is "
                "downloaded at run time: save the model there first"
            )
    if args.vision_tower_path and args.preset != "pretrained":
        raise SystemExit("ceed train: --vision-tower-path needs --preset pretrained")


def main(args: argparse.Namespace) -> int:
    check_model_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.resume:
        last_checkpoint(args.output)  # nothing to resume: say so before reading the dataset
    data_cfg = config_from_args(
        DataConfig, args, "chunk_size", "val_fraction", "shift", "instruction_noise", "max_episodes",
        "image_keys", "image_size", roots=args.dataset_root, repo_ids=args.repo_id,
        prefix=prefix_config_from_args(args), obs_lag=obs_lag_from_args(args),
    )  # fmt: skip
    frames, train_set, val_set = build_datasets(data_cfg, seed=args.seed)
    cfg = train_config_from_args(args)
    if args.resume:
        # Tokenizer and statistics must be those the run started with: take them from its checkpoint.
        policy = VLAPolicy.from_pretrained(last_checkpoint(args.output))
        policy.train()
    else:
        policy = build_policy(args, frames, train_set)
    dataset_info = {
        "repo_ids": data_cfg.repo_ids,
        "roots": data_cfg.roots,
        "train_samples": len(train_set),
        "val_samples": len(val_set) if val_set is not None else 0,
        "episodes": int(frames.episode.unique().numel()),
    }
    if data_cfg.prefix.active:
        dataset_info["prefix"] = asdict(data_cfg.prefix)
    if data_cfg.obs_lag.active:
        dataset_info["obs_lag"] = asdict(data_cfg.obs_lag)
    trainer = Trainer(
        policy,
        NextTokenLoss(args.first_step_weight),
        train_set,
        cfg,
        val_set=val_set,
        extra_files={"dataset.json": json.dumps(dataset_info, indent=2)},
    )
    if trainer.info.main:
        print(
            f"policy: {policy.num_parameters() / 1e6:.2f}M parameters, chunk {policy.config.chunk_size}x"
            f"{policy.config.action_dim} = {policy.chunk_tokens} tokens; train {len(train_set)} samples, "
            f"val {dataset_info['val_samples']}; device {trainer.device}, precision {trainer.precision_name}, "
            f"{trainer.info.world} process(es)"
        )
    summary = trainer.fit(resume=args.resume)
    trainer.save_policy(Path(args.output) / "final")  # every rank: a sharded model is gathered first
    if trainer.info.main:
        summary.update(dataset_info, parameters=policy.num_parameters(), world_size=trainer.info.world)
        atomic_write_text(Path(args.output) / "summary.json", json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    return 0
