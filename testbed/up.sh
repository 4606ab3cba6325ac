#!/usr/bin/env bash
# Start a real Kubernetes control plane on 127.0.0.1 only: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake CPU and GPU nodes, pod IPs from
# 127.1.0.0/16), plus one process node (process-0) run by testbed/agent: its pods are real
# processes on 127.2.0.0/24. Builds the binaries on first use (build.sh, cargo). Writes testbed/run/admin.kubeconfig.
# Idempotent: with the cluster up it returns at once. Stop with testbed/down.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/versions.env"
CACHE=${FERRY_TESTBED_CACHE:-$HOME/.cache/ferry-testbed/$K8S_VERSION}
BIN=$CACHE/bin
RUN=$here/run
PIDS=$RUN/pids
LOGS=$RUN/logs
PKI=$RUN/pki
KUBECTL=$BIN/kubectl
ADMIN=$RUN/admin.kubeconfig

alive() { [ -f "$PIDS/$1" ] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }
healthy() {
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kwok ferry-agent; do alive "$c" || return 1; done
  "$KUBECTL" --kubeconfig "$ADMIN" get --raw /readyz >/dev/null 2>&1
}

"$here/build.sh"
if healthy; then
  echo "testbed: already up (kubeconfig $ADMIN)"
  exit 0
fi
# Half-started leftovers: stop them first.
"$here/down.sh" >/dev/null 2>&1 || true
start_ns=$(date +%s%N)
mkdir -p "$PIDS" "$LOGS" "$PKI"

# --- PKI (kept across restarts; --purge in down.sh removes it) ---
if [ ! -f "$PKI/ca.crt" ]; then
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=ferry-testbed-ca" 2>/dev/null
    cert() { # name subject extensions (always v3 certificates: rustls refuses v1)
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
    }
    cert apiserver "/CN=kube-apiserver" \
      "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
    cert controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    cert scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
fi
# The aggregation layer's front proxy: its own CA and the apiserver's client certificate towards
# aggregated APIs (Ferry's external.metrics.k8s.io), as kubeadm makes them.
if [ ! -f "$PKI/front-proxy-client.crt" ]; then
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt -days 3650 -subj "/CN=ferry-testbed-front-proxy-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout front-proxy-client.key -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > front-proxy-client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key -CAcreateserial -out front-proxy-client.crt -days 3650 -extfile front-proxy-client.ext 2>/dev/null
  )
fi
kubeconfig() { # file user
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: testbed
  context: {cluster: testbed, user: $2, namespace: default}
current-context: testbed
KC
}
kubeconfig "$ADMIN" admin
ln -sf "$KUBECTL" "$RUN/kubectl"   # the test bed's own kubectl, for tests and by hand
ln -sf "$BIN/helm" "$RUN/helm"         # helm, for the chart's tests
kubeconfig "$RUN/controller-manager.kubeconfig" controller-manager
kubeconfig "$RUN/scheduler.kubeconfig" scheduler

