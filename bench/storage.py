#!/usr/bin/env python3
"""Models from S3, cold and warm (bench/storage.sh runs it).

MinIO on 127.0.0.1 holds models/minilm/ (model.onnx, 90 MB, and tokenizer.json). Each round:
  ferry cold   `ferry server --model minilm=s3://models/minilm/` on an empty cache: from the
               process start until the model is ready (download + load), and the download alone
               (the server's own "model fetched" log line: ms, bytes -> MB/s);
  ferry warm   the same on the cache the cold run filled: nothing downloaded (hit) + load;
  kserve       KServe's storage initializer (kserve_storage.Storage.download, the code its
               init container runs) into an empty directory, then `ferry server` loading it;
  aws s3 cp    `aws s3 cp --recursive` into an empty directory, then the same load;
  curl         the floor: `curl --aws-sigv4` GETs of the two objects into files (loopback + disk),
               and the same followed by an fsync of both files (Ferry syncs a download before it
               renames it into the cache; the peers do not).
The peers' download times include their interpreter's start (as an init container's would).
Medians of --rounds rounds (default 3), with the download's MB/s.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY = os.path.join(ROOT, "target", "release", "ferry")
MINILM = os.path.join(ROOT, "models", "minilm")
MINIO = os.path.expanduser("~/.cache/ferry-storage-test/bin/minio")
KEY, SECRET = "ferrybench", "ferrybench-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.02)
    raise SystemExit(f"{url} did not answer in {seconds} s")


def s3_env(endpoint):
    env = dict(os.environ)
    env.update({
        "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        # KServe's storage initializer reads these.
        "S3_ENDPOINT": endpoint.split("://", 1)[1], "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0",
        "awsAnonymousCredential": "false",
    })
    return env


def serve(model, env, cache):
    """Start `ferry server` on `model`; seconds until it is ready, and its log."""
    port, grpc = free_port(), free_port()
    log = tempfile.NamedTemporaryFile("w+", delete=False)
    started = time.time()
    proc = subprocess.Popen(
        [FERRY, "server", "--model", f"minilm={model}", "--http-addr", f"127.0.0.1:{port}",
         "--grpc-addr", f"127.0.0.1:{grpc}", "--model-cache", cache, "--exit-on-load-failure"],
        env={**env, "NO_COLOR": "1", "FERRY_LOG": "info"}, stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/models/minilm/ready", 120)
        ready = time.time() - started
    finally:
        proc.terminate()
        proc.wait()
    log.seek(0)
    text = log.read()
    os.unlink(log.name)
    return ready, text


def fetched(log):
    """(ms, bytes, cache_hit) of the server's "model fetched" line."""
    for line in log.splitlines():
        if "model fetched" in line:
            fields = dict(p.split("=", 1) for p in line.split() if "=" in p)
            return int(fields["ms"]), int(fields["bytes"]), fields["cache_hit"] == "true"
    raise SystemExit(f"no 'model fetched' line in:\n{log}")


