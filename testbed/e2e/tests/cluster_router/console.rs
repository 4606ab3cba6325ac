//! The web console for a cluster: `ferry console --kubeconfig` on this machine with the admin
//! kubeconfig, the same page and browser run as local mode's (tests/browser/console.mjs,
//! Debian's Chromium through playwright-core), against the operator and router of deploy/
//! under live traffic through the router pod: iris Ready with its requests plotted, a canary's
//! share in the split plot, Promote → Succeeded and every answer from the canary, a crashing
//! model's reason; no request failed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::*;

/// Node, Chromium and playwright-core (`make browser-deps`), or `None` (the test skips)
/// unless FERRY_REQUIRE_BROWSER is set.
fn browser_tools() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok();
    let chromium = Path::new("/usr/bin/chromium").exists();
    let installed = dir.join("node_modules/playwright-core").exists();
    if node && chromium && installed {
        return Some(dir);
    }
    assert!(
        std::env::var_os("FERRY_REQUIRE_BROWSER").is_none(),
        "FERRY_REQUIRE_BROWSER is set: node {node}, /usr/bin/chromium {chromium}, tests/browser/node_modules {installed}"
    );
    None
}

/// `ferry console --kubeconfig` and the login link it printed; killed on drop.
struct Console(std::process::Child);

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_drives_a_canary_on_the_cluster_in_chromium() {
    let Some(client) = admin_client().await else {
        return;
    };
    let Some(browser) = browser_tools() else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "console").await.unwrap();
    serving_v1(&router_ip, &ns.name).await;

    let kubeconfig = std::env::var("FERRY_TESTBED_KUBECONFIG").unwrap();
    let mut child = std::process::Command::new(ferry_testbed_e2e::ferry_binary())
        .args([
            "console",
            "--kubeconfig",
            &kubeconfig,
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ferry console starts");
    let stdout = child.stdout.take().unwrap();
    let console = Console(child);
    let url = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line.trim().strip_prefix("console: ").map(str::to_string)
    })
    .await
    .unwrap()
    .expect("ferry console prints its link");

    let files = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&ns.name);
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("canary.yaml"),
        canary_manifest(
            "iris-v2.onnx",
            "    strategy: canary\n    steps: [{weight: 30, pause: untilPromoted}]\n",
        ),
    )
    .unwrap();
    std::fs::write(
        files.join("broken.yaml"),
        manifest("broken.onnx")
            .replace("{name: iris}", "{name: broken}")
            .replace("minReplicas: 2", "minReplicas: 1"),
    )
    .unwrap();
    let kubectl_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/kubectl");
    let apply = serde_json::json!([
        kubectl_path.display().to_string(),
        "--kubeconfig",
        kubeconfig,
        "apply",
        "--server-side",
        "-n",
        ns.name,
        "-f"
    ]);
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    std::fs::create_dir_all(&shots).unwrap();

    let load = RouterLoad::start_with(&router_ip, &ns.name, 2);
    let mut command = std::process::Command::new("node");
    command
        .arg(browser.join("console.mjs"))
        .current_dir(&browser)
        .env("CONSOLE_URL", &url)
        .env("CLUSTER", "1")
        .env("NAMESPACE", &ns.name)
        .env("APPLY", apply.to_string())
        .env("CANARY_FILE", files.join("canary.yaml"))
        .env("BROKEN_FILE", files.join("broken.yaml"))
        .env("SHOTS", &shots)
        .env("PREFIX", "console-cluster-");
    let out = tokio::task::spawn_blocking(move || command.output().expect("node runs"))
        .await
        .unwrap();
    let samples = load.finish().await;
    drop(console);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: Vec<_> = samples
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(3)]
    );
    let revisions: std::collections::BTreeSet<&str> =
        samples.iter().map(|(_, _, r)| r.as_str()).collect();
    assert!(
        revisions.len() >= 2,
        "both revisions answered: {revisions:?}"
    );
    for shot in ["service", "canary", "promoted", "failing"] {
        let png = std::fs::read(shots.join(format!("console-cluster-{shot}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 20_000,
            "{shot}: {} bytes",
            png.len()
        );
    }
    ns.delete().await;
}
