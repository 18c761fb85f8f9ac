"""The bridge takes its data contract from the checkpoint: dimensions, names, cameras, sizes, rate;
a parameter that contradicts it is refused naming both values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ceed_vla.robot_bridge import ros_params
from ceed_vla.robot_bridge.config import BridgeConfig, ConfigError
from ceed_vla.robot_bridge.contract import PolicyContract, apply_contract
from ceed_vla.robot_bridge.core import BridgeCore

JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
FRONT, WRIST = "observation.images.front", "observation.images.wrist"


def _checkpoint(tmp_path, **over) -> str:
    """A config.json as `ceed train` writes it for an SO-101-style arm (no weights: the contract only)."""
    config = {
        "type": "ceed",
        "action_dim": 6,
        "state_dim": 6,
        "image_keys": [FRONT, WRIST],
        "image_shapes": [[3, 480, 640], [3, 240, 320]],
        "state_names": [f"{j}.pos" for j in JOINTS],
        "action_names": [f"{j}.pos" for j in JOINTS],
        "fps": 30.0,
        **over,
    }
    path = tmp_path / "ckpt"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return f"checkpoint:{path}"


LIMITS = {"action_low": [-100.0] * 6, "action_high": [100.0] * 6, "max_delta": [5.0]}
TOPICS = [f"{FRONT}=/front/image_raw", f"{WRIST}=/wrist/image_raw"]


def _config(params: dict) -> BridgeConfig:
    return ros_params.from_dict(BridgeConfig, params, adjust=apply_contract)


def test_a_two_camera_six_joint_checkpoint_configures_the_bridge(tmp_path):
    config = _config({"policy": _checkpoint(tmp_path), **LIMITS, "camera_topics": TOPICS})
    assert config.control_rate_hz == 30.0  # the dataset's fps
    assert config.action_dim == 6
    assert config.state_joint_names == [f"{j}.pos" for j in JOINTS]
    cams = {c.key: c for c in config.cameras}
    assert (cams[FRONT].topic, cams[FRONT].width, cams[FRONT].height) == ("/front/image_raw", 640, 480)
    assert (cams[WRIST].topic, cams[WRIST].width, cams[WRIST].height) == ("/wrist/image_raw", 320, 240)
    assert {c.name for c in config.cameras} == {f"camera:{FRONT}", f"camera:{WRIST}"}
    traj = _config(
        {"policy": _checkpoint(tmp_path), **LIMITS, "camera_topics": TOPICS, "output_mode": "trajectory"}
    )
    assert traj.joint_names == [f"{j}.pos" for j in JOINTS]


@pytest.mark.parametrize(
    "params, quoted",
    [
        ({}, "acts in 6 dimensions (shoulder_pan.pos"),  # limits are never guessed
        ({**LIMITS, "action_low": [-1.0] * 4}, "action_low has 4 values but"),
        ({**LIMITS}, "reads 2 cameras"),  # no camera_topics for two cameras
        ({**LIMITS, "camera_topics": TOPICS, "control_rate_hz": 20.0}, "control_rate_hz=20.0 contradicts"),
        ({**LIMITS, "camera_topics": TOPICS[:1]}, f"missing: ['{WRIST}']"),
        (
            {**LIMITS, "camera_topics": [*TOPICS, "observation.images.top=/top"]},
            "unknown: ['observation.images.top']",
        ),
        ({**LIMITS, "camera_topics": [f"{FRONT}=/front:320x240", TOPICS[1]]}, "recorded it at 640x480"),
        ({**LIMITS, "camera_topics": TOPICS, "state_joint_names": ["a", "b"]}, "has 2 names but"),
        ({**LIMITS, "camera_topics": ["front"]}, "write KEY=TOPIC"),
    ],
)
def test_parameters_contradicting_the_checkpoint_are_refused_naming_both(tmp_path, params, quoted):
    with pytest.raises(ConfigError) as err:
        _config({"policy": _checkpoint(tmp_path), **params})
    assert quoted in str(err.value)


def test_a_sim_checkpoint_fills_rate_camera_key_and_size(tmp_path):
    spec = _checkpoint(
        tmp_path,
        action_dim=4,
        state_dim=4,
        image_keys=["observation.image"],
        image_shapes=[[3, 64, 64]],
        state_names=["x", "y", "z", "gripper"],
        action_names=["dx", "dy", "dz", "grip"],
        fps=80.0,
    )
    config = _config({"policy": spec, "state_joint_names": ["ee_x", "ee_y", "ee_z", "gripper"]})
    assert config.control_rate_hz == 80.0 and config.action_dim == 4
    assert [(c.key, c.topic, c.width, c.height) for c in config.cameras] == [
        ("observation.image", "/camera/image_raw", 64, 64)
    ]
    assert config.state_joint_names == ["ee_x", "ee_y", "ee_z", "gripper"]  # the robot's own names, kept
    with pytest.raises(ConfigError, match="image_width=128 contradicts"):
        _config({"policy": spec, "image_width": 128})


def test_an_old_layout_checkpoint_is_refused_with_the_conversion(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps({"chunk_size": 8}))
    with pytest.raises(ConfigError, match="ceed checkpoint convert"):
        PolicyContract.from_checkpoint(tmp_path / "old")


def test_the_core_needs_every_camera_and_hands_each_to_the_policy(tmp_path):
    config = _config({"policy": _checkpoint(tmp_path), **LIMITS, "camera_topics": TOPICS, "instruction": "x"})
    core = BridgeCore(config)
    now = 0.0
    core.observe_state(np.zeros(6, np.float32), now=now)
    core.observe_image(np.zeros((480, 640, 3), np.uint8), stamp=now, now=now, key=FRONT)
    assert core.tick(now).reason == f"stale_camera:{WRIST}"  # the wrist camera never sent a frame
    core.observe_image(np.ones((240, 320, 3), np.uint8), stamp=now - 0.01, now=now, key=WRIST)
    request = core.inference_request(now)
    assert request is not None
    assert request.observation[FRONT].shape == (1, 3, 480, 640)
    assert request.observation[WRIST].shape == (1, 3, 240, 320)
    assert request.image_stamp == pytest.approx(-0.01)  # the oldest frame of the observation
    with pytest.raises(ValueError, match="say which"):
        core.observe_image(np.zeros((480, 640, 3), np.uint8), stamp=now, now=now)
