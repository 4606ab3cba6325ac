#!/usr/bin/env python3
"""The autoscaling benchmark on the test bed (bench/autoscale.sh runs it).

The same x10 concurrency spike (1 closed-loop client, then 10) through the in-cluster router
against the same InferenceService (models/iris-slow.onnx, scaleMetric concurrency, scaleTarget 1,
minReplicas 1, maxReplicas 10), scaled by
  (a) Ferry's engine (autoscaling defaults: 30 s stable window, 3 s panic window), and
  (b) the cluster's real HPA controller on Ferry's External metric ferry_concurrency
      (kube-controller-manager defaults: 15 s sync, +4 pods or +100 % per 15 s);
then a cold start from zero with Ferry's engine: the first byte of one request against the
replica's own model-ready time (its server log).

Reported per engine: seconds from the spike until more replicas are asked for (Deployment
spec.replicas), until a second replica serves, until all 10 are ready (full capacity); failed
and 503 responses; p50/p99 latency during the spike. Only stdlib: the apiserver is read with the
test bed's admin certificate, the router at its pod IP.
"""

import argparse
import datetime
import glob
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "testbed", "run")
KUBECONFIG = os.path.join(RUN, "admin.kubeconfig")
KUBECTL = os.path.join(RUN, "kubectl")
MODEL = os.path.join(ROOT, "models", "iris-slow.onnx")
BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                               "data": [5.1, 3.5, 1.4, 0.2]}]})
MAX = 10


def kubectl(*args, stdin=None, check=True):
    out = subprocess.run([KUBECTL, "--kubeconfig", KUBECONFIG, *args], input=stdin,
                         capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


class Api:
    """GETs on the apiserver with the admin certificate (a kubectl per poll costs ~100 ms)."""

    def __init__(self):
        pki = os.path.join(RUN, "pki")
        ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))
        self.ctx = ctx
        self.connection = http.client.HTTPSConnection("127.0.0.1", 6443, context=ctx)

    def get(self, path):
        try:
            self.connection.request("GET", path)
            response = self.connection.getresponse()
            return json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            self.connection = http.client.HTTPSConnection("127.0.0.1", 6443, context=self.ctx)
            return {}


def router_ip(api):
    pods = api.get("/api/v1/namespaces/ferry-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dferry-router")
    for pod in pods.get("items", []):
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod.get("status", {}).get("conditions", []))
        if ready and not pod["metadata"].get("deletionTimestamp"):
            return pod["status"]["podIP"]
    sys.exit("no Ready router pod in ferry-system")


class Load:
    """Closed-loop clients through the router; each records (sent, done, status)."""

    def __init__(self, ip, namespace):
        self.ip, self.namespace = ip, namespace
        self.stop = threading.Event()
        self.samples = []
        self.lock = threading.Lock()
        self.threads = []

    def add(self, clients):
        for _ in range(clients):
            thread = threading.Thread(target=self.client, daemon=True)
            thread.start()
            self.threads.append(thread)

    def client(self):
        connection = http.client.HTTPConnection(self.ip, 8080, timeout=130)
        mine = []
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                connection.request("POST", "/v2/models/iris/infer", BODY,
                                   {"content-type": "application/json",
                                    "ferry-namespace": self.namespace})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connection = http.client.HTTPConnection(self.ip, 8080, timeout=130)
            mine.append((sent, time.monotonic(), status))
        with self.lock:
            self.samples.extend(mine)

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join()
        return self.samples


def manifest(predictor):
    return (f"apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris}}\n"
            f"spec:\n  predictor:\n    model: {{format: onnx, uri: {MODEL}}}\n{predictor}")


def scale(api, namespace):
    """(spec.replicas, readyReplicas) summed over the namespace's Deployments."""
    deployments = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments").get("items", [])
    asked = sum(d["spec"].get("replicas", 0) for d in deployments)
    ready = sum(d.get("status", {}).get("readyReplicas", 0) for d in deployments)
    return asked, ready


def wait(what, seconds, check):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def serving(ip, namespace):
    def check():
        try:
            connection = http.client.HTTPConnection(ip, 8080, timeout=5)
            connection.request("POST", "/v2/models/iris/infer", BODY,
                               {"content-type": "application/json", "ferry-namespace": namespace})
            return connection.getresponse().status == 200
        except OSError:
            return False
    wait("the router to serve", 60, check)


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spike(api, ip, engine, namespace, baseline, limit):
    kubectl("create", "namespace", namespace)
    extra = "    autoscaling: {engine: hpa}\n" if engine == "hpa" else ""
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=manifest(
        f"    minReplicas: 1\n    maxReplicas: {MAX}\n    scaleMetric: concurrency\n"
        f"    scaleTarget: 1\n{extra}"))
    wait("ready", 120, lambda: scale(api, namespace)[1] >= 1)
    serving(ip, namespace)
    load = Load(ip, namespace)
    load.add(1)
    time.sleep(baseline)  # one client: the metric reads 1, every engine settles at 1 replica
    if scale(api, namespace)[0] != 1:
        print(f"  warning: {engine} is at {scale(api, namespace)[0]} replicas before the spike")
    start = time.monotonic()
    load.add(MAX - 1)
    asked = second = full = None
    while time.monotonic() - start < limit:
        now = time.monotonic() - start
        spec, ready = scale(api, namespace)
        if asked is None and spec > 1:
            asked = now
        if second is None and ready > 1:
            second = now
        if ready >= MAX:
            full = now
            break
        time.sleep(0.1)
    # A few seconds at full capacity, then stop.
    time.sleep(3)
    end = time.monotonic()
    samples = load.finish()
    during = [s for s in samples if s[0] >= start and s[1] <= end]
    latencies = [(s[1] - s[0]) * 1000 for s in during if s[2] == 200]
    result = {
        "engine": engine,
        "asked_s": asked,
        "second_serving_s": second,
        "full_capacity_s": full,
        "requests": len(during),
        "failed": sum(1 for s in during if s[2] != 200),
        "status_503": sum(1 for s in during if s[2] == 503),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
    }
    kubectl("delete", "namespace", namespace, "--wait=false")
    return result


