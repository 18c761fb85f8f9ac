"""`ceed bench env`: env steps per second with rendering, ours vs LeRobot's MetaWorld env.

Both envs run the same task and the same seeded random actions in the same process, one after the
other, each stepping with a camera frame rendered per step. LeRobot's `MetaworldEnv` builds the
MetaWorld env without a size, so MetaWorld renders its default 480x480 frame with shadows and
multisampling whatever `observation_width/height` say; that is measured as LeRobot ships it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ceed_vla.sim.env import EnvConfig, MetaWorldEnv
from ceed_vla.sim.tasks import get_task

from ceed_vla.atomic import atomic_write_text
from ceed_vla.cli import config_from_args


@dataclass
class EnvBenchConfig:
    task: str = "reach"
    image_size: int = 128
    steps: int = 300
    lerobot_steps: int = 60
    warmup: int = 5
    seed: int = 0
    output: Path = Path("benchmarks/results/env.json")

    def __post_init__(self) -> None:
        get_task(self.task)
        for name in ("steps", "lerobot_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup!r}")
        self.output = Path(self.output)


def _actions(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 4)).astype(np.float32)  # [N, 4]


def bench_ours(cfg: EnvBenchConfig) -> dict[str, Any]:
    actions = _actions(cfg.warmup + cfg.steps, cfg.seed)
    with MetaWorldEnv(EnvConfig(cfg.task, image_size=cfg.image_size, max_episode_steps=500)) as env:
        env.reset(cfg.seed)
        frame = None
        for a in actions[: cfg.warmup]:
            _step_ours(env, a, cfg.seed)
        start = time.perf_counter()
        for a in actions[cfg.warmup :]:
            frame = _step_ours(env, a, cfg.seed)
        seconds = time.perf_counter() - start
    return {
        "steps": cfg.steps,
        "seconds": seconds,
        "steps_per_s": cfg.steps / seconds,
        "frame_shape": list(frame.shape),
    }


def _step_ours(env: MetaWorldEnv, action: np.ndarray, seed: int) -> np.ndarray:
    if env.steps >= env.max_episode_steps:
        env.reset(seed)
    return env.step(action).observation.image


def bench_lerobot(cfg: EnvBenchConfig) -> dict[str, Any]:
    """LeRobot's own env; returns {"error": ...} with the reason when it cannot be built here."""
    try:
        from lerobot.envs.metaworld import MetaworldEnv
    except Exception as err:  # an optional integration: report why instead of failing the benchmark
        return {"error": f"cannot import lerobot.envs.metaworld: {err!r}"}
    spec = get_task(cfg.task)
    actions = _actions(cfg.warmup + cfg.lerobot_steps, cfg.seed)
    try:
        env = MetaworldEnv(
            task=spec.env_name,
            obs_type="pixels_agent_pos",
            observation_width=cfg.image_size,
            observation_height=cfg.image_size,
        )
        obs, _ = env.reset(seed=cfg.seed)
    except Exception as err:
        return {"error": f"lerobot MetaworldEnv({spec.env_name!r}) could not be built: {err!r}"}
    try:
        for a in actions[: cfg.warmup]:
            obs = _step_lerobot(env, a, cfg.seed)
        start = time.perf_counter()
        for a in actions[cfg.warmup :]:
            obs = _step_lerobot(env, a, cfg.seed)
        seconds = time.perf_counter() - start
    finally:
        env.close()
    return {
        "steps": cfg.lerobot_steps,
        "seconds": seconds,
        "steps_per_s": cfg.lerobot_steps / seconds,
        "frame_shape": list(obs["pixels"].shape),
    }


def _step_lerobot(env, action: np.ndarray, seed: int):
    obs, _, terminated, truncated, _ = env.step(action)
    if truncated:
        obs, _ = env.reset(seed=seed)
    return obs


def run(cfg: EnvBenchConfig) -> dict[str, Any]:
    ours = bench_ours(cfg)
    theirs = bench_lerobot(cfg)
    ratio = ours["steps_per_s"] / theirs["steps_per_s"] if "steps_per_s" in theirs else None
    return {
        "benchmark": "env_steps_per_s_with_rendering",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "ours": ours,
        "lerobot": theirs,
        "speedup": ratio,
        "goal_speedup": 5.0,
        "meets_goal": None if ratio is None else ratio >= 5.0,
    }


def format_table(result: dict[str, Any]) -> str:
    rows = [("ours", result["ours"]), ("lerobot MetaworldEnv", result["lerobot"])]
    lines = [f"{'env':24s} {'steps':>6s} {'steps/s':>9s}  frame", "-" * 56]
    for name, r in rows:
        if "error" in r:
            lines.append(f"{name:24s} {'-':>6s} {'-':>9s}  {r['error']}")
        else:
            lines.append(
                f"{name:24s} {r['steps']:6d} {r['steps_per_s']:9.1f}  {'x'.join(map(str, r['frame_shape']))}"
            )
    speedup = result["speedup"]
    lines.append(f"speedup: {speedup:.1f}x (goal >= 5x)" if speedup is not None else "speedup: n/a")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="reach", help="task name (default: reach)")
    parser.add_argument("--image-size", type=int, default=128, help="our rendered frame size (default: 128)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps for our env")
    parser.add_argument("--lerobot-steps", type=int, default=60, help="timed steps for LeRobot's env (slow)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/env.json"), help="JSON result path"
    )


def main(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(
            EnvBenchConfig, args, "task", "image_size", "steps", "lerobot_steps", "seed", output=args.out
        )
    except ValueError as err:
        print(f"ceed bench env: error: {err}", file=sys.stderr)
        return 2
    result = run(cfg)
    print(format_table(result))
    atomic_write_text(cfg.output, json.dumps(result, indent=2))
    print(f"wrote {cfg.output}")
    return 0
