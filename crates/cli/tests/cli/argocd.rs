//! Argo CD's health checks for Ferry's resources (`deploy/argocd/*.lua`), run by a real Lua 5.1
//! interpreter (Argo CD's gopher-lua is 5.1) on objects local mode itself produced: a ready
//! service is Healthy, a canary moving traffic Progressing, one waiting for promotion or
//! paused Suspended, an aborted one and a broken model Degraded; a pool whose model fits on no
//! server Degraded, a ready one Healthy. Also: the scripts' failure reasons are the core's, and
//! the ConfigMap users install carries the scripts verbatim.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::local::harness::*;

/// `value` as a Lua table constructor (what Argo CD hands the script as `obj`).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 32 => out.push_str(&format!("\\{:03}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::String(k.clone())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua() -> Option<&'static str> {
    let found = Command::new("lua5.1").arg("-v").output().is_ok();
    if !found && std::env::var_os("FERRY_REQUIRE_LUA").is_some() {
        panic!("FERRY_REQUIRE_LUA is set and lua5.1 is not installed (apt-get install lua5.1)");
    }
    found.then_some("lua5.1")
}

/// The health Argo CD would show for `object` by `script` (deploy/argocd/SCRIPT): status, message.
fn health(lua: &str, script: &str, object: &Value) -> (String, String) {
    let path = repo().join("deploy/argocd").join(script);
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua_literal(object),
        lua_literal(&Value::String(path.display().to_string()))
    );
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), program.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

