#!/usr/bin/env bash
# ServerPool planner benchmark in one command: ferry_core::placement::plan on 10,000 models x 100
# servers (plan from nothing, re-plan settled, re-plan after losing a server) and its packing
# against Seldon Core v2's spreading rule on the same models, same run. ROUNDS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ferry-bench-load --bin ferry-bench-place
exec target/release/ferry-bench-place "${ROUNDS:-5}"
