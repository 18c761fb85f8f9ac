"""A small, resumable stage runner for multi-step jobs such as `ceed demo`.

A stage is a named command with a config. Its *key* hashes the config together with the keys of the
stages it depends on, so a changed config reruns that stage and everything downstream, and a rerun
with nothing changed skips finished stages. A stage is finished when its marker file
`<workdir>/<name>/.stage.json` holds its key; the marker is written atomically after the command
succeeds, so an interrupted stage is simply run again. Every attempt is logged in
`<workdir>/<name>/.stage_attempts.json`, so a stage that needed several (a failure, a killed process)
reports the time its unfinished attempts took beside the one that finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ceed_vla.atomic import atomic_write_json

MARKER_FILE = ".stage.json"  # a stage is finished when this holds its key
ATTEMPTS_FILE = ".stage_attempts.json"  # every attempt at the stage, finished or not


class JobError(RuntimeError):
    """A `ceed` job run as its own process exited with an error."""


def run_job(argv: Sequence[str], log: Path | None = None, env: dict[str, str] | None = None) -> float:
    """`ceed ARGV` as its own process, the command echoed to stderr; its output streams through, or
    goes to `log`. `env` adds to this process's environment. Returns its seconds."""
    argv = [str(a) for a in argv]
    print("$ ceed " + shlex.join(argv), file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "ceed_vla.cli", *argv]
    t0 = time.perf_counter()
    if log is None:
        proc = subprocess.run(cmd, env={**os.environ, **(env or {})})
    else:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        where = f"; see {log}" if log is not None else ""
        raise JobError(f"`ceed {shlex.join(argv)}` exited with status {proc.returncode}{where}")
    return time.perf_counter() - t0


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and how to rerun it."""


@dataclass
class Stage:
    name: str
    run: Callable[[Path], None]  # receives the stage's own output directory
    config: dict[str, Any] = field(default_factory=dict)
    depends_on: Sequence[str] = ()


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Pipeline:
    def __init__(self, workdir: Path, stages: Sequence[Stage], log: Callable[[str], None] | None = None):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for s in stages:
            unknown = [d for d in s.depends_on if d not in names[: names.index(s.name)]]
            if unknown:
                raise ValueError(f"stage {s.name!r} depends on {unknown}, which are not earlier stages")
        self.workdir = Path(workdir)
        self.stages = list(stages)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def keys(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for s in self.stages:
            keys[s.name] = _digest({"config": s.config, "upstream": {d: keys[d] for d in s.depends_on}})
        return keys

    def stage_dir(self, name: str) -> Path:
        return self.workdir / name

    def marker(self, name: str) -> dict:
        """What the stage recorded when it finished ({} when it has not)."""
        try:
            return json.loads((self.stage_dir(name) / MARKER_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def run(self, only: Sequence[str] | None = None, force: Sequence[str] = ()) -> dict[str, dict]:
        keys = self.keys()
        summary: dict[str, dict] = {}
        total = len(self.stages)
        for i, stage in enumerate(self.stages, 1):
            key = keys[stage.name]
            if only and stage.name not in only:
                continue
            marker = self.marker(stage.name)
            if stage.name not in force and marker.get("key") == key:
                self.log(f"[{i}/{total}] {stage.name}: up to date (key {key}), skipped")
                # seconds: this run's; recorded_seconds: what the stage took when it ran
                summary[stage.name] = {
                    "key": key,
                    "skipped": True,
                    "seconds": 0.0,
                    "recorded_seconds": float(marker.get("seconds", 0.0)),
                    "earlier_attempts": int(marker.get("earlier_attempts", 0)),
                    "earlier_attempts_seconds": float(marker.get("earlier_attempts_seconds", 0.0)),
                }
                continue
            out = self.stage_dir(stage.name)
            out.mkdir(parents=True, exist_ok=True)
            self.log(f"[{i}/{total}] {stage.name}: running (key {key}) -> {out}")
            earlier = _close_attempts(out, key)
            attempts = [*earlier, {"key": key, "started": time.time(), "seconds": None}]
            atomic_write_json(out / ATTEMPTS_FILE, attempts)
            t0 = time.perf_counter()
            try:
                stage.run(out)
            except BaseException as exc:
                attempts[-1].update(seconds=time.perf_counter() - t0, ended="failed")
                atomic_write_json(out / ATTEMPTS_FILE, attempts)
                if not isinstance(exc, Exception):
                    raise
                raise StageError(
                    f"stage {stage.name!r} failed: {exc}. Fix the cause and rerun the same command; "
                    "finished stages are skipped."
                ) from exc
            seconds = time.perf_counter() - t0
            attempts[-1].update(seconds=seconds, ended="done")
            atomic_write_json(out / ATTEMPTS_FILE, attempts)
            earlier_s = sum(a["seconds"] for a in earlier)
            atomic_write_json(
                out / MARKER_FILE,
                {
                    "key": key,
                    "config": stage.config,
                    "seconds": seconds,
                    "earlier_attempts": len(earlier),
                    "earlier_attempts_seconds": earlier_s,
                },
            )
            again = f" ({len(earlier)} earlier attempt(s) took {earlier_s:.0f} s)" if earlier else ""
            self.log(f"[{i}/{total}] {stage.name}: done in {seconds:.0f} s{again}")
            summary[stage.name] = {
                "key": key,
                "skipped": False,
                "seconds": seconds,
                "recorded_seconds": seconds,
                "earlier_attempts": len(earlier),
                "earlier_attempts_seconds": earlier_s,
            }
        return summary


def _close_attempts(out: Path, key: str) -> list[dict]:
    """The unfinished attempts of this stage at this key since it last finished, each with its seconds.
    An attempt whose process was killed recorded no end: it lasted until the last file it wrote in `out`."""
    try:
        attempts = json.loads((out / ATTEMPTS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    closed: list[dict] = []
    for a in attempts:
        if a.get("ended") == "done":
            closed = []  # those belonged to the run that finished (a forced rerun starts afresh)
            continue
        if a.get("key") != key:
            continue
        if a.get("seconds") is None:
            last = max(
                (f.stat().st_mtime for f in out.rglob("*") if f.is_file() and f.name != ATTEMPTS_FILE),
                default=a["started"],
            )
            a = {**a, "seconds": max(0.0, last - a["started"]), "ended": "killed"}
        closed.append(a)
    return closed
