"""The newcomer's set-up path: `scripts/setup_env.sh` on a machine without uv and with an empty HOME.

The interpreter is a fresh virtual environment of the running Python (it has pip but no uv), so the
script must pip-install uv, find it where pip put it (the interpreter's own bin directory, which is
not on PATH) and sync a throwaway environment from uv.lock. uv's package cache is reused, so the sync
links files instead of downloading them; the uv wheel itself is downloaded from the package registry.
"""

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup_env.sh"

pytestmark = pytest.mark.slow


def _uv_cache_dir() -> Path:
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "uv"


def _path_without_uv(shim_dir: Path) -> str:
    """PATH with every `uv`/`uvx` removed; other tools of a dropped directory stay reachable via links."""
    kept = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        d = Path(entry)
        if not entry or not d.is_dir():
            continue
        if not any((d / n).exists() for n in ("uv", "uvx")):
            kept.append(entry)
            continue
        for tool in d.iterdir():
            link = shim_dir / tool.name
            if tool.name in ("uv", "uvx") or link.exists() or not os.access(tool, os.X_OK):
                continue
            link.symlink_to(tool)
    return os.pathsep.join([str(shim_dir), *kept])


def _run_setup(env_dir: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), str(env_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def newcomer(tmp_path):
    """An environment like a fresh machine's: uv off PATH, empty HOME, a Python 3.12 without uv."""
    home = tmp_path / "home"
    home.mkdir()
    shims = tmp_path / "shims"
    shims.mkdir()
    py_env = tmp_path / "py312"
    venv.EnvBuilder(with_pip=True).create(py_env)
    python = py_env / "bin" / "python"
    assert subprocess.run([python, "-m", "uv", "--version"], capture_output=True).returncode != 0
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UV_", "VIRTUAL_ENV", "PIP_", "PYTHON", "CONDA"))
    }
    env.update(
        HOME=str(home),
        PATH=_path_without_uv(shims),
        CEED_PYTHON=str(python),
        CEED_NO_APT="1",
        UV_CACHE_DIR=str(_uv_cache_dir()),
        UV_LINK_MODE="hardlink" if _same_device(_uv_cache_dir(), tmp_path) else "copy",
    )
    assert shutil.which("uv", path=env["PATH"]) is None
    return env, python, tmp_path


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except FileNotFoundError:
        return False


def test_setup_installs_uv_with_pip_and_reaches_ready(newcomer):
    env, python, tmp = newcomer
    target = tmp / "venv"
    out = _run_setup(target, env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "uv not found; installing it with pip" in out.stderr
    assert f"[setup] uv: {python.parent / 'uv'}" in out.stderr, out.stderr
    assert f"[setup] ready: {target}" in out.stderr
    # the synced environment is the project's: its own package imports from it
    probe = subprocess.run(
        [target / "bin" / "python", "-c", "import ceed_vla, yaml, zarr; print(ceed_vla.__file__)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert str(ROOT) in probe.stdout

    # With uv on PATH the script uses that uv and installs nothing (the behaviour users with uv had).
    on_path = tmp / "uv_on_path"
    on_path.mkdir()
    (on_path / "uv").symlink_to(python.parent / "uv")
    env_with_uv = dict(env, PATH=os.pathsep.join([str(on_path), env["PATH"]]))
    again = _run_setup(target, env_with_uv)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "installing it with pip" not in again.stderr
    assert f"[setup] uv: {on_path / 'uv'}" in again.stderr
    assert f"[setup] ready: {target}" in again.stderr


def test_setup_stops_with_advice_when_uv_cannot_be_installed(newcomer):
    env, _python, tmp = newcomer
    env = dict(env, PIP_NO_INDEX="1")  # pip finds nothing to install: the offline newcomer
    out = _run_setup(tmp / "venv", env)
    assert out.returncode != 0
    assert "pip could not install uv" in out.stderr
    assert "'uv --version' works" in out.stderr
    assert not (tmp / "venv").exists()


def test_setup_rejects_a_wrong_ceed_python(newcomer):
    env, _python, tmp = newcomer
    for wrong in ("/bin/true", str(tmp / "missing" / "python")):
        out = _run_setup(tmp / "venv", dict(env, CEED_PYTHON=wrong))
        assert out.returncode != 0
        assert f"CEED_PYTHON={wrong} is not a Python 3.12 interpreter" in out.stderr
    assert not (tmp / "venv").exists()


def test_python_is_found_in_pyenvs_own_root_when_home_is_elsewhere(tmp_path):
    """pyenv lists versions of $PYENV_ROOT (default ~/.pyenv); with a CI runner's empty HOME it lists
    none, so the script falls back to the versions beside the pyenv executable on PATH."""
    import sys

    root = tmp_path / "opt" / "pyenv"
    (root / "libexec").mkdir(parents=True)
    (root / "bin").mkdir()
    fake = root / "libexec" / "pyenv"
    fake.write_text("#!/bin/sh\nexit 0\n")  # `pyenv versions` under an empty HOME: nothing
    fake.chmod(0o755)
    (root / "bin" / "pyenv").symlink_to(fake)
    for version in ("3.11.9", "3.12.1", "3.12.10"):
        (root / "versions" / version / "bin").mkdir(parents=True)
    newest = root / "versions" / "3.12.10" / "bin" / "python3.12"
    newest.symlink_to(sys.executable)
    (root / "versions" / "3.12.1" / "bin" / "python3.12").symlink_to(sys.executable)
    tools = tmp_path / "tools"  # the shell tools and nothing else: no python3.12 on PATH
    tools.mkdir()
    for tool in ("sed", "ls", "sort", "readlink", "dirname", "grep", "cat"):
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"HOME": str(tmp_path / "home"), "PATH": f"{root / 'bin'}:{tools}"}
    script = f'source <(sed -n "/^find_python()/,/^}}/p" {SCRIPT}); find_python'
    out = subprocess.run([shutil.which("bash"), "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(newest)  # the newest 3.12, never 3.11

    newest.unlink()
    (root / "versions" / "3.12.1" / "bin" / "python3.12").unlink()
    out = subprocess.run([shutil.which("bash"), "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
