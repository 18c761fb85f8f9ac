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
from pathlib import Path

import torch

from .action_tokenizer import ActionTokenizer, StateNormalizer
from .checkpoint_io import atomic_write_text
from .config import VisionConfig, VLAConfig, make_config, spatial_vision
from .data import DataConfig, build_datasets, train_statistics
from .modeling import VLAPolicy
from .text_tokenizer import load_tokenizer, train_instruction_tokenizer
from .trainer import NextTokenLoss, TrainConfig, Trainer, last_checkpoint


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
    train.add_argument("--steps", type=int, default=1500)
    train.add_argument("--batch-size", type=int, default=32, help="global batch over all processes")
    train.add_argument("--lr", type=float, default=3e-4)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument(
        "--first-step-weight",
        type=float,
        default=1.0,
        help="loss weight of the chunk's first step (default 1)",
    )
    train.add_argument("--warmup-steps", type=int, default=50)
    train.add_argument(
        "--ema-decay",
        type=float,
        default=0.0,
        help="exponential moving average of the weights, saved as the policy (0 = off; 0.999 is typical)",
    )
    train.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    train.add_argument("--save-every", type=int, default=500)
    train.add_argument("--val-every", type=int, default=100)
    train.add_argument("--log-every", type=int, default=10)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--num-workers", type=int, default=0)
    train.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    train.add_argument("--device", default="auto")
    train.add_argument("--resume", action="store_true", help="continue from <output>/checkpoints/last")


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
    if config.lm_path:
        tokenizer = load_tokenizer(config.lm_path)
    else:
        tasks = sorted(set(frames.tasks))
        tokenizer = train_instruction_tokenizer(tasks, vocab_size=config.text_vocab_size)
    action_tok = ActionTokenizer.fit(actions, n_bins=config.n_bins)
    return VLAPolicy.build(config, tokenizer, action_tok, StateNormalizer.fit(states))


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        output_dir=args.output,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        precision=args.precision,
        save_every=args.save_every,
        val_every=args.val_every,
        log_every=args.log_every,
        seed=args.seed,
        num_workers=args.num_workers,
        device=args.device,
    )


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
    data_cfg = DataConfig(
        roots=args.dataset_root,
        repo_ids=args.repo_id,
        chunk_size=args.chunk_size,
        val_fraction=args.val_fraction,
        shift=args.shift,
        instruction_noise=args.instruction_noise,
        max_episodes=args.max_episodes,
        image_keys=args.image_keys,
        image_size=args.image_size,
    )
    frames, train_set, val_set = build_datasets(data_cfg, seed=args.seed)
    cfg = train_config(args)
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
            f"val {dataset_info['val_samples']}; device {trainer.device}, precision {cfg.precision}, "
            f"{trainer.info.world} process(es)"
        )
    summary = trainer.fit(resume=args.resume)
    if trainer.info.main:
        policy.save_pretrained(
            Path(args.output) / "final", extra_files={"dataset.json": json.dumps(dataset_info, indent=2)}
        )
        summary.update(dataset_info, parameters=policy.num_parameters(), world_size=trainer.info.world)
        atomic_write_text(Path(args.output) / "summary.json", json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    return 0