fn object(daemon: &Daemon, kind: &str, name: &str) -> Value {
    let out = daemon.ferry(&["get", kind, name, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until Argo CD would show `name` (of `kind`, by `script`) as `want` with a message
/// that contains `saying`; the message.
async fn until_health(
    lua: &str,
    daemon: &Daemon,
    (kind, name, script): (&str, &str, &str),
    want: &str,
    saying: &str,
) -> String {
    let mut last = (String::new(), String::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        last = health(lua, script, &object(daemon, kind, name));
        if last.0 == want && last.1.contains(saying) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{kind} {name}: still {last:?}, not {want}: {}",
        object(daemon, kind, name)
    );
}

fn canary(model_file: &str, steps: &str) -> String {
    manifest("canary", model_file, 1).replace(
        "  rollout:\n    maxSurge: 1\n    maxUnavailable: 0\n",
        &format!("  rollout:\n    strategy: canary\n    steps: {steps}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_health_follows_what_ferry_reports() {
    let Some(lua) = lua() else {
        return;
    };
    let daemon = Daemon::start("argocd-health");
    // No status yet: Progressing, by the script's generation rule.
    let fresh = serde_json::json!({"metadata": {"name": "x", "generation": 1}, "spec": {}});
    assert_eq!(health(lua, "inferenceservice.lua", &fresh).0, "Progressing");

    daemon.apply_and_wait(&manifest("iris", "iris-v1.onnx", 1));
    let message = until_health(
        lua,
        &daemon,
        ("isvc", "iris", "inferenceservice.lua"),
        "Healthy",
        "",
    )
    .await;
    assert!(message.starts_with("Serving: serving iris-"), "{message}");

    let broken = daemon.apply(&manifest("broken", "broken.onnx", 1), &[]);
    assert!(broken.status.success(), "{}", stderr(&broken));
    let message = until_health(
        lua,
        &daemon,
        ("isvc", "broken", "inferenceservice.lua"),
        "Degraded",
        "",
    )
    .await;
    assert!(message.contains("replica broken-"), "{message}");

    // A canary: Progressing while its timed step moves traffic, Suspended at a manual gate and
    // when paused, Degraded once aborted.
    daemon.apply_and_wait(&canary("iris-v1.onnx", "[{weight: 20, pause: 1h}]"));
    let started = daemon.apply(
        &canary(
            "iris-v2.onnx",
            "[{weight: 20, pause: 1h}, {weight: 50, pause: untilPromoted}]",
        ),
        &[],
    );
    assert!(started.status.success(), "{}", stderr(&started));
    let message = until_health(
        lua,
        &daemon,
        ("isvc", "canary", "inferenceservice.lua"),
        "Progressing",
        "20% of traffic",
    )
    .await;
    assert!(message.contains("at step 0, 20% of traffic"), "{message}");
    let promoted = daemon.ferry(&["rollout", "promote", "canary"]);
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    let message = until_health(
        lua,
        &daemon,
        ("isvc", "canary", "inferenceservice.lua"),
        "Suspended",
        "Waiting",
    )
    .await;
    assert!(
        message.starts_with("Waiting for promotion: revision canary-")
            && message.contains("50% of traffic"),
        "{message}"
    );
    assert!(
        daemon
            .ferry(&["rollout", "pause", "canary"])
            .status
            .success()
    );
    let message = until_health(
        lua,
        &daemon,
        ("isvc", "canary", "inferenceservice.lua"),
        "Suspended",
        "paused",
    )
    .await;
    assert!(message.starts_with("Rollout paused: "), "{message}");
    assert!(
        daemon
            .ferry(&["rollout", "abort", "canary"])
            .status
            .success()
    );
    let message = until_health(
        lua,
        &daemon,
        ("isvc", "canary", "inferenceservice.lua"),
        "Degraded",
        "",
    )
    .await;
    assert!(message.starts_with("RolloutAborted"), "{message}");

    // Pools: a model too large for every server is Degraded, a pool that holds its model Healthy.
    let pools = "apiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata:\n  name: tiny\nspec:\n  replicas: 1\n  memoryBudget: \"1Ki\"\n---\napiVersion: ferry.dev/v1alpha1\nkind: ServerPool\nmetadata:\n  name: roomy\nspec:\n  replicas: 1\n  memoryBudget: \"256Mi\"\n";
    let pooled = |name: &str, pool: &str| {
        format!(
            "---\napiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: {name}\nspec:\n  predictor:\n    pool: {pool}\n    model:\n      format: onnx\n      uri: {}\n",
            model("iris-v1.onnx")
        )
    };
    let applied = daemon.apply(
        &format!(
            "{pools}{}{}",
            pooled("big", "tiny"),
            pooled("fits", "roomy")
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let message = until_health(
        lua,
        &daemon,
        ("serverpool", "tiny", "serverpool.lua"),
        "Degraded",
        "",
    )
    .await;
    assert!(
        message.starts_with("InferenceService big: ModelTooLarge"),
        "{message}"
    );
    let message = until_health(
        lua,
        &daemon,
        ("serverpool", "roomy", "serverpool.lua"),
        "Healthy",
        "",
    )
    .await;
    assert!(message.starts_with("ServersReady"), "{message}");
}

#[test]
fn the_scripts_failure_reasons_are_the_cores_and_the_config_map_carries_them_verbatim() {
    let script =
        std::fs::read_to_string(repo().join("deploy/argocd/inferenceservice.lua")).unwrap();
    let start = script.find("local failures = {").unwrap() + "local failures = {".len();
    let table = &script[start..start + script[start..].find('}').unwrap()];
    let mut listed: Vec<&str> = table
        .split(',')
        .filter_map(|entry| entry.split('=').next())
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .collect();
    listed.sort();
    let mut failures: Vec<&str> = ferry_core::reason::Reason::ALL
        .iter()
        .filter(|r| r.is_failure())
        .map(|r| r.as_str())
        .collect();
    failures.sort();
    assert_eq!(listed, failures);

    let config_map: ferry_api::k8s_openapi::api::core::v1::ConfigMap = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("deploy/argocd/argocd-cm.yaml")).unwrap(),
    )
    .unwrap();
    let data = config_map.data.unwrap();
    for (kind, file) in [
        ("InferenceService", "inferenceservice.lua"),
        ("ServerPool", "serverpool.lua"),
    ] {
        assert_eq!(
            data[&format!("resource.customizations.health.ferry.dev_{kind}")],
            std::fs::read_to_string(repo().join("deploy/argocd").join(file)).unwrap(),
            "deploy/argocd/argocd-cm.yaml's {kind} script differs from {file}"
        );
    }
}
