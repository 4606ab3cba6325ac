#!/usr/bin/env python3
"""Tenancy benchmark (called by bench/tenancy.sh), three parts in one run:

  tls     - Ferry's router terminating TLS (`ferry up --tls-cert/--tls-key`) against nginx
            terminating TLS in front of the same replica (to its TCP port and to its Unix socket),
            wrk over https with keep-alive at c = 1/8/64: req/s, p50, CPU per request of the proxy;
  auth    - the same router, plain HTTP, to a namespace without keys and to one whose requests
            carry an API key with a rate limit and whose service has spec.rateLimit (limits high
            enough never to refuse): the CPU and p50 that authentication and two buckets add;
            and the same phase timed in process (`ferry-bench-admit`: key + three buckets against
            an open namespace, interleaved rounds), which resolves what wrk's noise cannot;
  noisy   - namespace `noisy` floods its slow model (iris-slow, 24 closed-loop clients that
            honour Retry-After) while `quiet` sends 20 req/s to iris: quiet's p99 alone and
            beside the noise, with fair sharing (the default) and without (--fair-slots 0).

Writes bench/TENANCY.md (between the RESULTS markers) and bench/results/tenancy.jsonl.
"""
import argparse
import http.client
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, ROOT, REL, oip_body, wrk  # noqa: E402
from router import api, children, cpu_seconds, start_nginx  # noqa: E402

CONCURRENCY = [1, 8, 64]
BIG = 1_000_000


def manifest(name, model, rate=None):
    text = (
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\n"
        f"metadata: {{name: {name}}}\n"
        f"spec:\n  predictor:\n    model: {{format: onnx, uri: {ROOT / 'models' / model}}}\n    minReplicas: 1\n"
    )
    if rate:
        text += f"  rateLimit: {{requestsPerSecond: {rate}, burst: {rate}}}\n"
    return text


def ferry(state, *args):
    return subprocess.run([str(REL / "ferry"), *args], capture_output=True, text=True, check=True,
                          env={**os.environ, "FERRY_STATE_DIR": str(state)}).stdout


