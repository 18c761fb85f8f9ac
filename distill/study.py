"""The distillation study (`benchmarks/bench_distill.py`): consistency distillation, measured: Jacobi passes per chunk against trajectories collected and
distillation steps, decode latency (AR vs early exit), and the ablations.

Runs the pipeline top to bottom with the jobs the pipeline runs, in this process: `ceed train` for
the teacher (unless --teacher is given), `ceed distill collect` into a zarr store (unless --store is
given), one `ceed distill train` per variant, then passes per chunk on frames of the episodes the
jobs held out (`distill.measure`) at every checkpoint of each run. Writes
benchmarks/results/distill.json (updated after every variant, so a run cut short still reports) and
distill_passes.png.

    python benchmarks/bench_distill.py run --dataset-root data/mt5 --device cuda --budget-s 540
    python benchmarks/bench_distill.py run --dataset-root data/mt5 --teacher runs/teacher/final
    python benchmarks/bench_distill.py export-frames --dataset-root data/mt5 --out frames.npz
    python benchmarks/bench_distill.py curve --dataset-root outputs/demo/full/record/dataset \
        --teacher outputs/demo/full/teacher/run/final --run outputs/demo/full/distill/run

`run --teacher T --store S` trains the variants on a store collected before (`ceed distill collect`,
the demo's) instead of collecting; pass the --val-fraction the teacher was trained with (`ceed
train`: 0.1) so the measured frames are ones the teacher never saw. `curve` also reads frames from an
.npz written by `export-frames` (for a machine without the dataset); `run` needs the dataset, since
the jobs read it.

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


def _job(argv: list[str]) -> None:
    """Run one `ceed` job in this process, exactly as the command line (and the demo) runs it."""
    from ceed_vla.cli import main as ceed

    print("$ ceed " + " ".join(argv), flush=True)
    rc = ceed(argv)
    if rc:
        raise SystemExit(f"`ceed {' '.join(argv[:2])}` exited with {rc}")


def _common(args) -> list[str]:
    out = ["--seed", str(args.seed), "--device", str(args.device)]
    return out + (["--threads", str(args.threads)] if args.threads else [])


def train_teacher(args, out: Path) -> Path:
    """`ceed train` on the study's dataset; returns the final checkpoint."""
    run_dir = out / "teacher_run"
    argv = ["train", "--dataset-root", args.dataset_root, "--output", str(run_dir)]
    argv += ["--chunk-size", str(args.chunk_size), "--steps", str(args.teacher_steps)]
    argv += ["--batch-size", str(args.batch_size), "--val-fraction", str(args.val_fraction)]
    argv += ["--precision", args.precision, *_common(args)]
    if args.repo_id:
        argv += ["--repo-id", args.repo_id]
    _job(argv)
    return run_dir / "final"


def collect_trajectories(args, teacher_dir: Path, out: Path) -> Path:
    """`ceed distill collect` over every episode (as the demo does); the distillation job drops the
    rows of the episodes it holds out. Returns the store's path."""
    store = out / "traj.zarr"
    argv = ["distill", "collect", "--teacher", str(teacher_dir), "--dataset-root", args.dataset_root]
    argv += ["--output", str(store), "--trajectories", str(args.trajectories)]
    argv += ["--batch-size", str(args.collect_batch), "--warm-start", str(args.warm_start)]
    argv += ["--delta", str(args.delta), *_common(args)]
    if args.repo_id:
        argv += ["--repo-id", args.repo_id]
    _job(argv)
    return store


def variants(args, n_traj: int) -> list[dict]:
    """The variants as `ceed distill train` flags (name: what differs from "main")."""
    base = {"labels": "mixed", "consistency": "global", "w_ar": args.w_ar, "noise": 0.0, "rows": "all"}
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
    return [{**v, "steps": args.steps} for v in out]


def variant_argv(v: dict, teacher_dir: Path, store: Path, run_dir: Path, args) -> list[str]:
    argv = ["distill", "train", "--teacher", str(teacher_dir), "--trajectories", str(store)]
    argv += ["--output", str(run_dir), "--labels", v["labels"], "--consistency", v["consistency"]]
    argv += ["--w-ar", str(v["w_ar"]), "--noise", str(v["noise"]), "--delta", str(args.delta)]
    argv += ["--steps", str(v["steps"]), "--save-every", str(args.eval_every), "--val-every", str(v["steps"])]
    argv += ["--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-steps", "20"]
    argv += ["--val-fraction", str(args.val_fraction), "--precision", args.precision, *_common(args)]
    if args.dataset_root:
        argv += ["--dataset-root", args.dataset_root]
    if isinstance(v["rows"], int):
        argv += ["--max-trajectories", str(v["rows"])]
    elif v["rows"] == "constant":
        argv += ["--guesses", "constant"]
    return argv


