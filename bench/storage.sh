#!/usr/bin/env bash
# The storage benchmark, one command: a 90 MB MiniLM (model + tokenizer) in a real MinIO on
# loopback, fetched and loaded by Ferry cold (download + load) and warm (the node cache's hit +
# load), against KServe's own storage initializer (kserve-storage from PyPI, the code its init
# container runs) and `aws s3 cp`, each followed by the same load, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s storage-tools minilm
cargo build --release -p ferry
venv=${FERRY_BENCH_STORAGE_VENV:-$HOME/.cache/ferry-bench-storage-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kserve-storage==0.21.0 awscli==1.46.2
fi
# -P: bench/ holds operator.py, which would shadow the standard library's operator module.
"$venv/bin/python" -P bench/storage.py "$@"
