//! `ferry fetch URI FILE`, the init step of a ServingRuntime's pod for remote models: the real
//! binary downloads from a real HTTP server on loopback through the node's cache (a second fetch
//! downloads nothing); a missing model fails the step with the store's answer, and no partial
//! file is left where the runtime would look.

use axum::Router;
use axum::routing::get;
use tokio::process::Command;

/// A real HTTP server on loopback answering `/iris.onnx` with `body` (anything else: 404).
async fn serve(body: Vec<u8>) -> String {
    let app = Router::new().route("/iris.onnx", get(move || async move { body.clone() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

async fn fetch(url: &str, file: &std::path::Path) -> std::process::Output {
    let cache = std::env::temp_dir().join(format!("ferry-fetch-cache-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["fetch", url])
        .arg(file)
        .arg("--cache-dir")
        .arg(cache)
        .output()
        .await
        .expect("ferry runs")
}

#[tokio::test]
async fn fetch_downloads_a_model_and_fails_by_the_http_status() {
    let model = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/iris-v1.onnx"),
    )
    .unwrap();
    let origin = serve(model.clone()).await;
    let dir = std::env::temp_dir().join(format!("ferry-fetch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let file = dir.join("iris.onnx");
    let out = fetch(&format!("{origin}/iris.onnx"), &file).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), model);
    assert!(String::from_utf8_lossy(&out.stdout).contains("bytes downloaded"));
    // A second replica's init step on the node: the cache has it.
    let second = dir.join("second.onnx");
    let out = fetch(&format!("{origin}/iris.onnx"), &second).await;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("found in the cache"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(&second).unwrap(), model);
    std::fs::remove_file(&second).unwrap();

    let missing = dir.join("gone.onnx");
    let out = fetch(&format!("{origin}/gone.onnx"), &missing).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ModelFetchFailed: {origin}/gone.onnx: 404")),
        "{stderr}"
    );
    assert!(!missing.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["iris.onnx"], "no partial download left");

    let out = fetch("ftp://models/iris.onnx", &dir.join("x")).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scheme \"ftp\" is not supported"));
    std::fs::remove_dir_all(&dir).unwrap();
}
