//! Ferry's web console: one page (`/console/`) and its assets, compiled into the binary, served
//! by local mode's daemon beside its control API and by `ferry console --kubeconfig` for a
//! cluster. The page reads the same JSON in both modes — the control API's paths (services,
//! events, replicas, logs, rollout controls, history) and `/v1/console/metrics` (the routers'
//! per-revision numbers) — with the control token as a bearer token. The assets carry no data
//! and are served without it; a strict Content-Security-Policy allows only this origin.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the console's page is served.
pub const PATH: &str = "/console/";

/// The JSON path of the routers' per-revision numbers the page plots.
pub const METRICS_PATH: &str = "/v1/console/metrics";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/console/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
    },
    Asset {
        path: "/console/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
    },
    Asset {
        path: "/console/vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/console/vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/vendor/uPlot.min.css"),
    },
];

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn serve(asset: &'static Asset) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        asset.body,
    )
        .into_response()
}

/// The console's routes (no authentication: the page asks for the token and sends it with
/// every API call). Merge them into the app that also serves the API.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route("/console", get(|| async { Redirect::permanent(PATH) }));
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    router
}

/// Whether `headers` carry `Authorization: Bearer <token>`: the one check of the console's API,
/// in local mode's control API and in `ferry console --kubeconfig`.
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(token)
}

/// The console's address with the token in the fragment (never sent to a server, kept by the
/// page for the session): what `ferry up` and `ferry console` print.
pub fn login_url(base: &str, token: &str) -> String {
    format!("{}{PATH}#token={token}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(bytes: &[u8]) -> String {
        // The vendored files are checked against their published sums with the system's
        // sha256sum (coreutils), so the crate needs no hashing dependency.
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum runs");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_vendored_files_are_the_published_ones() {
        let readme = include_str!("../assets/vendor/README.md");
        for asset in ASSETS.iter().filter(|a| a.path.contains("/vendor/")) {
            let name = asset.path.rsplit('/').next().unwrap();
            let line = readme
                .lines()
                .find(|l| l.starts_with(&format!("- `{name}`: ")))
                .unwrap_or_else(|| panic!("vendor/README.md lists no sum for {name}"));
            assert!(
                line.contains(&sha256_hex(asset.body)),
                "{name} changed: {line}"
            );
        }
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in &ASSETS[1..] {
            let relative = asset.path.trim_start_matches(PATH);
            assert!(
                page.contains(relative),
                "index.html does not load {relative}"
            );
        }
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no outside origin"
        );
        assert!(
            !page.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
    }

    #[test]
    fn the_login_url_carries_the_token_in_the_fragment() {
        assert_eq!(
            login_url("http://127.0.0.1:4000/", "abc"),
            "http://127.0.0.1:4000/console/#token=abc"
        );
    }
}
