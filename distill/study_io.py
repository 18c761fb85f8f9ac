"""The distillation study's inputs and outputs (`benchmarks/bench_distill.py`): a dataset's frames
as one .npz and back, passes per chunk along a finished run (`curve`), and the study's JSON, plots
and table."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ceed_vla.atomic import atomic_savefig, atomic_write_json


def export_frames(args) -> None:
    """The dataset's frames as one compressed .npz (carried to machines without LeRobot)."""
    from ceed_vla.policy.data import load_frames

    frames = load_frames(
        args.repo_id or f"local/{Path(args.dataset_root).name}", args.dataset_root, args.chunk_size
    )
    arrays = {k: v.numpy() for k, v in dataclasses.asdict(frames).items() if torch.is_tensor(v)}
    out = Path(args.out)
    tmp = out.with_name(f".{out.stem}.tmp.npz")
    np.savez_compressed(
        tmp, **arrays, tasks=np.array(frames.tasks), delta=np.array(frames.delta), fps=np.array(frames.fps)
    )
    os.replace(tmp, out)
    print(f"{len(frames)} frames, {len(set(frames.episode.tolist()))} episodes -> {out}")


def load_frames_any(args):
    from ceed_vla.policy.data import Frames, load_frames

    if not getattr(args, "frames", None):
        return load_frames(
            args.repo_id or f"local/{Path(args.dataset_root).name}", args.dataset_root, args.chunk_size
        )
    z = np.load(args.frames)
    tensors = {
        k: torch.from_numpy(z[k]) for k in ("images", "states", "actions", "episode", "ep_start", "ep_end")
    }
    return Frames(
        **tensors, tasks=[str(t) for t in z["tasks"]], delta=z["delta"].tolist(), fps=float(z["fps"])
    )


# ---------------------------------------------------------------------------------------- pipeline


def _decode_kwargs(args) -> dict:
    return {"backend": args.backend, "step_impl": args.step_impl}


def curve(args) -> int:
    """Passes per chunk along an existing distillation run, on frames of held-out (or training) episodes."""
    from ceed_vla.distill.measure import jacobi_passes
    from ceed_vla.policy import load_policy
    from ceed_vla.policy.data import ChunkDataset, split_episodes

    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))
    if not ckpts:
        raise SystemExit(
            f"{run_dir}/checkpoints has no step_* checkpoints; is it a `ceed distill train` run?"
        )
    frames = load_frames_any(args)
    episodes = sorted(set(frames.episode.tolist()))
    train_eps, val_eps = split_episodes(episodes, args.val_fraction)
    if not val_eps:
        raise SystemExit(f"--val-fraction {args.val_fraction} holds out no episode of {len(episodes)}")
    frame_set = ChunkDataset(frames, episodes)
    measured_eps = val_eps if args.split == "val" else train_eps
    pool = np.flatnonzero(np.isin(frames.episode.numpy(), measured_eps))
    rows = np.random.default_rng(args.seed).permutation(pool)[: args.eval_samples]
    t0 = time.perf_counter()
    points = []
    for step, path in [(0, Path(args.teacher))] + [(int(p.name[5:]), p) for p in ckpts]:
        policy = load_policy(path, device=args.device).eval()
        point = {
            "step": step,
            "checkpoint": str(path),
            **jacobi_passes(policy, frame_set, rows, **_decode_kwargs(args)),
        }
        points.append(point)
        print(
            f"step {step:>6}: {point['mean_iterations']:.2f} passes per chunk, ==AR {point['fixed_point_equals_ar']:.2f}, "
            f"AR action L1 to ground truth {point['ar_action_l1_to_ground_truth']:.3f}"
        )
    summary_path = run_dir / "summary.json"
    record = {
        "command": " ".join(sys.argv),
        "run": str(run_dir),
        "teacher": args.teacher,
        "distill": json.loads(summary_path.read_text()) if summary_path.exists() else None,
        "val_episodes": len(val_eps),
        "split": args.split,
        "eval_samples": int(len(rows)),
        "device": args.device,
        "curve": points,
        "teacher_over_final": points[0]["mean_iterations"] / points[-1]["mean_iterations"],
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out_json)
    atomic_write_json(out, record)
    _plot_curve(record, out.with_suffix(".png"))
    print(
        f"teacher {points[0]['mean_iterations']:.2f} -> final {points[-1]['mean_iterations']:.2f} passes "
        f"({record['teacher_over_final']:.2f}x fewer); wrote {out}"
    )
    return 0


