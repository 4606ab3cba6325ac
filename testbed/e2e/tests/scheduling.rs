//! The real scheduler and the real apiserver on kwok's fake GPU nodes: GPU requests are placed by
//! kube-scheduler (and refused with its reason), GPU quota is enforced by the apiserver.

use std::time::Duration;

use ferry_testbed_e2e::{TempNamespace, admin_client, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

fn gpu_pod_template(gpus: u32) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": "gpu-job"}},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "model",
                "image": "registry.invalid/model:1",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}
            }]
        }
    })
}

#[tokio::test]
async fn three_gpus_times_three_replicas_on_one_8_gpu_node_leaves_one_pending() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "gpu-sched").await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "gpu-job"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "gpu-job"}},
            "template": gpu_pod_template(3)
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let (running, pending_message) = eventually(
        "2 pods running and 1 unschedulable",
        Duration::from_secs(60),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=gpu-job"))
                    .await
                    .ok()?;
                let running = list
                    .items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count();
                let unschedulable: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| {
                        p.status
                            .as_ref()?
                            .conditions
                            .as_ref()?
                            .iter()
                            .find(|c| {
                                c.type_ == "PodScheduled"
                                    && c.status == "False"
                                    && c.reason.as_deref() == Some("Unschedulable")
                            })?
                            .message
                            .clone()
                    })
                    .collect();
                (list.items.len() == 3 && running == 2 && unschedulable.len() == 1)
                    .then(|| (running, unschedulable[0].clone()))
            }
        },
    )
    .await;
    assert_eq!(running, 2);
    assert!(
        pending_message.contains("Insufficient nvidia.com/gpu"),
        "{pending_message}"
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_gpu_quota_makes_the_apiserver_refuse_the_pod() {
    let Some(client) = admin_client().await else {
        return;
    };
    let ns = TempNamespace::create(&client, "gpu-quota").await.unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns.name);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "tenant-a"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "2"}}
    }))
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // The quota controller fills in status.hard before the admission plugin enforces it.
    eventually("quota status", Duration::from_secs(30), || {
        let quotas = quotas.clone();
        async move { quotas.get("tenant-a").await.ok()?.status?.hard.map(|_| ()) }
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let mut pod = gpu_pod_template(3);
    pod["metadata"]["name"] = json!("too-many-gpus");
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let error = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect_err("the quota refuses 3 GPUs");
    let text = error.to_string();
    assert!(text.contains("exceeded quota: tenant-a"), "{text}");
    assert!(text.contains("requests.nvidia.com/gpu=3"), "{text}");
    ns.delete().await;
}
