#!/usr/bin/env python3
"""Router benchmark (called by bench/router.sh): what the router adds to a request.

One `ferry up` runs one iris replica. wrk drives, in the same run and with the same script:
  direct      - the replica itself over TCP (the floor),
  ferry       - Ferry's router (inside the `ferry up` daemon) in front of that replica; it calls
                the replica on its Unix socket,
  nginx       - nginx (Debian) as a keep-alive reverse proxy to the replica's TCP port,
  nginx-unix  - the same nginx to the replica's Unix socket (like for like with Ferry).
For each proxy: added p50 latency against direct at the same concurrency, and proxy CPU per
request (utime and stime of the proxy's processes from /proc, divided by requests served).
Writes bench/ROUTER.md (between the RESULTS markers) and raw lines to bench/results/router.jsonl.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, ROOT, REL, oip_body, process_stat, wrk  # noqa: E402

CONCURRENCY = [1, 8, 64]


def cpu_seconds(pids):
    """(user, system) CPU seconds of `pids`, all their threads."""
    user = system = 0.0
    for pid in pids:
        try:
            _, u, s = process_stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        user += u
        system += s
    return user, system


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def start_nginx(tmp, replica, socket, tcp_addr, unix_addr, log, tls=None):
    """nginx (worker per core, upstream keep-alive) proxying `tcp_addr` to the replica's TCP
    port and `unix_addr` to its Unix socket; terminating TLS with `tls` = (cert, key) when given."""
    ssl = f" ssl; ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; ssl_protocols TLSv1.3" if tls else ""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes auto;
{"user root;" if os.geteuid() == 0 else ""}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream replica {{ server {replica}; keepalive 128; }}
  upstream replica_unix {{ server unix:{socket}; keepalive 128; }}
  server {{
    listen {tcp_addr}{ssl};
    location / {{ proxy_pass http://replica; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen {unix_addr}{ssl};
    location / {{ proxy_pass http://replica_unix; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(1.0)
    return proc


def api(state, path):
    info = json.loads((state / "api.json").read_text())
    token = (state / "token").read_text().strip()
    req = urllib.request.Request(f"http://{info['api']}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def post(state, path, body):
    info = json.loads((state / "api.json").read_text())
    token = (state / "token").read_text().strip()
    req = urllib.request.Request(f"http://{info['api']}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def start_canary(state, percent):
    """Roll iris-v2 out as a canary held at `percent` of the traffic (per-revision accounting on,
    two revisions behind Ferry's router); returns once the router splits."""
    manifest = (
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: iris}\n"
        f"spec:\n  predictor:\n    model: {{format: onnx, uri: {ROOT / 'models' / 'iris-v2.onnx'}}}\n    minReplicas: 1\n"
        f"  rollout:\n    strategy: canary\n    steps: [{{weight: {percent}, pause: untilPromoted}}]\n"
    )
    post(state, "/v1/apply", {"manifests": manifest, "namespace": "default"})
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.2)
        rollout = api(state, "/v1/namespaces/default/inferenceservices/iris").get("status", {}).get("rollout")
        if rollout and rollout.get("weight") == percent:
            return
    raise RuntimeError(f"the canary did not reach {percent}%")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=8)
    p.add_argument("--canary", type=int, default=0,
                   help="hold an iris-v2 canary at this percent behind Ferry's router (0: none)")
    a = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ferry-router-bench-"))
    state = tmp / "state"
    manifest = tmp / "iris.yaml"
    manifest.write_text(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: iris}\n"
        f"spec:\n  predictor:\n    model: {{format: onnx, uri: {ROOT / 'models' / 'iris-v1.onnx'}}}\n    minReplicas: 1\n"
    )
    router_addr = "127.0.0.1:18180"
    nginx_addr = "127.0.0.1:18181"
    nginx_unix_addr = "127.0.0.1:18182"
    daemon = subprocess.Popen(
        [str(REL / "ferry"), "up", "--state-dir", str(state), "--router-addr", router_addr, "-f", str(manifest)],
        stdout=open(RESULTS / "router-daemon.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "FERRY_LOG": "warn"},
    )
    nginx = None
    try:
        deadline = time.time() + 60
        replica = socket = None
        while time.time() < deadline and replica is None:
            time.sleep(0.2)
            try:
                items = api(state, "/v1/namespaces/default/inferenceservices/iris/replicas")["items"]
                if items and items[0]["ready"]:
                    replica, socket = items[0]["http"], items[0]["httpUnix"]
            except Exception:
                pass
        if replica is None or socket is None:
            raise RuntimeError("ferry up did not get a ready replica with a Unix socket")
        if a.canary:
            start_canary(state, a.canary)
        nginx = start_nginx(tmp, replica, socket, nginx_addr, nginx_unix_addr, RESULTS / "router-nginx.log")
        body = oip_body()
        targets = {
            "direct": (f"http://{replica}/v2/models/iris/infer", lambda: []),
            "ferry": (f"http://{router_addr}/v2/models/iris/infer", lambda: [daemon.pid]),
            "nginx": (f"http://{nginx_addr}/v2/models/iris/infer", lambda: [nginx.pid] + children(nginx.pid)),
            "nginx-unix": (f"http://{nginx_unix_addr}/v2/models/iris/infer",
                           lambda: [nginx.pid] + children(nginx.pid)),
        }
        rows = []
        for c in CONCURRENCY:
            for name, (url, pids) in targets.items():
                wrk(url, body, c, 1)  # warm connections and caches
                before = cpu_seconds(pids())
                r = wrk(url, body, c, a.duration)
                after = cpu_seconds(pids())
                requests = r["rps"] * a.duration
                user, system = ((after[i] - before[i]) * 1e6 / requests for i in (0, 1))
                if pids():
                    r.update(cpu_us_per_request=user + system, user_us_per_request=user, sys_us_per_request=system)
                r.update(server=name, c=c)
                rows.append(r)
                print(json.dumps(r), flush=True)
        with open(RESULTS / "router.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        write_report(rows, a.duration, a.canary)
    finally:
        for proc in (nginx, daemon):
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                except Exception:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def write_report(rows, duration, canary=0):
    def find(server, c):
        return next(r for r in rows if r["server"] == server and r["c"] == c)

    proxies = [("ferry", "Ferry router"), ("nginx", "nginx → TCP"), ("nginx-unix", "nginx → unix")]
    lines = [
        f"wrk -t1, {duration} s per point, OIP v2 JSON iris request, one replica; same run, same machine."
        + (f" Ferry's router splits {canary} % to an iris-v2 canary replica (per-revision accounting on);"
           " the direct and nginx points call the stable replica only." if canary else ""),
        "",
        "| c | direct req/s | " + " | ".join(f"{label} req/s" for _, label in proxies)
        + " | Ferry ÷ nginx → TCP | Ferry ÷ nginx → unix | "
        + " | ".join(f"p50 added: {label}" for _, label in proxies) + " | "
        + " | ".join(f"CPU/request (user+sys): {label}" for _, label in proxies) + " | errors |",
        "|---" * (5 + 3 * len(proxies)) + "|",
    ]
    for c in CONCURRENCY:
        d = find("direct", c)
        rows_c = [find(name, c) for name, _ in proxies]
        f, n, u = rows_c
        errors = d["errors"] + sum(r["errors"] for r in rows_c)
        lines.append(
            f"| {c} | {d['rps']:.0f} | " + " | ".join(f"{r['rps']:.0f}" for r in rows_c)
            + f" | {f['rps'] / n['rps']:.2f}× | {f['rps'] / u['rps']:.2f}× | "
            + " | ".join(f"{(r['p50'] - d['p50']) * 1000:.0f} µs" for r in rows_c) + " | "
            + " | ".join(f"{r['cpu_us_per_request']:.1f} µs ({r['user_us_per_request']:.1f}+{r['sys_us_per_request']:.1f})"
                         for r in rows_c)
            + f" | {errors} |"
        )
    text = "\n".join(lines)
    report = ROOT / "bench" / "ROUTER.md"
    doc = report.read_text()
    start, end = ("<!-- RESULTS-CANARY -->", "<!-- /RESULTS-CANARY -->") if canary else ("<!-- RESULTS -->", "<!-- /RESULTS -->")
    doc = doc[: doc.index(start) + len(start)] + "\n" + text + "\n" + doc[doc.index(end):]
    report.write_text(doc)
    print(text)


if __name__ == "__main__":
    main()
