#!/usr/bin/env bash
# ServerPool benchmarks in one command:
# 1. the planner: ferry_core::placement::plan on 10,000 models x 100 servers (plan from nothing,
#    re-plan settled, re-plan after losing a server) and its packing against Seldon Core v2's
#    spreading rule on the same models, same run. ROUNDS (default 5).
# 2. serving (bench/pools.py): MODELS (default 1000) pooled models on 2 pool servers under
#    `ferry up` whose budgets hold a quarter of them: cold-miss latency, the hot model's p99 while
#    cold models churn vs the same model on a dedicated server (same run), predicted vs measured
#    memory per model. SECONDS_PER_PHASE per hot-model phase (default 6). SERVING=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p ferry-bench-load --bin ferry-bench-place
target/release/ferry-bench-place "${ROUNDS:-5}"
[ "${SERVING:-1}" = 0 ] && exit 0
make -s deps
cargo build --release -q -p ferry
# -P: bench/ holds operator.py, which would shadow the standard library's operator module.
exec "${VENV:-$HOME/.cache/ferry-venv}/bin/python" -P bench/pools.py --models "${MODELS:-1000}" --seconds "${SECONDS_PER_PHASE:-6}"
