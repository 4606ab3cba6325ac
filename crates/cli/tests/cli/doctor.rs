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
    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 1));
    let mut watch = Command::new(FERRY)
        .args(["get", "isvc", "-w"])
        .env("FERRY_STATE_DIR", &daemon.dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = watch.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(lines).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a line from ferry get -w")
            .expect("ferry get -w runs");
        seen.push(line.clone());
        line
    };
    // The table as it is: a header and v1's row.
    assert!(next().await.starts_with("NAME"));
    let first = next().await;
    let v1 = first.split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(first.split_whitespace().nth(2), Some("True"), "{first}");
    // A rolling update: rows as it goes, until the new revision is the one shown Ready.
    let applied = daemon.apply(&manifest("iris", "iris-v2.onnx", 1), &[]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    loop {
        let row = next().await;
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], "iris", "{row}");
        if cells[3] != v1 && cells[2] == "True" && cells[4] == "1/1" {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        !seen[2..].iter().any(|r| r.starts_with("NAME")),
        "one header: {seen:?}"
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
