# Shared by build-oci.sh and build-modelcar.sh (sourced): writes an OCI image layout.
#   oci_layout OUT TAG LAYER_TAR CONFIG_JSON
# LAYER_TAR: the uncompressed layer (its digest is the config's diff_id; DIFF_ID in CONFIG_JSON
# is replaced by it); it is gzipped (-n: no name or time, reproducible) into the blob store.
oci_layout() {
  local out=$1 tag=$2 layer=$3 config=$4 d diff_id
  diff_id=$(sha256sum "$layer" | cut -d' ' -f1)
  gzip -n -6 "$layer"
  rm -rf "$out" && mkdir -p "$out/blobs/sha256"
  blob() { d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$out/blobs/sha256/$d"; echo "$d"; }
  local layer_size layer_digest config_size config_digest manifest_size manifest_digest
  layer_size=$(stat -c %s "$layer.gz")
  layer_digest=$(blob "$layer.gz")
  sed -i "s/DIFF_ID/$diff_id/" "$config"
  config_size=$(stat -c %s "$config")
  config_digest=$(blob "$config")
  local manifest; manifest=$(mktemp)
  cat > "$manifest" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
JSON
  manifest_size=$(stat -c %s "$manifest")
  manifest_digest=$(blob "$manifest")
  echo '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
  cat > "$out/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
 "manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,
  "annotations":{"org.opencontainers.image.ref.name":"$tag"}}]}
JSON
  echo "$out:$tag (manifest sha256:$manifest_digest, layer $(( layer_size / 1024 )) KiB)" >&2
}
