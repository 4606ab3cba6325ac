//! TLS at the router of `ferry up`, end to end with real clients: curl (HTTP/1.1 and HTTP/2)
//! and tritonclient (HTTP and gRPC) against a test CA; SNI picks the second certificate, an
//! unknown name gets the default; a certificate replaced on disk reaches new connections
//! within seconds while an open connection keeps working.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::local::harness::*;

struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A leaf for `names` with common name `cn`, written as `<stem>.crt` / `<stem>.key` in `dir`.
fn leaf(ca: &Ca, dir: &Path, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    // Written beside and renamed: the router never reads half a file.
    for (path, text) in [(&key_path, key.serialize_pem()), (&cert_path, cert.pem())] {
        let staging = path.with_extension("tmp");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(&staging, path).unwrap();
    }
    (cert_path, key_path)
}

/// curl with the test CA; `extra` first. (status line of `-w`, stderr).
fn curl(ca: &Path, extra: &[&str], url: &str) -> (String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(extra)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}", url])
        .output()
        .expect("curl runs");
    (stdout(&output), stderr(&output))
}

/// The subject curl saw on a handshake (verification off: any certificate shows).
fn served_subject(port: u16, name: &str) -> String {
    let output = Command::new("curl")
        .args(["-sS", "-k", "-v", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}/v2/health/ready"))
        .output()
        .expect("curl runs");
    let text = stderr(&output);
    text.lines()
        .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject:"))
        .unwrap_or_else(|| panic!("no subject in {text}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_terminates_tls_with_sni_and_takes_renewed_certificates_live() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = ca();
    let ca_path = certs.join("ca.pem");
    std::fs::write(&ca_path, &ca.pem).unwrap();
    let (default_cert, default_key) = leaf(
        &ca,
        &certs,
        "default",
        "ferry default",
        &["localhost", "127.0.0.1"],
    );
    let (iris_cert, iris_key) = leaf(&ca, &certs, "iris", "ferry iris", &["iris.example.com"]);
    let path = |p: &Path| p.display().to_string();
    let daemon = Daemon::start_with(
        dir.join("state"),
        &[
            "--tls-cert",
            &path(&default_cert),
            "--tls-key",
            &path(&default_key),
            "--tls-cert",
            &path(&iris_cert),
            "--tls-key",
            &path(&iris_key),
        ],
    );
    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 1));
    let port: u16 = daemon.router.rsplit(':').next().unwrap().parse().unwrap();
    let body = serde_json::to_string(&iris_request()).unwrap();
    let url = format!("https://127.0.0.1:{port}/v2/models/iris/infer");
    let post = ["-H", "content-type: application/json", "-d", body.as_str()];

    // HTTP/1.1 and HTTP/2 (ALPN), the certificate checked against the CA.
    let (status, error) = curl(&ca_path, &[&post[..], &["--http1.1"]].concat(), &url);
    assert_eq!(status, "200 1.1", "{error}");
    let (status, error) = curl(&ca_path, &[&post[..], &["--http2"]].concat(), &url);
    assert_eq!(status, "200 2", "{error}");
    // Plain HTTP is not served on the TLS port.
    let plain = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/v2/health/ready"))
        .output()
        .unwrap();
    assert_ne!(stdout(&plain), "200");
    // The status URL says https.
    let isvc = daemon.client().get("default", "iris").await.unwrap();
    assert!(isvc.status.unwrap().url.unwrap().starts_with("https://"));

    // SNI: the second certificate for its name (verified by curl), the default otherwise.
    let resolve = format!("iris.example.com:{port}:127.0.0.1");
    let (status, error) = curl(
        &ca_path,
        &[
            &post[..],
            &["--resolve", &resolve, "-H", "ferry-namespace: default"],
        ]
        .concat(),
        &format!("https://iris.example.com:{port}/v2/models/iris/infer"),
    );
    assert_eq!(status, "200 2", "{error}");
    assert_eq!(served_subject(port, "iris.example.com"), "CN=ferry iris");
    assert_eq!(
        served_subject(port, "unknown.example.org"),
        "CN=ferry default"
    );

    // tritonclient over TLS, HTTP and gRPC.
    if let Some(python) = std::env::var_os("FERRY_INTEROP_PYTHON") {
        let script = r#"
import sys
import numpy as np
import gevent.ssl
import tritonclient.http as httpclient
import tritonclient.grpc as grpcclient
url, ca = sys.argv[1], sys.argv[2]
x = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
http = httpclient.InferenceServerClient(url, ssl=True, ssl_options={"ca_certs": ca}, ssl_context_factory=gevent.ssl.create_default_context)
inp = httpclient.InferInput("input", [1, 4], "FP32"); inp.set_data_from_numpy(x)
assert http.infer("iris", [inp]).as_numpy("label").tolist() == [0], "http"
grpc = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=ca)
inp = grpcclient.InferInput("input", [1, 4], "FP32"); inp.set_data_from_numpy(x)
assert grpc.infer("iris", [inp]).as_numpy("label").tolist() == [0], "grpc"
assert grpc.is_server_live()
print("tritonclient over TLS: ok")
"#;
        let output = Command::new(python)
            .args(["-c", script, &format!("127.0.0.1:{port}"), &path(&ca_path)])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}{}",
            stdout(&output),
            stderr(&output)
        );
    } else {
        assert!(
            std::env::var_os("FERRY_REQUIRE_INTEROP").is_none(),
            "FERRY_INTEROP_PYTHON is not set"
        );
        eprintln!("SKIPPED tritonclient over TLS: FERRY_INTEROP_PYTHON is not set");
    }

    // An open connection, before the certificate changes.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut open = connector.connect(name, tcp).await.unwrap();
    let ready = b"GET /v2/health/ready HTTP/1.1\r\nhost: localhost\r\n\r\n";
    async fn answer(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
        let mut buffer = vec![0u8; 4096];
        let n = stream.read(&mut buffer).await.unwrap();
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    }
    open.write_all(ready).await.unwrap();
    assert!(answer(&mut open).await.starts_with("HTTP/1.1 200"));

    // Renewed on disk: new connections get it within seconds, no restart.
    leaf(
        &ca,
        &certs,
        "default",
        "ferry renewed",
        &["localhost", "127.0.0.1"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_subject(port, "localhost") != "CN=ferry renewed" {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, error) = curl(&ca_path, &post, &url);
    assert_eq!(status, "200 2", "{error}");
    // The connection opened before still works.
    open.write_all(ready).await.unwrap();
    assert!(answer(&mut open).await.starts_with("HTTP/1.1 200"));
    // A broken file on disk keeps the last good certificate.
    std::fs::write(&default_cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(served_subject(port, "localhost"), "CN=ferry renewed");
    assert!(daemon.log().contains("do not load"), "{}", daemon.log());
}

#[test]
fn tls_flags_are_checked_by_name() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let up = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["up", "--router-addr", "127.0.0.1:0", "--state-dir"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap()
    };
    let missing = dir.join("missing.crt").display().to_string();
    let output = up(&["--tls-cert", &missing, "--tls-key", &missing]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--tls-cert") && stderr(&output).contains("missing.crt"),
        "{}",
        stderr(&output)
    );
    let output = up(&["--tls-cert", &missing]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("one key per certificate"),
        "{}",
        stderr(&output)
    );
}
