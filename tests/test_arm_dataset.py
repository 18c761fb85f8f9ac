"""The whole ceed pipeline on a real-arm-style dataset: two video cameras, six named joints in degrees.

ceed train -> distill collect -> distill train -> bench decode, every camera used by key, images
resized as they load, and the data contract (cameras, names, fps) written into the checkpoint.
"""

from __future__ import annotations

import json

import pytest
import torch
from ceed_vla.policy import VLAPolicy
from ceed_vla.policy.data import DatasetFeatureError, load_frames, open_dataset

from ceed_vla.cli import main as ceed
from tests.fixtures.arm import ARM_CAMERAS, ARM_FPS, ARM_JOINTS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_frames_keep_every_camera_resized_and_names(arm_dataset):
    frames = load_frames(*arm_dataset, chunk_size=4, image_size=16)
    assert frames.image_keys == list(ARM_CAMERAS)
    assert all(v.shape[1:] == (3, 16, 16) and v.dtype == torch.uint8 for v in frames.cameras.values())
    assert frames.image_shapes["observation.images.wrist"] == (3, 24, 32)  # as recorded
    assert frames.state_names == list(ARM_JOINTS) and frames.fps == ARM_FPS
    with pytest.raises(DatasetFeatureError, match=r"observation.images.top.*observation.images.front"):
        load_frames(*arm_dataset, chunk_size=4, image_keys=["observation.images.top"])


def test_video_decoded_in_blocks_equals_lerobot_frame_by_frame(arm_dataset):
    """Block decoding (blocks smaller than an episode, so they cross inside and between episodes) gives
    every row the frame LeRobot's own per-item path gives it, bit for bit."""
    frames = load_frames(*arm_dataset, chunk_size=4, block=5)
    ds = open_dataset(*arm_dataset, chunk_size=4)
    assert len(ds) == frames.states.shape[0] == 48
    for i in range(len(ds)):
        item = ds[i]
        for key in ARM_CAMERAS:
            expected = (item[key] * 255).round().to(torch.uint8)
            assert torch.equal(frames.cameras[key][i], expected), (key, i)


def test_train_distill_and_bench_on_two_cameras(arm_dataset, tmp_path):
    torch.set_num_threads(1)
    repo_id, root = arm_dataset
    data = ["--dataset-root", str(root), "--repo-id", repo_id]
    train = [
        "train", *data, "--output", str(tmp_path / "teacher"), "--steps", "2", "--batch-size", "4",
        "--chunk-size", "4", "--image-size", "16", "--vision", "conv", "--grid", "2",
        "--save-every", "2", "--val-every", "2", "--threads", "1", "--device", "cpu",
    ]  # fmt: skip
    assert ceed(train) == 0
    teacher = tmp_path / "teacher" / "final"
    config = json.loads((teacher / "config.json").read_text())
    assert config["type"] == "ceed" and list(config["input_features"])[:2] == list(ARM_CAMERAS)
    assert config["action_names"] == list(ARM_JOINTS) and config["fps"] == ARM_FPS
    policy = VLAPolicy.from_pretrained(teacher)
    assert policy.config.image_keys == tuple(ARM_CAMERAS) and policy.config.action_dim == 6

    store = tmp_path / "traj.zarr"
    collect = ["distill", "collect", "--teacher", str(teacher), *data, "--output", str(store)]
    assert ceed([*collect, "--trajectories", "8", "--batch-size", "4", "--threads", "1"]) == 0
    assert json.loads((store / "summary_rank000.json").read_text())["samples"] == 8

    out = tmp_path / "student"
    distill = [
        "distill",
        "train",
        "--teacher",
        str(teacher),
        "--trajectories",
        str(store),
        "--output",
        str(out),
    ]
    flags = ["--steps", "2", "--batch-size", "4", "--save-every", "2", "--val-every", "2", "--threads", "1"]
    assert ceed([*distill, *flags, "--device", "cpu", "--val-fraction", "0.3"]) == 0
    assert VLAPolicy.from_pretrained(out / "final").config.image_keys == tuple(ARM_CAMERAS)

    report = tmp_path / "decode.json"
    bench = ["bench", "decode", "--checkpoint", str(teacher), "--dataset", str(root), "--repo-id", repo_id]
    assert ceed([*bench, "--samples", "2", "--repeats", "1", "--warmup", "0", "--sigmas", "1",
                 "--taus", "0", "--threads", "1", "--out", str(report), "--no-plot"]) == 0  # fmt: skip
    assert report.is_file() and json.loads(report.read_text())


def test_label_delta_is_a_fraction_of_the_range():
    """Joints in degrees: an error of 10% of every joint's q01..q99 range reads 0.1, whatever the unit."""
    from ceed_vla.distill.collect import range_fraction_l1
    from ceed_vla.policy import ActionTokenizer

    tok = ActionTokenizer(q01=torch.tensor([-90.0, 0.0]), q99=torch.tensor([90.0, 2.0]))
    gt = torch.zeros(1, 3, 2)
    teacher = gt + torch.tensor([18.0, 0.2])  # 10% of 180 degrees and of 2 units
    assert torch.allclose(range_fraction_l1(tok, teacher, gt), torch.tensor([0.1]))
    pad = torch.tensor([[False, False, True]])
    assert torch.allclose(range_fraction_l1(tok, teacher, gt, pad), torch.tensor([0.1]))
