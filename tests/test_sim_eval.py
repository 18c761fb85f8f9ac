"""The evaluation runner: statistics, the expert, and the two clocks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from ceed_vla.sim.metrics import percentile, wilson_interval

pytestmark = pytest.mark.sim


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),  # the textbook example
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (45, 50, 0.7864, 0.9565),
    ],
)
def test_wilson_interval_known_values(successes, trials, low, high):
    lo, hi = wilson_interval(successes, trials)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


@pytest.mark.parametrize("trials", [1, 3, 7, 10, 50, 100])
def test_wilson_interval_contains_the_observed_rate_exactly(trials):
    for successes in range(trials + 1):
        lo, hi = wilson_interval(successes, trials)
        assert 0.0 <= lo <= successes / trials <= hi <= 1.0


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 95) == 5.0
    assert percentile([], 50) is None


def test_eval_seeds_are_disjoint_from_recording_seeds():
    from ceed_vla.sim.seeds import MAX_RUN_SEEDS, SEEDS_PER_RUN, eval_seed, record_seed

    last_record = record_seed(MAX_RUN_SEEDS - 1, SEEDS_PER_RUN - 1)
    assert eval_seed(0, 0) > last_record


def test_runner_on_the_expert_writes_reports(tmp_path):
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.experts import ScriptedExpert
    from ceed_vla.sim.seeds import is_eval_seed

    config = EvalConfig(tasks=("reach",), episodes_per_task=2, image_size=16, output=tmp_path)
    report = EvalRunner(config, progress=False).run(ScriptedExpert())

    task = report["per_task"]["reach"]
    assert task["episodes"] == 2 and task["success_rate"] == 1.0
    assert task["success_ci95"][0] == pytest.approx(wilson_interval(2, 2)[0])
    assert 0 < task["mean_steps_to_success"] < config.max_episode_steps
    assert task["policy_calls"] == sum(e["steps"] for e in report["episodes"])  # chunks of one action
    assert task["policy_ms_p50"] <= task["policy_ms_p95"]
    assert task["actions_per_s"] > 0 and task["env_steps_per_s"] > 0
    assert "chunk_ms_p50" not in task  # the expert does not decode
    assert all(is_eval_seed(e["seed"]) for e in report["episodes"])
    assert json.loads((tmp_path / "report.json").read_text())["overall"]["successes"] == 2
    assert "| reach | 1.00 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "success.png").read_bytes()[:4] == b"\x89PNG"


def test_runner_saves_rollout_gifs_and_frame_strips(tmp_path):
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.experts import ScriptedExpert
    from PIL import Image

    config = EvalConfig(
        tasks=("reach",), episodes_per_task=2, image_size=16, save_rollouts=1, output=tmp_path
    )
    report = EvalRunner(config, progress=False).run(ScriptedExpert())
    first = report["episodes"][0]
    stem = f"rollouts/reach_{first['seed']}_success"
    assert report["rollouts"] == [f"{stem}.png"]  # only the first episode of the task
    strip = Image.open(tmp_path / f"{stem}.png")
    assert strip.size == (8 * 16, 16)  # eight frames side by side
    gif = Image.open(tmp_path / f"{stem}.gif")
    assert gif.n_frames > 8  # every planning frame (the expert plans each step) and the last one
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [f"{stem[9:]}.gif", f"{stem[9:]}.png"]


def test_rollouts_are_saved_under_the_realtime_clock_too(tmp_path):
    """A real-time call lets ticks pass unrendered; the strip shows the frames the policy planned from."""
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    clock = FakeClock()
    config = EvalConfig(
        tasks=("reach",),
        episodes_per_task=1,
        image_size=16,
        max_episode_steps=40,
        clock="realtime",
        save_rollouts=1,
        output=tmp_path,
    )
    report = EvalRunner(config, timer=clock, progress=False).run(SlowPolicy(clock, seconds=0.05))
    (strip,) = report["rollouts"]
    assert (tmp_path / strip).is_file() and (tmp_path / strip).with_suffix(".gif").is_file()
    assert report["overall"]["held_steps"] > 0  # ticks did pass unrendered while it "computed"


class FakeClock:
    """A timer the slow policy advances: latency without sleeping, identical on any machine."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowPolicy:
    """Moves +x with chunks of 8 actions; each call 'takes' 50 ms (4 ticks at 80 Hz) and reports stats."""

    def __init__(self, clock: FakeClock, seconds: float = 0.05, chunk: int = 8):
        self.clock, self.seconds, self.chunk = clock, seconds, chunk
        self.last_decode_stats = None
        self.calls = 0

    def reset(self):
        self.calls = 0

    def predict_action_chunk(self, obs, **kwargs):
        assert obs["observation.image"].shape[1:] == (3, 16, 16)
        self.calls += 1
        self.clock.now += self.seconds
        self.last_decode_stats = SimpleNamespace(
            wall_ms=50.0, iterations=torch.tensor([3]), tokens=32, stopped_by="fixed_point"
        )
        chunk = torch.zeros(1, self.chunk, 4)
        chunk[..., 0] = 1.0
        return chunk


