"""How well each forward model predicts the state a planned-ahead chunk starts from.

Planning ahead (`ceed eval`'s default under the moving clocks) gives the policy the state the d
committed steps will lead to. `MetaWorldEnv.predict_state` predicts it with one of two models: the
actions' translations summed (`kinematic`) or the arm's own dynamics, MuJoCo rolled forward without
contacts (`arm`). This rolls the scripted expert out (its actions with N(0, noise) added to the
translation, as the recordings are), and at every step predicts the state d steps later from the
actions actually taken, with both models, then compares with the state reached.

    python benchmarks/bench_forward_model.py --episodes 4 --delays 2,4 \
        --output benchmarks/results/forward_model.json

Writes per task and d the mean and 95th percentile of the largest per-axis hand error (mm), the
mean gripper error (the observation's 0-1 opening) and the ms per prediction.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ceed_vla.sim.env import FORWARD_MODELS, EnvConfig, MetaWorldEnv
from ceed_vla.sim.experts import ScriptedExpert
from ceed_vla.sim.levers import TASKS

RESULTS = Path(__file__).resolve().parent / "results"


def expert_actions(task: str, seed: int, noise: float, max_steps: int) -> np.ndarray:
    """The noisy expert's actions [T, 4] of one episode, until its success or `max_steps`."""
    expert, rng = ScriptedExpert(), np.random.default_rng(seed)
    actions = []
    with MetaWorldEnv(EnvConfig(task, image_size=16, max_episode_steps=max_steps)) as env:
        raw = env.reset(seed).environment_state
        for _ in range(max_steps):
            action = expert.act(env.spec, raw)
            action[:3] += rng.normal(0.0, noise, 3)
            action = np.clip(action, -1.0, 1.0)
            actions.append(action)
            result = env.step(action, render=False)
            raw = env.raw_state
            if result.success or result.truncated:
                break
    return np.asarray(actions)


def errors_by_model(delays: list[int]) -> dict:
    """d -> model -> the per-prediction lists `measure` fills."""
    return {d: {m: {"hand_mm": [], "gripper": [], "ms": []} for m in FORWARD_MODELS} for d in delays}


def measure(task: str, seed: int, delays: list[int], noise: float, max_steps: int, out: dict) -> None:
    """Every step's prediction errors of one episode, per d and model, appended to `out`
    (`errors_by_model`). The episode is rolled twice: once to know the actions, once to predict
    from each step's state the d actions that follow."""
    actions = expert_actions(task, seed, noise, max_steps)
    with MetaWorldEnv(EnvConfig(task, image_size=16, max_episode_steps=max_steps)) as env:
        env.reset(seed)
        predictions = []  # (t, d, model, predicted state, ms)
        states = [env.raw_state[:4].astype(np.float32)]
        for t, action in enumerate(actions):
            state = states[-1]
            for d in delays:
                if t + d <= len(actions):
                    for model in FORWARD_MODELS:
                        t0 = time.perf_counter()
                        predicted = env.predict_state(state, actions[t : t + d], model=model)
                        ms = 1000 * (time.perf_counter() - t0)
                        predictions.append((t, d, model, predicted, ms))
            env.step(action, render=False)
            states.append(env.raw_state[:4].astype(np.float32))
    for t, d, model, predicted, ms in predictions:
        reached = states[t + d]
        row = out[d][model]
        row["hand_mm"].append(1000 * float(np.abs(predicted[:3] - reached[:3]).max()))
        row["gripper"].append(float(abs(predicted[3] - reached[3])))
        row["ms"].append(ms)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--episodes", type=int, default=4, help="expert episodes per task")
    parser.add_argument("--seed", type=int, default=1000, help="first episode seed")
    parser.add_argument("--delays", default="2,4", help="comma-separated steps to predict ahead")
    parser.add_argument(
        "--noise", type=float, default=0.1, help="std of the noise on the expert's translation"
    )
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--output", type=Path, default=RESULTS / "forward_model.json")
    args = parser.parse_args()
    delays = [int(d) for d in args.delays.split(",") if d]
    if not delays or min(delays) < 1:
        parser.error(f"--delays {args.delays!r}: give steps >= 1")

    from ceed_vla.atomic import atomic_write_json

    record: dict = {"settings": vars(args) | {"output": str(args.output)}, "tasks": {}}
    print("| task | d | model | hand error mm, mean (p95) | gripper error | ms per prediction |")
    print("| --- | --- | --- | --- | --- | --- |")
    for task in args.tasks.split(","):
        pooled = errors_by_model(delays)
        for seed in range(args.seed, args.seed + args.episodes):
            measure(task, seed, delays, args.noise, args.max_steps, pooled)
        record["tasks"][task] = {}
        for d in delays:
            for model in FORWARD_MODELS:
                v = pooled[d][model]
                row = {
                    "predictions": len(v["hand_mm"]),
                    "hand_mm_mean": float(np.mean(v["hand_mm"])),
                    "hand_mm_p95": float(np.percentile(v["hand_mm"], 95)),
                    "gripper_mean": float(np.mean(v["gripper"])),
                    "ms_mean": float(np.mean(v["ms"])),
                }
                record["tasks"][task][f"d{d}/{model}"] = row
                print(
                    f"| {task} | {d} | {model} | {row['hand_mm_mean']:.2f} ({row['hand_mm_p95']:.1f}) "
                    f"| {row['gripper_mean']:.3f} | {row['ms_mean']:.2f} |"
                )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, record)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
