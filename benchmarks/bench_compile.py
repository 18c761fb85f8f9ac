"""Does `torch.compile` speed up decoding's forwards on this machine? Eager against compiled, in one
run, interleaved, for the static backend's three shapes: the prefill [B, P], one AR step [B, 1] and
the Jacobi block [B, n-1], on the tiny preset's teacher (random weights: speed does not depend on
them).

    python benchmarks/bench_compile.py --threads 2 --out benchmarks/results/compile_cpu.json

Compiling happens once per shape before timing (its cost is reported apart). The decoder keeps
compile off wherever this benchmark shows no gain; the GPU path uses CUDA graphs instead
(`make gpu-check`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def build(preset: str, device: str):
    from ceed_vla.policy import make_config
    from ceed_vla.policy.fresh import fresh_policy

    config = make_config(preset)
    tasks = ["reach the goal", "push the puck to the goal"]
    actions, states = torch.rand(256, config.action_dim) * 2 - 1, torch.randn(256, config.state_dim)
    return fresh_policy(config, tasks, actions, states, text_vocab_size=128).eval().to(device)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from ceed_vla.decoding.backends import StaticLlamaBackend

    policy = build(args.preset, args.device)
    obs = {
        "observation.image": torch.rand(1, 3, 64, 64, device=args.device),
        "observation.state": torch.zeros(1, policy.config.state_dim, device=args.device),
        "task": ["push the puck to the goal"],
    }
    n = policy.chunk_tokens
    with torch.inference_mode():
        embeds, mask = policy.prefix_embeddings(obs)
        backend = StaticLlamaBackend(policy.lm, policy.action_token_start, policy.n_bins)
        backend.prefill(embeds, mask.bool(), n)
        block = torch.full((1, n - 1), policy.n_bins // 2, dtype=torch.long, device=args.device)
        step = block[:, :1]
        eager = backend._forward
        compiled = torch.compile(backend._forward, mode=args.mode, dynamic=False)
        shapes = {
            "prefill": (lambda f: f(embeds, 0)),
            "ar_step": (
                lambda f: f(torch.nn.functional.embedding(step, backend.action_embed), backend.prefix_len)
            ),
            "jacobi_block": (
                lambda f: f(torch.nn.functional.embedding(block, backend.action_embed), backend.prefix_len)
            ),
        }
        record = {"compile_seconds": {}, "eager_ms_p50": {}, "compiled_ms_p50": {}, "identical": {}}
        for name, call in shapes.items():
            t0 = time.perf_counter()
            out_c = call(compiled)
            record["compile_seconds"][name] = time.perf_counter() - t0
            out_e = call(eager)
            record["identical"][name] = bool(torch.allclose(out_c, out_e, atol=1e-4, rtol=1e-4))
            times = {"eager": [], "compiled": []}
            for _ in range(args.repeats):  # interleaved: load swings hit both alike
                for kind, f in (("eager", eager), ("compiled", compiled)):
                    t = time.perf_counter()
                    call(f)
                    times[kind].append((time.perf_counter() - t) * 1e3)
            record["eager_ms_p50"][name] = statistics.median(times["eager"])
            record["compiled_ms_p50"][name] = statistics.median(times["compiled"])
            print(
                f"{name}: eager {record['eager_ms_p50'][name]:.3f} ms, compiled "
                f"{record['compiled_ms_p50'][name]:.3f} ms (compile {record['compile_seconds'][name]:.1f} s)",
                flush=True,
            )
    record.update(
        benchmark="compile",
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        device=args.device,
        processor=platform.processor() or platform.machine(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        preset=args.preset,
        mode=args.mode,
        prompt_positions=int(embeds.shape[1]),
        chunk_tokens=n,
        speedup={k: record["eager_ms_p50"][k] / record["compiled_ms_p50"][k] for k in shapes},
    )
    from ceed_vla.atomic import atomic_write_json

    atomic_write_json(args.out, record)
    print(json.dumps(record["speedup"]), f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
