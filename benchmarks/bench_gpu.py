#!/usr/bin/env python3
"""The GPU check's measurements, one phase per call so that each runs in its own process and time box
(scripts/gpu_check.sh runs them in turn; a phase that fails or runs out of time loses only its JSON).

    python benchmarks/bench_gpu.py decode    --out-dir DIR   # tiny policy: ms per chunk, eager and graphs
    python benchmarks/bench_gpu.py costmodel --out-dir DIR   # 0.5B / 1B / 7B-shaped forwards -> projection
    python benchmarks/bench_gpu.py train     --out-dir DIR   # training step samples/s, distillation memory
    python benchmarks/bench_gpu.py ... --tiny                # shapes small enough for a CPU (tests, dry runs)

Each phase writes one JSON record into DIR (decode_tiny.json, costmodel.json + costmodel.png,
train.json) and prints progress with wall-clock stamps. Iterations per chunk and the profile's sigmas
come from the committed evaluation report (--report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

START = time.perf_counter()
DEFAULT_REPORT = Path(__file__).resolve().parent.parent / "reports" / "full" / "report.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - START:5.1f}s] {message}", flush=True)


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    log(f"wrote {path}")


def device_and_dtype(args) -> tuple[str, str]:
    if torch.cuda.is_available():
        return "cuda", args.dtype
    if not args.tiny:
        raise SystemExit("no CUDA device: pass --tiny to run the small shapes on the CPU")
    return "cpu", "fp32"


def guarded(record: dict, key: str, fn):
    """record[key] = fn(), or the error with its traceback: one part failing keeps the others."""
    try:
        record[key] = fn()
    except Exception as err:
        traceback.print_exc()
        log(f"{key} failed: {type(err).__name__}: {err}")
        record[key] = {"error": f"{type(err).__name__}: {err}"}


# -------------------------------------------------------------------------------------------- phases


def phase_decode(args) -> int:
    """The tiny policy through `ceed bench decode`'s machinery: AR, exact Jacobi and early exit at the
    profile's sigmas, fused and not, the previous chunk's tail as the guess, eager (static) and graphs."""
    from ceed_vla.decoding import bench
    from ceed_vla.decoding.costmodel import profile_sigmas
    from ceed_vla.policy.bench_decode import bench_policy

    device, dtype = device_and_dtype(args)
    report = json.loads(Path(args.report).read_text())
    sigmas = profile_sigmas(report)
    backends = ["static", "graphs"] if device == "cuda" else ["static"]
    record = {"benchmark": "decode_tiny", "sigmas": list(sigmas), "backends": {}}
    for backend in backends:
        cfg = bench.DecodeBenchConfig(
            checkpoint=args.checkpoint,
            observations=args.observations,
            samples=2 if args.tiny else args.samples,
            repeats=1 if args.tiny else 3,
            warmup=0 if args.tiny else 3,
            device=device,
            dtype=dtype,
            backend=backend,
            sigmas=sigmas,
            taus=(),
            fused_sigmas=sigmas,
            inits=("prev_tail",),
            sweep_init="prev_tail",
            plot=False,
        )
        log(f"decode: backend {backend}, {device} {dtype}, {cfg.samples} observations x {cfg.repeats}")

        def one(cfg=cfg):
            policy, source = bench_policy(cfg, torch.device(cfg.device), bench.DTYPES[cfg.dtype])
            captures = _warm(policy, cfg)
            result = bench.run(cfg, policy=policy)
            result["model"] = source
            if cfg.backend == "graphs":  # graphs captured while timing (0: every timed decode replayed)
                result["graph_captures_before_timing"] = captures
                result["graph_captures_while_timing"] = _graph_captures() - captures
            print(bench.format_table(result), flush=True)
            return result

        guarded(record["backends"], backend, one)
        record["summary"] = _decode_summary(record["backends"])
        write_json(Path(args.out_dir) / "decode_tiny.json", record)  # after each backend
    return 0 if all("error" not in r for r in record["backends"].values()) else 1


def _graph_captures() -> int:
    from ceed_vla.decoding import graphs

    return sum(state.captures for state in graphs._STATES.values())


def _warm(policy, cfg) -> int:
    """Decode each observation of the benchmark once in AR, Jacobi and fused Jacobi with the
    benchmark's backend, so that with graphs every graph of every prompt length is captured before
    the timed decodes; returns the graph captures made so far."""
    from ceed_vla.decoding import DecodeConfig, bench, decode

    if cfg.observations:
        observations, _ = bench.load_observations(cfg.observations, cfg.samples)
    else:
        observations = bench.synthetic_observations(policy, cfg.samples, cfg.seed)
    modes = [
        DecodeConfig(mode="ar", n_bins=policy.n_bins, backend=cfg.backend),
        DecodeConfig(mode="jacobi", n_bins=policy.n_bins, backend=cfg.backend),
        DecodeConfig(mode="jacobi", n_bins=policy.n_bins, backend=cfg.backend, fused_prefill=True),
    ]
    with torch.inference_mode():
        prefixes = [policy.prefix_embeddings(obs) for obs in observations]
    for embeds, mask in prefixes:
        for config in modes:
            decode(policy.lm, embeds, mask, policy.chunk_tokens, policy.action_token_start, config)
    # the benchmark also asks one 1-token decode which backend ran: its prefill graph, too
    decode(policy.lm, *prefixes[0], 1, policy.action_token_start, modes[0])
    captures = _graph_captures()
    lengths = len({e.shape[1] for e, _ in prefixes})
    log(f"warm-up: {len(prefixes)} observations, {lengths} prompt lengths, {captures} graphs captured")
    return captures


def _decode_summary(backends: dict) -> dict:
    """ms p50 per variant and backend, and graphs over eager."""
    table: dict[str, dict] = {}
    for backend, rec in backends.items():
        for row in rec.get("results", []):
            table.setdefault(row["name"], {})[f"{backend}_ms_p50"] = row["ms_p50"]
            table[row["name"]]["iterations"] = row["iterations_per_chunk"]
    for row in table.values():
        if "static_ms_p50" in row and "graphs_ms_p50" in row:
            row["graphs_speedup"] = row["static_ms_p50"] / row["graphs_ms_p50"]
    return table


def phase_costmodel(args) -> int:
    from ceed_vla.decoding import costmodel

    device, dtype = device_and_dtype(args)
    report = json.loads(Path(args.report).read_text())
    decoders = costmodel.decoders_from_report(report)
    n = costmodel.report_chunk_tokens(report)
    if args.tiny:
        cfg = costmodel.CostConfig(
            shapes=("tiny",), prompt=12, chunk_tokens=tuple(sorted({4, n})), device=device, dtype=dtype,
            warmup=1, rounds=2, calls=2, ar_chunk_check=n,
        )  # fmt: skip
    else:
        cfg = costmodel.CostConfig(
            shapes=tuple(args.shapes.split(",")), prompt=args.prompt, device=device, dtype=dtype,
            chunk_tokens=tuple(sorted({8, 16, 32, 56, n})), ar_chunk_check=n,
        )  # fmt: skip
    log(f"cost model: shapes {cfg.shapes}, prompt {cfg.prompt}, n {cfg.chunk_tokens}, {device} {dtype}")
    out = Path(args.out_dir)

    def save(partial: dict) -> None:  # after each shape: a timeout later keeps what was measured
        write_json(out / "costmodel.json", {**partial, "report": str(args.report)})

    record = costmodel.run(cfg, decoders, n, log=log, on_shape=save)
    print(costmodel.format_projection(record), flush=True)
    try:
        costmodel.plot(record, out / "costmodel.png")
        log(f"wrote {out / 'costmodel.png'}")
    except Exception as err:
        log(f"plot failed: {type(err).__name__}: {err}")
    return 0 if all("error" not in s for s in record["shapes"].values()) else 1


def phase_train(args) -> int:
    from ceed_vla.distill import throughput
    from ceed_vla.policy.config import LMConfig

    device, _ = device_and_dtype(args)
    if args.tiny:
        cfg = throughput.ThroughputConfig(
            device=device, precision="fp32" if device == "cpu" else "bf16", image_size=32,
            teacher_batches=(4,), teacher_steps=2, warmup_steps=1, distill_batch=2, distill_steps=1,
            distill_warmup=1, distill_grid=4,
            distill_lm=LMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        )  # fmt: skip
    else:
        cfg = throughput.ThroughputConfig(device=device, precision="bf16")
    record = {
        "benchmark": "train",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "precision": cfg.precision,
        "data": "random batches made once and kept on the device",
        "config": {k: (v.__dict__ if hasattr(v, "__dict__") else v) for k, v in cfg.__dict__.items()},
    }
    guarded(record, "teacher", lambda: throughput.teacher_throughput(cfg, log=log))
    write_json(Path(args.out_dir) / "train.json", record)  # kept if the distillation step times out
    guarded(record, "distill", lambda: throughput.distill_step(cfg, log=log))
    write_json(Path(args.out_dir) / "train.json", record)
    return (
        0
        if all("error" not in record[k] for k in ("teacher", "distill") if isinstance(record[k], dict))
        else 1
    )


PHASES = {"decode": phase_decode, "costmodel": phase_costmodel, "train": phase_train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/gpu"))
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="evaluation report.json")
    parser.add_argument("--tiny", action="store_true", help="small shapes; allowed without CUDA")
    parser.add_argument("--dtype", default="bf16", help="costmodel dtype; decode runs fp32 (exact tokens)")
    parser.add_argument("--shapes", default="0.5b,1b,7b", help="costmodel shapes")
    parser.add_argument("--prompt", type=int, default=300, help="costmodel prompt positions")
    parser.add_argument("--samples", type=int, default=16, help="decode: observations per variant")
    parser.add_argument(
        "--checkpoint", default=None, help="decode: a policy checkpoint (default: fresh tiny)"
    )
    parser.add_argument("--observations", default=None, help="decode: an observations file")
    args = parser.parse_args(argv)
    if args.phase == "decode":
        args.dtype = "fp32"
    torch.manual_seed(0)
    log(f"phase {args.phase}: torch {torch.__version__}, cuda {torch.cuda.is_available()}")
    code = PHASES[args.phase](args)
    log(f"phase {args.phase} done (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
