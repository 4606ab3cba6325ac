#!/usr/bin/env bash
# Build the test bed's binaries once from the Go module proxy and cache them outside the work
# tree: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (k8s.io/kubernetes,
# through the wrapper module testbed/k8s), etcd (wrapper module testbed/etcd) and kwok, plus
# kwok's stage configuration, and helm. A second call with everything cached returns at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${FERRY_TESTBED_CACHE:-$HOME/.cache/ferry-testbed/$K8S_VERSION}
BIN=$CACHE/bin
# helm, for the chart's tests: its own stamp, so a new helm does not rebuild Kubernetes.
if [ ! -x "$BIN/helm-$HELM_VERSION" ]; then
  command -v go >/dev/null || { echo "testbed/build.sh: Go is required" >&2; exit 1; }
  echo "testbed: building helm $HELM_VERSION (about 2 min, once)" >&2
  mkdir -p "$BIN"
  tmp=$(mktemp -d)
  GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN="$tmp" \
    go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$BIN/helm-$HELM_VERSION"
  rmdir "$tmp"
  ln -sf "helm-$HELM_VERSION" "$BIN/helm"
fi
stamp="$K8S_VERSION $ETCD_VERSION $KWOK_VERSION $(cat "$here/k8s/go.sum" "$here/etcd/go.sum" | sha1sum | cut -c1-12)"
if [ -f "$CACHE/.built" ] && [ "$(cat "$CACHE/.built")" = "$stamp" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "testbed/build.sh: Go is required" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$BIN"
start=$(date +%s)

echo "testbed: building Kubernetes $K8S_VERSION (a few minutes, once)" >&2
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags="$ldflags -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=34 -X $p.gitTreeState=clean"
done
(cd "$here/k8s" && go build -p "$(nproc)" -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$BIN/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)

echo "testbed: building etcd $ETCD_VERSION" >&2
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)

echo "testbed: building kwok $KWOK_VERSION" >&2
GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"

# kwok's own stages: nodes become Ready and renew leases; pods on kwok nodes run at once.
kwok_dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
stages="$kwok_dir/kustomize/stage"
{
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
           pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cat "$stages/$f.yaml"
    echo "---"
  done
} > "$CACHE/kwok-stages.yaml"

"$BIN/kube-apiserver" --version >&2
echo "$stamp" > "$CACHE/.built"
echo "testbed: built in $(( $(date +%s) - start )) s into $BIN" >&2
