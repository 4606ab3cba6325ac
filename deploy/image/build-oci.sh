#!/usr/bin/env bash
# Build the `ferry` image without a container engine, as an OCI image layout (a directory that
# skopeo, umoci, crane or a registry push understand): one layer with the binary at
# /usr/local/bin/ferry, the glibc libraries it links (the files distroless/cc carries), CA
# certificates, and /etc/passwd + /etc/group naming the non-root user 65532 it runs as.
# Reproducible: sorted entries, fixed times and owners, so equal inputs give equal digests.
#
#   deploy/image/build-oci.sh [--binary PATH] [--tag TAG] OUT_DIR
set -euo pipefail
binary=target/release/ferry
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' "$(dirname "$0")/../../Cargo.toml" | head -1)
while [ $# -gt 1 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "build-oci.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done
out=${1:?usage: build-oci.sh [--binary PATH] [--tag TAG] OUT_DIR}
[ -x "$binary" ] || { echo "build-oci.sh: $binary is not an executable (cargo build --release -p ferry)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
install -m 0755 --strip "$binary" "$root/usr/local/bin/ferry"
# The shared libraries the binary links, at the paths its loader looks in.
ldd "$binary" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | while read -r lib; do
  real=$(readlink -f "$lib")
  mkdir -p "$root$(dirname "$lib")"
  cp "$real" "$root$lib"
done
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"

layer=$work/layer.tar
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$root" -cf "$layer" .
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"User":"65532:65532","Entrypoint":["/usr/local/bin/ferry"],"Cmd":["--help"],
  "Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
  "WorkingDir":"/",
  "Labels":{"org.opencontainers.image.title":"ferry","org.opencontainers.image.version":"$tag","org.opencontainers.image.licenses":"Apache-2.0"}},
 "rootfs":{"type":"layers","diff_ids":["sha256:DIFF_ID"]},
 "history":[{"created":"1970-01-01T00:00:00Z","created_by":"deploy/image/build-oci.sh"}]}
JSON
. "$(dirname "$0")/oci-layout.sh"
printf 'build-oci.sh: ' >&2
oci_layout "$out" "$tag" "$layer" "$work/config.json"
