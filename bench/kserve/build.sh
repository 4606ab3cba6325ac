#!/usr/bin/env bash
# Build KServe v0.20.0's controller (`cmd/manager`) from the Go module proxy through the wrapper
# module bench/kserve/wrapper (KServe's own replace/exclude lines copied into it), cached outside
# the work tree. Prints the binary's path. A second call with the binary cached returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KSERVE_VERSION=v0.20.0
CACHE=${FERRY_BENCH_CACHE:-$HOME/.cache/ferry-bench/kserve-$KSERVE_VERSION}
stamp="$KSERVE_VERSION $(sha1sum < "$here/wrapper/go.sum" | cut -c1-12)"
if [ -x "$CACHE/manager" ] && [ "$(cat "$CACHE/.built" 2>/dev/null)" = "$stamp" ]; then
  echo "$CACHE/manager"; exit 0
fi
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$CACHE"
start=$(date +%s)
echo "kserve: building the controller $KSERVE_VERSION (several minutes, once)" >&2
(cd "$here/wrapper" && go build -trimpath -ldflags "-s -w" -o "$CACHE/manager" github.com/kserve/kserve/cmd/manager)
# Its CRDs and runtimes, as the module ships them.
src=$(cd "$here/wrapper" && go list -m -f '{{.Dir}}' github.com/kserve/kserve)
rm -rf "$CACHE/config" && mkdir -p "$CACHE/config"
cp -r "$src/config/crd/full" "$src/config/runtimes" "$src/config/configmap" "$src/config/webhook" "$CACHE/config/"
chmod -R u+w "$CACHE/config"
echo "$stamp" > "$CACHE/.built"
echo "kserve: built in $(( $(date +%s) - start )) s" >&2
echo "$CACHE/manager"