launch() { # name command...
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name"
}
wait_for() { # what seconds command...
  local what=$1 seconds=$2; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "testbed: $what not healthy after ${seconds}s; last log lines:" >&2
      tail -n 20 "$LOGS/$what.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

launch etcd "$BIN/etcd" --name node0 --data-dir "$RUN/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --listen-metrics-urls http://127.0.0.1:2381 --initial-cluster node0=http://127.0.0.1:2380 \
  --unsafe-no-fsync
wait_for etcd 30 curl -sf http://127.0.0.1:2381/health

launch kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers http://127.0.0.1:2379 --bind-address 127.0.0.1 --secure-port 6443 \
  --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --authorization-mode Node,RBAC --allow-privileged=true \
  --enable-priority-and-fairness=false \
  --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key"
# No --enable-aggregator-routing: it resolves an APIService's Service through EndpointSlices,
# which refuse the loopback pod IPs of this test bed; without it an ExternalName Service (Ferry's
# operator points it at its own pod IP) is dialled as it is, and no 10.96 ClusterIP ever is.
wait_for kube-apiserver 60 "$KUBECTL" --kubeconfig "$ADMIN" get --raw /readyz

launch kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$RUN/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$RUN/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$RUN/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false --controllers '*' \
  --use-service-account-credentials=true --root-ca-file "$PKI/ca.crt" \
  --service-account-private-key-file "$PKI/sa.key" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --kube-api-qps 300 --kube-api-burst 600 --concurrent-deployment-syncs 20 \
  --concurrent-replicaset-syncs 20 --concurrent-service-endpoint-syncs 20
# Client rate limits raised from 20 (kcm) / 50 (scheduler) queries per second: with 1,000
# InferenceServices (bench/operator.py) the defaults, not the controllers under test, set the pace.
launch kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$RUN/scheduler.kubeconfig" \
  --authentication-kubeconfig "$RUN/scheduler.kubeconfig" \
  --authorization-kubeconfig "$RUN/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false \
  --kube-api-qps 300 --kube-api-burst 600
launch kwok "$BIN/kwok" --kubeconfig "$ADMIN" --config "$CACHE/kwok-stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-label-selector type=kwok \
  --node-lease-duration-seconds 40 --cidr 127.1.0.0/16 --node-ip 127.0.0.1
wait_for kube-controller-manager 60 curl -skf https://127.0.0.1:10257/healthz
wait_for kube-scheduler 60 curl -skf https://127.0.0.1:10259/healthz

# --- kwok nodes: CPU-only and GPU nodes (8 GPUs each), tainted so only pods that ask land there ---
# One kwok node: name, extra labels and extra capacity (flow-map entries, may be empty).
kwok_node() { # name labels capacity
  cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations: {node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/hostname: $1, kubernetes.io/os: linux, kubernetes.io/arch: amd64${2:+, $2}}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  capacity: {cpu: "32", memory: 256Gi, pods: "110"${3:+, $3}}
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"${3:+, $3}}
---
NODE
}
node() { # name gpus product: whole GPUs
  if [ "$2" -gt 0 ]; then
    kwok_node "$1" "nvidia.com/gpu.product: $3, nvidia.com/gpu.count: \"$2\"" "nvidia.com/gpu: \"$2\""
  else
    kwok_node "$1" "" ""
  fi
}
# Shared GPUs as NVIDIA's device plugin and GPU feature discovery advertise them: time-slicing
# with renamed resources (2 L4s x 4 replicas = 8 nvidia.com/gpu.shared), and MIG in the mixed
# strategy (one H100 cut into 7 1g.10gb slices, another into 2 3g.40gb).
{
  node kwok-cpu-0 0 ""
  node kwok-cpu-1 0 ""
  node kwok-gpu-a100-0 8 NVIDIA-A100-SXM4-80GB
  node kwok-gpu-h100-0 8 NVIDIA-H100-80GB-HBM3
  kwok_node kwok-gpu-l4-shared-0 \
    'nvidia.com/gpu.product: NVIDIA-L4-SHARED, nvidia.com/gpu.count: "2", nvidia.com/gpu.replicas: "4", nvidia.com/gpu.sharing-strategy: time-slicing' \
    'nvidia.com/gpu.shared: "8"'
  kwok_node kwok-gpu-h100-mig-0 \
    'nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3, nvidia.com/gpu.count: "2", nvidia.com/mig.strategy: mixed, nvidia.com/mig-1g.10gb.count: "7", nvidia.com/mig-1g.10gb.memory: "9856", nvidia.com/mig-3g.40gb.count: "2", nvidia.com/mig-3g.40gb.memory: "40192"' \
    'nvidia.com/mig-1g.10gb: "7", nvidia.com/mig-3g.40gb: "2"'
} | "$KUBECTL" --kubeconfig "$ADMIN" apply -f - >/dev/null
wait_for kwok 60 "$KUBECTL" --kubeconfig "$ADMIN" wait --for=condition=Ready node -l type=kwok --timeout=1s
# --- the process node: our agent runs pods bound to it as local processes on 127.2.0.0/24 ---
repo=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
# shellcheck disable=SC2086
(cd "$repo" && cargo build --quiet ${FERRY_TESTBED_CARGO_FLAGS:--p ferry -p ferry-testbed-agent})
mkdir -p "$RUN/bin"
cp "$target/debug/ferry" "$target/debug/ferry-testbed-agent" "$RUN/bin/"
launch ferry-agent "$RUN/bin/ferry-testbed-agent" --kubeconfig "$ADMIN" --node process-0 --index 0 \
  --ferry-bin "$RUN/bin/ferry" --logs "$RUN/agent-logs" --pods-dir "$RUN/pods" --ca-file "$PKI/ca.crt"
wait_for ferry-agent 60 "$KUBECTL" --kubeconfig "$ADMIN" wait --for=condition=Ready node/process-0 --timeout=1s
echo "testbed: up in $(( ($(date +%s%N) - start_ns) / 1000000 )) ms; export KUBECONFIG=$ADMIN; kubectl is $KUBECTL"
