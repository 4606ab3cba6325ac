#!/usr/bin/env bash
# Tenancy benchmark in one command: TLS at Ferry's router vs nginx terminating TLS, the cost of
# API keys + rate limits per request, and a noisy neighbour with and without fair sharing; same
# run. Environment: DURATION (seconds per point, default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
cargo build --release -p ferry -p ferry-bench-load
exec python3 bench/tenancy.py --duration "${DURATION:-8}"
