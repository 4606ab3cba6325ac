//! Bring-your-own runtimes: an InferenceService that names a ServingRuntime runs that runtime's
//! container, on the ports it declares, with the model in its environment, on the real control
//! plane with the operator and the router of deploy/. The runtime here is the `ferry` image with
//! its own command line (the process node runs no other image): what matters is that the pod
//! runs the runtime's container as written, and that the router finds it on the runtime's ports.
//!
//! Before the runtime exists the status says so and nothing is created; once it is applied the
//! service becomes Ready and answers through the router, over REST and gRPC; editing the runtime
//! rolls the service out as a new revision; a format the runtime does not list, and a format
//! no runtime lists, are named in the status.
//!
//! Models from stores, through the operator: a real docker-registry (an image pushed by skopeo)
//! and a real MinIO on loopback. Ferry's server pod fetches `oci://` itself; a runtime's pod
//! fetches it in its init step (`ferry fetch` into the emptyDir at /mnt/models); an `s3://`
//! model takes its credentials from the Secret `secretName` names; a missing object is named
//! `ModelFetchFailed` in the status.

use std::time::Duration;

use ferry_server::grpc::GrpcInferenceServiceClient;
use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_in, condition, eventually, infer_via_router,
    install_operator, install_router, isvc_json,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;

fn model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/iris-v1.onnx")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// The runtime `alt`: Ferry's server started by the runtime's own arguments, on 8500 / 9500.
fn runtime(extra_arg: &str) -> String {
    format!(
        r#"apiVersion: ferry.dev/v1alpha1
kind: ServingRuntime
metadata: {{name: alt}}
spec:
  supportedModelFormats: [{{name: onnx}}]
  protocolVersions: [v2]
  httpPort: 8500
  grpcPort: 9500
  containers:
  - name: alt
    image: ghcr.io/ferry-dev/ferry:latest
    args: [server, --model, "$(FERRY_MODEL_NAME)=$(FERRY_MODEL_PATH)", --http-addr, "$(POD_IP):8500", --grpc-addr, "$(POD_IP):9500"{extra_arg}]
"#
    )
}

/// An InferenceService `name` reachable from outside at `<name>.example.com` (an Ingress).
fn service(name: &str, format: &str, runtime: Option<&str>) -> String {
    let runtime = runtime.map_or(String::new(), |r| format!("    runtime: {r}\n"));
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n    model: {{format: {format}, uri: {}}}\n{runtime}  ingress: {{host: {name}.example.com}}\n",
        model()
    )
}

/// `(status, reason, message)` of LatestRevisionReady once its reason is `reason`.
async fn latest_reason(ns: &str, name: &str, reason: &str) -> String {
    eventually(
        &format!("{name}: LatestRevisionReady {reason}"),
        Duration::from_secs(60),
        || {
            let (ns, name) = (ns.to_string(), name.to_string());
            async move {
                let (status, r, message) = condition(&isvc_json(&ns, &name), "LatestRevisionReady");
                (status == "False" && r == reason).then_some(message)
            }
        },
    )
    .await
}