def distill_variant(v, teacher_dir: Path, store: Path, frame_set, val_rows, out: Path, args) -> dict:
    """`ceed distill train` for one variant, then passes per chunk at every checkpoint it saved."""
    from ceed_vla.distill.measure import jacobi_passes
    from ceed_vla.policy import load_policy

    run_dir = out / f"student_{v['name']}"
    t0 = time.perf_counter()
    _job(variant_argv(v, teacher_dir, store, run_dir, args))
    train_s = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:])):
        student = load_policy(ckpt, device=args.device).eval()
        point = {
            "step": int(ckpt.name[5:]),
            **jacobi_passes(student, frame_set, val_rows, **_decode_kwargs(args)),
        }
        curve.append(point)
        print(
            f"  {v['name']} step {point['step']}: {point['mean_iterations']:.2f} passes, "
            f"==AR {point['fixed_point_equals_ar']:.2f}, AR action L1 to ground truth "
            f"{point['ar_action_l1_to_ground_truth']:.3f}"
        )
    return {
        **v,
        "trajectories": int(summary["train_samples"]),
        "train_s": train_s,
        "curve": curve,
        "final": curve[-1] if curve else None,
        "run": str(run_dir),
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
    """teacher (`ceed train`, unless --teacher) -> trajectories (`ceed distill collect`, unless
    --store) -> one `ceed distill train` per variant -> passes per chunk on held-out frames."""
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
    train_eps, val_eps = split_episodes(episodes, args.val_fraction)  # the jobs' own split
    frame_set = ChunkDataset(frames, episodes)  # row i = dataset index i
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
        teacher_dir = Path(args.teacher)
        record["teacher"] = {"checkpoint": args.teacher}
    else:
        teacher_dir = train_teacher(args, out)
        summary = json.loads((teacher_dir.parent / "summary.json").read_text())
        record["teacher"] = {"checkpoint": str(teacher_dir), "trained_here": summary}
    teacher = load_policy(teacher_dir, device=args.device).eval()
    record["teacher"]["passes"] = jacobi_passes(teacher, frame_set, val_rows, **_decode_kwargs(args))
    record["teacher"]["latency"] = latency_table(teacher, frame_set, val_rows, args)
    _save(record, args)
    if args.trajectories_store:  # a store collected before (e.g. by `ceed demo`) over every episode
        store = Path(args.trajectories_store)
    else:
        t0 = time.perf_counter()
        store = collect_trajectories(args, teacher_dir, out)
        record["collection_wall_s"] = time.perf_counter() - t0
    from ceed_vla.distill.collect import teacher_fingerprint
    from ceed_vla.distill.store import TrajectoryStore

    traj = TrajectoryStore.open(store, teacher_hash=teacher_fingerprint(teacher), mode="r").read()
    usable = np.isin(frames.episode.numpy()[traj.dataset_index], train_eps)
    record["collection"] = {
        "store": str(store),
        "samples": len(traj),
        "train_samples": int(usable.sum()),
        "mean_iterations": float(traj.iterations.mean()),
        "warm_start_share": float(traj.warm_start.mean()),
    }
    print(f"{int(usable.sum())} of {len(traj)} stored trajectories are of training episodes")
    _save(record, args)
    for v in variants(args, len(traj)):
        left = args.budget_s - (time.perf_counter() - t_start)
        if left < args.min_variant_s:
            record["variants"][v["name"]] = {"skipped": f"{left:.0f} s of the budget left"}
            continue
        result = distill_variant(v, teacher_dir, store, frame_set, val_rows, out, args)
        if v["name"] == "main" and result["final"]:
            student = load_policy(Path(result["run"]) / "final", device=args.device).eval()
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
    r.add_argument("--dataset-root", required=True, help="LeRobotDataset root (from `ceed record`)")
    r.add_argument("--repo-id", default=None)
    r.add_argument("--teacher", default=None, help="teacher checkpoint (default: train one here)")
    r.add_argument("--work", default="runs/bench_distill")
    r.add_argument("--out-json", default=str(results / "distill.json"))
    r.add_argument("--chunk-size", type=int, default=8)
    r.add_argument("--teacher-steps", type=int, default=1500)
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
    r.add_argument(
        "--val-fraction", type=float, default=0.1, help="episodes every job holds out (theirs: 0.1)"
    )
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
