//! The in-process cost of the router's phase 2 (authorize / limit) per request, with and
//! without tenancy, same process, interleaved rounds: a request to a namespace with no keys
//! and a service with no limit, against one that presents an API key (looked up by ID,
//! SHA-256, constant-time compare, stripped) and takes three buckets (the key's, the
//! namespace's, the service's), every limit far above the rate so nothing is refused.
//! Prints one line: `open_ns=A keyed_ns=B added_ns=C` (medians over the rounds).
//!
//! usage: ferry-bench-admit [ITERATIONS_PER_ROUND]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ferry_core::routes::{ApiKey, Limit, RouteTable, ServiceRoute};

const KEY: &str = "fry_0123456789abcdef_00112233445566778899aabbccddeeff";

fn unlimited() -> Limit {
    Limit {
        interval_nanos: 1,
        burst: 1_000_000_000,
        text: "1e9/s".into(),
        per_second: 1_000_000_000,
    }
}

fn service(namespace: &str, limit: Option<Limit>) -> ServiceRoute {
    ServiceRoute {
        namespace: namespace.into(),
        service: "iris".into(),
        revisions: Vec::new(),
        fallback: None,
        sticky: None,
        shadow: None,
        cold_start: None,
        rate_limit: limit,
    }
}

fn table() -> RouteTable {
    let mut table = RouteTable::default();
    for (namespace, limit) in [("open", None), ("keyed", Some(unlimited()))] {
        table.namespaces.insert(
            namespace.into(),
            BTreeMap::from([("iris".to_string(), service(namespace, limit))]),
        );
    }
    table.namespace_limits.insert("keyed".into(), unlimited());
    table.with_keys([ApiKey {
        id: ferry_api::api_key_id(KEY)
            .expect("a well-formed key")
            .into(),
        namespace: "keyed".into(),
        name: "bench".into(),
        hash: ferry_api::api_key_hash(KEY),
        rate_limit: Some(unlimited()),
        expires_unix: None,
    }])
}

fn head(namespace: &str, key: Option<&str>) -> http::request::Parts {
    let mut request = http::Request::post("/v2/models/iris/infer")
        .header("content-type", "application/json")
        .header("ferry-namespace", namespace);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    request.body(()).unwrap().into_parts().0
}

/// Nanoseconds per call of phase 2 over `n` calls (building the head is timed apart and taken
/// off).
fn per_call(router: &ferry_router::Router, namespace: &str, key: Option<&str>, n: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        std::hint::black_box(head(namespace, key));
    }
    let building = started.elapsed();
    let started = Instant::now();
    for _ in 0..n {
        let mut parts = head(namespace, key);
        ferry_router::fuzzing::admit(router, namespace, "iris", &mut parts).expect("admitted");
        std::hint::black_box(parts);
    }
    (started.elapsed().saturating_sub(building)).as_nanos() as f64 / f64::from(n)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(200_000, |v| v.parse().expect("ITERATIONS_PER_ROUND"));
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(table()));
    let router = ferry_router::Router::new(rx, ferry_router::RouterConfig::default());
    let (mut open, mut keyed) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        open.push(per_call(&router, "open", None, n));
        keyed.push(per_call(&router, "keyed", Some(KEY), n));
    }
    let (open, keyed) = (median(open), median(keyed));
    println!(
        "open_ns={open:.0} keyed_ns={keyed:.0} added_ns={:.0}",
        keyed - open
    );
}