def log_time(line):
    stamp = line.split()[0].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    at = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return at.timestamp() + float("0." + (fraction or "0"))


def cold(api, ip, namespace):
    kubectl("create", "namespace", namespace)
    kubectl("apply", "--server-side", "-n", namespace, "-f", "-", stdin=manifest(
        "    minReplicas: 0\n    maxReplicas: 2\n    scaleMetric: concurrency\n"
        "    autoscaling: {scaleToZeroGraceSeconds: 5}\n"))

    def at_zero():
        isvc = api.get(f"/apis/ferry.dev/v1alpha1/namespaces/{namespace}/inferenceservices/iris")
        zero = isvc.get("status", {}).get("autoscaling", {}).get("scaledToZero")
        pods = api.get(f"/api/v1/namespaces/{namespace}/pods").get("items", [])
        return zero and not pods
    wait("scaled to zero", 120, at_zero)
    connection = http.client.HTTPConnection(ip, 8080, timeout=130)
    sent_wall, sent = time.time(), time.monotonic()
    connection.request("POST", "/v2/models/iris/infer", BODY,
                       {"content-type": "application/json", "ferry-namespace": namespace})
    response = connection.getresponse()  # returns at the first byte of the answer
    first_byte = time.monotonic() - sent
    answered_wall = sent_wall + first_byte
    status = response.status
    response.read()
    time.sleep(1)
    logs = glob.glob(os.path.join(RUN, "agent-logs", f"{namespace}_*_server.log"))
    # The replica the request started (the one made at apply went when it scaled to zero).
    listening = ready = None
    for path in logs:
        for line in open(path, encoding="utf-8", errors="replace"):
            if "ferry server listening" in line and log_time(line) >= sent_wall - 0.5:
                listening = log_time(line)
            if "model ready" in line and log_time(line) >= sent_wall - 0.5:
                ready = log_time(line)
    kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "status": status,
        "first_byte_s": first_byte,
        "request_to_process_listening_s": None if listening is None else listening - sent_wall,
        "model_ready_after_listening_ms": None if None in (listening, ready) else (ready - listening) * 1000,
        "answer_after_model_ready_ms": None if ready is None else (answered_wall - ready) * 1000,
    }


def show(value, unit=""):
    if value is None:
        return "—"
    return f"{value:.2f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=float, default=45.0, help="seconds of one client first")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds to wait for full capacity")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--only", default="ferry,hpa,cold", help="which parts, comma-separated")
    args = parser.parse_args()
    api = Api()
    ip = router_ip(api)
    suffix = str(os.getpid())
    parts = args.only.split(",")
    ferry = hpa = start = None
    if "ferry" in parts:
        ferry = spike(api, ip, "ferry", f"bench-autoscale-ferry-{suffix}", args.baseline, args.limit)
        print(json.dumps(ferry), flush=True)
    if "hpa" in parts:
        hpa = spike(api, ip, "hpa", f"bench-autoscale-hpa-{suffix}", args.baseline, args.limit)
        print(json.dumps(hpa), flush=True)
    if "cold" in parts:
        start = cold(api, ip, f"bench-autoscale-cold-{suffix}")
        print(json.dumps(start), flush=True)
    os.makedirs(args.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(args.out, f"autoscale-{stamp}.json"), "w") as f:
        json.dump({"ferry": ferry, "hpa": hpa, "cold": start}, f, indent=2)

    print(f"\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: x10 concurrency spike"
          f" (1 → {MAX} clients, target 1 in flight per replica, max {MAX}) through the router pod.\n")
    print("| engine | more asked (s) | 2nd replica serves (s) | full capacity (s) | requests | failed | 503 | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in (ferry, hpa) if r):
        print(f"| {r['engine']} | {show(r['asked_s'])} | {show(r['second_serving_s'])} | "
              f"{show(r['full_capacity_s'])} | {r['requests']} | {r['failed']} | {r['status_503']} | "
              f"{show(r['p50_ms'])} | {show(r['p99_ms'])} |")
    if ferry and hpa and ferry["full_capacity_s"] and hpa["full_capacity_s"]:
        print(f"\nFull capacity: Ferry's engine {hpa['full_capacity_s'] / ferry['full_capacity_s']:.1f}×"
              " faster than the HPA on the same metric.")
    if not start:
        return
    print(f"\nCold start from zero: HTTP {start['status']}, first byte after {show(start['first_byte_s'], ' s')};"
          f" the replica's process listened {show(start['request_to_process_listening_s'], ' s')} after the request,"
          f" its model was ready {show(start['model_ready_after_listening_ms'], ' ms')} later, and the answer's first byte came"
          f" {show(start['answer_after_model_ready_ms'], ' ms')} after the model was ready.")


if __name__ == "__main__":
    main()
