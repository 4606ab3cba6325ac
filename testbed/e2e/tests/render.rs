//! `ferry render` prints objects the real cluster runs: applied with kubectl, its Deployment's
//! pods (pinned to the process node) become Ready through the rendered probes and answer OIP
//! requests at their pod IPs; the Service selects them by revision.

use std::path::PathBuf;
use std::time::Duration;

use ferry_testbed_e2e::{TempNamespace, admin_client, eventually, kubectl};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;

#[tokio::test]
async fn rendered_objects_run_on_the_cluster() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "render").await.unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let manifest = format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: {}}}\n    minReplicas: 2\n",
        repo.join("models/iris-v1.onnx").display()
    );
    let ferry = repo.join("testbed/run/bin/ferry");
    let mut child = std::process::Command::new(&ferry)
        .args([
            "render",
            "-f",
            "-",
            "-n",
            &ns.name,
            "--node-selector",
            "ferry.dev/process-node=true",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ferry render runs");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), manifest.as_bytes()).unwrap();
    let rendered = child.wait_with_output().unwrap();
    assert!(rendered.status.success());
    let yaml = String::from_utf8(rendered.stdout).unwrap();
    let applied = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "ferry",
            "-f",
            "-",
        ],
        Some(&yaml),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let name = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    assert!(name.starts_with("iris-"), "{name}");
    eventually(
        "the rendered Deployment is available",
        Duration::from_secs(90),
        || {
            let deployments = deployments.clone();
            let name = name.clone();
            async move {
                let status = deployments.get(&name).await.ok()?.status?;
                (status.available_replicas == Some(2)).then_some(())
            }
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels(&format!("ferry.dev/revision={name}")))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    let http = reqwest::Client::new();
    for pod in &list.items {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        assert!(ip.starts_with("127.2."), "{ip}");
        let response = http
            .post(format!("http://{ip}:8080/v2/models/iris/infer"))
            .json(&serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let service = services.get(&name).await.unwrap();
    let selector = service.spec.unwrap().selector.unwrap();
    assert_eq!(selector.get("ferry.dev/revision"), Some(&name));
    ns.delete().await;
}
