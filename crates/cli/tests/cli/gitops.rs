//! The GitOps loop in local mode, with the real CLI against a real `ferry up`: edit a manifest
//! → `ferry diff` (exit 1, the change as a unified diff, nothing applied) → `ferry apply` →
//! `ferry diff` (exit 0) → `ferry history` (who, when, why, the diff of every change) →
//! `ferry rollout undo` → history records it too; refused manifests exit 2 naming the field.

use crate::local::harness::*;

fn status_code(output: &std::process::Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_apply_history_undo_is_one_audited_loop() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("local-gitops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let daemon = Daemon::start_env(dir.clone(), &[], &[("FERRY_USER".into(), "alice".into())]);
    let file = dir.join("iris.yaml");
    let file_arg = file.display().to_string();
    std::fs::write(&file, manifest("iris", "iris-v1.onnx", 1)).unwrap();

    // Nothing applied yet: the whole object is new.
    let diff = daemon.ferry(&["diff", "-f", &file_arg]);
    assert_eq!(status_code(&diff), 1, "{}", stderr(&diff));
    let text = stdout(&diff);
    assert!(
        text.starts_with(
            "--- a/InferenceService/default/iris\n+++ b/InferenceService/default/iris\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("+    minReplicas: 1\n") && text.contains("+  name: iris\n"),
        "{text}"
    );
    assert_eq!(
        status_code(&daemon.ferry(&["get", "isvc", "iris"])),
        1,
        "a dry run keeps nothing"
    );

    daemon.apply_and_wait(&std::fs::read_to_string(&file).unwrap());
    let same = daemon.ferry(&["diff", "-f", &file_arg]);
    assert_eq!(status_code(&same), 0, "{}{}", stdout(&same), stderr(&same));
    assert_eq!(stdout(&same), "");

    // Edit the file: the diff is exactly the model's line, and the dry run changes nothing.
    std::fs::write(&file, manifest("iris", "iris-v2.onnx", 1)).unwrap();
    let diff = daemon.ferry(&["diff", "-f", &file_arg]);
    assert_eq!(status_code(&diff), 1, "{}", stderr(&diff));
    let text = stdout(&diff);
    let changed: Vec<&str> = text
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        changed,
        [
            format!("-      uri: {}", model("iris-v1.onnx")),
            format!("+      uri: {}", model("iris-v2.onnx")),
        ],
        "{text}"
    );
    let live = daemon.client().get("default", "iris").await.unwrap();
    assert_eq!(
        live.metadata.generation,
        Some(1),
        "the diff applied nothing"
    );

    let applied = daemon.ferry(&["apply", "-f", &file_arg, "--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(status_code(&daemon.ferry(&["diff", "-f", &file_arg])), 0);

    // The audit trail: created then configured, by alice, with the command and the diff.
    let history = stdout(&daemon.ferry(&["history", "iris"]));
    let headers: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with("change "))
        .collect();
    assert_eq!(headers.len(), 2, "{history}");
    assert!(headers[0].contains("by alice  created"), "{history}");
    assert!(
        headers[1].contains("by alice  configured")
            && headers[1].contains(&format!("(ferry apply -f {file_arg} --wait)")),
        "{history}"
    );
    assert!(
        history.contains(&format!("+      uri: {}", model("iris-v2.onnx"))),
        "{history}"
    );

    // Undo: recorded with its cause; the file now differs from the live object again.
    let undone = daemon.ferry(&["rollout", "undo", "iris"]);
    assert!(undone.status.success(), "{}", stderr(&undone));
    let history = stdout(&daemon.ferry(&["history", "isvc/iris"]));
    let last = history.lines().rfind(|l| l.starts_with("change ")).unwrap();
    assert!(
        last.contains("configured  (rollout undo (to revision iris-"),
        "{history}"
    );
    let undo = &history[history.rfind("change ").unwrap()..];
    assert!(
        undo.contains(&format!("\n+      uri: {}\n", model("iris-v1.onnx"))),
        "{history}"
    );
    let diff = daemon.ferry(&["diff", "-f", &file_arg]);
    assert_eq!(status_code(&diff), 1);
    assert!(
        stdout(&diff).contains(&format!("+      uri: {}", model("iris-v2.onnx"))),
        "{}",
        stdout(&diff)
    );

    // A refused manifest: exit 2, the field named, nothing recorded.
    std::fs::write(
        &file,
        manifest("iris", "iris-v2.onnx", 1).replace("minReplicas: 1", "minReplicas: -3"),
    )
    .unwrap();
    let refused = daemon.ferry(&["diff", "-f", &file_arg]);
    assert_eq!(status_code(&refused), 2, "{}", stdout(&refused));
    assert!(
        stderr(&refused).contains("spec.predictor.minReplicas"),
        "{}",
        stderr(&refused)
    );

    // Deleted, the trail stays.
    let deleted = daemon.ferry(&["delete", "isvc", "iris"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let history = stdout(&daemon.ferry(&["history", "iris"]));
    let headers: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with("change "))
        .collect();
    assert_eq!(headers.len(), 4, "{history}");
    assert!(
        headers[3].contains("by alice  deleted  (delete)"),
        "{history}"
    );
    let missing = daemon.ferry(&["history", "nothing-here"]);
    assert_eq!(status_code(&missing), 1);
    assert!(
        stderr(&missing).contains("not found"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn bash_completes_subcommands_from_the_generated_script() {
    let script = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("ferry.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    // What bash's programmable completion does on `ferry ro<TAB>` and `ferry rollout u<TAB>`.
    let complete = |words: &str, current: usize| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={current}; COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; _ferry ferry \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let top = complete("ferry ro", 1);
    assert_eq!(
        top.lines().collect::<Vec<_>>(),
        ["rollout", "router"],
        "{top}"
    );
    let nested = complete("ferry rollout u", 2);
    assert_eq!(nested.lines().collect::<Vec<_>>(), ["undo"], "{nested}");
    let diff_flags = complete("ferry diff --kube", 2);
    assert_eq!(
        diff_flags.lines().collect::<Vec<_>>(),
        ["--kubeconfig"],
        "{diff_flags}"
    );
}
