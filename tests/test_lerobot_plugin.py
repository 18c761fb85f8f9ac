"""The LeRobot plugin: discovery, the shared checkpoint layout, and a rollout through LeRobot's factory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from ceed_vla.policy import ActionTokenizer, StateNormalizer, VLAPolicy
from ceed_vla.policy.config import LMConfig, VisionConfig, VLAConfig
from ceed_vla.policy.text_tokenizer import train_instruction_tokenizer

from tests.fixtures.arm import ARM_CAMERAS, ARM_FPS, ARM_JOINTS, ARM_TASKS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tiny(**overrides) -> VLAConfig:
    return VLAConfig(
        lm=LMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        vision=VisionConfig(channels=(8, 16), grid=2, image_size=16),
        chunk_size=4,
        **overrides,
    )


def _ceed_checkpoint(arm_dataset, directory, seed=0) -> VLAPolicy:
    """A ceed (raw-units) policy for the arm dataset, saved as `ceed train` saves it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(*arm_dataset)
    torch.manual_seed(seed)
    config = _tiny(
        action_dim=6,
        state_dim=6,
        image_keys=tuple(ARM_CAMERAS),
        image_shapes=tuple((3, h, w) for h, w in ARM_CAMERAS.values()),
        state_names=ARM_JOINTS,
        action_names=ARM_JOINTS,
        fps=float(meta.fps),
    )
    stats = meta.stats
    policy = VLAPolicy.build(
        config,
        train_instruction_tokenizer(ARM_TASKS, vocab_size=64),
        ActionTokenizer(
            q01=torch.as_tensor(stats["action"]["q01"]), q99=torch.as_tensor(stats["action"]["q99"])
        ),
        StateNormalizer(
            mean=torch.as_tensor(stats["observation.state"]["mean"]),
            std=torch.as_tensor(stats["observation.state"]["std"]),
        ),
    )
    policy.save_pretrained(directory)
    return policy


def test_plugin_is_discovered_by_lerobot():
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class
    from lerobot.utils.import_utils import register_third_party_plugins

    register_third_party_plugins()
    assert "ceed" in PreTrainedConfig.get_known_choices()
    assert get_policy_class("ceed").__name__ == "CeedPolicy"


