#!/usr/bin/env bash
# Create or reuse the project's virtual environment from uv.lock.
# Finds Python 3.12 (CEED_PYTHON, PATH, then pyenv), installs uv with pip when missing, checks the system libraries
# MuJoCo rendering and video decoding need, and installs them with apt-get when it can.
set -euo pipefail
VENV="${1:-.venv}"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

find_python() {
    local c
    for c in python3.12 python3; do
        # the base interpreter, also when a virtual environment happens to be active
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            "$c" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))'; return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        local v prefix root
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -V -r); do
            prefix="$(pyenv prefix "$v" 2>/dev/null)" || continue
            if [ -x "$prefix/bin/python3.12" ]; then echo "$prefix/bin/python3.12"; return 0; fi
        done
        # pyenv looks in $PYENV_ROOT, by default ~/.pyenv: with another HOME (a CI runner, sudo, a
        # container) it lists nothing, though its own installation holds the versions
        root="$(cd "$(dirname "$(readlink -f "$(command -v pyenv)")")/.." && pwd)"
        for prefix in $(ls -d "$root"/versions/3.12* 2>/dev/null | sort -V -r); do
            if [ -x "$prefix/bin/python3.12" ]; then echo "$prefix/bin/python3.12"; return 0; fi
        done
    fi
    return 1
}

if [ -n "${CEED_PYTHON:-}" ]; then
    [ "$("$CEED_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = 3.12 ] \
        || die "CEED_PYTHON=$CEED_PYTHON is not a Python 3.12 interpreter; unset it or point it at one."
    PY="$CEED_PYTHON"
else
    PY="$(find_python)" || die "Python 3.12 not found. Install it (e.g. 'pyenv install 3.12' or your distribution's python3.12) and rerun."
fi
say "python: $PY"

# uv: on PATH, else wherever a pip install of uv puts it. pip installs the uv binary into the
# interpreter's own bin directory (a pyenv or venv Python: not on PATH) or into the user base
# (--user), and the wheel's `python -m uv` runs that binary from either place.
UV=()
find_uv() {
    local c bindir userbase
    bindir="$(dirname "$PY")"
    userbase="$("$PY" -m site --user-base 2>/dev/null || true)"
    for c in "$(command -v uv 2>/dev/null || true)" "$bindir/uv" "${userbase:+$userbase/bin/uv}"; do
        if [ -n "$c" ] && [ -x "$c" ] && "$c" --version >/dev/null 2>&1; then UV=("$c"); return 0; fi
    done
    if "$PY" -m uv --version >/dev/null 2>&1; then UV=("$PY" -m uv); return 0; fi
    return 1
}
if ! find_uv; then
    say "uv not found; installing it with pip ($PY -m pip install uv)"
    "$PY" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 \
        || "$PY" -m pip install --quiet --disable-pip-version-check --user uv >/dev/null 2>&1 \
        || die "pip could not install uv into $PY. Install uv yourself ('pipx install uv', 'pip install --user uv' or your package manager), make sure 'uv --version' works, and rerun."
    hash -r
    find_uv || die "uv was installed with pip but no working uv was found (PATH, $(dirname "$PY")/uv, the user base, '$PY -m uv'). Install uv so that 'uv --version' works and rerun."
fi
say "uv: ${UV[*]} ($("${UV[@]}" --version))"

# System libraries: EGL (or OSMesa) for headless MuJoCo rendering, FFmpeg's libraries for torchcodec.
# Installed with apt-get when running as root (CEED_NO_APT=1 skips it), else named for the user.
need_libs=()
ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || need_libs+=(libegl1 libgl1)
ldconfig -p 2>/dev/null | grep -q 'libOSMesa' || need_libs+=(libosmesa6)
ldconfig -p 2>/dev/null | grep -q 'libavutil' || need_libs+=(ffmpeg)
if [ ${#need_libs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${CEED_NO_APT:-0}" != 1 ]; then
        say "installing system libraries: ${need_libs[*]}"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_libs[@]}") >/dev/null 2>&1 \
            || say "warning: apt-get failed; install ${need_libs[*]} (EGL or OSMesa renders MuJoCo headless; without FFmpeg LeRobot decodes video with PyAV)"
    else
        say "warning: missing system packages: ${need_libs[*]} (EGL or OSMesa renders MuJoCo headless; without FFmpeg LeRobot decodes video with PyAV, slower)"
    fi
fi

say "syncing $VENV from uv.lock"
# --inexact: the ROS wheels also register egg-info distributions uv does not know; an exact sync
# uninstalls them, and with them the rclpy and message modules they share with the real wheels.
# The interpreter is always named explicitly: uv must never fetch a Python of its own.
# TLS: the platform's certificate store, as pip and curl use (uv's own default is a bundled list,
# which fails behind a proxy or mirror with a site CA); UV_NATIVE_TLS is the older uv's name for it.
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-${UV_NATIVE_TLS:-1}}" UV_NATIVE_TLS="${UV_NATIVE_TLS:-${UV_SYSTEM_CERTS:-1}}"
UV_PROJECT_ENVIRONMENT="$VENV" UV_PYTHON_DOWNLOADS=never "${UV[@]}" sync --frozen --inexact --python "$PY" --quiet
say "ready: $VENV"
