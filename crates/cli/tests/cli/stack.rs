//! examples/stack/README.md as written: `ferry up -f examples/stack/` runs the three services,
//! each autoscaled on its own metric, and every walkthrough block of the README (the shell
//! blocks after a `<!-- walkthrough -->` line) runs as it is, in order, with the real CLI and
//! curl, and says what the README says it says.

use std::time::Duration;

use serde_json::Value;

use crate::local::harness::*;

/// The README's walkthrough blocks, in order.
fn walkthrough() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("examples/stack/README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- walkthrough -->" {
            continue;
        }
        assert_eq!(
            lines.next(),
            Some("```sh"),
            "a walkthrough marker precedes a sh block"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_walkthrough_runs_as_written() {
    if !repo().join("models/minilm/model.onnx").exists() {
        assert!(
            std::env::var_os("FERRY_REQUIRE_MINILM").is_none(),
            "models/minilm is missing: run `make minilm`"
        );
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-stack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let daemon = Daemon::start_with(dir, &["-f", "examples/stack/"]);
    let client = daemon.client();
    eventually(
        "the three services are Ready",
        Duration::from_secs(180),
        || {
            let client = daemon.client();
            async move {
                let items = client.list(Some("default")).await.unwrap_or_default();
                items.len() == 3
                    && items.iter().all(|i| {
                        i.status.as_ref().is_some_and(|s| {
                            s.conditions
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                    })
            }
        },
    )
    .await;
    for (name, metric) in [
        ("router", "rps"),
        ("embeddings", "concurrency"),
        ("digits", "queueDepth"),
    ] {
        let isvc = client.get("default", name).await.unwrap();
        let autoscaling = isvc
            .status
            .unwrap()
            .autoscaling
            .unwrap_or_else(|| panic!("{name}: no autoscaling status"));
        assert_eq!(autoscaling.metric, metric, "{name}");
    }

    let bin = std::path::Path::new(FERRY).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let blocks = walkthrough();
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let mut outputs = Vec::new();
    for block in &blocks {
        let out = std::process::Command::new("sh")
            .args(["-ec", block])
            .current_dir(repo())
            .env("PATH", &path)
            .env("FERRY_STATE_DIR", &daemon.dir)
            .env("ROUTER", &daemon.router)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{block}\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        outputs.push(stdout(&out));
    }
    // ferry get -o wide names each metric; predict's table gives iris's labels.
    assert!(outputs[0].contains("AUTOSCALE"), "{}", outputs[0]);
    let labels: Vec<&str> = outputs[0]
        .lines()
        .filter(|l| l.contains("router-"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(labels.ends_with(&["0", "2"]), "{}", outputs[0]);
    assert!(outputs[1].contains("\"shape\":[2,384]"), "{}", outputs[1]);
    let digit = outputs[2]
        .lines()
        .find(|l| l.starts_with("0 "))
        .unwrap_or_default();
    assert_eq!(
        digit.split_whitespace().nth(1),
        Some("0"),
        "the handwritten 0 is a 0: {}",
        outputs[2]
    );
    assert!(outputs[2].contains("ColdStart"), "{}", outputs[2]);
    let digits: Value =
        serde_json::to_value(client.get("default", "digits").await.unwrap()).unwrap();
    assert!(
        digits["status"]["autoscaling"]["desiredReplicas"].as_u64() >= Some(1),
        "{digits}"
    );
}
