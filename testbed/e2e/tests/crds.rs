//! Installing Ferry on the real apiserver, and GitOps against it: the same manifest `ferry
//! apply` takes is accepted by `kubectl apply`, unknown fields are refused by the apiserver's
//! strict field validation, `kubectl get isvc` shows the printer columns and `kubectl explain`
//! the types' docs; `ferry diff --kubeconfig` shows what an apply would change (server-side
//! dry-run); the Helm chart (deploy/helm/ferry) renders exactly deploy/'s manifests with
//! default values, its values change what they say, and the real helm installs it.

#[path = "crds/helm.rs"]
mod helm;

use std::time::Duration;

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_in, eventually, ferry_binary, install_crds,
    install_operator, install_router, isvc_json, kubectl, kubectl_table,
};

#[tokio::test]
async fn the_local_manifest_applies_to_the_cluster_unchanged() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    let ns = TempNamespace::create(&client, "crds").await.unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/iris.yaml"
    ))
    .unwrap();

    apply_in(&ns.name, &example);
    let table = kubectl_table(&["isvc", "-n", &ns.name]);
    assert_eq!(
        table[0],
        ["NAME", "URL", "READY", "REVISION", "REPLICAS", "AGE"],
        "{table:?}"
    );
    assert_eq!(table[1][0], "iris", "{table:?}");

    let typo = example.replace("minReplicas: 2", "minReplicas: 2\n    replicaz: 3");
    let refused = kubectl(
        &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
        Some(&typo),
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("replicaz"),
        "the apiserver names the unknown field: {message}"
    );

    let explained = kubectl(&["explain", "inferenceservice.spec.predictor"], None);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(text.contains("The model server replicas"), "{text}");
    ns.delete().await;
}

#[tokio::test]
async fn ferry_diff_shows_what_an_apply_would_change_in_the_cluster() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    let ns = TempNamespace::create(&client, "diff").await.unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/iris.yaml"
    ))
    .unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("iris.yaml");
    let diff = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(ferry_binary())
            .args(["diff", "-n", &ns.name, "-f"])
            .arg(&file)
            .arg("--kubeconfig")
            .arg(std::env::var_os("FERRY_TESTBED_KUBECONFIG").unwrap())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Not there yet: all of it is new, and the dry run created nothing.
    let (code, text, err) = diff(&example);
    assert_eq!(code, 1, "{text}{err}");
    let path = format!("InferenceService/{}/iris", ns.name);
    assert!(
        text.starts_with(&format!("--- a/{path}\n+++ b/{path}\n")),
        "{text}"
    );
    assert!(text.contains("+    minReplicas: 2\n"), "{text}");
    assert!(
        isvc_json(&ns.name, "iris").is_null(),
        "a dry run creates nothing"
    );

    apply_in(&ns.name, &example);
    let (code, text, err) = diff(&example);
    assert_eq!((code, text.as_str()), (0, ""), "{err}");

    let (code, text, err) = diff(&example.replace("minReplicas: 2", "minReplicas: 3"));
    assert_eq!(code, 1, "{err}");
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
        ["-    minReplicas: 2", "+    minReplicas: 3"],
        "{text}"
    );
    let live = eventually("the live object", Duration::from_secs(5), || {
        let ns = ns.name.clone();
        async move { isvc_json(&ns, "iris")["spec"]["predictor"]["minReplicas"].as_u64() }
    })
    .await;
    assert_eq!(live, 2, "the dry run changed nothing");

    // Refused by the apiserver's validation: exit 2, the field named.
    let (code, _, err) =
        diff(&example.replace("minReplicas: 2", "minReplicas: 2\n    replicaz: 3"));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("replicaz"), "{err}");
    ns.delete().await;
}

#[tokio::test]
async fn ferry_doctor_checks_the_cluster_it_is_given() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    install_router(&client).await;
    let out = std::process::Command::new(ferry_binary())
        .args(["doctor", "--kubeconfig"])
        .arg(std::env::var_os("FERRY_TESTBED_KUBECONFIG").unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ok    cluster: ") && text.contains("Kubernetes v1.34"),
        "{text}"
    );
    for crd in [
        "inferenceservices",
        "serverpools",
        "servingruntimes",
        "clusterservingruntimes",
    ] {
        assert!(
            text.contains(&format!("ok    CRD: {crd}.ferry.dev")),
            "{text}"
        );
    }
    assert!(
        text.contains("ok    ferry-operator: ") && text.contains("ok    ferry-router: "),
        "{text}"
    );
    assert!(
        text.contains("ok    may create inferenceservices in default: yes"),
        "{text}"
    );
}

#[tokio::test]
async fn ferry_apply_records_who_and_why_and_history_lists_each_generation() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    let ns = TempNamespace::create(&client, "audit").await.unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/iris.yaml"
    ))
    .unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("iris.yaml");
    let kubeconfig = std::env::var("FERRY_TESTBED_KUBECONFIG").unwrap();
    let file_arg = file.display().to_string();
    let ferry = |args: &[&str]| {
        let out = std::process::Command::new(ferry_binary())
            .args(args)
            .args(["-n", &ns.name, "--kubeconfig", &kubeconfig])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    std::fs::write(&file, &example).unwrap();
    let (code, text, err) = ferry(&["apply", "-f", &file_arg]);
    assert_eq!(code, 0, "{text}{err}");
    assert_eq!(
        text.trim(),
        format!("inferenceservice/{}/iris serverside-applied", ns.name)
    );
    let cause = isvc_json(&ns.name, "iris")["metadata"]["annotations"]["ferry.dev/change-cause"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The test bed's admin certificate is CN=admin: the apiserver's own name for the user.
    assert_eq!(
        cause,
        format!(
            "admin: ferry apply -f {file_arg} -n {} --kubeconfig {kubeconfig}",
            ns.name
        )
    );
    let (code, text, err) = ferry(&["diff", "-f", &file_arg]);
    assert_eq!(
        (code, text.as_str()),
        (0, ""),
        "the change cause is no difference: {err}"
    );

    let history = |generations: usize| {
        let ferry = &ferry;
        async move {
            let (code, text, _) = ferry(&["history", "iris"]);
            (code == 0 && text.lines().count() == generations).then_some(text)
        }
    };
    let text = eventually(
        "the operator's SpecChanged Event",
        Duration::from_secs(60),
        || history(1),
    )
    .await;
    assert!(
        text.contains(&format!("generation 1: by {cause}")),
        "{text}"
    );

    std::fs::write(&file, example.replace("minReplicas: 2", "minReplicas: 1")).unwrap();
    let (code, _, err) = ferry(&["apply", "-f", &file_arg]);
    assert_eq!(code, 0, "{err}");
    let text = eventually(
        "a second SpecChanged Event",
        Duration::from_secs(60),
        || history(2),
    )
    .await;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("generation 1: by admin: ferry apply"),
        "{text}"
    );
    assert!(
        lines[1].contains("generation 2: by admin: ferry apply"),
        "{text}"
    );
    ns.delete().await;
}