def _run_slow(clock_mode: str, execute_steps=None, steps: int = 24, chunk: int = 8, **config):
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.tasks import get_task

    clock = FakeClock()
    config = EvalConfig(
        tasks=("reach",),
        episodes_per_task=1,
        image_size=16,
        max_episode_steps=steps,
        clock=clock_mode,
        execute_steps=execute_steps,
        **config,
    )
    runner = EvalRunner(config, timer=clock, progress=False)
    with MetaWorldEnv(EnvConfig("reach", image_size=16, max_episode_steps=steps)) as env:
        start_x = float(env.reset(0).state[0])
        result = runner.run_episode(SlowPolicy(clock, chunk=chunk), env, get_task("reach"), seed=0)
        end_x = float(env.observe().state[0])
    return result, end_x - start_x


def test_realtime_clock_computes_while_the_previous_chunk_executes():
    paused, paused_dx = _run_slow("paused")
    realtime, realtime_dx = _run_slow("realtime", plan_ahead=False)  # the stale steps dropped

    assert paused.steps == realtime.steps == 24
    assert paused.held_steps == 0 and paused.dropped_actions == 0
    assert paused.actions_from_policy == 24 and paused.policy_calls == 3
    # Each call lets 4 ticks (50 ms at 80 Hz) pass. The first one has nothing queued: hold 4, then
    # the chunk from offset 4. From then on the next observation is taken as soon as no more than
    # latency + margin = 5 actions are left, so the 4 left of each chunk cover the next call.
    assert realtime.held_steps == 4 and realtime.actions_from_policy == 20
    assert realtime.policy_calls == 6 and realtime.late_chunks == 0
    assert realtime.dropped_actions == 4 * realtime.policy_calls
    assert realtime_dx < paused_dx  # latency cost motion
    assert realtime.decode_ms == [50.0] * realtime.policy_calls
    assert realtime.decode_iterations == [3.0] * realtime.policy_calls


def test_realtime_clock_keeps_executing_the_previous_chunk():
    """Chunks of 16, replanning after 2 actions: the leftover covers the 4 ticks of the next call."""
    result, _ = _run_slow("realtime", execute_steps=2, chunk=16)
    assert result.held_steps == 4  # only the very first call has nothing queued
    assert result.actions_from_policy == 20


def test_report_carries_chunk_statistics_and_realtime_counters():
    from ceed_vla.sim.evaluate import EvalConfig, build_report, report_markdown

    result, _ = _run_slow("realtime")
    config = EvalConfig(tasks=("reach",), episodes_per_task=1, image_size=16, clock="realtime")
    report = build_report(config, [result], {})
    overall = report["overall"]
    assert overall["chunk_ms_p50"] == 50.0 and overall["iterations_per_chunk"] == 3.0
    assert overall["tokens_per_chunk"] == 32.0
    assert overall["held_fraction"] == pytest.approx(4 / 24)
    # lerobot-eval's names for the same things
    assert overall["pc_success"] == 100.0 * overall["success_rate"]
    assert overall["avg_sum_reward"] == pytest.approx(result.reward_sum) and result.reward_sum > 0
    assert overall["avg_max_reward"] <= overall["avg_sum_reward"]
    assert overall["late_chunks"] == 0
    assert overall["planned_ahead_steps"] == result.planned_ahead_steps > 0  # the default scheduling
    text = report_markdown(report)
    assert "50.0 ms per chunk" in text and "steps held" in text
    assert f"Planned ahead: {result.planned_ahead_steps} committed steps" in text


