"""`ceed bench speed`: one interleaved speed measurement of several decoders on recorded observations
(`ceed_vla.decoding.speed`), the demo's speed stage and the source of its speed columns.

    ceed bench speed --dataset outputs/demo/quick/record/dataset \\
        --mode name=teacher_ar,policy=outputs/demo/quick/teacher/run/final,decoding=ar \\
        --mode name=student_sigma1_fused,policy=outputs/demo/quick/distill/run/final,decoding=early_exit,sigma=1,fused=1 \\
        --rounds 5 --threads 1 --out outputs/speed.json

A `--mode` is comma-separated key=value pairs: name, policy (a checkpoint directory), decoding (ar,
jacobi or early_exit), and optionally sigma, tau, fused (1: the prefill carries the guess block) and
exact (early exit: the chunk's first steps left exact, as `ceed eval --exact-executed` asks).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from ceed_vla.decoding import DecodeConfig
from ceed_vla.decoding.bench import BenchConfigError, dataset_observation_runs
from ceed_vla.decoding.config import MODES as DECODINGS
from ceed_vla.decoding.speed import SpeedEntry, measure_interleaved

from ceed_vla.atomic import atomic_write_bytes

MODE_KEYS = ("name", "policy", "decoding", "sigma", "tau", "fused", "exact")


def parse_mode(text: str) -> dict[str, Any]:
    """`name=N,policy=P,decoding=D[,sigma=S][,tau=T][,fused=0|1][,exact=E]` -> a dict; clear errors
    otherwise."""
    spec: dict[str, Any] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise argparse.ArgumentTypeError(f"--mode {text!r}: {part!r} is not key=value")
        if key not in MODE_KEYS:
            raise argparse.ArgumentTypeError(
                f"--mode {text!r}: unknown key {key!r}; the keys are {MODE_KEYS}"
            )
        if key in spec:
            raise argparse.ArgumentTypeError(f"--mode {text!r}: {key!r} given twice")
        spec[key] = value.strip()
    missing = [k for k in ("name", "policy", "decoding") if k not in spec]
    if missing:
        raise argparse.ArgumentTypeError(f"--mode {text!r} lacks {missing}")
    if spec["decoding"] not in DECODINGS:
        raise argparse.ArgumentTypeError(f"--mode {text!r}: decoding must be one of {DECODINGS}")
    try:
        for k in ("sigma", "tau", "exact"):
            if k in spec:
                spec[k] = int(spec[k])
        spec["fused"] = {"0": False, "1": True}[spec.get("fused", "0")]
    except (ValueError, KeyError) as err:
        raise argparse.ArgumentTypeError(
            f"--mode {text!r}: sigma, tau and exact are integers, fused is 0 or 1 ({err})"
        ) from err
    if spec["decoding"] == "ar" and (spec["fused"] or "sigma" in spec or "tau" in spec):
        raise argparse.ArgumentTypeError(f"--mode {text!r}: AR takes no sigma, tau or fused")
    if "exact" in spec and (spec["decoding"] != "early_exit" or spec["exact"] < 0):
        raise argparse.ArgumentTypeError(
            f"--mode {text!r}: exact (steps left exact, >= 0) is for decoding=early_exit; the other modes are exact"
        )
    return spec


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", type=parse_mode, action="append", required=True, help="a decoder (see the module help)"
    )
    parser.add_argument("--dataset", required=True, help="LeRobotDataset root whose frames are decoded")
    parser.add_argument("--repo-id", help="the dataset's repo id (default: local/<root name>)")
    parser.add_argument("--runs", type=int, default=5, help="episodes the observations come from")
    parser.add_argument("--run-length", type=int, default=4, help="consecutive observations per episode")
    parser.add_argument(
        "--steps-executed", type=int, help="chunk steps between observations (default: the chunk size)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="times every decoder decodes every observation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed decodes per decoder first")
    parser.add_argument("--reference", help="the mode speedups are against (default: the first)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for every mode)")
    parser.add_argument("--out", required=True, help="JSON path")


def main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ceed_vla.policies import load_policy

    if args.runs < 1 or args.run_length < 1:
        raise SystemExit(f"--runs and --run-length must be >= 1, got {args.runs} and {args.run_length}")
    torch.set_num_threads(args.threads)
    loaded: dict[str, Any] = {}
    entries = []
    for spec in args.mode:
        path = str(Path(spec["policy"]).resolve())
        if path not in loaded:
            loaded[path] = load_policy(path).eval()
        policy = loaded[path]
        config = DecodeConfig(
            mode=spec["decoding"],
            sigma=spec.get("sigma"),
            tau=spec.get("tau"),
            n_bins=policy.n_bins,
            fused_prefill=spec["fused"],
        )
        entries.append(SpeedEntry(spec["name"], policy, config, exact_steps=spec.get("exact", 0)))
    first = entries[0].policy.config
    steps = args.steps_executed or first.n_action_steps or first.chunk_size
    try:
        observations, runs = dataset_observation_runs(
            args.dataset, args.repo_id, args.runs, args.run_length, steps
        )
    except BenchConfigError as err:
        raise SystemExit(f"ceed bench speed: {err}") from err
    total = args.rounds * len(entries) * len(observations)
    with tqdm(total=total, desc="speed (interleaved)", unit="chunk", dynamic_ncols=True) as bar:
        result = measure_interleaved(
            entries, observations, runs, steps, args.rounds, args.warmup, args.reference, progress=bar.update
        )
    record = {
        "benchmark": "speed_interleaved",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dataset": str(Path(args.dataset).resolve()),
        "runs": args.runs,
        "run_length": args.run_length,
        "steps_executed_between_chunks": steps,
        "modes": {s["name"]: {**s, "policy": str(Path(s["policy"]).resolve())} for s in args.mode},
        **result,
    }
    print(format_table(record))
    atomic_write_bytes(Path(args.out), (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


def format_table(record: dict[str, Any]) -> str:
    head = f"{'mode':<34}{'ms p50':>9}{'ms p95':>9}{'iters':>8}{'fwd':>7}{'speedup (range)':>22}"
    lines = [
        f"interleaved speed: {record['samples']} observations x {record['rounds']} rounds, "
        f"{record['threads']} thread(s), against {record['reference']}",
        head,
        "-" * len(head),
    ]
    for name, r in record["entries"].items():
        spread = f"{r['speedup_vs_reference']:.2f}x ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
        lines.append(
            f"{name:<34}{r['ms_p50']:>9.2f}{r['ms_p95']:>9.2f}{r['iterations_per_chunk']:>8.2f}"
            f"{r['forward_passes_per_chunk']:>7.2f}{spread:>22}"
        )
    return "\n".join(lines)
