"""`ceed distill train`: consistency-distil a student, initialised from the teacher, through the
shared trainer (`ceed_vla.policy.Trainer`) with `DistillLoss`.

    ceed distill train --teacher runs/teacher/final --trajectories runs/traj.zarr --output runs/student \\
        --steps 2000 --w-ar 0.1 --delta 0.05 --labels mixed --consistency global
    ceed distill train ... --resume                 # continue from <output>/checkpoints/last
    torchrun --nproc_per_node 8 -m ceed_vla.cli distill train ... --sharding fsdp --precision bf16 \
        --activation-checkpointing                  # student and teacher sharded over 8 GPUs

The store must come from this teacher (its fingerprint is checked). Samples are split by episode into
training and validation. The output directory is the trainer's (checkpoints/step_N/ are loadable
students, metrics.jsonl, loss_curve.png) plus final/ and summary.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from ceed_vla.policy.train_args import add_training_arguments, train_config_from_args

from ceed_vla.cli import config_from_args

from .collect import teacher_fingerprint
from .data import DistillDataset, StateSampling
from .losses import DistillLoss, DistillLossConfig
from .store import SAMPLE_COLUMNS, TrajectoryStore


def configure_parser(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument(
        "--teacher", required=True, help="teacher checkpoint directory (the student starts from it)"
    )
    io.add_argument("--trajectories", required=True, help="zarr store from `ceed distill collect`")
    io.add_argument(
        "--dataset-root", default=None, help="LeRobotDataset root (default: the one the store records)"
    )
    io.add_argument("--repo-id", default=None)
    io.add_argument("--output", required=True, help="run directory")
    io.add_argument("--max-trajectories", type=int, default=None, help="use only the first N sample ids")
    io.add_argument(
        "--guesses",
        choices=["all", "constant"],
        default="all",
        help="train on every trajectory, or only on those decoded from the constant initial guess "
        "(no warm start; an ablation)",
    )
    io.add_argument("--val-fraction", type=float, default=0.1, help="share of episodes held out")

    loss = parser.add_argument_group("loss: L = L_consistency + w_ar * L_AR")
    loss.add_argument("--w-ar", type=float, default=DistillLossConfig.w_ar)
    loss.add_argument(
        "--delta",
        type=float,
        default=DistillLossConfig.delta,
        help="teacher-label L1 threshold, a fraction of the q01..q99 range",
    )
    loss.add_argument("--labels", choices=["mixed", "teacher", "gt"], default="mixed")
    loss.add_argument("--consistency", choices=["global", "local", "none"], default="global")
    loss.add_argument(
        "--target",
        choices=["self", "teacher"],
        default=DistillLossConfig.target,
        help="consistency target: the stop-gradient student (self) or the frozen teacher on the fixed point",
    )
    loss.add_argument("--noise", type=float, default=0.0, help="share of noise-augmented states")
    loss.add_argument("--noise-bins", type=int, default=3)
    loss.add_argument(
        "--initial-state-share",
        type=float,
        default=0.0,
        help="probability of training on the initial guess rather than a uniformly drawn Jacobi state",
    )
    loss.add_argument(
        "--first-guess-noise",
        type=float,
        default=0.0,
        help="share of initial states whose first free token is moved by 1..--noise-bins bins: the state "
        "the fused prefill decodes from, whose first token is the guess's rather than the prefill's",
    )

    loss.add_argument(
        "--guess-state-share",
        type=float,
        default=1.0,
        help="where a trajectory starts with the guess the fused prefill sees (collected with "
        "--fused-states), the share of initial draws that take it rather than the state after the prefill",
    )

    train = parser.add_argument_group("training")
    add_training_arguments(train, steps=2000, lr=1e-4, val_every=250, val_batches=8)


def split_rows(traj, episodes: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the store for training and validation, split by the frames' episodes."""
    from ceed_vla.policy.data import split_episodes

    ep = episodes[traj.dataset_index]  # [N] episode of every sample
    train_eps, val_eps = split_episodes(sorted(set(ep.tolist())), val_fraction)
    rows = np.arange(len(traj))
    return rows[np.isin(ep, train_eps)], rows[np.isin(ep, val_eps)]


