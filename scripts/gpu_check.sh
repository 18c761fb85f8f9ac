#!/usr/bin/env bash
# GPU check, one script for a bare GPU machine (no network, no project venv; `make gpu-check`):
#   1. the `gpu` tests: graphs == eager tokens in fp32, replays without new captures, the Triton step
#      kernel against its reference;
#   2. decode: the tiny policy's ms per chunk (AR, exact Jacobi, early exit at the profile's sigmas, fused
#      and not, eager and graphs, the previous chunk's tail as the guess)        -> decode_tiny.json
#   3. costmodel: random 0.5B / 1B / 7B-shaped Llamas in bf16 with graphs: prefill, AR step, Jacobi
#      pass, fused pass; projected ms per chunk per decoder       -> costmodel.json, costmodel.png
#   4. train: samples/s of the tiny teacher's step (bf16, data on the device) and one distillation
#      step of a 0.5B-shaped policy with its peak memory                          -> train.json
#   5. the projected latency at 10 / 30 / 80 Hz against the report's success-against-delay
#                                                                            -> latency_table.md
# Each phase is its own process under its own time limit: one that fails or hangs loses only its own
# output. Everything printed also goes to gpu_check.log. At most 7 files, all in one folder.
#
# It needs only a Python with torch (CUDA), triton, transformers, tokenizers, safetensors, numpy,
# matplotlib and pytest; nothing here imports lerobot, mujoco, zarr or rclpy.
#
#   bash scripts/gpu_check.sh [CHECKPOINT_DIR [OBSERVATIONS_FILE]]      (or: make gpu-check)
#
# Environment: OUT (results folder; default benchmarks/results/gpu), GPU_CHECK_PYTHON (force an
# interpreter), GPU_CHECK_ALLOW_CPU=1 (without CUDA: the same phases on tiny shapes, to test this
# script), GPU_CHECK_BUDGET_S (the whole check's wall-clock budget, default 360 s: each phase gets its
# own cap or what is left, whichever is smaller).
set -uo pipefail
START_S=$(date +%s)
BUDGET_S="${GPU_CHECK_BUDGET_S:-360}"
cd "$(dirname "$0")/.."
REPO="$(pwd)"
CHECKPOINT="${1:-${CHECKPOINT:-}}"
OBSERVATIONS="${2:-${OBSERVATIONS:-}}"
OUT_DIR="${OUT:-$REPO/benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TQDM_DISABLE=1
unset TRITON_INTERPRET
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1
TEE_PID=$!

