#!/usr/bin/env bash
# The operator benchmark, one command: builds Ferry (release) and KServe v0.20.0's controller
# (bench/kserve/build.sh, from the Go module proxy), brings the test bed up, and runs
# bench/operator.py: 1,000 InferenceServices applied at once on kwok nodes, time until all are
# Ready and peak controller RSS, Ferry and KServe in the same run. Extra flags go to operator.py
# (e.g. --count 200).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ferry
kserve=$(bench/kserve/build.sh)
testbed/up.sh
python3 bench/operator.py --ferry target/release/ferry --kserve "$kserve" \
  --kserve-config "$(dirname "$kserve")/config" "$@"
