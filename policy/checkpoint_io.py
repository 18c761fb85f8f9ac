"""Checkpoint file helpers: JSON and required files with errors that name the file (atomic writes come
from `ceed_vla.atomic`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ceed_vla.atomic import atomic_directory, atomic_write_text

__all__ = ["CheckpointError", "atomic_directory", "atomic_write_text", "read_json", "require_file"]


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing a file, or a file in it cannot be read."""


def require_file(directory: Path, name: str) -> Path:
    path = Path(directory) / name
    if not path.is_file():
        present = sorted(p.name for p in Path(directory).iterdir()) if Path(directory).is_dir() else []
        raise CheckpointError(f"checkpoint {directory} is missing {name!r} (found: {present})")
    return path


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {e}); re-save the checkpoint") from e
