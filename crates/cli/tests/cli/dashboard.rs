//! The Grafana dashboard (`deploy/grafana/ferry.json`) queries only what Ferry exports: every
//! `ferry_*` series name in every panel's and variable's query is one that a real router (of
//! `ferry up`), a real `ferry server` and the operator's registry serve on `/metrics`, by the
//! Prometheus text format's naming (a counter's `_total`, a histogram's `_bucket`/`_sum`/
//! `_count`); and every panel has a query.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::local::harness::*;
use crate::pools::PoolServer;

/// The series names a `/metrics` text exposes, from its `# TYPE` lines.
fn series_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The `ferry_*` words of a PromQL query.
fn ferry_series(query: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(at) = query[i..].find("ferry_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + query[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(query.len() - start);
        if boundary {
            found.push(query[start..end].to_string());
        }
        i = end;
    }
    found
}

/// Every query string in the dashboard: panels' targets and templating variables'.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_string();
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            out.push((title.clone(), target["expr"].as_str().unwrap().to_string()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            out.push((
                format!("${}", variable["name"].as_str().unwrap()),
                query.to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_a_metric_ferry_exports() {
    // A family shows on /metrics once it has a sample: each registry with one in every family,
    // and the real router and server, whose /metrics must be made of the same names.
    let mut exported = series_names(&ferry_router::metrics::Metrics::every_series());
    exported.extend(series_names(&ferry_server::metrics::Metrics::every_series()));
    exported.extend(series_names(
        &ferry_operator::probes::Metrics::every_series(),
    ));
    let daemon = Daemon::start("dashboard");
    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 1));
    let predicted = daemon.ferry(&["predict", "iris", "--data", "[[5.1, 3.5, 1.4, 0.2]]"]);
    assert!(predicted.status.success(), "{}", stderr(&predicted));
    let server = PoolServer::start("64Mi").await;
    let http = reqwest::Client::new();
    let router = http
        .get(format!("http://{}/metrics", daemon.router))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served: BTreeSet<String> = series_names(&router)
        .into_iter()
        .chain(series_names(&server.metrics().await))
        .collect();
    assert!(
        served.contains("ferry_router_requests_ok_total"),
        "{router}"
    );
    assert!(
        served.contains("ferry_server_memory_budget_bytes"),
        "{served:?}"
    );
    let strays: Vec<&String> = served.difference(&exported).collect();
    assert!(
        strays.is_empty(),
        "served but not in every_series: {strays:?}"
    );
    assert!(
        exported.contains("ferry_server_request_duration_seconds_bucket"),
        "{exported:?}"
    );
    assert!(
        exported.contains("ferry_operator_reconciles_total"),
        "{exported:?}"
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/ferry.json")).unwrap(),
    )
    .unwrap();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");
    let mut unknown = Vec::new();
    for (title, query) in &queries {
        let names = ferry_series(query);
        assert!(!names.is_empty(), "{title}: {query} names no Ferry metric");
        unknown.extend(
            names
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(|n| format!("{title}: {n}")),
        );
    }
    assert!(
        unknown.is_empty(),
        "not exported by Ferry: {unknown:#?}\nexported: {exported:#?}"
    );
    // The check itself catches a wrong name.
    assert!(!exported.contains("ferry_router_requests_total"));
    assert_eq!(
        ferry_series("rate(ferry_router_requests_total[1m])"),
        ["ferry_router_requests_total"]
    );
}
