#!/usr/bin/env bash
# Build a model image ("modelcar", KServe's name) without a container engine: an OCI image
# layout whose one layer holds MODEL (a file or a directory) under /models. Push it with a real
# client, e.g. `skopeo copy oci:OUT:TAG docker://REGISTRY/REPO:TAG`; Ferry serves it as
# `oci://REGISTRY/REPO:TAG`. Reproducible: sorted entries, fixed times and owners.
#
#   deploy/image/build-modelcar.sh [--tag TAG] MODEL OUT_DIR
set -euo pipefail
tag=latest
if [ "${1:-}" = --tag ]; then tag=$2; shift 2; fi
model=${1:?usage: build-modelcar.sh [--tag TAG] MODEL OUT_DIR}
out=${2:?usage: build-modelcar.sh [--tag TAG] MODEL OUT_DIR}
[ -e "$model" ] || { echo "build-modelcar.sh: $model does not exist" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/models"
cp -r "$model" "$work/rootfs/models/"
if [ -d "$model" ]; then # a directory's contents are the model
  mv "$work/rootfs/models/$(basename "$model")"/* "$work/rootfs/models/"
  rmdir "$work/rootfs/models/$(basename "$model")"
fi
layer=$work/layer.tar
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/rootfs" -cf "$layer" models
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{},
 "rootfs":{"type":"layers","diff_ids":["sha256:DIFF_ID"]}}
JSON
. "$(dirname "$0")/oci-layout.sh"
printf 'build-modelcar.sh: ' >&2
oci_layout "$out" "$tag" "$layer" "$work/config.json"
