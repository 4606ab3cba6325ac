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
diff_id=$(sha256sum "$layer" | cut -d' ' -f1)
gzip -n -1 "$layer"
rm -rf "$out" && mkdir -p "$out/blobs/sha256"
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$out/blobs/sha256/$d"; echo "$d"; }
layer_size=$(stat -c %s "$layer.gz")
layer_digest=$(blob "$layer.gz")
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{},
 "rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
config_size=$(stat -c %s "$work/config.json")
config_digest=$(blob "$work/config.json")
cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
JSON
manifest_size=$(stat -c %s "$work/manifest.json")
manifest_digest=$(blob "$work/manifest.json")
echo '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
cat > "$out/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
 "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,
  "annotations":{"org.opencontainers.image.ref.name":"$tag"}}]}
JSON
echo "build-modelcar.sh: $out:$tag (manifest sha256:$manifest_digest)" >&2