/// The latest revision once the service is Ready on it.
async fn ready_revision(ns: &str, name: &str, not: &str) -> String {
    eventually(
        &format!("{name} Ready on a revision other than {not:?}"),
        Duration::from_secs(90),
        || {
            let (ns, name) = (ns.to_string(), name.to_string());
            async move {
                let object = isvc_json(&ns, &name);
                let latest = object["status"]["latestRevision"].as_str()?.to_string();
                (condition(&object, "Ready").0 == "True"
                    && condition(&object, "LatestRevisionReady").0 == "True"
                    && latest != not)
                    .then_some(latest)
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_runtime_serves_through_the_router_and_rolls_out_when_edited() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_operator(&client).await;
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "servingruntime")
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);

    // Named before it exists: the status says which runtime is missing, nothing is created.
    apply_in(&ns.name, &service("byo", "onnx", Some("alt")));
    let message = latest_reason(&ns.name, "byo", "RuntimeNotFound").await;
    assert!(message.contains("\"alt\""), "{message}");
    assert!(message.contains(&ns.name), "{message}");
    assert_eq!(condition(&isvc_json(&ns.name, "byo"), "Ready").0, "False");
    let owned = ListParams::default().labels("ferry.dev/inferenceservice=byo");
    assert!(deployments.list(&owned).await.unwrap().items.is_empty());

    // The runtime arrives: the operator is told (it watches ServingRuntimes), renders the
    // runtime's container and the service becomes Ready.
    apply_in(&ns.name, &runtime(""));
    let first = ready_revision(&ns.name, "byo", "").await;
    let deployment = deployments.get(&first).await.unwrap();
    let template = deployment.spec.unwrap().template;
    let container = &template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.name, "alt");
    assert_eq!(
        container.args.as_ref().unwrap()[2],
        "$(FERRY_MODEL_NAME)=$(FERRY_MODEL_PATH)"
    );
    let annotations = template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["ferry.dev/http-port"], "8500");
    assert_eq!(annotations["ferry.dev/grpc-port"], "9500");

    // REST through the router pod reaches the runtime's port 8500.
    let http = reqwest::Client::new();
    let send = |expected: String| {
        let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
        async move {
            let (status, revision, answer) =
                infer_via_router(&http, &router_ip, &ns, "byo").await?;
            (status == 200 && revision == expected && answer["outputs"].is_array()).then_some(())
        }
    };
    eventually(
        "the router answers from the runtime",
        Duration::from_secs(30),
        || send(first.clone()),
    )
    .await;

    // What an Ingress controller passes on: the client's Host, no namespace header. The router
    // knows which namespace claims that host.
    let external = http
        .post(format!("http://{router_ip}:8080/v2/models/byo/infer"))
        .header("host", "byo.example.com")
        .json(&ferry_testbed_e2e::iris_body())
        .send()
        .await
        .unwrap();
    assert_eq!(external.status(), 200);

    // gRPC through the router reaches the runtime's port 9500.
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{router_ip}:8080"))
        .await
        .expect("the router speaks gRPC");
    let mut request = tonic::Request::new(ferry_server::grpc::pb::ModelReadyRequest {
        name: "byo".into(),
        version: String::new(),
    });
    request
        .metadata_mut()
        .insert("ferry-namespace", ns.name.parse().unwrap());
    let ready = grpc
        .model_ready(request)
        .await
        .expect("ModelReady over gRPC");
    assert!(ready.into_inner().ready);

    // Editing the runtime rolls every service on it out as a new revision; the old one goes.
    apply_in(&ns.name, &runtime(", --compute-threads, \"1\""));
    let second = ready_revision(&ns.name, "byo", &first).await;
    eventually("the new revision answers", Duration::from_secs(30), || {
        send(second.clone())
    })
    .await;
    eventually(
        "the old revision is removed",
        Duration::from_secs(60),
        || {
            let (deployments, first) = (deployments.clone(), first.clone());
            async move {
                deployments
                    .get_opt(&first)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;

    // A format the runtime does not list; a format no runtime lists.
    apply_in(&ns.name, &service("torch", "pytorch", Some("alt")));
    let message = latest_reason(&ns.name, "torch", "UnsupportedModelFormat").await;
    assert!(message.contains("\"pytorch\""), "{message}");
    apply_in(&ns.name, &service("sk", "sklearn", None));
    let message = latest_reason(&ns.name, "sk", "NoRuntimeForFormat").await;
    assert!(message.contains("\"sklearn\""), "{message}");
    ns.delete().await;
}

fn remote(name: &str, uri: &str, extra: &str) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: \"{uri}\"{extra}}}\n"
    )
}

