#!/usr/bin/env bash
# Router benchmark in one command: Ferry's router vs nginx vs a direct call, same run.
# Environment: DURATION (seconds per point, default 8); CANARY=10 holds a 10 % canary split
# behind Ferry's router (its table goes to the RESULTS-CANARY section of ROUTER.md).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
cargo build --release -p ferry
exec python3 bench/router.py --duration "${DURATION:-8}" --canary "${CANARY:-0}"
