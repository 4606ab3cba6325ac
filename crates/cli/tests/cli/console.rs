//! The web console in a real browser: `ferry up` serves it, live traffic flows through the
//! router, and `tests/browser/console.mjs` (playwright-core driving Debian's Chromium) signs
//! in with the printed link, sees iris Ready and its requests plotted, watches a canary's
//! share appear in the split plot, presses Promote and sees the phase change to Succeeded and
//! all answers move, then sees a broken revision's reason. Its screenshots land in docs/.

use crate::local::harness::*;
use std::path::PathBuf;

/// Node, Chromium and the installed playwright-core (`make browser-deps`), or `None` (the
/// test skips) unless FERRY_REQUIRE_BROWSER is set.
pub(crate) fn browser_tools() -> Option<PathBuf> {
    let dir = repo().join("tests/browser");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    let chromium = std::path::Path::new("/usr/bin/chromium").exists();
    let installed = dir.join("node_modules/playwright-core").exists();
    if node && chromium && installed {
        return Some(dir);
    }
    assert!(
        std::env::var_os("FERRY_REQUIRE_BROWSER").is_none(),
        "FERRY_REQUIRE_BROWSER is set: node {node}, /usr/bin/chromium {chromium}, tests/browser/node_modules {installed} (make browser-deps)"
    );
    None
}

fn canary_manifest() -> String {
    manifest("iris", "iris-v2.onnx", 2).replace(
        "  rollout:\n    maxSurge: 1\n    maxUnavailable: 0\n",
        "  rollout:\n    strategy: canary\n    steps: [{weight: 30, pause: untilPromoted}]\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_canary_and_promotes_it_in_chromium() {
    let Some(browser) = browser_tools() else {
        return;
    };
    let _cpu = CPU_HUNGRY.lock().await;
    let daemon = Daemon::start("console");
    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 2));
    let url = daemon
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("console: ").map(str::to_string))
        .expect("ferry up prints the console's link");
    assert!(url.contains("/console/#token="), "{url}");

    let files = daemon.dir.join("console-manifests");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("canary.yaml"), canary_manifest()).unwrap();
    std::fs::write(
        files.join("broken.yaml"),
        manifest("broken", "broken.onnx", 1),
    )
    .unwrap();
    let shots = repo().join("docs");
    std::fs::create_dir_all(&shots).unwrap();

    let load = Load::start(&daemon.router, "iris", 2);
    let mut command = std::process::Command::new("node");
    command
        .arg(browser.join("console.mjs"))
        .current_dir(&browser)
        .env("CONSOLE_URL", &url)
        .env("FERRY", FERRY)
        .env("FERRY_STATE_DIR", &daemon.dir)
        .env("CANARY_FILE", files.join("canary.yaml"))
        .env("BROKEN_FILE", files.join("broken.yaml"))
        .env("SHOTS", &shots);
    let out = tokio::task::spawn_blocking(move || command.output().expect("node runs"))
        .await
        .unwrap();
    let samples = load.finish().await;
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let (failures, by_revision) = summarize(&samples);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        by_revision.len() >= 2,
        "both revisions answered: {by_revision:?}"
    );
    for shot in [
        "console-service",
        "console-canary",
        "console-promoted",
        "console-failing",
    ] {
        let png = std::fs::read(shots.join(format!("{shot}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "{shot}.png: {} bytes",
            png.len()
        );
    }
}