def up(tmp, name, router_addr, *extra):
    state = tmp / name
    daemon = subprocess.Popen(
        [str(REL / "ferry"), "up", "--state-dir", str(state), "--router-addr", router_addr, *extra],
        stdout=open(RESULTS / f"tenancy-{name}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "FERRY_LOG": "warn"},
    )
    deadline = time.time() + 30
    while not (state / "api.json").exists():
        if time.time() > deadline:
            raise RuntimeError(f"ferry up ({name}) did not start")
        time.sleep(0.1)
    return daemon, state


def apply(state, namespace, text, tmp):
    path = tmp / f"{namespace}-{abs(hash(text))}.yaml"
    path.write_text(text)
    ferry(state, "apply", "-n", namespace, "-f", str(path), "--wait", "--timeout", "120")


def replica_of(state, namespace, name):
    items = api(state, f"/v1/namespaces/{namespace}/inferenceservices/{name}/replicas")["items"]
    ready = [i for i in items if i["ready"]]
    return ready[0]["http"], ready[0]["httpUnix"]


def stop(*procs):
    for proc in procs:
        if proc is None:
            continue
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except Exception:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def measure(url, pids, c, duration, headers=()):
    wrk(url, oip_body(), c, 1, headers)
    before = cpu_seconds(pids())
    r = wrk(url, oip_body(), c, duration, headers)
    after = cpu_seconds(pids())
    requests = max(r["rps"] * duration, 1)
    user, system = ((after[i] - before[i]) * 1e6 / requests for i in (0, 1))
    r.update(cpu_us_per_request=user + system, user_us_per_request=user, sys_us_per_request=system, c=c)
    return r


def cert(tmp):
    key, crt = tmp / "tls.key", tmp / "tls.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


def tls_and_auth(tmp, duration):
    rows = []
    crt, key = cert(tmp)
    tls_addr, plain_addr = "127.0.0.1:18280", "127.0.0.1:18281"
    daemon, state = up(tmp, "tls", tls_addr, "--tls-cert", str(crt), "--tls-key", str(key),
                       "--router-plain-addr", plain_addr)
    nginx = None
    try:
        apply(state, "default", manifest("iris", "iris-v1.onnx"), tmp)
        apply(state, "keyed", manifest("iris", "iris-v1.onnx", rate=BIG), tmp)
        key_text = ferry(state, "apikey", "create", "-n", "keyed", "--name", "bench", "--rate", f"{BIG}/s").strip()
        replica, socket = replica_of(state, "default", "iris")
        nginx = start_nginx(tmp, replica, socket, "127.0.0.1:18282", "127.0.0.1:18283",
                            RESULTS / "tenancy-nginx.log", tls=(crt, key))
        daemon_pids = lambda: [daemon.pid]  # noqa: E731
        nginx_pids = lambda: [nginx.pid] + children(nginx.pid)  # noqa: E731
        path = "/v2/models/iris/infer"
        for c in CONCURRENCY:
            for name, url, pids in [("ferry tls", f"https://{tls_addr}{path}", daemon_pids),
                                    ("nginx tls → TCP", f"https://127.0.0.1:18282{path}", nginx_pids),
                                    ("nginx tls → unix", f"https://127.0.0.1:18283{path}", nginx_pids)]:
                r = measure(url, pids, c, duration)
                r.update(part="tls", server=name)
                rows.append(r)
                print(json.dumps(r), flush=True)
        for c in CONCURRENCY:
            for name, headers in [("open", ("ferry-namespace: default",)),
                                  ("key + limits", ("ferry-namespace: keyed", f"x-api-key: {key_text}"))]:
                r = measure(f"http://{plain_addr}{path}", daemon_pids, c, duration, headers)
                r.update(part="auth", server=name)
                rows.append(r)
                print(json.dumps(r), flush=True)
    finally:
        stop(nginx, daemon)
    return rows


def quiet_client(router, seconds, out):
    """20 req/s to quiet's iris for `seconds`, keep-alive; latencies (s) and non-200s to `out`."""
    conn = http.client.HTTPConnection(router)
    body = json.dumps(oip_body())
    latencies, refused = [], 0
    next_at = time.perf_counter()
    end = next_at + seconds
    while next_at < end:
        time.sleep(max(0.0, next_at - time.perf_counter()))
        started = time.perf_counter()
        conn.request("POST", "/v2/models/iris/infer", body,
                     {"Content-Type": "application/json", "ferry-namespace": "quiet"})
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        refused += response.status != 200
        next_at += 0.05
    out.put((latencies, refused))


def noisy_clients(router, clients, stop_at, out):
    """Closed-loop clients to noisy's slow model; each honours Retry-After on a 503."""
    body = json.dumps(oip_body())
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection(router)
        while time.time() < stop_at:
            conn.request("POST", "/v2/models/slow/infer", body,
                         {"Content-Type": "application/json", "ferry-namespace": "noisy"})
            response = conn.getresponse()
            response.read()
            with lock:
                counts["ok" if response.status == 200 else "refused"] += 1
            if response.status == 503:
                time.sleep(float(response.getheader("Retry-After", "1")))
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(counts)


def p99(latencies):
    latencies = sorted(latencies)
    return latencies[max(0, -(-len(latencies) * 99 // 100) - 1)] * 1000


def noisy(tmp, duration):
    rows = []
    for label, extra in [("fair share (default)", ()), ("first come, first served", ("--fair-slots", "0"))]:
        router = "127.0.0.1:18290"
        daemon, state = up(tmp, f"noisy-{len(rows)}", router, *extra)
        try:
            apply(state, "noisy", manifest("slow", "iris-slow.onnx"), tmp)
            apply(state, "quiet", manifest("iris", "iris-v1.onnx"), tmp)
            out = multiprocessing.Queue()
            multiprocessing.Process(target=quiet_client, args=(router, duration, out)).start()
            alone, _ = out.get()
            noise = multiprocessing.Queue()
            seconds = duration + 2
            multiprocessing.Process(target=noisy_clients, args=(router, 24, time.time() + seconds, noise)).start()
            time.sleep(1)
            multiprocessing.Process(target=quiet_client, args=(router, duration, out)).start()
            beside, refused = out.get()
            counts = noise.get()
            r = {"part": "noisy", "server": label, "quiet_p99_alone_ms": p99(alone),
                 "quiet_p99_beside_ms": p99(beside), "quiet_refused": refused,
                 "noisy_ok_per_s": counts["ok"] / seconds, "noisy_refused": counts["refused"]}
            r["ratio"] = r["quiet_p99_beside_ms"] / r["quiet_p99_alone_ms"]
            rows.append(r)
            print(json.dumps(r), flush=True)
        finally:
            stop(daemon)
    return rows


def admit_cost():
    out = subprocess.run([str(REL / "ferry-bench-admit")], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=") for kv in out.split())
    row = {"part": "admit", "server": "in process", **{k: float(v) for k, v in fields.items()}}
    print(json.dumps(row), flush=True)
    return [row]


def write_report(rows, duration):
    def find(part, server, c=None):
        return next(r for r in rows if r["part"] == part and r["server"] == server and r.get("c") == c)

    lines = [f"wrk -t1, {duration} s per point, OIP v2 JSON iris request, one replica; same run, same machine.", "",
             "TLS termination (TLS 1.3, ECDSA P-256, keep-alive):", "",
             "| c | Ferry tls req/s | nginx tls → TCP req/s | nginx tls → unix req/s | Ferry ÷ nginx → TCP | "
             "Ferry ÷ nginx → unix | p50 Ferry | p50 nginx → TCP | CPU/request Ferry | CPU/request nginx → TCP | "
             "CPU/request nginx → unix | errors |", "|---" * 12 + "|"]
    for c in CONCURRENCY:
        f, n, u = (find("tls", s, c) for s in ("ferry tls", "nginx tls → TCP", "nginx tls → unix"))
        lines.append(f"| {c} | {f['rps']:.0f} | {n['rps']:.0f} | {u['rps']:.0f} | {f['rps'] / n['rps']:.2f}× | "
                     f"{f['rps'] / u['rps']:.2f}× | {f['p50'] * 1000:.0f} µs | {n['p50'] * 1000:.0f} µs | "
                     f"{f['cpu_us_per_request']:.1f} µs | {n['cpu_us_per_request']:.1f} µs | "
                     f"{u['cpu_us_per_request']:.1f} µs | {f['errors'] + n['errors'] + u['errors']} |")
    lines += ["", "Authentication + rate limiting (plain HTTP; the whole `ferry up` daemon's CPU):", "",
              "| c | open req/s | key + limits req/s | p50 open | p50 key + limits | CPU/request open | "
              "CPU/request key + limits | added CPU/request | errors |", "|---" * 9 + "|"]
    for c in CONCURRENCY:
        o, k = find("auth", "open", c), find("auth", "key + limits", c)
        lines.append(f"| {c} | {o['rps']:.0f} | {k['rps']:.0f} | {o['p50'] * 1000:.0f} µs | {k['p50'] * 1000:.0f} µs | "
                     f"{o['cpu_us_per_request']:.1f} µs | {k['cpu_us_per_request']:.1f} µs | "
                     f"{k['cpu_us_per_request'] - o['cpu_us_per_request']:+.1f} µs | {o['errors'] + k['errors']} |")
    admit = next((r for r in rows if r["part"] == "admit"), None)
    if admit:
        lines += ["", "Phase 2 timed in process (`ferry-bench-admit`, median of 9 interleaved rounds of 200,000 calls): "
                  f"open namespace {admit['open_ns']:.0f} ns, API key + key, namespace and service buckets "
                  f"{admit['keyed_ns']:.0f} ns: **{admit['added_ns'] / 1000:.2f} µs added per request** (target ≤ 2 µs)."]
    lines += ["", f"Noisy neighbour ({duration} s of quiet at 20 req/s; noisy: 24 closed-loop clients on iris-slow):", "",
              "| router | quiet p99 alone | quiet p99 beside noisy | ratio | quiet refused | noisy served/s | noisy 503s |",
              "|---" * 7 + "|"]
    for r in (x for x in rows if x["part"] == "noisy"):
        lines.append(f"| {r['server']} | {r['quiet_p99_alone_ms']:.2f} ms | {r['quiet_p99_beside_ms']:.2f} ms | "
                     f"{r['ratio']:.2f}× | {r['quiet_refused']} | {r['noisy_ok_per_s']:.0f} | {r['noisy_refused']} |")
    text = "\n".join(lines)
    report = ROOT / "bench" / "TENANCY.md"
    doc = report.read_text()
    start, end = "<!-- RESULTS -->", "<!-- /RESULTS -->"
    doc = doc[: doc.index(start) + len(start)] + "\n" + text + "\n" + doc[doc.index(end):]
    report.write_text(doc)
    print(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--parts", default="tls,noisy")
    a = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ferry-tenancy-bench-"))
    rows = []
    if "tls" in a.parts:
        rows += admit_cost()
        rows += tls_and_auth(tmp, a.duration)
    if "noisy" in a.parts:
        rows += noisy(tmp, a.duration)
    with open(RESULTS / "tenancy.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if "tls" in a.parts and "noisy" in a.parts:
        write_report(rows, a.duration)


if __name__ == "__main__":
    main()
