//! `ferry fetch URL FILE`, the init step of a ServingRuntime's pod for models named by URLs: the
//! real binary downloads from a real HTTP server on loopback; a missing model fails the step with
//! the HTTP status, and no partial file is left where the runtime would look.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

/// An HTTP/1.1 server on loopback answering `/iris.onnx` with `body`, anything else 404.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            let (status, payload): (&str, &[u8]) = if request_line.starts_with("GET /iris.onnx ") {
                ("200 OK", &body)
            } else {
                ("404 Not Found", b"not here")
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                payload.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(payload);
        }
    });
    format!("http://{addr}")
}

fn fetch(url: &str, file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["fetch", url])
        .arg(file)
        .output()
        .expect("ferry runs")
}

#[test]
fn fetch_downloads_a_model_and_fails_by_the_http_status() {
    let model = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/iris-v1.onnx"),
    )
    .unwrap();
    let origin = serve(model.clone());
    let dir = std::env::temp_dir().join(format!("ferry-fetch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let file = dir.join("iris.onnx");
    let out = fetch(&format!("{origin}/iris.onnx"), &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), model);

    let missing = dir.join("gone.onnx");
    let out = fetch(&format!("{origin}/gone.onnx"), &missing);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 404"), "{stderr}");
    assert!(!missing.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["iris.onnx"], "no partial download left");

    let out = fetch("/models/iris.onnx", &dir.join("x"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an http:// or https:// URL"));
    std::fs::remove_dir_all(&dir).unwrap();
}
