#!/usr/bin/env python3
"""1,000 InferenceServices applied at once on the test bed's kwok nodes: time until all are
Ready, and the controller's resident memory, for Ferry's operator and KServe v0.20.0's
controller in the same run (one after the other, each alone on the control plane).

Run through bench/operator.sh (it builds what this needs and brings the test bed up).
Both controllers run as local processes with the test bed's admin kubeconfig; their pods land on
four extra kwok nodes this script adds (label ferry.dev/bench=true) and removes at the end.
Results go to bench/results/operator-<time>.json and a table on stdout.
"""

import argparse
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import process_stat, wait_ready  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RUN = os.path.join(REPO, "testbed", "run")
KUBECONFIG = os.path.join(RUN, "admin.kubeconfig")
KUBECTL = os.path.join(RUN, "kubectl")
NODES = 4


def kubectl(*args, stdin=None, check=True):
    out = subprocess.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, *args],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if check and out.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def apply(text, *extra):
    kubectl("apply", "--server-side", "--force-conflicts", *extra, "-f", "-", stdin=text)


def bench_nodes():
    docs = []
    for i in range(NODES):
        docs.append(f"""apiVersion: v1
kind: Node
metadata:
  name: kwok-bench-{i}
  annotations: {{node.alpha.kubernetes.io/ttl: "0", kwok.x-k8s.io/node: fake}}
  labels: {{type: kwok, ferry.dev/bench: "true", kubernetes.io/hostname: kwok-bench-{i}, kubernetes.io/os: linux}}
spec:
  taints: [{{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}}]
status:
  capacity: {{cpu: "1000", memory: 4Ti, pods: "400"}}
  allocatable: {{cpu: "1000", memory: 4Ti, pods: "400"}}
""")
    apply("---\n".join(docs))
    deadline = time.time() + 60
    while time.time() < deadline:
        ready = kubectl("get", "nodes", "-l", "ferry.dev/bench=true", "-o",
                        "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").split()
        if ready.count("True") == NODES:
            return
        time.sleep(0.5)
    sys.exit("the bench kwok nodes did not become Ready")


PLACEMENT = """    nodeSelector: {ferry.dev/bench: "true"}
    tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
"""


def ferry_manifests(count):
    return "---\n".join(f"""apiVersion: ferry.dev/v1alpha1
kind: InferenceService
metadata: {{name: m-{i:04d}}}
spec:
  predictor:
    model: {{format: onnx, uri: "https://models.example/iris-{i}.onnx"}}
    minReplicas: 1
    resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
{PLACEMENT}""" for i in range(count))


def kserve_manifests(count):
    return "---\n".join(f"""apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: m-{i:04d}
  annotations: {{serving.kserve.io/deploymentMode: Standard}}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 1
{PLACEMENT}    model:
      modelFormat: {{name: onnx}}
      storageUri: "https://models.example/iris-{i}.onnx"
      resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{cpu: 10m, memory: 32Mi}}}}
""" for i in range(count))


