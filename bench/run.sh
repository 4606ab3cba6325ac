#!/usr/bin/env bash
# One command for the whole benchmark: builds release, prepares the peers (same fit, same model
# file), runs every server in the same run with the same load generators, writes bench/README.md.
# Environment: DURATION (seconds per point, default 8), SKIP_PEERS=1 (Ferry and the floor only).
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_VENV=${FERRY_VENV:-$HOME/.cache/ferry-venv}
ML_VENV=$HOME/.cache/ferry-bench-mlserver
KS_VENV=$HOME/.cache/ferry-bench-kserve

venv() { # venv DIR REQUIREMENTS
  if [ ! -f "$1/.ok-$(sha1sum "$2" | cut -c1-12)" ]; then
    python3 -m venv "$1"
    "$1/bin/pip" install --quiet -r "$2"
    touch "$1/.ok-$(sha1sum "$2" | cut -c1-12)"
  fi
}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
venv "$FERRY_VENV" models/requirements.txt
if [ "${SKIP_PEERS:-0}" != 1 ]; then
  venv "$ML_VENV" bench/peers/requirements-mlserver.txt
  venv "$KS_VENV" bench/peers/requirements-kserve.txt
fi
cargo build --release -p ferry --features onnxruntime -p ferry-bench-bare -p ferry-bench-load
# Ferry's optional ONNX Runtime backend loads the library of the onnxruntime wheel.
ORT_DYLIB_PATH=$("$FERRY_VENV/bin/python" -c "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])")
export ORT_DYLIB_PATH
mkdir -p bench/results
# The same fit for everyone: ONNX for Ferry and the floor, joblib for the Python peers.
"$FERRY_VENV/bin/python" models/train.py --out-dir bench/results/models --joblib-dir bench/results/joblib >/dev/null
exec "$FERRY_VENV/bin/python" bench/run.py --ml-venv "$ML_VENV" --ks-venv "$KS_VENV" --duration "${DURATION:-8}"
