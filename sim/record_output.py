"""The recorded dataset on disk: its LeRobot features, the sidecar log `meta/ceed_record.json`
(settings and kept episodes) and opening the output to create, overwrite or resume a recording."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ceed_vla.sim.env import CONTROL_HZ, DEFAULT_CAMERA, camera_feature_keys

from ceed_vla.atomic import atomic_write_text
from ceed_vla.keys import ACTION_KEY, STATE_KEY

if TYPE_CHECKING:
    from ceed_vla.sim.record import RecordConfig

LOG_NAME = "ceed_record.json"
LOG_FORMAT = 1
ROBOT_TYPE = "sawyer"


class OutputExistsError(FileExistsError):
    """The output dataset directory is not empty and neither resume nor overwrite was asked for."""


class ResumeMismatchError(ValueError):
    """A resumed recording asked for settings different from the ones it was started with."""


def dataset_features(image_size: int, camera: str = DEFAULT_CAMERA) -> dict[str, dict[str, Any]]:
    """LeRobot feature spec of a recorded dataset (docs/interfaces.md): one image feature per camera."""
    images = {
        key: {
            "dtype": "image",
            "shape": (image_size, image_size, 3),
            "names": ["height", "width", "channels"],
        }
        for key in camera_feature_keys(camera).values()
    }
    return {
        **images,
        STATE_KEY: {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        ACTION_KEY: {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
    }


@dataclass
class EpisodeEntry:
    episode_index: int
    task: str
    seed: int
    attempt: int
    instruction: str
    steps: int


class RecordLog:
    """The sidecar `meta/ceed_record.json`: settings and the kept episodes, written atomically."""

    def __init__(self, path: Path, settings: dict[str, Any], episodes: list[EpisodeEntry] | None = None):
        self.path = path
        self.settings = settings
        self.episodes = episodes or []

    @classmethod
    def load(cls, path: Path) -> RecordLog:
        data = json.loads(path.read_text())
        if data.get("format") != LOG_FORMAT:
            raise ResumeMismatchError(
                f"{path} has format {data.get('format')!r}; this version writes {LOG_FORMAT}"
            )
        return cls(path, data["settings"], [EpisodeEntry(**e) for e in data["episodes"]])

    def append(self, entry: EpisodeEntry) -> None:
        self.episodes.append(entry)
        self.save()

    def truncate(self, n_episodes: int) -> None:
        if len(self.episodes) > n_episodes:
            self.episodes = self.episodes[:n_episodes]
            self.save()

    def save(self) -> None:
        payload = {
            "format": LOG_FORMAT,
            "settings": self.settings,
            "episodes": [asdict(e) for e in self.episodes],
        }
        atomic_write_text(self.path, json.dumps(payload, indent=1))

    def count(self, task: str) -> int:
        return sum(e.task == task for e in self.episodes)

    def next_attempt(self, task: str) -> int:
        attempts = [e.attempt for e in self.episodes if e.task == task]
        return max(attempts) + 1 if attempts else 0


# ---------------------------------------------------------------------------------------- output


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def open_output(config: RecordConfig):
    """Create, overwrite or resume the dataset; returns (LeRobotDataset in write mode, RecordLog)."""
    root = config.output
    log_path = root / "meta" / LOG_NAME
    exists = root.exists() and not _is_empty_dir(root)
    if exists and config.overwrite:
        shutil.rmtree(root)
        exists = False
    if exists and not config.resume:
        raise OutputExistsError(
            f"output {root} is not empty: pass --resume to continue that recording or --overwrite to replace it"
        )
    if exists:
        if not log_path.exists() or not (root / "meta" / "info.json").exists():
            raise ResumeMismatchError(
                f"{root} is not a recording made by `ceed record` (no meta/{LOG_NAME} or meta/info.json); "
                "choose another --output or pass --overwrite"
            )
        log = RecordLog.load(log_path)
        _check_same_settings(log.settings, config.settings(), root)
        dataset = _resume_dataset(config.repo_id, root)
        log.truncate(dataset.meta.total_episodes)
        if len(log.episodes) != dataset.meta.total_episodes:
            raise ResumeMismatchError(
                f"{root} holds {dataset.meta.total_episodes} episodes but {log_path} lists {len(log.episodes)}; "
                "the recording cannot be resumed safely: pass --overwrite to start again"
            )
        return dataset, log
    if root.exists():
        root.rmdir()  # empty: LeRobot insists on creating the directory itself
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # slow import: only once output is settled

    dataset = LeRobotDataset.create(
        config.repo_id,
        fps=CONTROL_HZ,
        features=dataset_features(config.image_size, config.camera),
        root=root,
        robot_type=ROBOT_TYPE,
        use_videos=False,
    )
    log = RecordLog(log_path, config.settings())
    log.save()
    return dataset, log


def _resume_dataset(repo_id: str, root: Path):
    """Reopen a finalized recording for appending; a run killed before finalizing cannot be reopened."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    killed = (
        f"{root} was not finalized: the recording was killed (SIGKILL, power loss) while LeRobot held its "
        "files open, so its episodes cannot be recovered; start again with --overwrite. (Ctrl-C, SIGTERM "
        "and errors finalize the dataset and can be resumed.)"
    )
    if not any((root / "meta" / "episodes").glob("**/*.parquet")):
        raise ResumeMismatchError(killed)
    try:
        return LeRobotDataset.resume(repo_id, root=root)
    except Exception as err:  # LeRobot raises several types for a half-written dataset
        raise ResumeMismatchError(f"{killed} LeRobot said: {err!r}") from err


# Settings added after recordings existed, with the value those recordings were made with.
_SETTINGS_BEFORE_THEY_WERE_RECORDED = {"goal_marker_radius": 0.03}


def _check_same_settings(saved: dict[str, Any], asked: dict[str, Any], root: Path) -> None:
    saved = {**_SETTINGS_BEFORE_THEY_WERE_RECORDED, **saved}
    diffs = {k: (saved.get(k), v) for k, v in asked.items() if saved.get(k) != v}
    if diffs:
        detail = "; ".join(f"{k}: recorded with {a!r}, asked {b!r}" for k, (a, b) in diffs.items())
        raise ResumeMismatchError(
            f"cannot resume {root} with different settings ({detail}); use the original settings or --overwrite"
        )
