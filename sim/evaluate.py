"""`ceed eval`: closed-loop evaluation of any policy with the reset / predict_action_chunk API.

The parts: `ceed_vla.sim.runner` runs the episodes (`EvalRunner(config).run(policy)`, the three clocks
and the chunk schedule are described there), `ceed_vla.sim.report` turns them into statistics,
report.json, Markdown, a plot and rollout media. This module is the command line.

Evaluation seeds come from `ceed_vla.sim.seeds.eval_seed`, disjoint from every recording seed
(`--split validation` draws from the validation range instead, for model selection),
and every episode uses the task's held-out instruction by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ceed_vla.sim.env import (
    DEFAULT_CAMERA,
    DEFAULT_GOAL_MARKER_RADIUS,
    DEFAULT_MAX_EPISODE_STEPS,
    FORWARD_MODELS,
)
from ceed_vla.sim.report import build_report, report_markdown
from ceed_vla.sim.runner import CLOCKS, INSTRUCTION_SETS, EvalConfig, EvalRunner
from ceed_vla.sim.seeds import SPLITS
from ceed_vla.sim.tasks import UnknownTaskError

from ceed_vla.policies import load_policy
from ceed_vla.scheduler import INIT_CHOICES, ROBOT_BLEND_STEPS, ROBOT_REFILL_MARGIN_TICKS

__all__ = [
    "EvalConfig",
    "EvalRunner",
    "build_report",
    "config_from_args",
    "configure_parser",
    "decoding_kwargs",
    "main",
    "report_markdown",
]


def decoding_kwargs(
    policy, mode: str | None, sigma: int | None, tau: int | None, fused_prefill: bool = False
) -> dict[str, Any]:
    """`{"decoding": DecodeConfig(...)}` for a policy that decodes, `{}` otherwise (the expert)."""
    if not hasattr(policy, "n_bins"):
        if mode is not None or sigma is not None or tau is not None or fused_prefill:
            print("ceed eval: note: decoding options ignored, this policy does not decode", file=sys.stderr)
        return {}
    from ceed_vla.decoding import DecodeConfig

    if mode is None:
        mode = "early_exit" if (sigma is not None or tau is not None) else "ar"
    config = DecodeConfig(mode=mode, sigma=sigma, tau=tau, n_bins=policy.n_bins, fused_prefill=fused_prefill)
    return {"decoding": config}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="expert", help="'expert' or a VLA checkpoint directory")
    parser.add_argument("--tasks", default="mt10", help="comma-separated task names or 'mt10'")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per task (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="run seed: selects the evaluation seed range")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="eval",
        help="episode seeds: held-out evaluation (default) or validation (for model selection)",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default=None,
        help="paused (lockstep, the default), realtime (the measured latency) or delay (a delay model: "
        "--delay-ticks or --delay-ms; the default when either is given)",
    )
    parser.add_argument(
        "--delay-ticks", type=int, default=None, help="delay clock: control ticks every policy call takes"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=None, help="delay clock: the latency of every policy call (ms)"
    )
    parser.add_argument(
        "--image-size", type=int, default=64, help="camera image size (match the training data)"
    )
    parser.add_argument(
        "--camera",
        default=None,
        help="the recording's camera(s), comma-separated (default: the checkpoint's, else "
        + DEFAULT_CAMERA
        + ")",
    )
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_EPISODE_STEPS, help="episode horizon")
    parser.add_argument(
        "--goal-marker-radius",
        type=float,
        default=DEFAULT_GOAL_MARKER_RADIUS,
        help="radius (m) of the rendered goal sphere (match the recording)",
    )
    parser.add_argument(
        "--instructions", choices=INSTRUCTION_SETS, default="eval", help="held-out or training wording"
    )
    parser.add_argument(
        "--execute-steps",
        type=int,
        default=None,
        help="actions per chunk before replanning (default: the policy's)",
    )
    parser.add_argument(
        "--init",
        choices=INIT_CHOICES,
        default="tail",
        help="initial Jacobi guess: the previous chunk's unexecuted tail (default) or the constant one",
    )
    parser.add_argument(
        "--blend-steps",
        type=int,
        default=None,
        help=f"ticks a new chunk is cross-faded over (default: 0 paused, {ROBOT_BLEND_STEPS} realtime as the bridge)",
    )
    parser.add_argument(
        "--refill-margin",
        type=int,
        default=None,
        help="realtime: plan this many ticks before the queue would run dry "
        f"(default: 0 paused, {ROBOT_REFILL_MARGIN_TICKS} realtime as the bridge)",
    )
    parser.add_argument(
        "--forced-prefix",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="realtime/delay clocks: give the decoder the queue's next d steps as the chunk's forced "
        "first steps, for a policy that takes them (default: off, the stale actions dropped and the rest "
        "cross-faded, as the bridge's default)",
    )
    parser.add_argument(
        "--plan-ahead",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="realtime/delay clocks: plan each chunk for the tick it starts at (the queue's next d steps "
        "committed, the policy given the state they lead to), instead of dropping its stale first steps "
        "and cross-fading the rest (default: on under those clocks unless --forced-prefix; "
        "--no-plan-ahead for the earlier scheduling)",
    )
    parser.add_argument(
        "--forward-model",
        choices=FORWARD_MODELS,
        default="arm",
        help="planning ahead: how the state after the committed steps is predicted: 'arm' rolls the "
        "arm's own dynamics forward (MuJoCo, contacts off), 'kinematic' sums the actions' translations "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--latency-quantile",
        type=float,
        default=0.9,
        help="d and the refill are planned from this quantile of recent latencies (default: 0.9)",
    )
    parser.add_argument(
        "--prefix-margin", type=int, default=0, help="ticks added to the latency quantile to give d"
    )
    parser.add_argument(
        "--decode-deadline",
        action="store_true",
        help="realtime: the decoder stops iterating when the queue would run dry (less --deadline-margin-ms)",
    )
    parser.add_argument("--deadline-margin-ms", type=float, default=0.0, help="see --decode-deadline")
    parser.add_argument(
        "--exact-executed",
        action="store_true",
        help="early exit: leave exact (the model's AR actions) the chunk's steps that will run before the "
        "next chunk, max(execute steps, d) of them; only the rest of the chunk exits early",
    )
    parser.add_argument(
        "--decoding", choices=("ar", "jacobi", "early_exit"), default=None, help="VLA decoding mode"
    )
    parser.add_argument("--sigma", type=int, default=None, help="early exit: iteration cap")
    parser.add_argument("--tau", type=int, default=None, help="early exit: bin-distance tolerance")
    parser.add_argument(
        "--fused-prefill",
        action="store_true",
        help="Jacobi modes: one forward over prompt and guess block replaces prefill + first iteration",
    )
    parser.add_argument("--device", default=None, help="torch device for a VLA checkpoint")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running episodes side by side, each with a copy of the policy (default: 1); "
        "the same episodes and report whatever the count",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: the cores shared out between the workers)",
    )
    parser.add_argument("--output", type=Path, default=Path("outputs/eval"), help="report directory")
    parser.add_argument(
        "--save-rollouts",
        type=int,
        default=2,
        help="episodes per task saved as GIF + frame strip under <output>/rollouts/ (0 = none)",
    )


def config_from_args(args: argparse.Namespace, **fixed: Any) -> EvalConfig:
    """An `EvalConfig` from parsed `ceed eval`-style arguments; a job that lacks an option (or fixes
    it, as `ceed select` fixes the split) passes it in `fixed` or gets the config's default."""
    names = {
        "episodes_per_task": "episodes",
        "seed": "seed",
        "image_size": "image_size",
        "camera": "camera",
        "max_episode_steps": "max_steps",
        "goal_marker_radius": "goal_marker_radius",
        "clock": "clock",
        "delay_ticks": "delay_ticks",
        "delay_ms": "delay_ms",
        "forced_prefix": "forced_prefix",
        "plan_ahead": "plan_ahead",
        "forward_model": "forward_model",
        "latency_quantile": "latency_quantile",
        "prefix_margin": "prefix_margin",
        "decode_deadline": "decode_deadline",
        "deadline_margin_ms": "deadline_margin_ms",
        "exact_executed": "exact_executed",
        "instructions": "instructions",
        "execute_steps": "execute_steps",
        "init": "init",
        "blend_steps": "blend_steps",
        "refill_margin": "refill_margin",
        "split": "split",
        "save_rollouts": "save_rollouts",
        "output": "output",
        "workers": "workers",
        "threads": "threads",
    }
    values = {field: getattr(args, arg) for field, arg in names.items() if hasattr(args, arg)}
    if values.get("clock") is None:  # a delay given names its clock
        delayed = values.get("delay_ticks") is not None or values.get("delay_ms") is not None
        values["clock"] = "delay" if delayed else "paused"
    values["tasks"] = args.tasks
    return EvalConfig(**{**values, **fixed})


def main(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)  # bad options are refused before the model loads
        policy = load_policy(args.policy, action_dim=4, device=args.device)
        config = config.for_policy(policy)
        predict_kwargs = decoding_kwargs(policy, args.decoding, args.sigma, args.tau, args.fused_prefill)
    except (UnknownTaskError, FileNotFoundError, ValueError) as err:
        print(f"ceed eval: error: {err}", file=sys.stderr)
        return 2
    report = EvalRunner(config, predict_kwargs).run(policy)
    print(report_markdown(report))
    print(f"wrote {config.output / 'report.json'}, report.md and success.png")
    return 0
