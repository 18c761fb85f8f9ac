"""`ceed bench decode`: the job around `ceed_vla.decoding.bench`. It loads the checkpoint (or builds a
fresh policy of a preset, random weights and synthetic statistics), casts the LM to the asked dtype,
and hands the policy to the benchmark, which imports nothing else of the project.

    ceed bench decode                                   # fresh tiny policy, synthetic observations
    ceed bench decode --checkpoint runs/teacher/final --dataset data/metaworld
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from ceed_vla.decoding.bench import (
    DTYPES,
    INIT_VARIANTS,
    SYNTHETIC_TASKS,
    DecodeBenchConfig,
    format_table,
    plot,
    resolve_device_dtype,
    run,
)

from ceed_vla.atomic import atomic_write_bytes
from ceed_vla.cli import config_from_args

from .config import make_config
from .fresh import fresh_policy


def bench_policy(cfg: DecodeBenchConfig, device: torch.device, dtype: torch.dtype) -> tuple[Any, dict]:
    """The checkpoint, or a fresh policy of the preset (random weights, synthetic tokenizer and stats).
    Only the LM is cast to `dtype`: decoding is what is measured; the encoders stay in fp32."""
    if cfg.checkpoint is not None:
        from ceed_vla.policies import load_policy

        policy = load_policy(cfg.checkpoint)
        source = {"checkpoint": str(Path(cfg.checkpoint).resolve())}
    else:
        torch.manual_seed(cfg.seed)
        config = make_config(cfg.preset)
        actions = torch.rand(256, config.action_dim) * 2 - 1
        states = torch.randn(256, config.state_dim)
        policy = fresh_policy(config, SYNTHETIC_TASKS, actions, states)
        source = {"preset": cfg.preset, "weights": "random (fresh model)"}
    policy = policy.eval().to(device)
    policy.lm.to(dtype)
    source["parameters"] = sum(p.numel() for p in policy.parameters())
    source["lm_parameters"] = sum(p.numel() for p in policy.lm.parameters())
    return policy, source


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def configure_parser(parser: argparse.ArgumentParser) -> None:
    d = DecodeBenchConfig()
    parser.add_argument(
        "--checkpoint", help="policy checkpoint directory (default: a fresh policy of --preset)"
    )
    parser.add_argument(
        "--preset", default=d.preset, help="policy preset for a fresh model (default: %(default)s)"
    )
    parser.add_argument("--dataset", help="LeRobotDataset root: decode real observations from it")
    parser.add_argument("--repo-id", help="the dataset's repo id (default: local/<root name>)")
    parser.add_argument(
        "--observations", help="decode the observations of this file (from --save-observations); no LeRobot"
    )
    parser.add_argument("--save-observations", help="write the observations used to this .pt file")
    parser.add_argument("--samples", type=int, default=d.samples, help="observations per variant")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed decodes per observation")
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--dtype", default=d.dtype, choices=[*DTYPES, "auto"])
    parser.add_argument("--backend", default=d.backend, choices=["auto", "hf", "static"])
    parser.add_argument("--sigmas", type=_ints, default=d.sigmas, help="comma-separated iteration caps")
    parser.add_argument("--taus", type=_ints, default=d.taus, help="comma-separated bin tolerances")
    parser.add_argument(
        "--fused-sigmas",
        type=_ints,
        default=d.fused_sigmas,
        help="early-exit caps also measured with the prefill carrying the guess block (empty = none)",
    )
    parser.add_argument("--inits", type=lambda s: tuple(s.split(",")), default=d.inits)
    parser.add_argument("--sweep-init", default=d.sweep_init, choices=INIT_VARIANTS)
    parser.add_argument(
        "--steps-executed", type=int, help="steps of a chunk executed before the next observation"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", default=d.out, help="JSON path; the PNG goes next to it")
    parser.add_argument("--no-plot", dest="plot", action="store_false")


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(DecodeBenchConfig, args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    policy, source = bench_policy(cfg, *resolve_device_dtype(cfg))
    record = run(cfg, policy, source)
    print(format_table(record))
    out = Path(cfg.out)
    atomic_write_bytes(out, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {out}")
    if cfg.plot:
        plot(record, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    return 0
