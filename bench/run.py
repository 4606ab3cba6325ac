#!/usr/bin/env python3
"""Benchmark orchestration (called by bench/run.sh after the builds): starts every server on
loopback, drives each with the same load generator at the same concurrency, and writes the table
into bench/README.md between the RESULTS markers, plus raw lines in bench/results/.

REST: wrk -t1 (bench/post.lua), OIP v2 JSON. gRPC: ferry-bench-load (closed loop, raw contents).
Servers: Ferry, the bare axum+tract floor (REST only), Seldon MLServer, the KServe Python server;
MiniLM: Ferry with its ONNX Runtime backend (dynamic batching, and without), Ferry with tract,
against a KServe server running onnxruntime on the same file.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REL = ROOT / "target" / "release"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
SENTENCE = "Ferry ships machine learning models to production with a small and fast binary."
CONCURRENCY = [1, 8, 64]
TEXT_CONCURRENCY = [1, 8, 32]


def process_stat(pid):
    """(command name, user CPU seconds, system CPU seconds) of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return text[text.index("(") + 1:text.rindex(")")], int(fields[11]) / tick, int(fields[12]) / tick


def wait_ready(url, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def check_port_free(port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


class Server:
    def __init__(self, name, cmd, ready_url, cwd=None, env=None):
        self.name = name
        log = open(RESULTS / f"{name}.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(ready_url, self.proc)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except Exception:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def to_ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url, body, concurrency, duration, headers=()):
    body_file = RESULTS / "body.json"
    body_file.write_text(json.dumps(body))
    extra = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency", *extra, "-s", str(ROOT / "bench" / "post.lua"), url],
        env={**os.environ, "BODY_FILE": str(body_file)}, capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: to_ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"),
            "errors": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def grpc_load(addr, model, concurrency, duration):
    out = subprocess.run(
        [str(REL / "ferry-bench-load"), addr, model, str(concurrency), str(duration), ",".join(map(str, IRIS_ROW))],
        capture_output=True, text=True, check=True,
    ).stdout
    fields = dict(kv.split("=") for kv in out.split())
    return {"rps": float(fields["rps"]), "p50": float(fields["p50_ms"]), "p99": float(fields["p99_ms"]), "errors": int(fields["errors"])}


def oip_body(name="input", outputs=None):
    body = {"inputs": [{"name": name, "datatype": "FP32", "shape": [1, 4], "data": IRIS_ROW}]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml-venv")
    ap.add_argument("--ks-venv")
    ap.add_argument("--duration", type=int, default=8)
    a = ap.parse_args()
    skip_peers = os.environ.get("SKIP_PEERS") == "1"
    iris_onnx = RESULTS / "models" / "iris-v1.onnx"
    iris_joblib = RESULTS / "joblib" / "iris-v1.joblib"
    rows = []  # (workload, protocol, server, concurrency, result)
    servers = []
    try:
        servers.append(Server("ferry", [str(REL / "ferry"), "server", "--model", f"iris={iris_onnx}",
                                        "--http-addr", "127.0.0.1:18000", "--grpc-addr", "127.0.0.1:18001"],
                              "http://127.0.0.1:18000/v2/models/iris/ready"))
        targets_rest = [("ferry", "http://127.0.0.1:18000/v2/models/iris/infer", oip_body())]
        targets_grpc = [("ferry", "127.0.0.1:18001", "iris")]
        bare = subprocess.Popen([str(REL / "ferry-bench-bare"), str(iris_onnx), "127.0.0.1:18100"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(1.0)
        targets_rest.append(("bare axum+tract", "http://127.0.0.1:18100/v2/models/iris/infer", oip_body()))
        if not skip_peers:
            ml_dir = RESULTS / "mlserver"
            (ml_dir / "iris").mkdir(parents=True, exist_ok=True)
            (ml_dir / "settings.json").write_text(json.dumps({"http_port": 18200, "grpc_port": 18201, "metrics_port": 18202}))
            (ml_dir / "iris" / "model-settings.json").write_text(json.dumps({
                "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(iris_joblib), "version": "v1"}}))
            servers.append(Server("mlserver", [f"{a.ml_venv}/bin/mlserver", "start", str(ml_dir)],
                                  "http://127.0.0.1:18200/v2/models/iris/ready"))
            servers.append(Server("kserve", [f"{a.ks_venv}/bin/python", str(ROOT / "bench/peers/kserve_sklearn.py"),
                                             "--path", str(iris_joblib), "--http-port", "18300", "--grpc-port", "18301"],
                                  "http://127.0.0.1:18300/v2/models/iris/ready"))
            targets_rest += [
                ("MLServer", "http://127.0.0.1:18200/v2/models/iris/infer", oip_body(outputs=["predict", "predict_proba"])),
                ("KServe", "http://127.0.0.1:18300/v2/models/iris/infer", oip_body()),
            ]
            targets_grpc += [("MLServer", "127.0.0.1:18201", "iris"), ("KServe", "127.0.0.1:18301", "iris")]
        for c in CONCURRENCY:
            for name, url, body in targets_rest:
                r = wrk(url, body, c, a.duration)
                rows.append(("iris", "REST", name, c, r))
                print(f"iris REST {name:16} c={c:<3} {r}", flush=True)
            for name, addr, model in targets_grpc:
                r = grpc_load(addr, model, c, a.duration)
                rows.append(("iris", "gRPC", name, c, r))
                print(f"iris gRPC {name:16} c={c:<3} {r}", flush=True)
        os.killpg(bare.pid, signal.SIGTERM)
        for s in servers:
            s.stop()
        servers = []

        minilm = ROOT / "models" / "minilm"
        if (minilm / "model.onnx").exists():
            text_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [SENTENCE]}]}
            files = f"{minilm / 'model.onnx'},tokenizer={minilm / 'tokenizer.json'}"
            servers.append(Server("ferry-minilm", [
                str(REL / "ferry"), "server",
                "--model", f"minilm-ort={files},backend=onnxruntime,max_batch_size=32,max_queue_delay_ms=5",
                "--model", f"minilm-ort-unbatched={files},backend=onnxruntime",
                "--model", f"minilm-tract={files},max_batch_size=32,max_queue_delay_ms=5",
                "--http-addr", "127.0.0.1:18400", "--grpc-addr", "127.0.0.1:18401"],
                "http://127.0.0.1:18400/v2/health/ready"))
            text_targets = [("ferry (batching)", "http://127.0.0.1:18400/v2/models/minilm-ort/infer"),
                            ("ferry (no batching)", "http://127.0.0.1:18400/v2/models/minilm-ort-unbatched/infer"),
                            ("ferry tract (batching)", "http://127.0.0.1:18400/v2/models/minilm-tract/infer")]
            if not skip_peers:
                servers.append(Server("kserve-onnxruntime", [
                    f"{a.ks_venv}/bin/python", str(ROOT / "bench/peers/kserve_minilm.py"),
                    "--model", str(minilm / "model.onnx"), "--tokenizer", str(minilm / "tokenizer.json"),
                    "--http-port", "18500", "--grpc-port", "18501"],
                    "http://127.0.0.1:18500/v2/models/minilm/ready"))
                text_targets.append(("Python onnxruntime", "http://127.0.0.1:18500/v2/models/minilm/infer"))
            for c in TEXT_CONCURRENCY:
                for name, url in text_targets:
                    r = wrk(url, text_body, c, a.duration)
                    rows.append(("MiniLM", "REST", name, c, r))
                    print(f"minilm REST {name:20} c={c:<3} {r}", flush=True)
    finally:
        for s in servers:
            s.stop()
    (RESULTS / "results.json").write_text(json.dumps(rows, indent=1))
    write_readme(rows, a.duration)


def write_readme(rows, duration):
    def find(workload, protocol, server, c):
        for w, p, s, cc, r in rows:
            if (w, p, s, cc) == (workload, protocol, server, c):
                return r
        return None

    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine kind "
             f"({os.cpu_count()} cores), {duration} s per point, every server in the same run; "
             "load generator on the same machine. Ratios are Ferry's req/s over the peer's.", ""]
    lines.append("| workload | protocol | server | c | req/s | p50 ms | p99 ms | errors | Ferry ÷ this |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for w, p, s, c, r in rows:
        ferry_name = "ferry" if w == "iris" else "ferry (batching)"
        ferry = find(w, p, ferry_name, c)
        ratio = f"{ferry['rps'] / r['rps']:.2f}×" if ferry and r["rps"] else "-"
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        lines.append(f"| {w} | {p} | {s} | {c} | {r['rps']:.0f} | {fmt(r['p50'])} | {fmt(r['p99'])} | {r['errors']} | {ratio} |")
    table = "\n".join(lines)
    readme = ROOT / "bench" / "README.md"
    text = readme.read_text()
    start, end = "<!-- RESULTS:START -->", "<!-- RESULTS:END -->"
    text = text[: text.index(start) + len(start)] + "\n" + table + "\n" + text[text.index(end):]
    readme.write_text(text)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
