// Ferry's console: plain JavaScript, no build step. It polls the same JSON API in both modes
// (local mode's control API, or `ferry console`'s for a cluster) once a second and keeps the
// last five minutes of each service's numbers in memory to plot them.
"use strict";

(() => {
  const TOKEN_KEY = "ferry-console-token";
  const POINTS = 300;
  const TICK_MS = 1000;
  const COLORS = ["#2456a6", "#d9822b", "#17803d", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    namespace: "",
    selected: null, // {namespace, name}
    services: [],
    bounds: [],
    series: new Map(), // "ns/name" -> series of that service
    previous: new Map(), // "ns/name" -> {at, revisions: {rev: metrics}}
    plots: new Map(), // element id -> {uplot, key}
    replica: "",
    tick: 0,
    historyGeneration: null,
  };

  const $ = (id) => document.getElementById(id);
  const key = (ns, name) => `${ns}/${name}`;

  // ---- token and routing -------------------------------------------------------------------
  function readFragment() {
    const hash = location.hash.replace(/^#/, "");
    const params = new URLSearchParams(hash.includes("=") ? hash : "");
    if (params.get("token")) {
      state.token = params.get("token");
      sessionStorage.setItem(TOKEN_KEY, state.token);
      history.replaceState(null, "", location.pathname);
      return;
    }
    const route = hash.match(/^\/([^/]+)\/([^/]+)$/);
    state.selected = route ? { namespace: decodeURIComponent(route[1]), name: decodeURIComponent(route[2]) } : null;
  }

  function select(namespace, name) {
    location.hash = `/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
  }

  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json", ...(options.headers || {}) },
    });
    if (response.status === 401) throw new Unauthorized("unauthorized");
    const text = await response.text();
    let body = text;
    try { body = JSON.parse(text); } catch (_) { /* a log is text */ }
    if (!response.ok) {
      const message = (body && body.error) || text || response.statusText;
      const error = new Error(`${response.status}: ${message}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---- numbers ------------------------------------------------------------------------------
  function quantileMs(counts, q) {
    const total = counts.reduce((a, b) => a + b, 0);
    if (!total) return null;
    const rank = q * total;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      seen += counts[i];
      if (seen >= rank) {
        const bound = i < state.bounds.length ? state.bounds[i] : state.bounds[state.bounds.length - 1] * Math.SQRT2;
        return bound * 1000;
      }
    }
    return null;
  }

  function seriesOf(k) {
    if (!state.series.has(k)) {
      state.series.set(k, { t: [], revisions: new Map(), ready: [], desired: [], demand: [] });
    }
    return state.series.get(k);
  }

  function push(array, value) {
    array.push(value);
    if (array.length > POINTS) array.shift();
  }

  // One sample per service per tick: rates from the counters' increments since the last tick.
  function record(numbers, services, now) {
    const byKey = new Map(numbers.map((n) => [key(n.namespace, n.service), n]));
    for (const isvc of services) {
      const k = key(isvc.metadata.namespace, isvc.metadata.name);
      const s = seriesOf(k);
      const n = byKey.get(k) || { revisions: {}, load: {}, held: 0 };
      const before = state.previous.get(k);
      state.previous.set(k, { at: now, revisions: n.revisions || {} });
      const known = new Set([...s.revisions.keys(), ...Object.keys(n.revisions || {})]);
      for (const r of (isvc.status && isvc.status.revisions) || []) known.add(r.name);
      push(s.t, now / 1000);
      const deltas = {};
      let answered = 0;
      for (const rev of known) {
        const current = (n.revisions || {})[rev];
        const old = before && before.revisions[rev];
        if (current && before) {
          const requests = current.requests - (old ? old.requests : 0);
          const errors = current.errors - (old ? old.errors : 0);
          const latency = current.latency.map((c, i) => c - (old && old.latency[i] ? old.latency[i] : 0));
          deltas[rev] = { requests, errors, latency };
          answered += requests;
        }
      }
      const seconds = before ? Math.max((now - before.at) / 1000, 0.001) : 1;
      for (const rev of known) {
        if (!s.revisions.has(rev)) {
          const pad = () => new Array(s.t.length - 1).fill(null);
          s.revisions.set(rev, { rps: pad(), split: pad(), errors: pad(), p50: pad(), p99: pad() });
        }
        const r = s.revisions.get(rev);
        const d = deltas[rev];
        push(r.rps, d ? d.requests / seconds : null);
        push(r.split, d && answered ? (100 * d.requests) / answered : null);
        push(r.errors, d && d.requests ? (100 * d.errors) / d.requests : null);
        push(r.p50, d ? quantileMs(d.latency, 0.5) : null);
        push(r.p99, d ? quantileMs(d.latency, 0.99) : null);
      }
      const status = isvc.status || {};
      const ready = (status.revisions || []).reduce((a, r) => a + (r.readyReplicas || 0), 0);
      push(s.ready, ready);
      push(s.desired, status.autoscaling ? status.autoscaling.desiredReplicas : null);
      const inFlight = Object.values(n.load || {}).reduce((a, l) => a + (l.in_flight || l.inFlight || 0), 0);
      push(s.demand, inFlight + (n.held || 0));
    }
  }

  // ---- plots --------------------------------------------------------------------------------
  function plot(id, labels, data, unit) {
    const element = $(id);
    const signature = labels.join("|");
    const existing = state.plots.get(id);
    // The latest value of each series, for people and tests that read the page's DOM.
    element.dataset.latest = JSON.stringify(Object.fromEntries(labels.map((label, i) => [label, data[i + 1][data[i + 1].length - 1] ?? null])));
    if (existing && existing.signature === signature) {
      existing.uplot.setData(data);
      return;
    }
    if (existing) existing.uplot.destroy();
    const width = Math.max(element.clientWidth, 200);
    const options = {
      width,
      height: 150,
      scales: { x: { time: true } },
      axes: [{}, { values: (u, ticks) => ticks.map((v) => `${+v.toFixed(2)}${unit}`) }],
      legend: { live: false },
      series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false, points: { show: false } }))],
    };
    state.plots.set(id, { signature, uplot: new uPlot(options, data, element) });
  }

  function drawPlots(k) {
    const s = seriesOf(k);
    const revisions = [...s.revisions.keys()];
    const column = (field) => revisions.map((r) => s.revisions.get(r)[field]);
    plot("plot-rps", revisions, [s.t, ...column("rps")], "");
    plot("plot-split", revisions, [s.t, ...column("split")], "%");
    plot("plot-errors", revisions, [s.t, ...column("errors")], "%");
    plot("plot-latency", [...revisions.map((r) => `p50 ${r}`), ...revisions.map((r) => `p99 ${r}`)], [s.t, ...column("p50"), ...column("p99")], "");
    plot("plot-replicas", ["ready replicas", "desired (autoscaler)", "requests in flight + held"], [s.t, s.ready, s.desired, s.demand], "");
  }

  // ---- rendering ----------------------------------------------------------------------------
  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (className) td.className = className;
    return td;
  }

  function rows(tbody, items, build) {
    tbody.replaceChildren(...items.map((item) => {
      const tr = document.createElement("tr");
      build(tr, item);
      return tr;
    }));
  }

  const condition = (isvc, type) => ((isvc.status && isvc.status.conditions) || []).find((c) => c.type === type);

  function renderList() {
    const namespaces = [...new Set(state.services.map((s) => s.metadata.namespace))].sort();
    const picker = $("namespace");
    const options = ["", ...namespaces];
    if ([...picker.options].map((o) => o.value).join() !== options.join()) {
      picker.replaceChildren(...options.map((ns) => new Option(ns || "all", ns)));
      picker.value = state.namespace;
    }
    const shown = state.services.filter((s) => !state.namespace || s.metadata.namespace === state.namespace);
    $("no-services").hidden = shown.length > 0;
    rows($("services").tBodies[0], shown, (tr, isvc) => {
      const ready = condition(isvc, "Ready");
      const status = isvc.status || {};
      const total = (status.revisions || []).reduce((a, r) => a + r.replicas, 0);
      const readyReplicas = (status.revisions || []).reduce((a, r) => a + r.readyReplicas, 0);
      tr.dataset.name = isvc.metadata.name;
      tr.dataset.namespace = isvc.metadata.namespace;
      tr.append(
        cell(state.namespace ? isvc.metadata.name : `${isvc.metadata.namespace}/${isvc.metadata.name}`),
        cell(ready ? ready.status : "Unknown", ready ? ready.status : ""),
        cell(`${readyReplicas}/${total}`),
      );
      if (ready && ready.status !== "True") tr.title = `${ready.reason}: ${ready.message || ""}`;
      const sel = state.selected;
      if (sel && sel.name === isvc.metadata.name && sel.namespace === isvc.metadata.namespace) tr.classList.add("selected");
      tr.addEventListener("click", () => select(isvc.metadata.namespace, isvc.metadata.name));
    });
  }

  function renderDetail(isvc) {
    const status = isvc.status || {};
    const ready = condition(isvc, "Ready");
    const latest = condition(isvc, "LatestRevisionReady");
    $("detail").hidden = false;
    $("detail-name").textContent = `${isvc.metadata.namespace}/${isvc.metadata.name}`;
    $("detail-ready").textContent = ready ? `Ready: ${ready.status}` : "Ready: Unknown";
    $("detail-ready").className = `badge ${ready ? ready.status : ""}`;
    const failing = [ready, latest].find((c) => c && c.status === "False");
    $("detail-reason").textContent = failing ? `${failing.type}: ${failing.reason} — ${failing.message || ""}` : "";
    rows($("conditions").tBodies[0], status.conditions || [], (tr, c) => {
      tr.append(cell(c.type), cell(c.status, c.status), cell(c.reason), cell(c.message));
    });
    rows($("revisions").tBodies[0], status.revisions || [], (tr, r) => {
      tr.dataset.revision = r.name;
      tr.append(cell(r.name + (r.name === status.latestRevision ? " (latest)" : "")), cell(`${r.readyReplicas}/${r.replicas}`), cell(`${r.trafficPercent}%`));
    });
    renderRollout(status.rollout, status.latestRevision);
    renderExperiment(status.experiment, status.shadow);
  }

  function renderRollout(rollout, latest) {
    const card = $("rollout");
    card.hidden = !rollout;
    if (!rollout) return;
    $("rollout-phase").textContent = rollout.phase;
    $("rollout-strategy").textContent = rollout.strategy;
    $("rollout-step").textContent = String(rollout.step);
    $("rollout-weight").textContent = `${rollout.weight}%`;
    $("rollout-revisions").textContent = `${rollout.stableRevision} → ${rollout.canaryRevision}`;
    const a = rollout.lastAnalysis;
    $("rollout-analysis").textContent = a
      ? `${a.verdict}: ${a.requests} requests, ${a.errorPercent.toFixed(2)}% errors` +
        (a.p99LatencyMs != null ? `, p99 ${a.p99LatencyMs.toFixed(1)} ms` : "") +
        (a.stableP99LatencyMs != null ? ` (stable ${a.stableP99LatencyMs.toFixed(1)} ms)` : "") +
        (a.message ? ` — ${a.message}` : "")
      : "none yet";
    $("rollout-message").textContent = rollout.message || "";
    const running = rollout.canaryRevision === latest && !["Succeeded", "Aborted"].includes(rollout.phase);
    for (const button of card.querySelectorAll("button[data-control]")) {
      const control = button.dataset.control;
      button.disabled = !running || (control === "pause" && rollout.phase === "Paused") || (control === "resume" && rollout.phase !== "Paused");
    }
  }

  function renderExperiment(experiment, shadow) {
    $("experiment").hidden = !experiment;
    if (experiment) {
      rows($("experiment").querySelector("tbody"), experiment.variants || [], (tr, v) => {
        const interval = v.meanReward != null ? `${v.meanReward.toFixed(3)} (${(v.rewardLow ?? 0).toFixed(3)}–${(v.rewardHigh ?? 0).toFixed(3)})` : "";
        tr.append(cell(v.name), cell(v.revision), cell(`${v.weight}%`), cell(v.requests), cell(`${v.errors} (${v.errorPercent.toFixed(2)}%)`),
          cell(v.p99LatencyMs != null ? `${v.p99LatencyMs.toFixed(1)} ms` : ""), cell(v.feedback), cell(interval));
      });
    }
    $("shadow").hidden = !shadow;
    if (shadow) {
      const agreement = shadow.agreementPercent != null ? `${shadow.agreementPercent.toFixed(1)}% agreement` : "no comparisons yet";
      $("shadow-text").textContent = `${shadow.revision} gets ${shadow.percent}% of live requests: ${shadow.mirrored} mirrored of ${shadow.live}, ${shadow.agreed} agreed, ${shadow.disagreed} disagreed, ${shadow.failed} failed, ${shadow.dropped} dropped — ${agreement}`;
    }
  }

  function objectPath(sel) {
    return `/v1/namespaces/${encodeURIComponent(sel.namespace)}/inferenceservices/${encodeURIComponent(sel.name)}`;
  }

  async function refreshSelected(isvc) {
    const sel = state.selected;
    const path = objectPath(sel);
    const [events, replicas] = await Promise.all([api(`${path}/events`), api(`${path}/replicas`)]);
    rows($("events").tBodies[0], events.items || [], (tr, e) => {
      tr.append(cell(e.at), cell(e.type), cell(e.reason), cell(e.message));
    });
    const picker = $("replica");
    const ids = (replicas.items || []).map((r) => r.id);
    if ([...picker.options].map((o) => o.value).join() !== ids.join()) {
      picker.replaceChildren(...(replicas.items || []).map((r) => new Option(`${r.id} (${r.revision}${r.ready ? ", ready" : ""})`, r.id)));
      if (ids.includes(state.replica)) picker.value = state.replica;
      else state.replica = ids[0] || "";
    }
    if (state.tick % 2 === 0 && state.replica) {
      try {
        const log = await api(`${path}/logs?tail=40&replica=${encodeURIComponent(state.replica)}`);
        $("log").textContent = typeof log === "string" ? log : JSON.stringify(log);
      } catch (error) {
        $("log").textContent = `(${error.message})`;
      }
    }
    const generation = isvc.metadata.generation;
    if (state.historyGeneration !== `${key(sel.namespace, sel.name)}@${generation}`) {
      state.historyGeneration = `${key(sel.namespace, sel.name)}@${generation}`;
      await refreshHistory(sel);
    }
  }

  async function refreshHistory(sel) {
    try {
      const changes = await api(`/v1/history?kind=InferenceService&namespace=${encodeURIComponent(sel.namespace)}&name=${encodeURIComponent(sel.name)}`);
      $("history").hidden = false;
      $("history-list").replaceChildren(...(changes.items || []).slice().reverse().map((c) => {
        const block = document.createElement("details");
        const summary = document.createElement("summary");
        summary.textContent = `#${c.seq} ${c.at} · ${c.who} · ${c.action} (${c.cause})`;
        const diff = document.createElement("div");
        diff.className = "diff";
        for (const line of (c.diff || "").split("\n")) {
          const span = document.createElement("div");
          span.textContent = line;
          if (line.startsWith("+") && !line.startsWith("+++")) span.className = "add";
          if (line.startsWith("-") && !line.startsWith("---")) span.className = "del";
          diff.append(span);
        }
        block.append(summary, diff);
        return block;
      }));
    } catch (error) {
      // A cluster keeps its audit trail in the apiserver's audit log.
      $("history").hidden = true;
    }
  }

  async function control(name) {
    const body = name === "promote" ? { promote: { full: false } } : name;
    $("control-result").textContent = `${name}…`;
    try {
      await api(`${objectPath(state.selected)}/rollout`, { method: "POST", body: JSON.stringify(body) });
      $("control-result").textContent = `${name}: done`;
    } catch (error) {
      $("control-result").textContent = `${name}: ${error.message}`;
    }
    await tick();
  }

  // ---- the loop -----------------------------------------------------------------------------
  let running = false;
  async function tick() {
    if (running) return;
    running = true;
    try {
      const [list, metrics] = await Promise.all([api("/v1/inferenceservices"), api("/v1/console/metrics")]);
      state.services = list.items || [];
      state.bounds = metrics.boundsSeconds || [];
      $("mode").textContent = metrics.mode ? `${metrics.mode} mode` : "";
      record(metrics.services || [], state.services, Date.now());
      renderList();
      const sel = state.selected;
      const isvc = sel && state.services.find((s) => s.metadata.namespace === sel.namespace && s.metadata.name === sel.name);
      if (isvc) {
        renderDetail(isvc);
        drawPlots(key(sel.namespace, sel.name));
        await refreshSelected(isvc);
      } else {
        $("detail").hidden = true;
      }
      $("connection").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("connection").dataset.state = "ok";
      $("login").hidden = true;
      $("app").hidden = false;
    } catch (error) {
      if (error instanceof Unauthorized) {
        $("login").hidden = false;
        $("app").hidden = true;
        $("connection").textContent = "signed out";
      } else {
        $("connection").textContent = `error: ${error.message}`;
      }
      $("connection").dataset.state = "error";
    } finally {
      state.tick += 1;
      running = false;
    }
  }

  function start() {
    readFragment();
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("token").value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      tick();
    });
    $("namespace").addEventListener("change", (event) => {
      state.namespace = event.target.value;
      renderList();
    });
    $("replica").addEventListener("change", (event) => {
      state.replica = event.target.value;
    });
    for (const button of document.querySelectorAll("#rollout button[data-control]")) {
      button.addEventListener("click", () => control(button.dataset.control));
    }
    window.addEventListener("hashchange", () => {
      readFragment();
      state.historyGeneration = null;
      tick();
    });
    tick();
    setInterval(tick, TICK_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