say() { printf '[gpu-check %s +%ds] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - START_S ))" "$*"; }
die() { say "error: $*"; exit 1; }

# seconds a phase may run: its own cap, or what is left of the budget, whichever is smaller
left() {
    local rest=$(( BUDGET_S - ($(date +%s) - START_S) ))
    [ "$rest" -lt 1 ] && rest=1
    [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"
}

has_cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

pick_python() {
    if [ -n "${GPU_CHECK_PYTHON:-}" ]; then echo "$GPU_CHECK_PYTHON"; return; fi
    local c
    for c in "$REPO/.venv/bin/python" /opt/torch/.venv/bin/python python3; do
        if command -v "$c" >/dev/null 2>&1 && has_cuda "$c"; then echo "$c"; return; fi
    done
    if [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
        for c in "$REPO/.venv/bin/python" python3; do
            command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' 2>/dev/null && { echo "$c"; return; }
        done
    fi
    return 1
}

PY="$(pick_python)" || die "no Python with CUDA-enabled torch found (tried .venv, /opt/torch/.venv, python3); set GPU_CHECK_PYTHON, or GPU_CHECK_ALLOW_CPU=1 to test this script"
say "python: $PY; results in $OUT_DIR; budget ${BUDGET_S} s"
"$PY" - <<'PYEOF' || die "the interpreter lacks a package the check needs (see above)"
import importlib.util, sys
missing = [m for m in ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "matplotlib", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    print("[gpu-check] missing packages:", ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PYEOF

# Make `ceed_vla.*` importable without installing anything: when the interpreter cannot import it
# already, a sitecustomize module installs an import finder that reads the one folder-to-package
# mapping there is, pyproject.toml's [tool.setuptools.package-dir] (ceed_vla.decoding -> decoding/).
TMP="$(mktemp -d)"
# on exit: remove the temporary folder, then let tee write the log's last lines before the shell ends
trap 'rm -rf "$TMP"; exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT
mkdir -p "$TMP/plugins"
export PYTHONPATH="$TMP/plugins${PYTHONPATH:+:$PYTHONPATH}"
if [ "${GPU_CHECK_SHIM:-0}" = 1 ] || ! (cd / && "$PY" -c 'import ceed_vla.decoding' 2>/dev/null); then
    mkdir -p "$TMP/shim"
    cat > "$TMP/shim/sitecustomize.py" <<PYEOF
import importlib.util, pathlib, sys, tomllib
_REPO = pathlib.Path(${REPO@Q})
_DIRS = tomllib.loads((_REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
class _CheckoutPackages:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in _DIRS:
            return None
        folder = _REPO / _DIRS[name]
        return importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
sys.meta_path.insert(0, _CheckoutPackages)
PYEOF
    export PYTHONPATH="$TMP/shim:$REPO:$PYTHONPATH"
    say "ceed_vla importable from the checkout (pyproject's package-dir)"
fi
"$PY" -c 'import ceed_vla.decoding' || die "ceed_vla.decoding does not import"

"$PY" - > "$OUT_DIR/environment.json" <<'PYEOF'
import json, os, platform, torch, triton, transformers
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
    "transformers": transformers.__version__, "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu (GPU_CHECK_ALLOW_CPU)",
    "cpus": os.cpu_count(),
}, indent=2))
PYEOF
cat "$OUT_DIR/environment.json"

TINY=()
if ! has_cuda "$PY"; then
    TINY=(--tiny)
    say "no CUDA: every phase runs its tiny shapes on the CPU (a test of this script, not a measurement)"
fi

failed=()
phase() {  # name, cap in seconds, command...
    local name="$1" cap="$2"; shift 2
    local limit; limit="$(left "$cap")"
    if [ "$limit" -lt 5 ]; then say "$name: skipped, the budget is spent"; failed+=("$name"); return; fi
    say "$name: start (at most $limit s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ $rc -eq 0 ]; then say "$name: ok in $(( SECONDS - t0 )) s"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then say "$name: TIMED OUT after $limit s"; failed+=("$name")
    else say "$name: FAILED (exit $rc) in $(( SECONDS - t0 )) s"; failed+=("$name"); fi
}

# With --noconftest (the shared fixtures import packages this machine lacks) the `gpu` tests are
# skipped without CUDA by this plugin, as conftest.py does.
cat > "$TMP/plugins/gpu_check_skip.py" <<'PYEOF'
import pytest
import torch

def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
PYEOF

BENCH=("$PY" benchmarks/bench_gpu.py)
DECODE_ARGS=()
[ -n "$CHECKPOINT" ] && DECODE_ARGS+=(--checkpoint "$CHECKPOINT")
[ -n "$OBSERVATIONS" ] && DECODE_ARGS+=(--observations "$OBSERVATIONS")

phase tests 100 "$PY" -m pytest -m gpu --noconftest -p gpu_check_skip -p no:cacheprovider -q -rfEs \
    tests/test_kernel.py tests/test_decoding.py tests/test_decoding_graphs.py tests/test_gpu_costmodel.py
phase costmodel 150 "${BENCH[@]}" costmodel --out-dir "$OUT_DIR" "${TINY[@]}"
phase decode 80 "${BENCH[@]}" decode --out-dir "$OUT_DIR" "${TINY[@]}" "${DECODE_ARGS[@]}"
phase train 100 "${BENCH[@]}" train --out-dir "$OUT_DIR" "${TINY[@]}"
if [ -f "$OUT_DIR/costmodel.json" ]; then
    phase latency-table 30 "$PY" benchmarks/bench_gpu_report.py --costmodel "$OUT_DIR/costmodel.json" \
        --out "$OUT_DIR/latency_table.md"
fi

ls -l "$OUT_DIR"
say "took $(( $(date +%s) - START_S )) s"
if [ ${#failed[@]} -eq 0 ]; then say "OK: results in $OUT_DIR"; exit 0; fi
say "FAILED: ${failed[*]}; the other phases' results are in $OUT_DIR"
exit 1