class Rss:
    """Samples a process's resident memory every 200 ms; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.2)

    def finish(self):
        self.stop = True
        self.thread.join()
        return self.peak

    def cpu_seconds(self):
        """User + system CPU time the process used so far."""
        return process_cpu(self.pid)[1]


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller", "kube-scheduler", "kwok",
                 "ferry-testbed-a")


def process_cpu(pid):
    """(command name, user + system CPU seconds so far) of a process."""
    comm, user, system = process_stat(pid)
    return comm, user + system


def control_plane_cpu():
    """CPU seconds used so far by each test bed process (by command name)."""
    used = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm, seconds = process_cpu(pid)
        except OSError:
            continue
        if comm in CONTROL_PLANE:
            used[comm] = used.get(comm, 0) + seconds
    return used


def isvc_ready(obj):
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def deployment_ready(obj):
    return (obj.get("status") or {}).get("readyReplicas", 0) >= 1


class ReadyWatch:
    """Counts the objects at `url` (a collection) that `is_ready`, from one watch on the
    apiserver (polling with `kubectl get` every second would cost the 2-core machine a good part
    of a core at 1,000 objects, and slow down whichever controller is measured)."""

    def __init__(self, url, is_ready):
        self.ready, self.lock = set(), threading.Lock()
        ctx = ssl.create_default_context(cafile=os.path.join(RUN, "pki", "ca.crt"))
        ctx.load_cert_chain(os.path.join(RUN, "pki", "admin.crt"), os.path.join(RUN, "pki", "admin.key"))
        self.connection = http.client.HTTPSConnection("127.0.0.1", 6443, context=ctx)
        self.url, self.is_ready = f"{url}?watch=1", is_ready
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        self.connection.request("GET", self.url)
        response = self.connection.getresponse()
        for line in response:
            event = json.loads(line)
            obj = event.get("object", {})
            name = obj.get("metadata", {}).get("name")
            ready = event.get("type") != "DELETED" and self.is_ready(obj)
            with self.lock:
                (self.ready.add if ready else self.ready.discard)(name)

    def count(self):
        with self.lock:
            return len(self.ready)

    def close(self):
        self.connection.sock and self.connection.sock.close()


def apiserver_writes():
    """The apiserver's count of mutating requests so far, by (resource[/subresource], verb)."""
    counts = {}
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, value = line[len("apiserver_request_total{"):].rsplit("}", 1)
        fields = dict(part.split("=", 1) for part in labels.split(",") if "=" in part)
        fields = {k: v.strip('"') for k, v in fields.items()}
        if fields.get("verb") not in ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"):
            continue
        resource = fields.get("resource", "")
        if fields.get("subresource"):
            resource += "/" + fields["subresource"]
        verb = fields["verb"]
        if not fields.get("code", "200").startswith("2"):
            verb += " " + fields["code"]
        key = (resource, verb)
        counts[key] = counts.get(key, 0) + float(value)
    return counts


