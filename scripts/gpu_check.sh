#!/usr/bin/env bash
# GPU check: the `gpu` tests of decoding and the decode benchmark on CUDA (bf16 and fp32), JSON out.
#
# Runs on a fresh GPU machine with no network and no project venv: it needs only a Python with torch
# (CUDA), triton, transformers, tokenizers, safetensors, numpy, matplotlib and pytest. Nothing here
# imports lerobot, mujoco, zarr or rclpy.
#
#   bash scripts/gpu_check.sh [CHECKPOINT_DIR [OBSERVATIONS_FILE]]      (or: make gpu-check)
#
# OBSERVATIONS_FILE: real frames saved on a machine with the dataset, so the benchmark decodes them here
# without LeRobot: `ceed bench decode --dataset ROOT --samples 16 --save-observations obs.pt`.
#
# Environment: OUT (results folder; default benchmarks/results/gpu_check), GPU_CHECK_PYTHON (force an
# interpreter), GPU_CHECK_ALLOW_CPU=1 (run the same steps without CUDA, to test this script),
# GPU_CHECK_SAMPLES (observations per benchmark variant, default 16), GPU_CHECK_BUDGET_S (the whole
# check's wall-clock budget, default 540 s: each step gets what is left, so the total stays under 10 min).
set -uo pipefail
START_S=$(date +%s)
BUDGET_S="${GPU_CHECK_BUDGET_S:-540}"
cd "$(dirname "$0")/.."
REPO="$(pwd)"
CHECKPOINT="${1:-${CHECKPOINT:-}}"
OBSERVATIONS="${2:-${OBSERVATIONS:-}}"
OUT_DIR="${OUT:-$REPO/benchmarks/results/gpu_check}"
SAMPLES="${GPU_CHECK_SAMPLES:-16}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
export MPLBACKEND=Agg
unset TRITON_INTERPRET

say() { printf '[gpu-check] %s\n' "$*" >&2; }
die() { printf '[gpu-check] error: %s\n' "$*" >&2; exit 1; }

# seconds a step may run: its own cap, or what is left of the budget, whichever is smaller
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

PY="$(pick_python)" || die "no Python with CUDA-enabled torch found (tried .venv, /opt/torch/.venv, python3); set GPU_CHECK_PYTHON"
say "python: $PY"
"$PY" - <<'PYEOF' || die "the interpreter lacks a package the check needs (see above)"
import importlib, sys
missing = [m for m in ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "matplotlib", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    print("[gpu-check] missing packages:", ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PYEOF

# Make `ceed_vla.*` importable without installing anything: when the interpreter cannot import it
# already, a generated package `ceed_vla` whose search path is the checkout's ceed_vla/ and the repo
# root maps ceed_vla.decoding -> decoding/, ceed_vla.policy -> policy/, like pyproject's package-dir.
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
if [ "${GPU_CHECK_SHIM:-0}" = 1 ] || ! "$PY" -c 'import ceed_vla.decoding' 2>/dev/null; then
    mkdir -p "$SHIM/ceed_vla"
    cat > "$SHIM/ceed_vla/__init__.py" <<PYEOF
__path__ = [${REPO@Q} + "/ceed_vla", ${REPO@Q}]
exec(compile(open(__path__[0] + "/__init__.py").read(), __path__[0] + "/__init__.py", "exec"))
PYEOF
    export PYTHONPATH="$SHIM:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    say "ceed_vla importable through a path shim"
fi
"$PY" -c 'import ceed_vla.decoding' || die "ceed_vla.decoding does not import"

"$PY" - > "$OUT_DIR/environment.json" <<'PYEOF'
import json, platform, torch, triton, transformers
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
    "transformers": transformers.__version__, "cuda": torch.version.cuda,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu (GPU_CHECK_ALLOW_CPU)",
}, indent=2))
PYEOF
cat "$OUT_DIR/environment.json" >&2

status=0
say "gpu tests (decoding, kernel)"
# --noconftest: the decoding tests need none of the shared fixtures, some of which import packages
# this machine does not have.
timeout "$(left 200)" "$PY" -m pytest -m gpu --noconftest -p no:cacheprovider -q -rfEs \
    --junitxml="$OUT_DIR/gpu_tests.xml" tests/test_kernel.py tests/test_decoding.py tests/test_decoding_graphs.py
rc=$?
if [ $rc -ne 0 ]; then
    say "gpu tests failed (exit $rc)"; status=1
fi

bench() {  # dtype, seconds allowed
    local device=cuda dtype="$1" args=(--repeats 3 --warmup 3)
    # without CUDA (testing this script) a short sweep keeps the run in minutes
    has_cuda "$PY" || { device=cpu; args=(--repeats 1 --warmup 0 --sigmas 1,3 --taus 2 --inits constant,prev_tail); }
    [ -n "$CHECKPOINT" ] && args+=(--checkpoint "$CHECKPOINT")
    [ -n "$OBSERVATIONS" ] && args+=(--observations "$OBSERVATIONS")
    say "decode benchmark: $device $dtype ${CHECKPOINT:-fresh tiny policy}"
    local limit; limit="$(left "$2")"
    [ "$limit" -gt 20 ] || { say "no time left for the $dtype benchmark"; status=1; return; }
    timeout "$limit" "$PY" -m ceed_vla.cli bench decode --device "$device" --dtype "$dtype" --samples "$SAMPLES" \
        "${args[@]}" --out "$OUT_DIR/decode_${device}_${dtype}.json" \
        || { say "decode benchmark ($dtype) failed"; status=1; }
}
if has_cuda "$PY"; then bench bf16 200; bench fp32 150; else bench fp32 400; fi

ls -l "$OUT_DIR" >&2
say "took $(( $(date +%s) - START_S )) s"
[ $status -eq 0 ] && say "OK: results in $OUT_DIR" || say "FAILED: see above; partial results in $OUT_DIR"
exit $status