def test_cli_eval_runs_the_expert_and_rejects_a_missing_checkpoint(tmp_path, capsys):
    from ceed_vla import cli

    out = tmp_path / "eval"
    argv = ["eval", "--policy", "expert", "--tasks", "reach", "--episodes", "1", "--image-size", "16"]
    assert cli.main([*argv, "--output", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["per_task"]["reach"]["success_rate"] == 1.0

    assert cli.main(["eval", "--policy", str(tmp_path / "no_such_checkpoint")]) == 2
    assert "checkpoint directory" in capsys.readouterr().err


def test_decoding_options_reach_a_decoding_policy_as_a_decode_config():
    from ceed_vla.decoding import DecodeConfig
    from ceed_vla.sim.evaluate import decoding_kwargs
    from ceed_vla.sim.experts import ScriptedExpert

    vla_like = SimpleNamespace(n_bins=256)
    kwargs = decoding_kwargs(vla_like, "early_exit", sigma=3, tau=2)
    assert kwargs == {"decoding": DecodeConfig(mode="early_exit", sigma=3, tau=2, n_bins=256)}
    assert decoding_kwargs(vla_like, None, None, None)["decoding"].mode == "ar"
    assert decoding_kwargs(ScriptedExpert(), "jacobi", None, None) == {}


@pytest.mark.parametrize("clock", ["paused", "realtime"])
def test_runner_drives_a_vla_policy_with_decoding_options(make_policy, clock):
    from ceed_vla.decoding import DecodeConfig
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    torch.set_num_threads(1)
    policy = make_policy()  # tiny and untrained: this checks the contract, not the skill
    config = EvalConfig(
        tasks=("reach",), episodes_per_task=1, image_size=24, max_episode_steps=12, clock=clock
    )
    decoding = DecodeConfig(mode="jacobi", n_bins=policy.n_bins)
    report = EvalRunner(config, {"decoding": decoding}, progress=False).run(policy)

    task = report["per_task"]["reach"]
    assert report["episodes"][0]["steps"] == 12
    assert task["policy_calls"] >= 12 // policy.config.chunk_size
    assert task["chunk_ms_p50"] > 0 and task["iterations_per_chunk"] >= 1
    assert task["tokens_per_chunk"] == policy.config.chunk_size * 4
    assert report["settings"]["decoding"]["decoding"]["mode"] == "jacobi"


def test_a_two_camera_policy_is_evaluated_with_its_own_cameras(make_policy, tmp_path):
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    torch.set_num_threads(1)
    keys = ("observation.images.corner2", "observation.images.gripperPOV")
    policy = make_policy(image_keys=keys)
    config = EvalConfig(
        tasks=("reach",),
        episodes_per_task=1,
        image_size=16,
        max_episode_steps=6,
        output=tmp_path,
        save_rollouts=1,
    ).for_policy(policy)
    assert config.camera == "corner2,gripperPOV"
    report = EvalRunner(config, {}, progress=False).run(policy)
    assert report["settings"]["camera"] == "corner2,gripperPOV"
    assert report["episodes"][0]["steps"] == 6
    with pytest.raises(ValueError, match=r"--camera 'corner2' renders \['observation.images.corner2'\]"):
        EvalConfig(tasks=("reach",), camera="corner2").for_policy(policy)


def _outcomes(report) -> list[tuple]:
    return [(e["task"], e["seed"], e["success"], e["steps"], e["policy_calls"]) for e in report["episodes"]]


def test_workers_run_the_same_episodes_and_report_them_in_order(tmp_path):
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner
    from ceed_vla.sim.experts import ScriptedExpert

    base = dict(tasks=("reach", "push"), episodes_per_task=3, image_size=16, max_episode_steps=60)
    here = EvalRunner(EvalConfig(**base), progress=False).run(ScriptedExpert())
    out = tmp_path / "two"
    config = EvalConfig(**base, workers=2, output=out, save_rollouts=1)
    spread = EvalRunner(config, progress=False).run(ScriptedExpert())

    assert _outcomes(spread) == _outcomes(here)  # same seeds, same order, same results
    assert [e["task"] for e in spread["episodes"]] == ["reach"] * 3 + ["push"] * 3
    assert spread["overall"]["successes"] == here["overall"]["successes"]
    assert spread["settings"]["workers"] == 2 and spread["settings"]["threads"] >= 1
    assert len(spread["rollouts"]) == 2  # the first episode of each task, saved by its worker
    assert all((out / r).is_file() for r in spread["rollouts"])


def test_workers_get_a_pickled_vla_policy_and_decode_as_this_process_does(make_policy):
    from ceed_vla.decoding import DecodeConfig
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    policy = make_policy()
    decoding = {"decoding": DecodeConfig(mode="jacobi", n_bins=policy.n_bins)}
    base = dict(tasks=("reach",), episodes_per_task=2, image_size=16, max_episode_steps=8, threads=1)
    here = EvalRunner(EvalConfig(**base), decoding, progress=False).run(policy)
    spread = EvalRunner(EvalConfig(**base, workers=2), decoding, progress=False).run(policy)
    assert _outcomes(spread) == _outcomes(here)
    assert [e["iterations_per_chunk"] for e in spread["episodes"]] == [
        e["iterations_per_chunk"] for e in here["episodes"]
    ]
    assert spread["overall"]["chunk_ms_p50"] > 0


def test_a_failing_worker_fails_the_evaluation():
    from ceed_vla.sim.evaluate import EvalConfig, EvalRunner

    config = EvalConfig(tasks=("reach",), episodes_per_task=2, image_size=16, workers=2)
    with pytest.raises(AttributeError, match="reset"):
        EvalRunner(config, progress=False).run(SimpleNamespace())  # no reset(): not a policy


@pytest.mark.parametrize(("field", "value"), [("workers", 0), ("threads", 0)])
def test_worker_and_thread_counts_below_one_are_refused(field, value):
    from ceed_vla.sim.evaluate import EvalConfig

    with pytest.raises(ValueError, match=field):
        EvalConfig(tasks=("reach",), **{field: value})


def test_realtime_clock_plans_ahead_by_default():
    """The same slow policy at its defaults: after the first call, whose chunk starts at its
    observation (no latency known yet: 4 stale steps dropped, 4 ticks held), each chunk is planned for
    the tick after the 4 committed steps that run while it is computed, so none of it is stale."""
    realtime, _ = _run_slow("realtime")
    assert realtime.steps == 24 and realtime.held_steps == 4 and realtime.late_chunks == 0
    assert realtime.dropped_actions == 4  # the first chunk's only
    assert realtime.planned_ahead_steps == 4 * (realtime.policy_calls - 1)