def writes_delta(before, after, count):
    """Writes per InferenceService during the measurement, largest first."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    rows = sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)
    return {f"{k[0]} {k[1]}": round(v / count, 2) for v, k in rows}


def measure(name, namespace, collection, is_ready, manifests, count, pid, timeout):
    """Apply `manifests` in `namespace` at once; wait until `count` objects of `collection` (an
    API path under the namespace) are ready. `pid`: the controller measured, if any."""
    kubectl("create", "namespace", namespace)
    writes_before = apiserver_writes()
    rss = Rss(pid) if pid else None
    cpu_before = rss.cpu_seconds() if rss else 0
    plane_before = control_plane_cpu()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(manifests)
        path = f.name
    watch = ReadyWatch(collection.format(namespace=namespace), is_ready)
    start = time.time()
    kubectl("apply", "--server-side", "-n", namespace, "-f", path)
    created = time.time() - start
    print(f"  {name}: {count} created after {created:.1f} s", flush=True)
    ready, shown = 0, 0.0
    while time.time() - start < timeout:
        ready = watch.count()
        if ready >= count or time.time() - shown >= 5:
            print(f"  {name}: {ready}/{count} Ready after {time.time() - start:.1f} s", flush=True)
            shown = time.time()
        if ready >= count:
            break
        time.sleep(0.2)
    took = time.time() - start
    watch.close()
    cpu = rss.cpu_seconds() - cpu_before if rss else 0
    plane = {k: round(v - plane_before.get(k, 0), 1) for k, v in control_plane_cpu().items()}
    writes = writes_delta(writes_before, apiserver_writes(), count)
    events = {}
    out = kubectl("get", "events.events.k8s.io", "-n", namespace, "-o",
                  "jsonpath={range .items[*]}{.reportingController} {.reason} {.deprecatedCount}{'\\n'}{end}",
                  check=False)
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            key = f"{parts[0]} {parts[1]}"
            events[key] = events.get(key, 0) + 1
    peak = rss.finish() if rss else 0
    os.unlink(path)
    return {"controller": name, "count": count, "ready": ready, "create_s": round(created, 1),
            "all_ready_s": round(took, 1) if ready >= count else None,
            "peak_rss_mb": round(peak / 2**20, 1), "cpu_s": round(cpu, 1),
            "control_plane_cpu_s": plane,
            "writes_per_isvc": round(sum(writes.values()), 1), "writes": writes,
            "events_per_isvc": {k: round(v / count, 2) for k, v in
                                sorted(events.items(), key=lambda kv: -kv[1])}}


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cleanup(namespace):
    kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=true", "--timeout=600s",
            check=False)


FERRY_ISVCS = "/apis/ferry.dev/v1alpha1/namespaces/{namespace}/inferenceservices"
KSERVE_ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices"


def run_floor(args):
    """No controller: the Deployments and revision Services Ferry would create (from `ferry
    render`), applied by kubectl itself — what the test bed needs for the objects alone."""
    namespace = "bench-floor"
    rendered = subprocess.run([args.ferry, "render", "-n", namespace, "-f", "-"],
                              input=ferry_manifests(args.count), capture_output=True, text=True,
                              check=True).stdout
    docs = [d for d in rendered.split("\n---\n")
            if d.lstrip().startswith("apiVersion: apps/v1\nkind: Deployment")
            or ("kind: Service" in d and "clusterIP: None" in d)]
    try:
        return measure("floor", namespace, "/apis/apps/v1/namespaces/{namespace}/deployments",
                       deployment_ready, "\n---\n".join(docs), args.count, None, args.timeout)
    finally:
        cleanup(namespace)


def run_ferry(args, log):
    env = dict(os.environ, KUBECONFIG=KUBECONFIG, FERRY_LOG="warn")
    kubectl("create", "namespace", "ferry-bench-lease")
    process = subprocess.Popen(
        [args.ferry, "operator", "--metrics-addr", "127.0.0.1:18091",
         "--lease-namespace", "ferry-bench-lease", "--identity", "bench"],
        env=env, stdout=log, stderr=log)
    try:
        wait_ready("http://127.0.0.1:18091/healthz", process)
        return measure("ferry", "bench-ferry", FERRY_ISVCS, isvc_ready,
                       ferry_manifests(args.count), args.count, process.pid, args.timeout)
    finally:
        cleanup("bench-ferry")
        stop(process)
        cleanup("ferry-bench-lease")


def kserve_setup(args, certs):
    config = args.kserve_config
    kubectl("create", "namespace", "kserve", check=False)
    for root, _, files in os.walk(os.path.join(config, "full")):
        for file in sorted(files):
            if file.startswith("serving.kserve.io_"):
                with open(os.path.join(root, file)) as f:
                    apply(f.read())
    deadline = time.time() + 60
    while time.time() < deadline:
        # A CRD created a moment ago may have no conditions yet (kubectl's filter then fails).
        out = kubectl("get", "crd", "-o",
                      "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=='Established')].status}{'\\n'}{end}",
                      check=False)
        pending = [l for l in out.splitlines() if "kserve.io" in l and not l.endswith("True")]
        if out and not pending:
            break
        time.sleep(0.5)
    with open(os.path.join(config, "configmap", "inferenceservice.yaml")) as f:
        text = f.read()
    # Standard (raw Deployment) mode, no Ingress: what Ferry's operator does for this manifest.
    text = text.replace('"defaultDeploymentMode": "Serverless"', '"defaultDeploymentMode": "Standard"')
    text = text.replace('"disableIngressCreation": false', '"disableIngressCreation": true')
    apply(text)
    for file in sorted(os.listdir(os.path.join(config, "runtimes"))):
        if file.endswith(".yaml") and file != "kustomization.yaml":
            with open(os.path.join(config, "runtimes", file)) as f:
                apply(f.read())
    # Serving certificate for the webhooks on 127.0.0.1, where controller-runtime looks.
    serving = os.path.join(certs, "k8s-webhook-server", "serving-certs")
    os.makedirs(serving, exist_ok=True)
    ca_key, ca_crt = os.path.join(certs, "ca.key"), os.path.join(certs, "ca.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=kserve-bench-ca", "-keyout", ca_key, "-out", ca_crt,
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign"], check=True, capture_output=True)
    key, csr, crt = (os.path.join(serving, n) for n in ("tls.key", "tls.csr", "tls.crt"))
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", key, "-out", csr], check=True, capture_output=True)
    ext = os.path.join(certs, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", crt],
                   check=True, capture_output=True)
    return ca_crt


def kserve_webhooks(config, ca_crt):
    """KServe's webhook configurations, pointed at https://127.0.0.1:9443/<path>."""
    import base64
    with open(ca_crt, "rb") as f:
        bundle = base64.b64encode(f.read()).decode()
    with open(os.path.join(config, "webhook", "manifests.yaml")) as f:
        text = f.read()
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "service:" and i + 3 < len(lines) and "path:" in lines[i + 3]:
            indent = line[: len(line) - len(line.lstrip())]
            path = lines[i + 3].split("path:", 1)[1].strip()
            out.append(f"{indent}url: https://127.0.0.1:9443{path}")
            out.append(f"{indent}caBundle: {bundle}")
            i += 4
            continue
        out.append(line.replace("creationTimestamp: null", ""))
        i += 1
    return "\n".join(out) + "\n"