def _l1_points(points: list[dict]) -> list[tuple[int, float]]:
    """(step, AR action L1 to ground truth) of the points that have it (results written before it was
    measured do not)."""
    return [
        (p["step"], p["ar_action_l1_to_ground_truth"]) for p in points if "ar_action_l1_to_ground_truth" in p
    ]


def _plot_curve(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = record["curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["step"] for p in pts], [p["mean_iterations"] for p in pts], "o-", label="mean")
    ax.plot([p["step"] for p in pts], [p["iterations_p90"] for p in pts], "s--", ms=3, label="p90")
    ax.set_xlabel("distillation step (0 = teacher)")
    ax.set_ylabel("exact Jacobi passes per chunk (held-out frames)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    l1 = _l1_points(pts)
    if l1:  # quality next to speed: fewer passes from a policy that got worse is no gain
        err = ax.twinx()
        err.plot(*zip(*l1, strict=True), "^:", color="tab:red", ms=4, label="AR action L1 to ground truth")
        err.set_ylabel("AR action L1 to ground truth", color="tab:red")
        err.set_ylim(bottom=0)
        err.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right")
    fig.tight_layout()
    atomic_savefig(fig, path)


# ------------------------------------------------------------------------------------------ output


def _save(record: dict, args) -> None:
    path = Path(args.out_json)
    atomic_write_json(path, record)
    _plot(record, path.with_name(path.stem + "_passes.png"))


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = record.get("teacher", {}).get("passes", {}).get("mean_iterations")
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4))
    for name, v in record["variants"].items():
        if v.get("curve"):
            a.plot(
                [p["step"] for p in v["curve"]],
                [p["mean_iterations"] for p in v["curve"]],
                "o-",
                ms=3,
                label=name,
            )
            l1 = _l1_points(v["curve"])
            if l1:
                c.plot(*zip(*l1, strict=True), "o-", ms=3, label=name)
    teacher_l1 = record.get("teacher", {}).get("passes", {}).get("ar_action_l1_to_ground_truth")
    if teacher_l1 is not None:
        c.axhline(teacher_l1, color="k", ls="--", lw=1, label="teacher")
    c.set_xlabel("distillation step")
    c.set_ylabel("AR action L1 to ground truth (held-out)")
    c.grid(alpha=0.3)
    if c.get_legend_handles_labels()[0]:  # results from before the L1 was measured leave it empty
        c.legend(fontsize=7)
    counts = sorted(
        (v["trajectories"], v["final"]["mean_iterations"])
        for n, v in record["variants"].items()
        if v.get("final") and (n.startswith("traj_") or n == "main")
    )
    if counts:
        b.plot(*zip(*counts, strict=True), "o-")
    for ax, xl in ((a, "distillation step"), (b, "trajectories used (same steps)")):
        if teacher:
            ax.axhline(teacher, color="k", ls="--", lw=1, label="teacher")
        ax.set_xlabel(xl)
        ax.set_ylabel("exact Jacobi passes per chunk (held-out)")
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path)


def _print_table(record: dict) -> None:
    t = record["teacher"]["passes"]["mean_iterations"]
    print(f"\nteacher: {t:.2f} exact Jacobi passes per chunk on {record['eval_samples']} held-out frames")
    t_l1 = record["teacher"]["passes"].get("ar_action_l1_to_ground_truth", float("nan"))
    print(f"  (teacher AR action L1 to ground truth {t_l1:.3f})")
    print(f"{'variant':<22}{'traj':>7}{'steps':>7}{'passes':>8}{'vs teacher':>11}{'==AR':>6}{'L1 GT':>8}")
    for name, v in record["variants"].items():
        if not v.get("final"):
            print(f"{name:<22}  {v.get('skipped', 'no result')}")
            continue
        f = v["final"]
        print(
            f"{name:<22}{v['trajectories']:>7}{f['step']:>7}{f['mean_iterations']:>8.2f}{t / f['mean_iterations']:>10.2f}x{f['fixed_point_equals_ar']:>6.2f}"
            f"{f.get('ar_action_l1_to_ground_truth', float('nan')):>8.3f}"
        )
    for who, lat in (
        ("teacher", record["teacher"].get("latency")),
        ("student", record["variants"].get("main", {}).get("latency")),
    ):
        if lat:
            print(
                f"\n{who} latency (batch 1): "
                + ", ".join(
                    f"{k} {v['ms_mean']:.1f} ms ({v['speedup_vs_ar']:.1f}x, L1 {v['action_l1_to_own_ar']:.3f})"
                    for k, v in lat.items()
                )
            )
