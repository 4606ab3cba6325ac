//! The CLI around local mode: `ferry doctor` names what is wrong (a model file, a taken port)
//! and what is right (the running daemon); `ferry get isvc -w` prints each change of a
//! service as it rolls out; `ferry apply --wait` on a terminal draws progress bars.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::local::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_what_is_wrong_and_what_is_right() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-doctor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, manifest("iris", "missing.onnx", 1)).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, manifest("iris", "iris-v1.onnx", 1)).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let state = dir.join("state");
    let doctor = |args: &[&str]| {
        Command::new(FERRY)
            .arg("doctor")
            .args(args)
            .env("FERRY_STATE_DIR", &state)
            .output()
            .unwrap()
    };

    let out = doctor(&["-f", bad.to_str().unwrap(), "--router-addr", &taken_addr]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok    state directory: "), "{text}");
    assert!(text.contains("note  ferry up: not running"), "{text}");
    assert!(
        text.contains(&format!("FAIL  router port: {taken_addr}: ")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAIL  model of default/iris (spec.predictor.model.uri): {}: No such file",
            model("missing.onnx")
        )),
        "{text}"
    );

    let daemon = Daemon::start_in(state.clone());
    let out = doctor(&[
        "-f",
        good.to_str().unwrap(),
        "--router-addr",
        &daemon.router,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok    ferry up: running (pid "), "{text}");
    assert!(
        text.contains(&format!(
            "ok    router port: {}: this ferry up's",
            daemon.router
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ok    model of default/iris (spec.predictor.model.uri): {} (554 bytes, readable)",
            model("iris-v1.onnx")
        )),
        "{text}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_each_change_as_a_service_rolls_out() {
    let daemon = Daemon::start("get-watch");
    let mut watch = Command::new(FERRY)
        .args(["get", "isvc", "-w"])
        .env("FERRY_STATE_DIR", &daemon.dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = watch.stdout.take().unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(lines).lines() {
            let line = line.unwrap();
            let ready = line.split_whitespace().nth(2) == Some("True");
            seen.push(line);
            if ready {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 2));
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        seen[0].starts_with("NAME") && seen[0].contains("READY"),
        "{seen:?}"
    );
    let rows: Vec<&String> = seen[1..].iter().collect();
    assert!(
        rows.len() >= 2,
        "a row per change, not one at the end: {seen:?}"
    );
    assert!(rows.iter().all(|r| r.starts_with("iris ")), "{seen:?}");
    assert_eq!(
        rows.last().unwrap().split_whitespace().nth(2),
        Some("True"),
        "{seen:?}"
    );
    assert_ne!(
        rows[0].split_whitespace().nth(2),
        Some("True"),
        "the first row is before it is ready: {seen:?}"
    );

    let refused = daemon.ferry(&["get", "quota", "-w"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--watch follows inferenceservices"),
        "{}",
        stderr(&refused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_wait_draws_a_progress_bar_on_a_terminal() {
    let daemon = Daemon::start("progress");
    let file = daemon.dir.join("iris.yaml");
    std::fs::write(&file, manifest("iris", "iris-v1.onnx", 2)).unwrap();
    // `script` gives the command a terminal, as a person's shell would.
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("{FERRY} apply -f {} --wait", file.display()))
        .arg("/dev/null")
        .env("FERRY_STATE_DIR", &daemon.dir)
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("default/iris ["), "a bar: {text:?}");
    assert!(text.contains("2/2 ready"), "the bar ends full: {text:?}");
    assert!(
        !text.contains("default/iris: waiting"),
        "no line-by-line output on a terminal: {text:?}"
    );
}
