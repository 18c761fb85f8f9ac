"""The distillation study (`benchmarks/bench_distill.py`): consistency distillation, measured: Jacobi passes per chunk against trajectories collected and
distillation steps, decode latency (AR vs early exit), and the ablations.

Runs the pipeline top to bottom in one process, with the project's own pieces: teacher training
(`policy.Trainer` + `NextTokenLoss`, unless --teacher is given), collection (`distill.collect`
into a zarr store), distillation variants (`policy.Trainer` + `DistillLoss`), and measurement on
held-out episodes (`distill.measure`). Writes benchmarks/results/distill.json (updated after every
variant, so a run cut short still reports) and distill_passes.png.

    python benchmarks/bench_distill.py export-frames --dataset-root data/mt5 --out frames.npz
    python benchmarks/bench_distill.py run --frames frames.npz --device cuda --budget-s 540
    python benchmarks/bench_distill.py run --dataset-root data/mt5 --teacher runs/teacher/final
    python benchmarks/bench_distill.py curve --dataset-root outputs/demo/full/record/dataset \
        --teacher outputs/demo/full/teacher/run/final --run outputs/demo/full/distill/run

`run --teacher T --store S` trains the variants on a store collected before (`ceed distill collect`,
the demo's) instead of collecting; pass the --val-fraction the teacher was trained with (`ceed
train`: 0.1) so the measured frames are ones the teacher never saw.

`curve` measures a distillation run that already happened (`ceed distill train`, e.g. the demo's):
exact Jacobi passes per chunk of the teacher (step 0) and of every saved checkpoint, on frames of
the episodes both trainings held out. Writes distill_curve.json and distill_curve.png.

Variants (name: what differs from "main" = mixed labels, global consistency, --w-ar (default: the
loss's default), every trajectory): gt_labels, teacher_labels, no_consistency, local, noise (30%
noise-augmented states), constant_guess_only (trajectories from the constant guess only),
traj_<N> (first N trajectories), w_ar_<w> (another weight of the AR term, e.g. w_ar_1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .study_io import _decode_kwargs, _print_table, _save, curve, export_frames, load_frames_any


def train_teacher(frames, train_eps, out: Path, args):
    from ceed_vla.policy import NextTokenLoss, TrainConfig, Trainer
    from ceed_vla.policy.config import LMConfig, VisionConfig, make_config
    from ceed_vla.policy.data import ChunkDataset
    from ceed_vla.policy.fresh import fresh_policy

    train_set = ChunkDataset(frames, train_eps, shift=4, seed=args.seed)
    config = make_config(
        "tiny",
        chunk_size=args.chunk_size,
        action_dim=frames.actions.shape[1],
        state_dim=frames.states.shape[1],
    )
    if args.hidden or args.layers:  # a smaller teacher for a CPU-sized run
        hidden, layers = args.hidden or config.lm.hidden_size, args.layers or config.lm.num_layers
        config.lm = LMConfig(hidden_size=hidden, num_layers=layers, num_heads=4, intermediate_size=4 * hidden)
        config.vision = VisionConfig(channels=tuple(c * hidden // 256 for c in config.vision.channels))
    rows = train_set.rows
    policy = fresh_policy(config, sorted(set(frames.tasks)), frames.actions[rows], frames.states[rows])
    cfg = TrainConfig(
        output_dir=str(out / "teacher_run"),
        steps=args.teacher_steps,
        batch_size=args.batch_size,
        lr=3e-4,
        save_every=args.teacher_steps,
        val_every=args.teacher_steps,
        log_every=50,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    summary = Trainer(policy, NextTokenLoss(), train_set, cfg).fit()
    policy.save_pretrained(out / "teacher")
    return policy.eval(), summary


def collect_trajectories(teacher, frame_set, frames, train_rows, out: Path, args):
    from ceed_vla.distill.collect import (
        CollectConfig,
        Collector,
        collect,
        open_store_for_rank,
        teacher_fingerprint,
    )

    cfg = CollectConfig(
        output=str(out / "traj.zarr"),
        trajectories=args.trajectories,
        batch_size=args.collect_batch,
        warm_start=args.warm_start,
        delta=args.delta,
        seed=args.seed,
    )
    store = open_store_for_rank(
        cfg.output, teacher_fingerprint(teacher), teacher.chunk_tokens, teacher.n_bins, 0, 1, {}
    )
    t0 = time.perf_counter()
    collector = Collector(
        teacher, frame_set, frames, cfg, indices=train_rows, decode_kwargs=_decode_kwargs(args)
    )
    summary = collect(collector, store, 0, 1)
    summary["wall_s"] = time.perf_counter() - t0
    return store.read(), summary


def variants(args, n_traj: int) -> list[dict]:
    base = {
        "labels": "mixed",
        "consistency": "global",
        "w_ar": args.w_ar,
        "noise": 0.0,
        "rows": "all",
        "steps": args.steps,
    }
    table = {
        "main": {},
        "gt_labels": {"labels": "gt"},
        "teacher_labels": {"labels": "teacher"},
        "no_consistency": {"consistency": "none"},
        "local": {"consistency": "local"},
        "noise": {"noise": 0.3},
        "constant_guess_only": {"rows": "constant"},
    }
    out = []
    for name in args.variants.split(","):
        if name.startswith("traj_"):
            out.append({**base, "name": name, "rows": int(name[5:])})
        elif name.startswith("w_ar_"):
            out.append({**base, "name": name, "w_ar": float(name[5:])})
        elif name in table:
            out.append({**base, "name": name, **table[name]})
        else:
            raise SystemExit(
                f"unknown variant {name!r}; choose from {sorted(table)}, traj_<N> or w_ar_<weight>"
            )
    return out


def select_rows(traj, spec, usable: np.ndarray | None = None) -> np.ndarray:
    """Store rows a variant trains on; `usable` (bool [N]) drops rows of held-out episodes."""
    rows = np.arange(len(traj)) if usable is None else np.flatnonzero(usable)
    if spec == "constant":
        return rows[~traj.warm_start[rows].astype(bool)]
    if isinstance(spec, int):
        return rows[:spec]
    return rows


def distill_variant(v, teacher_dir: Path, frame_set, traj, val_rows, out: Path, args, usable=None) -> dict:
    from ceed_vla.distill.data import DistillDataset, StateSampling
    from ceed_vla.distill.losses import DistillLoss, DistillLossConfig
    from ceed_vla.distill.measure import jacobi_passes
    from ceed_vla.policy import TrainConfig, Trainer, load_policy

    student = load_policy(teacher_dir, device=args.device)
    sampling = StateSampling(consistency=v["consistency"], noise=v["noise"], n_bins=student.n_bins)
    rows = select_rows(traj, v["rows"], usable)
    train_set = DistillDataset(frame_set, traj, rows, sampling, seed=args.seed)
    loss = DistillLoss(
        DistillLossConfig(w_ar=v["w_ar"], delta=args.delta, labels=v["labels"], consistency=v["consistency"])
    )
    run = out / f"student_{v['name']}"
    curve = []
    trainer = Trainer(
        student.train(),
        loss,
        train_set,
        TrainConfig(
            output_dir=str(run),
            steps=v["steps"],
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=20,
            save_every=v["steps"],
            val_every=v["steps"],
            log_every=50,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
        ),
    )
    t0 = time.perf_counter()
    for stop in range(args.eval_every, v["steps"] + 1, args.eval_every):
        trainer.fit(resume=stop > args.eval_every, until_step=stop)
        point = {
            "step": stop,
            "train_s": time.perf_counter() - t0,
            **jacobi_passes(student, frame_set, val_rows, **_decode_kwargs(args)),
        }
        curve.append(point)
        print(
            f"  {v['name']} step {stop}: {point['mean_iterations']:.2f} passes, ==AR {point['fixed_point_equals_ar']:.2f}, "
            f"AR action L1 to ground truth {point['ar_action_l1_to_ground_truth']:.3f}"
        )
        student.train()
    student.eval()
    return {
        **v,
        "trajectories": int(len(rows)),
        "curve": curve,
        "final": curve[-1] if curve else None,
        "student": student,
    }


def latency_table(policy, frame_set, rows, args) -> dict:
    from ceed_vla.decoding import DecodeConfig
    from ceed_vla.distill.measure import decode_latency

    kw = {"n_bins": policy.n_bins, **_decode_kwargs(args)}
    configs = {"ar": DecodeConfig(mode="ar", **kw), "jacobi": DecodeConfig(mode="jacobi", **kw)}
    for sigma in (2, 3, 6):
        configs[f"early_exit_s{sigma}"] = DecodeConfig(mode="early_exit", sigma=sigma, **kw)
    return decode_latency(policy, frame_set, rows[: args.latency_samples], configs)


def run(args) -> int:
    from ceed_vla.distill.measure import jacobi_passes
    from ceed_vla.policy import load_policy
    from ceed_vla.policy.data import ChunkDataset, split_episodes

    if args.trajectories_store and not args.teacher:
        raise SystemExit("--store needs --teacher: the checkpoint the store was collected with")
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    frames = load_frames_any(args)
    episodes = sorted(set(frames.episode.tolist()))
    train_eps, val_eps = split_episodes(episodes, args.val_fraction)
    frame_set = ChunkDataset(frames, episodes)  # row i = dataset index i
    train_rows = np.flatnonzero(np.isin(frames.episode.numpy(), train_eps))
    val_all = np.flatnonzero(np.isin(frames.episode.numpy(), val_eps))
    val_rows = np.random.default_rng(args.seed).permutation(val_all)[: args.eval_samples]
    record: dict = {
        "device": str(args.device)
        + (
            f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() and args.device != "cpu" else ""
        ),
        "frames": len(frames),
        "episodes": len(episodes),
        "train_episodes": len(train_eps),
        "val_episodes": len(val_eps),
        "eval_samples": int(len(val_rows)),
        "command": " ".join(sys.argv),
        "args": vars(args),
        "variants": {},
    }
    if args.teacher:
        teacher, teacher_dir = load_policy(args.teacher, device=args.device).eval(), Path(args.teacher)
        record["teacher"] = {"checkpoint": args.teacher}
    else:
        teacher, summary = train_teacher(frames, train_eps, out, args)
        teacher_dir = out / "teacher"
        record["teacher"] = {"trained_here": summary}
    record["teacher"]["passes"] = jacobi_passes(teacher, frame_set, val_rows, **_decode_kwargs(args))
    record["teacher"]["latency"] = latency_table(teacher, frame_set, val_rows, args)
    _save(record, args)
    usable = None
    if args.trajectories_store:  # a store collected before (e.g. by `ceed demo`) over every episode
        from ceed_vla.distill.collect import teacher_fingerprint
        from ceed_vla.distill.store import TrajectoryStore

        store = TrajectoryStore.open(
            args.trajectories_store, teacher_hash=teacher_fingerprint(teacher), mode="r"
        )
        traj = store.read()
        usable = np.isin(frames.episode.numpy()[traj.dataset_index], train_eps)
        record["collection"] = {
            "store": args.trajectories_store,
            "samples": len(traj),
            "train_samples": int(usable.sum()),
            "mean_iterations": float(traj.iterations.mean()),
            "warm_start_share": float(traj.warm_start.mean()),
        }
        print(
            f"using {int(usable.sum())} of {len(traj)} stored trajectories (the rest are held-out episodes)"
        )
    else:
        traj, record["collection"] = collect_trajectories(teacher, frame_set, frames, train_rows, out, args)
        print(
            f"collected {len(traj)} trajectories in {record['collection']['wall_s']:.0f} s: {json.dumps(record['collection'])}"
        )
    _save(record, args)
    for v in variants(args, len(traj)):
        left = args.budget_s - (time.perf_counter() - t_start)
        if left < args.min_variant_s:
            record["variants"][v["name"]] = {"skipped": f"{left:.0f} s of the budget left"}
            continue
        result = distill_variant(v, teacher_dir, frame_set, traj, val_rows, out, args, usable)
        student = result.pop("student")
        if v["name"] == "main":
            result["latency"] = latency_table(student, frame_set, val_rows, args)
        record["variants"][v["name"]] = result
        _save(record, args)
    record["wall_s"] = time.perf_counter() - t_start
    _save(record, args)
    _print_table(record)
    return 0


def main(argv=None, results: Path = Path("benchmarks/results")) -> int:
    from ceed_vla.distill.losses import DistillLossConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export-frames", help="decode a LeRobotDataset into one compressed .npz")
    ex.add_argument("--dataset-root", required=True)
    ex.add_argument("--repo-id", default=None)
    ex.add_argument("--chunk-size", type=int, default=8)
    ex.add_argument("--out", required=True)
    r = sub.add_parser("run", help="teacher -> collect -> distil variants -> measure")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", help=".npz from export-frames")
    src.add_argument("--dataset-root")
    r.add_argument("--repo-id", default=None)
    r.add_argument("--teacher", default=None, help="teacher checkpoint (default: train one here)")
    r.add_argument("--work", default="runs/bench_distill")
    r.add_argument("--out-json", default=str(results / "distill.json"))
    r.add_argument("--chunk-size", type=int, default=8)
    r.add_argument("--teacher-steps", type=int, default=1500)
    r.add_argument(
        "--hidden", type=int, default=None, help="teacher LM width (default: the tiny preset's 256)"
    )
    r.add_argument(
        "--layers", type=int, default=None, help="teacher LM layers (default: the tiny preset's 4)"
    )
    r.add_argument("--trajectories", type=int, default=12000, help="how many to collect")
    r.add_argument(
        "--store",
        dest="trajectories_store",
        default=None,
        help="use this trajectory store of --teacher instead of collecting (rows of held-out episodes are dropped)",
    )
    r.add_argument("--collect-batch", type=int, default=256)
    r.add_argument("--warm-start", type=float, default=0.5)
    r.add_argument(
        "--variants",
        default="main,gt_labels,teacher_labels,no_consistency,local,noise,constant_guess_only,traj_3000",
    )
    r.add_argument("--steps", type=int, default=1000)
    r.add_argument("--eval-every", type=int, default=250)
    r.add_argument("--eval-samples", type=int, default=256)
    r.add_argument("--latency-samples", type=int, default=40)
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--w-ar", type=float, default=DistillLossConfig.w_ar)
    r.add_argument("--delta", type=float, default=0.1)
    r.add_argument("--val-fraction", type=float, default=0.2)
    r.add_argument("--precision", default="auto")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backend", default="auto", help="DecodeConfig.backend")
    r.add_argument("--step-impl", default="auto", help="DecodeConfig.step_impl")
    r.add_argument(
        "--budget-s", type=float, default=1e9, help="skip variants once this much wall time is spent"
    )
    r.add_argument("--min-variant-s", type=float, default=60.0)
    c = sub.add_parser("curve", help="passes per chunk along an existing `ceed distill train` run")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--frames", help=".npz from export-frames")
    src.add_argument("--dataset-root")
    c.add_argument("--repo-id", default=None)
    c.add_argument("--chunk-size", type=int, default=8)
    c.add_argument("--teacher", required=True, help="the teacher the run started from (step 0)")
    c.add_argument("--run", required=True, help="the distillation run directory (has checkpoints/)")
    c.add_argument(
        "--val-fraction", type=float, default=0.1, help="must match the trainings' (their default: 0.1)"
    )
    c.add_argument("--eval-samples", type=int, default=256)
    c.add_argument(
        "--split",
        choices=["val", "train"],
        default="val",
        help="measure frames of held-out episodes (default) or of training episodes: the gap between "
        "the two says whether more data or more fitting would cut passes",
    )
    c.add_argument("--out-json", default=str(results / "distill_curve.json"))
    c.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--backend", default="auto", help="DecodeConfig.backend")
    c.add_argument("--step-impl", default="auto", help="DecodeConfig.step_impl")
    args = parser.parse_args(argv)
    if args.cmd == "export-frames":
        export_frames(args)
        return 0
    if args.cmd == "curve":
        return curve(args)
    return run(args)
