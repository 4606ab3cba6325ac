#!/usr/bin/env python3
"""ServerPool serving benchmark (bench/pools.sh runs it after the planner benchmark).

One `ferry up` (release build) runs a ServerPool of 2 `ferry server` processes whose memory
budgets hold about a quarter of N models (models/many.py, default 1,000 distinct models), the N
models as pooled InferenceServices, and, same run, the peer: the hot model on a dedicated server
of its own (an InferenceService with one replica). Measured through Ferry's router:

  cold misses    one client walks every model in order: with a quarter resident and LRU, each
                 request finds its model evicted and waits for a load from local disk;
  hot model      one closed-loop client on the pooled hot model while two other processes churn
                 through the cold models (loads and evictions on the same pool servers), against
                 the same client on the dedicated copy under the same churn, alternated A B A B;
                 and both without churn;
  memory         each model's footprint predicted by the pool's planner vs measured by its server.

Every answer is checked against scikit-learn's (the generator's expected.json). Writes the
RESULTS section of bench/POOLS.md and raw numbers to bench/results/pools-serving.json.
"""
import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FERRY = ROOT / "target" / "release" / "ferry"


def body(expected):
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 4],
                                   "data": expected["input"]}]})


class Client:
    """One keep-alive HTTP connection to the router."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def infer(self, model, payload, expected=None):
        start = time.perf_counter()
        self.conn.request("POST", f"/v2/models/{model}/infer", payload,
                          {"content-type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"{model}: {response.status} {data[:200]!r}")
        if expected is not None:
            outputs = {o["name"]: o["data"] for o in json.loads(data)["outputs"]}
            if outputs["label"] != expected["label"]:
                raise RuntimeError(f"{model}: labels {outputs['label']} != {expected['label']}")
        return elapsed


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def churn(router, models, expected, stop, counts):
    """Walk the cold models until `stop` is set (a process of its own: no GIL shared with the
    hot client); count requests and failures."""
    client = Client(router)
    done = failed = 0
    i = os.getpid() % len(models)
    while not stop.is_set():
        name = models[i % len(models)]
        try:
            client.infer(name, body(expected[name]), expected[name])
            done += 1
        except Exception:  # noqa: BLE001 - counted, and the run fails on any
            failed += 1
            client = Client(router)
        i += 7
    counts.put((done, failed))


def hot_run(router, model, payload, seconds):
    client = Client(router)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        latencies.append(client.infer(model, payload))
    return latencies


def ferry(state, *args, stdin=None):
    env = dict(os.environ, FERRY_STATE_DIR=str(state), NO_COLOR="1")
    out = subprocess.run([str(FERRY), *args], input=stdin, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"ferry {' '.join(args[:3])}: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout


def main():
    global FERRY
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=6.0, help="per hot-model phase")
    ap.add_argument("--python", default=sys.executable, help="a Python with scikit-learn")
    ap.add_argument("--ferry", default=str(FERRY), help="the ferry binary (default: release)")
    a = ap.parse_args()
    FERRY = Path(a.ferry)

    many = RESULTS / f"many-{a.models}"
    if not (many / "expected.json").exists():
        subprocess.run([a.python, str(ROOT / "models" / "many.py"), "--count", str(a.models),
                        "--out-dir", str(many)], check=True)
    expected = json.loads((many / "expected.json").read_text())
    names = sorted(expected)
    hot_file = names[len(names) // 2]
    files = {n: (many / f"{n}.onnx").stat().st_size for n in names}
    # Budgets for a quarter of the models, by the footprint these models measure (a fixed
    # ~30 KB plus 1.5 B per file byte); the planner learns the real figures as they load.
    total = sum(30_000 + 1.5 * f for f in files.values())
    budget = int(total / 8)
    overcommit = min(1000, int((0.6 * total / budget - 1) * 100) + 1)

    state = Path(tempfile.mkdtemp(prefix="ferry-bench-pools-"))
    log = open(state / "daemon.log", "w")
    daemon = subprocess.Popen([str(FERRY), "up", "--router-addr", "127.0.0.1:0", "--state-dir",
                               str(state)], stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, FERRY_LOG="warn", FERRY_REPLICA_LOG="warn"))
    try:
        deadline = time.monotonic() + 30
        while not (state / "api.json").exists():
            if time.monotonic() > deadline:
                sys.exit("ferry up did not start")
            time.sleep(0.05)
        router = json.loads((state / "api.json").read_text())["router"]
        docs = [f"apiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata:\n  name: bench\n"
                f"spec:\n  replicas: 2\n  memoryBudget: \"{budget}\"\n"
                f"  overcommitPercent: {overcommit}\n"]
        isvc = ("apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: {name}\n"
                "spec:\n  predictor:\n{placement}    model:\n      format: onnx\n      uri: {uri}\n")
        for n in names:
            docs.append(isvc.format(name=n, placement="    pool: bench\n", uri=many / f"{n}.onnx"))
        hot_uri = many / f"{hot_file}.onnx"
        docs.append(isvc.format(name="hot", placement="    pool: bench\n", uri=hot_uri))
        docs.append(isvc.format(name="hot-dedicated", placement="    minReplicas: 1\n",
                                uri=hot_uri))
        started = time.monotonic()
        ferry(state, "apply", "-f", "-", "--wait", "--timeout", "600", stdin="---\n".join(docs))
        applied_s = time.monotonic() - started
        print(f"{len(names) + 2} services Ready in {applied_s:.1f} s", flush=True)

        # Cold misses: every model in order, one client.
        client = Client(router)
        cold = [client.infer(n, body(expected[n]), expected[n]) for n in names]
        cold += [client.infer(n, body(expected[n]), expected[n]) for n in names]

        # The hot model: without churn, then under churn, pooled vs dedicated alternated.
        payload = body(expected[hot_file])
        for model in ("hot", "hot-dedicated"):
            Client(router).infer(model, payload, expected[hot_file])
        quiet = {m: hot_run(router, m, payload, a.seconds / 2) for m in ("hot", "hot-dedicated")}
        stop = multiprocessing.Event()
        counts = multiprocessing.Queue()
        churners = [multiprocessing.Process(target=churn, args=(router, names, expected, stop, counts))
                    for _ in range(2)]
        for p in churners:
            p.start()
        time.sleep(1.0)
        loaded = {"hot": [], "hot-dedicated": []}
        for model in ("hot", "hot-dedicated", "hot", "hot-dedicated"):
            loaded[model] += hot_run(router, model, payload, a.seconds / 2)
        stop.set()
        churned = failed = 0
        for p in churners:
            done, bad = counts.get(timeout=30)
            churned += done
            failed += bad
            p.join()

        pool = json.loads(ferry(state, "get", "serverpool", "bench", "-o", "json"))
        status = pool["status"]
        errors = [abs(m["predictedBytes"] - m["measuredBytes"]) / m["measuredBytes"]
                  for m in status["models"] if m.get("measuredBytes")]
        measured = sum(m.get("measuredBytes", 0) for m in status["models"])
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()

    ms = lambda v: round(v * 1000, 3)  # noqa: E731
    result = {
        "models": len(names) + 1,
        "servers": 2,
        "budget_bytes_per_server": budget,
        "overcommit_percent": overcommit,
        "measured_bytes_all_models": measured,
        "budget_share_of_models": round(2 * budget / measured, 3) if measured else None,
        "ready_seconds": round(applied_s, 1),
        "cold_miss_ms": {"requests": len(cold), "p50": ms(quantile(cold, 0.5)),
                         "p99": ms(quantile(cold, 0.99))},
        "hot_quiet_ms": {m: {"p50": ms(quantile(v, 0.5)), "p99": ms(quantile(v, 0.99)),
                             "requests": len(v)} for m, v in quiet.items()},
        "hot_churn_ms": {m: {"p50": ms(quantile(v, 0.5)), "p99": ms(quantile(v, 0.99)),
                             "requests": len(v)} for m, v in loaded.items()},
        "churn_requests": churned,
        "failed_requests": failed,
        "evictions": status["evictions"],
        "resident_models": status["residentModels"],
        "estimate_error": {"models": len(errors), "p50": round(quantile(errors, 0.5), 4),
                           "p95": round(quantile(errors, 0.95), 4),
                           "mean": round(statistics.fmean(errors), 4)} if errors else None,
    }
    result["hot_p99_pooled_over_dedicated"] = round(
        result["hot_churn_ms"]["hot"]["p99"] / result["hot_churn_ms"]["hot-dedicated"]["p99"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pools-serving.json").write_text(json.dumps(result, indent=2))
    write_section(result)
    print(json.dumps(result, indent=2))
    if failed:
        sys.exit(f"{failed} failed requests")


def write_section(r):
    hq, hc = r["hot_quiet_ms"], r["hot_churn_ms"]
    e = r["estimate_error"] or {}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on this machine "
        f"({os.cpu_count()} cores), release build, everything in the same run.",
        "",
        f"- **{r['models']} models in one pool of 2 servers**, budgets "
        f"{r['budget_bytes_per_server']:,} B each = {r['budget_share_of_models']:.0%} of the models' "
        f"measured {r['measured_bytes_all_models']:,} B (overcommit {r['overcommit_percent']} %); "
        f"{r['models'] + 1} services Ready in {r['ready_seconds']} s; "
        f"{r['evictions']:,} evictions, {r['resident_models']} resident at the end; "
        f"{r['failed_requests']} failed of {r['churn_requests'] + r['cold_miss_ms']['requests']:,} churn and miss requests.",
        f"- **Cold miss** (model evicted, loaded from local disk while the request is held), "
        f"through the router: p50 **{r['cold_miss_ms']['p50']} ms**, p99 **{r['cold_miss_ms']['p99']} ms** "
        f"({r['cold_miss_ms']['requests']} requests; target p99 ≤ 150 ms).",
        f"- **Hot model while cold models churn** (2 clients walking the cold models): pooled p50 "
        f"{hc['hot']['p50']} ms / p99 **{hc['hot']['p99']} ms** vs the same model on a dedicated server "
        f"p50 {hc['hot-dedicated']['p50']} ms / p99 **{hc['hot-dedicated']['p99']} ms**: "
        f"**{r['hot_p99_pooled_over_dedicated']}×** (target ≤ 1.2×). Without churn: pooled p99 "
        f"{hq['hot']['p99']} ms, dedicated p99 {hq['hot-dedicated']['p99']} ms.",
        f"- **Memory per model, predicted vs measured** ({e.get('models', 0)} models): error p50 "
        f"{e.get('p50', 0):.1%}, p95 **{e.get('p95', 0):.1%}** (target ≤ 10 %).",
    ]
    doc = ROOT / "bench" / "POOLS.md"
    text = doc.read_text()
    start, end = "<!-- SERVING:START -->", "<!-- SERVING:END -->"
    if start not in text:
        text += f"\n## Serving (`bench/pools.py`)\n\n{start}\n{end}\n"
    text = text[: text.index(start) + len(start)] + "\n" + "\n".join(lines) + "\n" + text[text.index(end):]
    doc.write_text(text)


if __name__ == "__main__":
    main()
