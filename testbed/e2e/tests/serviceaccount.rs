//! A pod with a ServiceAccount works unmodified on a process node: the agent projects a bound
//! token, the CA and the namespace at /var/run/secrets/kubernetes.io/serviceaccount (private
//! mount namespace), and the in-cluster client inside (`ferry doctor kube`, kube-rs
//! `Client::try_default()`) gets exactly its RBAC: pods listed, secrets refused.

use std::path::PathBuf;
use std::time::Duration;

use ferry_testbed_e2e::{TempNamespace, admin_client, eventually};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

#[tokio::test]
async fn an_in_cluster_client_gets_exactly_its_role() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "sa-rbac").await.unwrap();
    let pp = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    accounts
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap(),
        )
        .await
        .unwrap();
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    roles
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "get"]}]
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
    bindings
        .create(&pp, &serde_json::from_value(json!({
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
        })).unwrap())
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &pp,
        &serde_json::from_value(json!({
            "metadata": {"name": "doctor"},
            "spec": {
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "nodeSelector": {"ferry.dev/process-node": "true"},
                "containers": [{
                    "name": "doctor",
                    "image": "registry.example/ferry:latest",
                    "args": ["doctor", "kube", "--check", "list pods", "--check", "list secrets"]
                }]
            }
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let phase = eventually("the doctor pod finishes", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let phase = pods.get("doctor").await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        }
    })
    .await;
    let log_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../run/agent-logs")
        .join(format!("{}_doctor_doctor.log", ns.name));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains(&format!("namespace: {}", ns.name)), "{log}");
    assert!(log.contains("list pods: allowed"), "{log}");
    assert!(log.contains("list secrets: forbidden (403"), "{log}");
    ns.delete().await;
}

#[tokio::test]
async fn an_image_other_than_ferry_fails_with_a_reason() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "bad-image").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "nginx"},
            "spec": {
                "nodeSelector": {"ferry.dev/process-node": "true"},
                "containers": [{"name": "web", "image": "nginx:1.27"}]
            }
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let (reason, message) = eventually(
        "the container waits with the pull's reason",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            async move {
                let status = pods.get("nginx").await.ok()?.status?;
                let waiting = status.container_statuses?.first()?.state.clone()?.waiting?;
                // The agent reports ContainerCreating until it has looked at the image,
                // as a kubelet does before its pull fails; the verdict comes after.
                let reason = waiting.reason.filter(|r| r != "ContainerCreating")?;
                Some((reason, waiting.message.unwrap_or_default()))
            }
        },
    )
    .await;
    assert_eq!(reason, "ErrImagePull");
    assert!(
        message.contains("nginx:1.27") && message.contains("process node"),
        "{message}"
    );
    ns.delete().await;
}
