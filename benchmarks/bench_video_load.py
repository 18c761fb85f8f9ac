"""Peak memory and time of loading a real-arm-sized video dataset for training.

    python benchmarks/bench_video_load.py --root /tmp/arm50 [--episodes 50 --length 240]

Writes (once) a LeRobot dataset shaped like an SO-101 recording: two cameras stored as h264 video,
`observation.images.front` 480x640 and `observation.images.wrist` 240x320, 6 joints, 30 fps, with
frames of a moving scene (so the video is not trivially compressible). Then loads it as `ceed
train` does (`ceed_vla.policy.data.load_frames`, resized to the model's image size) in a fresh
process and records that process's peak RSS and wall time in
benchmarks/results/video_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CAMERAS = {"observation.images.front": (480, 640), "observation.images.wrist": (240, 320)}
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
FPS = 30


def write(root: Path, episodes: int, length: int) -> float:
    import numpy as np
    from lerobot.configs.video import RGBEncoderConfig
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        key: {"dtype": "video", "shape": (h, w, 3), "names": ["height", "width", "channels"]}
        for key, (h, w) in CAMERAS.items()
    }
    features["observation.state"] = {"dtype": "float32", "shape": (6,), "names": JOINTS}
    features["action"] = {"dtype": "float32", "shape": (6,), "names": JOINTS}
    t0 = time.perf_counter()
    ds = LeRobotDataset.create(
        "local/arm50",
        fps=FPS,
        features=features,
        root=root,
        use_videos=True,
        rgb_encoder=RGBEncoderConfig(vcodec="h264"),
    )
    rng = np.random.default_rng(0)
    grids = {k: np.meshgrid(np.arange(w), np.arange(h)) for k, (h, w) in CAMERAS.items()}
    for e in range(episodes):
        joints = rng.uniform(-60, 60, 6).astype(np.float32)
        for t in range(length):
            target = np.clip(joints + rng.normal(0, 3, 6), -90, 90).astype(np.float32)
            frame = {"observation.state": joints.copy(), "action": target, "task": "put the cube in the box"}
            for key, (xs, ys) in grids.items():
                phase = (xs + 3 * t + 17 * e) % 256, (ys * 2 + t) % 256, (xs + ys + 5 * t) % 256
                frame[key] = np.stack(phase, axis=-1).astype(np.uint8)
            ds.add_frame(frame)
            joints = target
        ds.save_episode()
        print(f"episode {e + 1}/{episodes} written", file=sys.stderr, flush=True)
    ds.finalize()
    return time.perf_counter() - t0


def load(root: Path, image_size: int, block: int) -> dict:
    """Runs in its own process: its peak RSS is the loader's."""
    from ceed_vla.policy.data import load_frames

    t0 = time.perf_counter()
    frames = load_frames("local/arm50", root, chunk_size=8, image_size=image_size, block=block)
    seconds = time.perf_counter() - t0
    return {
        "frames": int(frames.actions.shape[0]) if hasattr(frames, "actions") else None,
        "image_shapes": {k: list(v.shape) for k, v in frames.cameras.items()},
        "load_seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--length", type=int, default=240, help="frames per episode (8 s at 30 fps)")
    p.add_argument("--image-size", type=int, default=96, help="the model's image size")
    p.add_argument("--block", type=int, default=256, help="rows read per block (load_frames default)")
    p.add_argument("--out", type=Path, default=RESULTS / "video_load.json", help="results file (appended to)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(load(args.root, args.image_size, args.block)))
        return 0
    write_s = None
    if not (args.root / "meta" / "info.json").is_file():
        write_s = round(write(args.root, args.episodes, args.length), 1)
    out = subprocess.run(
        [sys.executable, __file__, "--root", str(args.root), "--image-size", str(args.image_size)]
        + ["--block", str(args.block), "--child"],
        capture_output=True,
        text=True,
        check=True,
    )
    record = {
        **json.loads(out.stdout.strip().splitlines()[-1]),
        "episodes": args.episodes,
        "frames_per_episode": args.length,
        "cameras": {k: f"{w}x{h}" for k, (h, w) in CAMERAS.items()},
        "image_size": args.image_size,
        "block": args.block,
        "write_seconds": write_s,
        "cpu_count": os.cpu_count(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(path.read_text()) if path.is_file() else []
    runs = [runs] if isinstance(runs, dict) else runs
    path.write_text(json.dumps([*runs, record], indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
