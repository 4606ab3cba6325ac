#!/usr/bin/env bash
# The autoscaling benchmark, one command: brings the test bed up (it builds Ferry for its pods),
# installs the CRDs, the operator with its External metrics API and the router, then runs
# bench/autoscale.py: the same x10 concurrency spike scaled by Ferry's engine and by the real HPA
# on Ferry's External metric, and a cold start from zero. RELEASE=1 runs the pods on a release
# build (slower to build; the reaction times do not depend on it, the latencies do).
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_TESTBED_CARGO_FLAGS="--workspace --features ferry-server/onnxruntime --bins"
testbed/up.sh
run=testbed/run
kubectl() { "$run/kubectl" --kubeconfig "$run/admin.kubeconfig" "$@"; }
if [ "${RELEASE:-0}" = 1 ]; then
  cargo build --release -p ferry --features ferry-server/onnxruntime
  cp target/release/ferry "$run/bin/ferry.new" && mv "$run/bin/ferry.new" "$run/bin/ferry"
fi
kubectl apply --server-side -f deploy/crds/ >/dev/null
kubectl apply --server-side -f deploy/operator.yaml -f deploy/router.yaml >/dev/null
kubectl apply --server-side -f deploy/external-metrics.yaml >/dev/null
kubectl -n ferry-system rollout restart deployment ferry-operator ferry-router >/dev/null
kubectl -n ferry-system rollout status deployment/ferry-operator --timeout=120s >/dev/null
kubectl -n ferry-system rollout status deployment/ferry-router --timeout=120s >/dev/null
kubectl wait --for=condition=Available apiservice/v1beta1.external.metrics.k8s.io --timeout=120s >/dev/null
python3 bench/autoscale.py "$@"