def test_checkpoint_carries_the_data_contract(arm_dataset, tmp_path):
    _ceed_checkpoint(arm_dataset, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["type"] == "ceed"
    assert config["input_features"]["observation.images.wrist"] == {"type": "VISUAL", "shape": [3, 24, 32]}
    assert config["input_features"]["observation.state"]["shape"] == [6]
    assert config["output_features"]["action"]["shape"] == [6]
    assert config["action_names"] == list(ARM_JOINTS) and config["fps"] == ARM_FPS


def test_ceed_checkpoint_runs_through_lerobot_factory(arm_dataset, tmp_path):
    """make_policy + make_pre_post_processors on a checkpoint ceed wrote, then a short rollout over
    the dataset's observations: every action equals the ceed-native policy's to within one bin."""
    from lerobot.configs import PreTrainedConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_pre_post_processors
    from lerobot.utils.import_utils import register_third_party_plugins

    native = _ceed_checkpoint(arm_dataset, tmp_path / "ckpt").eval()
    register_third_party_plugins()
    cfg = PreTrainedConfig.from_pretrained(tmp_path / "ckpt")
    cfg.pretrained_path = tmp_path / "ckpt"
    cfg.device = "cpu"
    ds = LeRobotDataset(*arm_dataset)
    policy = make_policy(cfg, ds_meta=ds.meta)
    assert type(policy).__name__ == "CeedPolicy"
    pre, post = make_pre_post_processors(cfg, pretrained_path=str(tmp_path / "ckpt"))
    policy.reset()
    native.reset()
    width = native.action_tokenizer.bin_width  # [D]
    for i in range(6):  # 6 control steps: one chunk of 4 executed, then a new chunk
        item = ds[i]
        obs = {k: item[k] for k in (*ARM_CAMERAS, "observation.state")} | {"task": item["task"]}
        action = post(policy.select_action(pre(dict(obs))))  # [1, 6] in degrees
        raw = {k: (v[None] if torch.is_tensor(v) else v) for k, v in obs.items()}
        expected = native.select_action(raw)
        assert action.shape == (1, 6)
        assert torch.all((action - expected).abs() <= width * 1.01), (action, expected)


def test_lerobot_trains_and_saves_a_checkpoint_ceed_reads(arm_dataset, tmp_path):
    """A fresh CeedPolicy from LeRobot's factory takes a training step on LeRobot's batches; what
    it saves (policy + processors, as lerobot-train does) loads in ceed with the dataset's stats."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from lerobot_policy_ceed import CeedConfig

    cfg = CeedConfig(
        device="cpu",
        chunk_size=4,
        lm=LMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
        vision=VisionConfig(channels=(8, 16), grid=2, image_size=16),
    )
    meta = LeRobotDataset(*arm_dataset).meta
    delta = {"action": [i / meta.fps for i in cfg.action_delta_indices]}
    ds = LeRobotDataset(*arm_dataset, delta_timestamps=delta)
    policy = make_policy(cfg, ds_meta=meta)
    assert cfg.image_keys == tuple(ARM_CAMERAS) and cfg.action_names == ARM_JOINTS
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    batch = pre(next(iter(torch.utils.data.DataLoader(ds, batch_size=4))))
    optim = torch.optim.AdamW(policy.get_optim_params(), lr=1e-3)
    loss, info = policy.forward(batch)
    loss.backward()
    optim.step()
    assert torch.isfinite(loss) and info["token_acc"] >= 0.0
    policy.save_pretrained(tmp_path / "lr")
    pre.save_pretrained(tmp_path / "lr")
    post.save_pretrained(tmp_path / "lr")
    loaded = VLAPolicy.from_pretrained(tmp_path / "lr")
    assert loaded.config.image_keys == tuple(ARM_CAMERAS) and loaded.config.fps == ARM_FPS
    assert torch.allclose(loaded.action_tokenizer.q99, torch.as_tensor(meta.stats["action"]["q99"]).float())
    item = ds[0]
    obs = {k: item[k][None] for k in (*ARM_CAMERAS, "observation.state")} | {"task": item["task"]}
    assert loaded.predict_action_chunk(obs).shape == (1, 4, 6)


@pytest.mark.slow
def test_unmodified_lerobot_train_writes_a_checkpoint_ceed_runs(arm_dataset, tmp_path):
    """`lerobot-train --policy.type=ceed`, as a user runs it: its checkpoint is ceed's layout, with
    the dataset's cameras, joint names and fps, and ceed predicts from it with no conversion."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    repo_id, root = arm_dataset
    argv = [
        sys.executable, "-m", "lerobot.scripts.lerobot_train", "--policy.type=ceed",
        f"--dataset.repo_id={repo_id}", f"--dataset.root={root}", f"--output_dir={tmp_path / 'out'}",
        "--steps=2", "--batch_size=4", "--save_freq=2", "--log_freq=1", "--num_workers=0",
        "--policy.device=cpu", "--policy.push_to_hub=false", "--wandb.enable=false",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = tmp_path / "out" / "checkpoints" / "last" / "pretrained_model"
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["type"] == "ceed"
    # the size its encoder trained at is recorded (the fixture's largest side, under the default cap),
    # so the bridge's contract resizes to it and has nothing to warn about
    largest = max(max(hw) for hw in ARM_CAMERAS.values())
    assert saved["vision"]["image_size"] == largest
    from ceed_vla.robot_bridge.contract import PolicyContract, image_size_note

    contract = PolicyContract.from_checkpoint(str(ckpt))
    assert contract.image_size == largest and image_size_note(contract) is None
    policy = VLAPolicy.from_pretrained(ckpt)
    assert policy.config.image_keys == tuple(ARM_CAMERAS) and policy.config.fps == ARM_FPS
    assert tuple(policy.config.action_names) == ARM_JOINTS
    item = LeRobotDataset(repo_id, root=root)[0]
    obs = {k: item[k][None] for k in (*ARM_CAMERAS, "observation.state")} | {"task": item["task"]}
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (1, policy.config.chunk_size, 6) and torch.isfinite(chunk).all()


def test_new_plugin_policy_records_a_bounded_encoder_size():
    """A policy LeRobot builds for 480x640 cameras trains its conv encoder at the default cap, not at
    the camera's size; an explicit size and a pretrained tower's own size are left alone."""
    from lerobot_policy_ceed.configuration_ceed import CeedConfig
    from lerobot_policy_ceed.modeling_ceed import DEFAULT_IMAGE_SIZE, _record_image_size

    big = CeedConfig(image_keys=("observation.images.front",), image_shapes=((3, 480, 640),))
    assert big.vision.image_size is None
    _record_image_size(big)
    assert big.vision.image_size == DEFAULT_IMAGE_SIZE < 480

    small = CeedConfig(image_keys=("observation.images.front",), image_shapes=((3, 48, 64),))
    _record_image_size(small)
    assert small.vision.image_size == 64  # smaller frames keep their size

    explicit = CeedConfig(
        image_keys=("observation.images.front",),
        image_shapes=((3, 480, 640),),
        vision=VisionConfig(image_size=96),
    )
    _record_image_size(explicit)
    assert explicit.vision.image_size == 96
