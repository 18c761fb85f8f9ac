"""`--env.type=ceed_metaworld`: ceed's MetaWorld suite behind LeRobot's env config and `lerobot-eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.filterwarnings("ignore::UserWarning")]


def _env_config(**kwargs):
    from lerobot.envs.configs import EnvConfig
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()  # what lerobot-eval does first: registers "ceed_metaworld"
    return EnvConfig.get_choice_class("ceed_metaworld")(**kwargs)


@pytest.mark.parametrize(
    ("camera", "images"),
    [
        ("corner2", {"observation.image"}),
        ("corner2,gripperPOV", {"observation.images.corner2", "observation.images.gripperPOV"}),
    ],
)
def test_env_features_are_the_policy_features_a_recording_has(camera, images):
    from lerobot.envs.utils import env_to_policy_features

    features = env_to_policy_features(_env_config(task="push", camera=camera, image_size=16))
    assert set(features) == {"action", "observation.state", *images}
    assert all(tuple(features[k].shape) == (3, 16, 16) for k in images)
    assert tuple(features["observation.state"].shape) == (4,) and tuple(features["action"].shape) == (4,)


def test_lerobot_make_env_gives_ceeds_episodes_and_task_text():
    from ceed_vla.sim.seeds import split_seed
    from ceed_vla.sim.tasks import get_task
    from lerobot.envs.factory import make_env
    from lerobot.envs.utils import preprocess_observation

    cfg = _env_config(task="reach", image_size=16, camera="corner2,gripperPOV")
    envs = make_env(cfg, n_envs=1)
    vec = envs["ceed_metaworld"][0]
    try:
        obs, info = vec.reset(seed=[split_seed("eval", 0, 0)])
        assert list(vec.call("task_description")) == [get_task("reach").train_instructions[0]]
    finally:
        vec.close()
    features = preprocess_observation(obs)
    assert features["observation.images.gripperPOV"].shape == (1, 3, 16, 16)
    assert features["observation.state"].shape == (1, 4)
    with pytest.raises(ValueError, match="instructions"):
        _env_config(task="reach", instructions="heldout")


@pytest.mark.slow
def test_unmodified_lerobot_eval_runs_a_ceed_checkpoint_on_ceeds_seeds(make_policy, tmp_path):
    """`lerobot-eval --policy.path=CKPT --env.type=ceed_metaworld`, as a user runs it."""
    from ceed_vla.sim.seeds import split_seed

    policy = make_policy()  # untrained: this checks the plumbing, not the skill
    policy.save_pretrained(tmp_path / "ckpt")
    seed = split_seed("eval", 0, 0)
    argv = [
        sys.executable,
        "-m",
        "lerobot.scripts.lerobot_eval",
        f"--policy.path={tmp_path / 'ckpt'}",
        "--policy.device=cpu",
        "--env.type=ceed_metaworld",
        "--env.task=reach",
        "--env.image_size=24",
        "--env.episode_length=6",
        "--eval.n_episodes=2",
        "--eval.batch_size=1",
        f"--seed={seed}",
        f"--output_dir={tmp_path / 'eval'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    overall = info["overall"]
    assert overall["n_episodes"] == 2 and 0.0 <= overall["pc_success"] <= 100.0
    assert len(info["overall"]["video_paths"]) == 2  # rendered through the env's render()
