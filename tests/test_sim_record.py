"""Task registry, environment and `ceed record`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ceed_vla.sim import tasks
from ceed_vla.sim.tasks import MT10, UnknownTaskError

pytestmark = pytest.mark.sim


# ----------------------------------------------------------------------------------- registry


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError) as err:
        tasks.get_task("open-the-fridge")
    message = str(err.value)
    assert "open-the-fridge" in message
    for name in MT10:
        assert name in message


def test_every_metaworld_v3_task_is_registered_with_paraphrases():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert {name.removesuffix("-v3") for name in ALL_V3_ENVIRONMENTS} == set(tasks.TASKS)
    for spec in tasks.TASKS.values():
        assert len(spec.train_instructions) >= 3
        assert spec.eval_instruction not in spec.train_instructions
        for text in spec.instructions:
            assert tasks.task_for_instruction(text) is spec


def test_task_names_sets_and_suffixes_resolve():
    assert [s.name for s in tasks.resolve_tasks("mt10")] == list(MT10)
    assert [s.name for s in tasks.resolve_tasks("reach-v3, push")] == ["reach", "push"]
    with pytest.raises(UnknownTaskError):
        tasks.task_for_instruction("make me a sandwich")


# ---------------------------------------------------------------------------------------- env


def test_env_observation_matches_interface_and_reset_is_seeded():
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv, to_policy_batch

    with MetaWorldEnv(EnvConfig("reach", image_size=24)) as env:
        first = env.reset(seed=7)
        other = env.reset(seed=8)
        again = env.reset(seed=7)
        step = env.step(np.array([0.5, 0.0, 0.0, 0.0]))
    assert first.image.shape == (24, 24, 3) and first.image.dtype == np.uint8
    assert first.state.shape == (4,) and first.state.dtype == np.float32
    np.testing.assert_array_equal(first.environment_state, again.environment_state)
    assert not np.array_equal(first.environment_state[-3:], other.environment_state[-3:])  # goal moved
    assert step.observation.state[0] > again.state[0]  # +x action moved the hand along +x

    batch = to_policy_batch([first], ["reach the red goal"])
    assert batch["observation.image"].shape == (1, 3, 24, 24)
    assert 0.0 <= float(batch["observation.image"].min()) and float(batch["observation.image"].max()) <= 1.0
    assert batch["observation.state"].shape == (1, 4)
    assert batch["task"] == ["reach the red goal"]


@pytest.mark.parametrize("task", ["reach", "push"])
def test_the_first_frame_shows_the_goal_where_it_is(task):
    """MetaWorld places the goal site after its last forward pass; the reset frame must not show a
    stale goal: it equals the frame rendered after a forward pass, and the site sits on the goal."""
    import mujoco
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv

    with MetaWorldEnv(EnvConfig(task, image_size=32)) as env:
        for seed in (1, 2):
            obs = env.reset(seed=seed)
            model, data = env._env.model, env._env.data
            goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            np.testing.assert_allclose(data.site_xpos[goal], obs.environment_state[-3:], atol=1e-6)
            mujoco.mj_forward(model, data)
            np.testing.assert_array_equal(env.render()["observation.image"], obs.image)


def test_corner_camera_frames_are_upright():
    """Upright: the grey backdrop fills the top-right corner, the wooden table the bottom-right one."""
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv

    with MetaWorldEnv(EnvConfig("reach", image_size=32)) as env:
        image = env.reset(seed=0).image.astype(float)
    top, bottom = image[:4, -10:].mean(axis=(0, 1)), image[-4:, -10:].mean(axis=(0, 1))  # mean RGB
    assert np.ptp(top) < 12  # neutral grey
    assert bottom[0] - bottom[2] > 25  # wood: red well above blue


def _green_goal_pixels(camera: str, radius: float) -> int:
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv

    with MetaWorldEnv(EnvConfig("push", image_size=64, camera=camera, goal_marker_radius=radius)) as env:
        image = env.reset(seed=3).image.astype(int)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return int(((g > 150) & (r < 90) & (b < 90)).sum())  # push's goal is the only pure green


def test_workspace_camera_and_marker_radius_give_the_goal_more_pixels():
    corner = _green_goal_pixels("corner2", 0.03)
    assert corner > 0  # visible at all
    assert _green_goal_pixels("corner2", 0.05) > 1.5 * corner
    assert _green_goal_pixels("workspace", 0.03) > 1.5 * corner


def test_several_cameras_render_under_lerobot_keys_in_order():
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv, to_policy_batch

    with MetaWorldEnv(EnvConfig("push", image_size=16, camera="corner2,gripperPOV")) as env:
        obs = env.reset(seed=3)
        for _ in range(15):
            moved = env.step(np.array([0.0, 1.0, 0.0, 0.0])).observation
    with MetaWorldEnv(EnvConfig("push", image_size=16)) as env:
        alone = env.reset(seed=3)
    assert list(obs.images) == ["observation.images.corner2", "observation.images.gripperPOV"]
    assert list(alone.images) == ["observation.image"]  # one camera keeps LeRobot's single-camera key
    np.testing.assert_array_equal(obs.images["observation.images.corner2"], alone.image)
    assert obs.frame().shape == (32, 16, 3)  # a rollout strip's column shows both, one above the other
    # The wrist camera moves with the hand; the corner camera's view of the far wall does not.
    wrist, moved_wrist = (
        obs.images["observation.images.gripperPOV"],
        moved.images["observation.images.gripperPOV"],
    )
    assert np.abs(wrist.astype(int) - moved_wrist.astype(int)).mean() > 5
    batch = to_policy_batch([obs, moved], ["push", "push"])
    assert batch["observation.images.gripperPOV"].shape == (2, 3, 16, 16)
    assert "observation.image" not in batch


@pytest.mark.parametrize(
    ("keys", "asked", "expected"),
    [
        (["observation.image"], None, "corner2"),
        (["observation.image"], "workspace", "workspace"),
        (["observation.images.corner2", "observation.images.gripperPOV"], None, "corner2,gripperPOV"),
        (
            ["observation.images.corner2", "observation.images.gripperPOV"],
            "corner2,gripperPOV",
            "corner2,gripperPOV",
        ),
        # one camera of a multi-camera recording (`ceed train --image-keys observation.images.corner2`)
        (["observation.images.corner2"], None, "corner2"),
        (["observation.images.corner2"], "corner2", "corner2"),
    ],
)
def test_a_policys_image_keys_choose_the_cameras(keys, asked, expected):
    from ceed_vla.sim.env import cameras_for_image_keys

    assert cameras_for_image_keys(keys, asked) == expected


@pytest.mark.parametrize(
    ("keys", "asked"),
    [
        (["observation.image"], "corner2,gripperPOV"),  # a one-camera policy asked to watch two
        (["observation.images.corner2", "observation.images.gripperPOV"], "gripperPOV,corner2"),  # order
        (["observation.images.corner2"], "workspace"),  # another camera than the one it learnt from
        (["observation.images."], None),  # no camera name
        (["observation.state"], None),  # not a camera key
    ],
)
def test_cameras_that_cannot_match_the_policy_are_refused_naming_both(keys, asked):
    from ceed_vla.sim.env import cameras_for_image_keys

    with pytest.raises(ValueError, match="the policy reads cameras"):
        cameras_for_image_keys(keys, asked)


def test_a_policy_trained_on_one_of_several_cameras_is_fed_under_its_own_key():
    from types import SimpleNamespace

    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv
    from ceed_vla.sim.evaluate import EvalConfig

    policy = SimpleNamespace(config=SimpleNamespace(image_keys=("observation.images.corner2",)))
    env_config = (
        EvalConfig(tasks=("reach",), image_size=16).for_policy(policy).env_config(tasks.get_task("reach"))
    )
    assert env_config.cameras == {"corner2": "observation.images.corner2"}
    with MetaWorldEnv(env_config) as env:
        assert list(env.reset(seed=3).images) == ["observation.images.corner2"]
    # a one-camera policy still reads `observation.image`
    single = SimpleNamespace(config=SimpleNamespace(image_keys=("observation.image",)))
    assert EvalConfig(tasks=("reach",)).for_policy(single).env_config(tasks.get_task("reach")).cameras == {
        "corner2": "observation.image"
    }
    # and an unknown camera is refused by the scene, naming the ones it has
    front = SimpleNamespace(config=SimpleNamespace(image_keys=("observation.images.front",)))
    with pytest.raises(ValueError, match=r"'front' is not in the reach scene.*corner2"):
        MetaWorldEnv(
            EvalConfig(tasks=("reach",), image_size=16).for_policy(front).env_config(tasks.get_task("reach"))
        )
    assert EnvConfig("reach").cameras == {"corner2": "observation.image"}


@pytest.mark.parametrize("camera", ["", "corner2,", "corner2,corner2"])
def test_malformed_camera_lists_are_refused(camera):
    from ceed_vla.sim.env import EnvConfig

    with pytest.raises(ValueError, match="camera"):
        EnvConfig("reach", camera=camera)


def test_unknown_camera_lists_scene_and_free_cameras():
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv

    with pytest.raises(ValueError, match=r"'nope' is not in the reach scene.*corner2.*workspace"):
        MetaWorldEnv(EnvConfig("reach", image_size=16, camera="nope"))


def test_expert_episode_is_deterministic_and_dart_noise_keeps_clean_labels():
    from ceed_vla.sim.env import EnvConfig, MetaWorldEnv
    from ceed_vla.sim.experts import ScriptedExpert
    from ceed_vla.sim.record import run_expert_episode

    spec = tasks.get_task("reach")
    expert = ScriptedExpert()
    with MetaWorldEnv(EnvConfig("reach", image_size=16, max_episode_steps=120)) as env:
        a = run_expert_episode(env, expert, spec, seed=3, noise_std=0.0, rng=np.random.default_rng(0))
        b = run_expert_episode(env, expert, spec, seed=3, noise_std=0.0, rng=np.random.default_rng(1))
        noisy = run_expert_episode(env, expert, spec, seed=3, noise_std=0.3, rng=np.random.default_rng(0))
    assert a.success and b.success
    np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))
    # With noise the executed path differs, but each label is the expert's action for its state.
    assert not np.array_equal(
        np.stack(a.states[: len(noisy.states)]), np.stack(noisy.states[: len(a.states)])
    )
    assert float(np.abs(np.stack(noisy.actions)).max()) <= 1.0


# ------------------------------------------------------------------------------------- record


def _config(root, **kw):
    from ceed_vla.sim.record import RecordConfig

    base = dict(output=root, repo_id="local/test", tasks=("reach",), episodes_per_task=3, image_size=16)
    base.update(kw)
    return RecordConfig(**base)


def test_non_empty_output_is_refused(tmp_path):
    from ceed_vla.sim.record import OutputExistsError, record

    (tmp_path / "notes.txt").write_text("someone else's data")
    with pytest.raises(OutputExistsError, match="--resume|--overwrite"):
        record(_config(tmp_path), progress=False)
    assert (tmp_path / "notes.txt").read_text() == "someone else's data"


def test_cli_refuses_non_empty_output_with_a_message(tmp_path, capsys):
    from ceed_vla import cli

    (tmp_path / "x").write_text("x")
    assert cli.main(["record", "--output", str(tmp_path), "--tasks", "reach", "--episodes", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_recording_from_before_the_marker_setting_resumes_with_the_old_radius(tmp_path):
    from ceed_vla.sim.record_output import ResumeMismatchError, _check_same_settings

    old = {k: v for k, v in _config(tmp_path / "ds").settings().items() if k != "goal_marker_radius"}
    _check_same_settings(old, _config(tmp_path / "ds").settings(), tmp_path)  # 0.03 then and now
    with pytest.raises(ResumeMismatchError, match="goal_marker_radius"):
        _check_same_settings(old, _config(tmp_path / "ds", goal_marker_radius=0.05).settings(), tmp_path)


def test_interrupted_recording_resumes_without_loss_or_duplicates(tmp_path):
    from ceed_vla.sim.record import LOG_NAME, ResumeMismatchError, record
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "ds"

    class Interrupt(Exception):
        pass

    def stop_after_two(entry):
        if entry.episode_index == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        record(_config(root), on_episode=stop_after_two, progress=False)
    assert LeRobotDataset("local/test", root=root).meta.total_episodes == 2  # finalized, loadable

    with pytest.raises(ResumeMismatchError, match="image_size"):
        record(_config(root, image_size=24, resume=True), progress=False)
    with pytest.raises(ResumeMismatchError, match="goal_marker_radius: recorded with 0.03, asked 0.05"):
        record(_config(root, goal_marker_radius=0.05, resume=True), progress=False)

    summary = record(_config(root, resume=True), progress=False)
    assert summary.new_episodes == 1 and summary.episodes == 3

    log = json.loads((root / "meta" / LOG_NAME).read_text())["episodes"]
    assert [e["seed"] for e in log] == [0, 1, 2]  # the expert never fails reach: consecutive seeds
    assert [e["episode_index"] for e in log] == [0, 1, 2]
    ds = LeRobotDataset("local/test", root=root)
    assert ds.meta.total_episodes == 3
    lengths = [int(n) for n in ds.meta.episodes["length"]]
    assert lengths == [e["steps"] for e in log]
    assert len(ds) == sum(lengths)
    assert [ds.meta.episodes["tasks"][i][0] for i in range(3)] == [e["instruction"] for e in log]


def test_a_two_camera_recording_stores_one_image_feature_per_camera(tmp_path):
    import torch
    from ceed_vla.sim.record import ResumeMismatchError, record
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "two"
    record(_config(root, episodes_per_task=1, image_size=16, camera="corner2,gripperPOV"), progress=False)
    ds = LeRobotDataset("local/test", root=root)
    cams = [k for k, f in ds.features.items() if f["dtype"] == "image"]
    assert cams == ["observation.images.corner2", "observation.images.gripperPOV"]
    item = ds[0]
    assert item["observation.images.gripperPOV"].shape == (3, 16, 16)
    assert not torch.equal(item["observation.images.corner2"], item["observation.images.gripperPOV"])
    with pytest.raises(ResumeMismatchError, match="camera"):  # resuming with one camera is refused
        record(_config(root, episodes_per_task=2, image_size=16, resume=True), progress=False)


def test_tiny_dataset_fixture_loads(tiny_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    repo_id, root = tiny_dataset
    ds = LeRobotDataset(repo_id, root=root)
    assert ds.meta.total_episodes == 4
    item = ds[0]
    assert item["observation.image"].shape == (3, 32, 32)
    assert tasks.task_for_instruction(item["task"]).name == "reach"


@pytest.mark.slow
def test_two_episodes_of_each_mt10_task_load_with_features_and_task_texts(tmp_path):
    from ceed_vla.sim.record import record
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "mt10"
    record(_config(root, tasks=MT10, episodes_per_task=2, image_size=16), progress=False)

    ds = LeRobotDataset("local/test", root=root)
    assert ds.meta.total_episodes == 20
    assert ds.fps == 80
    assert ds.features["observation.image"]["dtype"] == "image"
    assert tuple(ds.features["observation.image"]["shape"]) == (16, 16, 3)
    assert (
        ds.features["observation.state"]["shape"] == (4,)
        and ds.features["observation.state"]["dtype"] == "float32"
    )
    assert ds.features["action"]["shape"] == (4,) and ds.features["action"]["dtype"] == "float32"
    texts = list(ds.meta.tasks.index)
    per_task = {}
    for text in texts:
        per_task.setdefault(tasks.task_for_instruction(text).name, set()).add(text)
    assert set(per_task) == set(MT10)
    assert all(len(v) == 2 for v in per_task.values())  # two episodes, two different paraphrases
    item = ds[len(ds) - 1]
    assert item["observation.image"].dtype.is_floating_point and float(item["observation.image"].max()) <= 1.0
    assert float(item["action"].abs().max()) <= 1.0


def _frames(root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/test", root=root)
    return [ds[i] for i in range(len(ds))]


def test_workers_record_the_same_dataset_as_one_process(tmp_path):
    import torch
    from ceed_vla.sim.record import LOG_NAME, record

    # push within 60 steps: the expert fails some attempts, which must be skipped in the same order
    kw = dict(tasks=("push", "reach"), episodes_per_task=2, max_episode_steps=60, noise_std=0.1)
    one = record(_config(tmp_path / "one", **kw), progress=False)
    two = record(_config(tmp_path / "two", workers=2, **kw), progress=False)

    assert one.failures > 0 and (two.attempts, two.failures) == (one.attempts, one.failures)
    logs = [json.loads((tmp_path / d / "meta" / LOG_NAME).read_text())["episodes"] for d in ("one", "two")]
    assert logs[0] == logs[1]
    a, b = _frames(tmp_path / "one"), _frames(tmp_path / "two")
    assert len(a) == len(b) == one.frames
    for x, y in zip(a, b, strict=True):
        for key in ("observation.image", "observation.state", "action"):
            assert torch.equal(x[key], y[key]), key


def test_workers_that_never_succeed_fail_the_task_and_keep_the_dataset_loadable(tmp_path):
    from ceed_vla.sim.record import LOG_NAME, RecordingError, record

    config = _config(tmp_path / "ds", tasks=("push",), episodes_per_task=1, max_episode_steps=2, workers=2)
    with pytest.raises(RecordingError, match="push: only 0 successful episodes in 5 attempts"):
        record(config, progress=False)
    meta = tmp_path / "ds" / "meta"
    assert json.loads((meta / "info.json").read_text())["total_episodes"] == 0
    assert json.loads((meta / LOG_NAME).read_text())["episodes"] == []