def build_datasets(args, student, store: TrajectoryStore):
    from ceed_vla.policy.data import ChunkDataset, ObservationLag, load_policy_frames

    meta = store.attrs.get("meta", {})
    root = args.dataset_root or meta.get("dataset_root")
    if root is None:
        raise SystemExit("the store records no dataset root: pass --dataset-root")
    repo_id = args.repo_id or meta.get("repo_id") or f"local/{Path(root).name}"
    frames = load_policy_frames(student, root, repo_id)
    # the frames as the teacher saw them when it was collected: the same lag draws, from the same seed
    collected = meta.get("collect", {})
    frame_set = ChunkDataset(
        frames,
        sorted(set(frames.episode.tolist())),
        seed=collected.get("seed", 0),
        obs_lag=ObservationLag(**collected.get("obs_lag", {})),
    )
    traj = store.read()
    if args.max_trajectories is not None:
        traj = _first(traj, args.max_trajectories)
    if int(traj.dataset_index.max()) >= len(frames):
        raise SystemExit(
            f"the store indexes frame {int(traj.dataset_index.max())} but {root} has {len(frames)}"
        )
    train_rows, val_rows = split_rows(traj, frames.episode.numpy(), args.val_fraction)
    if args.guesses == "constant":
        train_rows = train_rows[~traj.warm_start[train_rows].astype(bool)]
        val_rows = val_rows[~traj.warm_start[val_rows].astype(bool)]
    sampling = config_from_args(
        StateSampling,
        args,
        "consistency",
        "noise",
        "noise_bins",
        n_bins=student.n_bins,
        initial=args.initial_state_share,
        first_token=args.first_guess_noise,
        guess_state=args.guess_state_share,
    )
    train_set = DistillDataset(frame_set, traj, train_rows, sampling, seed=args.seed)
    val_set = (
        DistillDataset(frame_set, traj, val_rows, sampling, seed=args.seed + 1) if len(val_rows) else None
    )
    return traj, train_set, val_set


def _first(traj, n: int):
    """The samples with the n smallest sample ids (the store is sorted by id)."""
    from .store import Trajectories

    n = min(n, len(traj))
    end = int(traj.state_offsets[n])
    cols = {k: getattr(traj, k)[:n] for k in SAMPLE_COLUMNS}
    return Trajectories(state_offsets=traj.state_offsets[: n + 1], states=traj.states[:end], **cols)


def main(args: argparse.Namespace) -> int:
    from ceed_vla.policy import load_policy
    from ceed_vla.policy.checkpoint_io import atomic_write_text
    from ceed_vla.policy.trainer import Trainer, last_checkpoint

    if args.resume:
        last_checkpoint(args.output)  # nothing to resume: say so before loading the teacher and store
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loss_cfg = DistillLossConfig(
        w_ar=args.w_ar, delta=args.delta, labels=args.labels, consistency=args.consistency, target=args.target
    )
    student = load_policy(args.teacher)
    store = TrajectoryStore.open(args.trajectories, teacher_hash=teacher_fingerprint(student), mode="r")
    traj, train_set, val_set = build_datasets(args, student, store)
    student.train()
    cfg = train_config_from_args(args)
    info = {
        "teacher": str(Path(args.teacher).resolve()),
        "teacher_hash": store.teacher_hash,
        "trajectories": str(Path(args.trajectories).resolve()),
        "samples_used": len(traj),
        "train_samples": len(train_set),
        "val_samples": len(val_set) if val_set is not None else 0,
        "loss": asdict(loss_cfg),
        "noise": args.noise,
        "noise_bins": args.noise_bins,
        "initial_state_share": args.initial_state_share,
        "guess_state_share": args.guess_state_share,
        "teacher_label_share": float((traj.l1 <= args.delta).mean()),
        "forced_prefix_share": float((traj.forced_tokens > 0).mean()),
    }
    extra = {"distill.json": json.dumps(info, indent=2)}
    teacher = load_policy(args.teacher) if loss_cfg.target == "teacher" else None
    loss = DistillLoss(loss_cfg, teacher=teacher)
    trainer = Trainer(student, loss, train_set, cfg, val_set=val_set, extra_files=extra, frozen=teacher)
    if trainer.info.main:
        print(
            f"distilling {len(train_set)} trajectories (val {info['val_samples']}), teacher labels on "
            f"{info['teacher_label_share']:.0%} at delta={args.delta}; device {trainer.device}"
        )
    summary = trainer.fit(resume=args.resume)
    trainer.save_policy(Path(args.output) / "final")  # every rank: a sharded student is gathered first
    if trainer.info.main:
        summary.update(info)
        atomic_write_text(Path(args.output) / "summary.json", json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
    return 0
