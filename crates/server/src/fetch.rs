//! Models named by `http://` or `https://` URLs (local replicas and cluster pods alike): each
//! load downloads the file into the system temp dir (a pod with a read-only root filesystem
//! mounts an emptyDir there), loads it like any other model and deletes it.
//!
//! Redirects are followed (up to 5); any status other than 200 is a load failure that quotes it.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

/// Whether a model path is a URL to fetch.
pub fn is_url(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.starts_with("http://") || text.starts_with("https://")
}

/// Download `url` into `dir`; returns the file. The file appears only once complete.
pub async fn download(url: &str, dir: &Path, model: &str) -> Result<PathBuf, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(format!("{model}-{}.onnx", std::process::id()));
    download_to(url, &file).await?;
    Ok(file)
}

/// Download `url` to the file `file` (its directory must exist); the file appears only once
/// complete (`ferry fetch`, the init step of a ServingRuntime's pod, and [`download`]).
pub async fn download_to(url: &str, file: &Path) -> Result<(), String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut current = url.to_string();
    let mut response = None;
    for _ in 0..=5 {
        let uri: hyper::Uri = current
            .parse()
            .map_err(|e| format!("invalid model URL {current}: {e}"))?;
        let r = client
            .get(uri.clone())
            .await
            .map_err(|e| format!("cannot fetch {current}: {}", error_chain(&e)))?;
        if r.status().is_redirection()
            && let Some(location) = r.headers().get(hyper::header::LOCATION)
        {
            let location = location
                .to_str()
                .map_err(|_| "redirect without a valid Location")?;
            current = resolve(&uri, location);
            continue;
        }
        response = Some(r);
        break;
    }
    let response = response.ok_or_else(|| format!("too many redirects fetching {url}"))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!(
            "cannot fetch {current}: HTTP {}",
            response.status()
        ));
    }
    let partial = file.with_extension("partial");
    let mut out = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("download of {current} broke off: {e}"))?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            out.write_all(data)
                .await
                .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        }
    }
    out.flush().await.map_err(|e| e.to_string())?;
    tokio::fs::rename(&partial, file)
        .await
        .map_err(|e| format!("cannot move {} into place: {e}", partial.display()))?;
    tracing::info!(url = %current, bytes, file = %file.display(), "model fetched");
    Ok(())
}

/// `location` relative to `base` (absolute URLs and absolute paths).
fn resolve(base: &hyper::Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{authority}{dir}{location}")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_request() {
        let base: hyper::Uri = "http://127.0.0.1:9/models/a/iris.onnx".parse().unwrap();
        assert_eq!(
            resolve(&base, "/v2/iris.onnx"),
            "http://127.0.0.1:9/v2/iris.onnx"
        );
        assert_eq!(
            resolve(&base, "b.onnx"),
            "http://127.0.0.1:9/models/a/b.onnx"
        );
        assert_eq!(resolve(&base, "https://x.example/m"), "https://x.example/m");
        assert!(is_url(Path::new("https://x.example/m.onnx")));
        assert!(!is_url(Path::new("/models/m.onnx")));
    }
}