fn secret(minio: &ferry_storage::testing::Minio) -> String {
    let data: Vec<String> = minio
        .env()
        .into_iter()
        .map(|(k, v)| format!("  {k}: \"{v}\""))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s3-credentials}}\nstringData:\n{}\n",
        data.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_from_a_registry_and_s3_serve_through_the_operator() {
    let Some(client) = admin_client().await else {
        return;
    };
    let (Some(registry), Some(minio)) = (
        ferry_storage::testing::Registry::start(),
        ferry_storage::testing::Minio::start(),
    ) else {
        return;
    };
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let image = registry.push_modelcar(
        &repo,
        &repo.join("models/iris-v2.onnx"),
        "models/iris",
        "v2",
    );
    minio.make_bucket("models");
    minio.put(
        "models",
        "iris/iris.onnx",
        &repo.join("models/iris-v1.onnx"),
    );
    install_operator(&client).await;
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "storage").await.unwrap();
    let http = reqwest::Client::new();
    let answers = |name: &'static str| {
        let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
        async move {
            let (status, _, answer) = infer_via_router(&http, &router_ip, &ns, name).await?;
            (status == 200 && answer["outputs"][0]["data"] == serde_json::json!([0])).then_some(())
        }
    };

    // Ferry's own server pod fetches the image into its model cache.
    apply_in(&ns.name, &remote("car", &image, ""));
    ready_revision(&ns.name, "car", "").await;
    eventually("car answers", Duration::from_secs(30), || answers("car")).await;

    // A runtime's pod: the init step fetches it where FERRY_MODEL_PATH points. The runtime is
    // a ClusterServingRuntime (every namespace's), named by the service.
    let cluster_runtime = runtime("").replace(
        "kind: ServingRuntime\nmetadata: {name: alt}",
        &format!(
            "kind: ClusterServingRuntime\nmetadata: {{name: {}-alt}}",
            ns.name
        ),
    );
    let applied = ferry_testbed_e2e::kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&cluster_runtime),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let manifest = remote("initstep", &image, "").replace(
        "\nspec:\n  predictor:\n",
        &format!("\nspec:\n  predictor:\n    runtime: {}-alt\n", ns.name),
    );
    apply_in(&ns.name, &manifest);
    let revision = ready_revision(&ns.name, "initstep", "").await;
    eventually("initstep answers", Duration::from_secs(30), || {
        answers("initstep")
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pod = deployments
        .get(&revision)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let init = &pod.init_containers.unwrap()[0];
    assert_eq!(
        init.args.as_ref().unwrap()[0..2],
        ["fetch".to_string(), image.clone()]
    );

    // S3 with the credentials of a Secret; then a key that is not there, named in the status
    // while the revision that works keeps serving.
    apply_in(&ns.name, &secret(&minio));
    apply_in(
        &ns.name,
        &remote(
            "s3",
            "s3://models/iris/iris.onnx",
            ", secretName: s3-credentials",
        ),
    );
    let serving = ready_revision(&ns.name, "s3", "").await;
    eventually("s3 answers", Duration::from_secs(30), || answers("s3")).await;
    apply_in(
        &ns.name,
        &remote(
            "s3",
            "s3://models/iris/missing.onnx",
            ", secretName: s3-credentials",
        ),
    );
    let message = latest_reason(&ns.name, "s3", "ModelFetchFailed").await;
    assert!(
        message.contains("s3://models/iris/missing.onnx: 404"),
        "{message}"
    );
    let object = isvc_json(&ns.name, "s3");
    assert_eq!(condition(&object, "Ready").0, "True", "{object}");
    let (status, revision, _) = infer_via_router(&http, &router_ip, &ns.name, "s3")
        .await
        .unwrap();
    assert_eq!((status, revision), (200, serving));
    ferry_testbed_e2e::kubectl(
        &[
            "delete",
            "clusterservingruntime",
            &format!("{}-alt", ns.name),
        ],
        None,
    );
    ns.delete().await;
}