def timed(command, env):
    started = time.time()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.time() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = sum(os.path.getsize(os.path.join(MINILM, f)) for f in ("model.onnx", "tokenizer.json"))
    work = tempfile.mkdtemp(prefix="ferry-bench-storage-")
    port, console = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{port}"
    minio = subprocess.Popen(
        [MINIO, "server", "--quiet", os.path.join(work, "data"), "--address", f"127.0.0.1:{port}",
         "--console-address", f"127.0.0.1:{console}"],
        env={**os.environ, "MINIO_ROOT_USER": KEY, "MINIO_ROOT_PASSWORD": SECRET,
             "MINIO_BROWSER": "off", "HOME": work},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = s3_env(endpoint)
    aws = [os.path.join(os.path.dirname(sys.executable), "aws"), "--endpoint-url", endpoint]
    results = {k: [] for k in ("ferry_cold", "ferry_fetch", "ferry_warm", "kserve", "kserve_fetch",
                               "aws", "aws_fetch", "curl_fetch", "curl_sync_fetch")}
    try:
        wait_http(f"{endpoint}/minio/health/live")
        subprocess.run(aws + ["s3", "mb", "s3://models"], env=env, check=True, stdout=subprocess.DEVNULL)
        for f in ("model.onnx", "tokenizer.json"):
            subprocess.run(aws + ["s3", "cp", os.path.join(MINILM, f), f"s3://models/minilm/{f}"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        for round_ in range(args.rounds):
            cache = os.path.join(work, f"cache-{round_}")
            ready, log = serve("s3://models/minilm/", env, cache)
            ms, got, hit = fetched(log)
            assert not hit and got == size, (hit, got, size)
            results["ferry_cold"].append(ready)
            results["ferry_fetch"].append(ms / 1000)
            ready, log = serve("s3://models/minilm/", env, cache)
            assert fetched(log)[2], "the second start is a cache hit"
            results["ferry_warm"].append(ready)

            out = os.path.join(work, f"kserve-{round_}")
            fetch = timed([sys.executable, "-c",
                           "import sys; from kserve_storage import Storage; "
                           "Storage.download(sys.argv[1], sys.argv[2])",
                           "s3://models/minilm/", out], env)
            ready, _ = serve(out, env, os.path.join(work, "unused"))
            results["kserve_fetch"].append(fetch)
            results["kserve"].append(fetch + ready)

            out = os.path.join(work, f"aws-{round_}")
            fetch = timed(aws + ["s3", "cp", "--recursive", "--only-show-errors",
                                 "s3://models/minilm/", out], env)
            ready, _ = serve(out, env, os.path.join(work, "unused"))
            results["aws_fetch"].append(fetch)
            results["aws"].append(fetch + ready)
            floor = os.path.join(work, f"curl-{round_}")
            os.makedirs(floor)
            started = time.time()
            for f in ("model.onnx", "tokenizer.json"):
                subprocess.run(["curl", "-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                                f"{KEY}:{SECRET}", "-o", os.path.join(floor, f),
                                f"{endpoint}/models/minilm/{f}"], check=True)
            results["curl_fetch"].append(time.time() - started)
            shutil.rmtree(floor)
            os.makedirs(floor)
            started = time.time()
            for f in ("model.onnx", "tokenizer.json"):
                path = os.path.join(floor, f)
                subprocess.run(["curl", "-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
                                f"{KEY}:{SECRET}", "-o", path,
                                f"{endpoint}/models/minilm/{f}"], check=True)
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            results["curl_sync_fetch"].append(time.time() - started)
            for d in (cache, os.path.join(work, f"kserve-{round_}"), out, floor):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        minio.terminate()
        minio.wait()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    mb = size / 1e6
    print(f"MiniLM from MinIO on loopback: {mb:.1f} MB, median of {args.rounds} rounds")
    print(f"{'':30}{'ready s':>9}{'download s':>12}{'MB/s':>8}")
    rows = [("ferry cold (fetch + load)", "ferry_cold", "ferry_fetch"),
            ("ferry warm (cache hit + load)", "ferry_warm", None),
            ("kserve-storage + load", "kserve", "kserve_fetch"),
            ("aws s3 cp + load", "aws", "aws_fetch"),
            ("curl (download only)", None, "curl_fetch"),
            ("curl + fsync (download only)", None, "curl_sync_fetch")]
    for label, total, fetch in rows:
        rate = f"{mb / med[fetch]:8.0f}" if fetch else f"{'-':>8}"
        dl = f"{med[fetch]:12.2f}" if fetch else f"{'0 (hit)':>12}"
        ready = f"{med[total]:9.2f}" if total else f"{'-':>9}"
        print(f"{label:30}{ready}{dl}{rate}")
    print(f"cold ready: kserve-storage/ferry {med['kserve'] / med['ferry_cold']:.2f}x, "
          f"aws/ferry {med['aws'] / med['ferry_cold']:.2f}x; "
          f"download: kserve-storage/ferry {med['kserve_fetch'] / med['ferry_fetch']:.2f}x; "
          f"warm/cold {med['ferry_warm'] / med['ferry_cold']:.2f}; "
          f"ferry's download (synced) at {med['curl_sync_fetch'] / med['ferry_fetch']:.2f}x the speed "
          f"of curl + fsync, {med['curl_fetch'] / med['ferry_fetch']:.2f}x of curl unsynced")
    print(json.dumps({k: round(v, 3) for k, v in med.items()}))


if __name__ == "__main__":
    main()