def run_kserve(args, log):
    certs = tempfile.mkdtemp(prefix="kserve-bench-")
    ca_crt = kserve_setup(args, certs)
    env = dict(os.environ, KUBECONFIG=KUBECONFIG, POD_NAMESPACE="kserve", TMPDIR=certs)
    process = subprocess.Popen(
        [args.kserve, "--metrics-addr", "127.0.0.1:18080", "--health-probe-addr", "127.0.0.1:18081",
         "--webhook-port", "9443"], env=env, stdout=log, stderr=log)
    webhooks = kserve_webhooks(args.kserve_config, ca_crt)
    try:
        wait_ready("http://127.0.0.1:18081/readyz", process)
        apply(webhooks)
        return measure("kserve", "bench-kserve", KSERVE_ISVCS, isvc_ready,
                       kserve_manifests(args.count), args.count, process.pid, args.timeout)
    finally:
        # While the controller still runs: its InferenceServices carry its finalizer.
        cleanup("bench-kserve")
        # Then the webhooks (they would refuse requests once their server is gone), then it.
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            names = kubectl("get", kind, "-o", "name", check=False).split()
            for n in names:
                if "kserve" in n:
                    kubectl("delete", n, check=False)
        stop(process)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ferry", required=True)
    parser.add_argument("--kserve", required=True)
    parser.add_argument("--kserve-config", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--only", choices=["ferry", "kserve", "floor"],
                        help="one side only; floor: no controller, the rendered objects applied directly")
    args = parser.parse_args()
    # The test bed may run Ferry as installed by the cluster tests (deploy/): its operator would
    # reconcile the bench's InferenceServices too, and its router would route them all.
    for deployment in ("ferry-operator", "ferry-router"):
        kubectl("scale", "deployment", deployment, "-n", "ferry-system", "--replicas=0", check=False)
    bench_nodes()
    results = []
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(HERE, "results", f"operator-{stamp}.log"), "w") as log:
        if args.only == "floor":
            results.append(run_floor(args))
        if args.only in (None, "ferry"):
            results.append(run_ferry(args, log))
        if args.only in (None, "kserve"):
            results.append(run_kserve(args, log))
    kubectl("delete", "nodes", "-l", "ferry.dev/bench=true", check=False)
    with open(os.path.join(HERE, "results", f"operator-{stamp}.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\n| controller | InferenceServices | created in | all Ready after | peak RSS | controller CPU |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ready = f"{r['all_ready_s']} s" if r["all_ready_s"] is not None else f"{r['ready']} Ready at timeout"
        print(f"| {r['controller']} | {r['count']} | {r['create_s']} s | {ready} | {r['peak_rss_mb']} MB | {r['cpu_s']} s |")
    for r in results:
        top = ", ".join(f"{k} {v}" for k, v in list(r["writes"].items())[:12])
        plane = ", ".join(f"{k} {v} s" for k, v in r["control_plane_cpu_s"].items())
        print(f"\n{r['controller']}: control plane CPU until all Ready: {plane}")
        print(f"{r['controller']}: {r['writes_per_isvc']} apiserver writes per InferenceService until all Ready: {top}")
    by = {r["controller"]: r for r in results}
    if "ferry" in by and "kserve" in by and by["ferry"]["all_ready_s"] and by["kserve"]["all_ready_s"]:
        print(f"\nFerry was {by['kserve']['all_ready_s'] / by['ferry']['all_ready_s']:.1f}x faster "
              f"at {by['ferry']['peak_rss_mb'] / by['kserve']['peak_rss_mb']:.2f}x KServe's memory.")


if __name__ == "__main__":
    main()
