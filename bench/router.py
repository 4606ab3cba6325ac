#!/usr/bin/env python3
"""Router benchmark (called by bench/router.sh): what the router adds to a request.

One `ferry up` runs one iris replica. wrk drives, in the same run and with the same script:
  direct  - the replica itself (the floor),
  ferry   - Ferry's router (inside the `ferry up` daemon) in front of that replica,
  nginx   - nginx (Debian) as a keep-alive reverse proxy in front of the same replica.
For each proxy: added p50 latency against direct at the same concurrency, and proxy CPU per
request (utime+stime of the proxy's processes from /proc, divided by requests served).
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
from run import RESULTS, ROOT, REL, oip_body, wrk  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = [1, 8, 64]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / CLK_TCK


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def api(state, path):
    info = json.loads((state / "api.json").read_text())
    token = (state / "token").read_text().strip()
    req = urllib.request.Request(f"http://{info['api']}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=8)
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
    daemon = subprocess.Popen(
        [str(REL / "ferry"), "up", "--state-dir", str(state), "--router-addr", router_addr, "-f", str(manifest)],
        stdout=open(RESULTS / "router-daemon.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "FERRY_LOG": "warn"},
    )
    nginx = None
    try:
        deadline = time.time() + 60
        replica = None
        while time.time() < deadline and replica is None:
            time.sleep(0.2)
            try:
                items = api(state, "/v1/namespaces/default/inferenceservices/iris/replicas")["items"]
                if items and items[0]["ready"]:
                    replica = items[0]["http"]
            except Exception:
                pass
        if replica is None:
            raise RuntimeError("ferry up did not get a ready replica")
        conf = tmp / "nginx.conf"
        conf.write_text(f"""
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream replica {{ server {replica}; keepalive 128; }}
  server {{
    listen {nginx_addr};
    location / {{ proxy_pass http://replica; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                                 stdout=open(RESULTS / "router-nginx.log", "w"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
        time.sleep(1.0)
        body = oip_body()
        targets = {
            "direct": (f"http://{replica}/v2/models/iris/infer", lambda: []),
            "ferry": (f"http://{router_addr}/v2/models/iris/infer", lambda: [daemon.pid]),
            "nginx": (f"http://{nginx_addr}/v2/models/iris/infer", lambda: [nginx.pid] + children(nginx.pid)),
        }
        rows = []
        for c in CONCURRENCY:
            for name, (url, pids) in targets.items():
                wrk(url, body, c, 1)  # warm connections and caches
                before = cpu_seconds(pids())
                r = wrk(url, body, c, a.duration)
                cpu = cpu_seconds(pids()) - before
                requests = r["rps"] * a.duration
                r.update(server=name, c=c, cpu_us_per_request=(cpu * 1e6 / requests) if pids() else None)
                rows.append(r)
                print(json.dumps(r), flush=True)
        with open(RESULTS / "router.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        write_report(rows, a.duration)
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


def write_report(rows, duration):
    def find(server, c):
        return next(r for r in rows if r["server"] == server and r["c"] == c)

    lines = [
        f"wrk -t1, {duration} s per point, OIP v2 JSON iris request, one replica; same run, same machine.",
        "",
        "| concurrency | direct req/s | Ferry router req/s | nginx req/s | Ferry / nginx throughput | p50 added: Ferry | p50 added: nginx | CPU per request: Ferry router | CPU per request: nginx | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        d, f, n = find("direct", c), find("ferry", c), find("nginx", c)
        errors = d["errors"] + f["errors"] + n["errors"]
        lines.append(
            f"| {c} | {d['rps']:.0f} | {f['rps']:.0f} | {n['rps']:.0f} | {f['rps'] / n['rps']:.2f}x "
            f"| {(f['p50'] - d['p50']) * 1000:.0f} µs | {(n['p50'] - d['p50']) * 1000:.0f} µs "
            f"| {f['cpu_us_per_request']:.1f} µs | {n['cpu_us_per_request']:.1f} µs | {errors} |"
        )
    text = "\n".join(lines)
    report = ROOT / "bench" / "ROUTER.md"
    doc = report.read_text()
    start, end = "<!-- RESULTS -->", "<!-- /RESULTS -->"
    doc = doc[: doc.index(start) + len(start)] + "\n" + text + "\n" + doc[doc.index(end):]
    report.write_text(doc)
    print(text)


if __name__ == "__main__":
    main()
