//! TLS at the router in a cluster: deploy/router.yaml's Deployment with a `kubernetes.io/tls`
//! Secret mounted and `FERRY_TLS_CERT` / `FERRY_TLS_KEY` pointing into it (as README shows)
//! serves inference over HTTPS (HTTP/2 by ALPN) to curl trusting the test CA, and refuses
//! plain HTTP on that port.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_deploy, eventually, install_crds, install_router, iris_body,
    iris_manifest, kubectl,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    EnvVar, Probe, Secret, SecretVolumeSource, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use super::latest_ready;

const HOST: &str = "router.ferry.test";

/// A test CA (PEM) and a certificate it signed for [`HOST`] with its key (PEM).
fn certificates() -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let leaf = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// deploy/router.yaml's Deployment, renamed `name` (its own labels, so the shared router's
/// lookups never find it), serving TLS from Secret `secret` mounted at /etc/ferry/tls.
fn tls_router(name: &str, secret: &str) -> Deployment {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/router.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut deployment: Deployment = text
        .split("\n---")
        .find(|doc| doc.contains("kind: Deployment"))
        .map(|doc| serde_norway::from_str(doc).unwrap())
        .expect("deploy/router.yaml has a Deployment");
    let labels = BTreeMap::from([("app.kubernetes.io/name".to_string(), name.to_string())]);
    deployment.metadata.name = Some(name.into());
    deployment.metadata.labels = Some(labels.clone());
    let spec = deployment.spec.as_mut().unwrap();
    spec.selector.match_labels = Some(labels.clone());
    let template = &mut spec.template;
    template.metadata.as_mut().unwrap().labels = Some(labels);
    let pod = template.spec.as_mut().unwrap();
    pod.volumes = Some(vec![Volume {
        name: "tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    let container = &mut pod.containers[0];
    container.volume_mounts = Some(vec![VolumeMount {
        name: "tls".into(),
        mount_path: "/etc/ferry/tls".into(),
        read_only: Some(true),
        ..Default::default()
    }]);
    let env = container.env.get_or_insert_with(Vec::new);
    for (var, file) in [("FERRY_TLS_CERT", "tls.crt"), ("FERRY_TLS_KEY", "tls.key")] {
        env.push(EnvVar {
            name: var.into(),
            value: Some(format!("/etc/ferry/tls/{file}")),
            ..Default::default()
        });
    }
    // The test bed's probes speak plain HTTP only: ready when the TLS port accepts.
    container.readiness_probe = Some(Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(1),
        ..Default::default()
    });
    deployment
}

/// curl with `extra` arguments: (exit success, `-w` output, stdout + stderr).
fn curl(extra: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(extra)
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_router_serves_inference_over_tls_from_a_secret() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    install_router(&client).await;
    let ns = TempNamespace::create(&client, "router-tls").await.unwrap();
    assert!(
        kubectl(
            &["apply", "--server-side", "-n", &ns.name, "-f", "-"],
            Some(&iris_manifest("iris-v1.onnx")),
        )
        .status
        .success()
    );
    ferry_testbed_e2e::eventually_in(&ns.name, "v1 ready", Duration::from_secs(150), || {
        let ns = ns.name.clone();
        async move { latest_ready(&ns) }
    })
    .await;

    let (ca, cert, key) = certificates();
    let name = format!("ferry-router-tls-{}", ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ferry-system");
    let _ = secrets.delete(&name, &DeleteParams::default()).await;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_string(), cert),
            ("tls.key".to_string(), key),
        ])),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "ferry-system");
    let _ = deployments.delete(&name, &DeleteParams::default()).await;
    deployments
        .create(&PostParams::default(), &tls_router(&name, &name))
        .await
        .unwrap();
    let selector = format!("app.kubernetes.io/name={name}");
    let ip = ferry_testbed_e2e::ready_pod_ip(&client, "ferry-system", &selector).await;

    let dir = std::env::temp_dir().join(format!("ferry-router-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let url = format!("https://{HOST}:8080/v2/models/iris/infer");
    let resolve = format!("{HOST}:8080:{ip}");
    let body = iris_body().to_string();
    let namespace = format!("ferry-namespace: {}", ns.name);
    let ca_path = ca_file.to_str().unwrap();
    // The route table arrives by watch: the first answers may be 404 still.
    let answer = eventually("inference over TLS", Duration::from_secs(30), || {
        let args = [
            "--cacert",
            ca_path,
            "--resolve",
            &resolve,
            "-H",
            &namespace,
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "-w",
            "\n%{http_code} %{http_version}",
            &url,
        ];
        let (ok, out) = curl(&args);
        async move { (ok && out.ends_with("200 2")).then_some(out) }
    })
    .await;
    assert!(answer.contains("\"outputs\""), "{answer}");
    // A client that does not trust the test CA is refused the handshake.
    let (ok, out) = curl(&["--resolve", &resolve, &url]);
    assert!(!ok, "no CA given, yet: {out}");
    // Plain HTTP on the TLS port gets no answer.
    let (ok, out) = curl(&[
        "-w",
        "%{http_code}",
        &format!("http://{ip}:8080/v2/health/ready"),
    ]);
    assert!(!ok || !out.ends_with("200"), "plain HTTP answered: {out}");

    let _ = deployments.delete(&name, &DeleteParams::default()).await;
    let _ = secrets.delete(&name, &DeleteParams::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
    ns.delete().await;
}
