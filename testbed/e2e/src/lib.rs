//! Harness for tests on the test bed's real control plane (started by `testbed/up.sh`).
//!
//! `FERRY_TESTBED_KUBECONFIG` names the admin kubeconfig; without it the tests say they were
//! skipped, and fail when `FERRY_REQUIRE_TESTBED` is set (as `make test` does). Each test works
//! in a throw-away namespace that is deleted at its end.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A client on the admin kubeconfig, or `None` when no test bed is configured.
pub async fn admin_client() -> Option<Client> {
    let Some(path) = std::env::var_os("FERRY_TESTBED_KUBECONFIG") else {
        assert!(
            std::env::var_os("FERRY_REQUIRE_TESTBED").is_none(),
            "FERRY_TESTBED_KUBECONFIG is not set: run through `make test` (testbed/up.sh)"
        );
        eprintln!(
            "SKIPPED: set FERRY_TESTBED_KUBECONFIG (testbed/up.sh writes testbed/run/admin.kubeconfig)"
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("the test bed kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the test bed kubeconfig is valid");
    Some(Client::try_from(config).expect("client"))
}

/// The iris InferenceService (2 replicas, surge 1, unavailable 0) serving `models/<model>` by
/// its absolute path (pods on the process node are local processes).
pub fn iris_manifest(model: &str) -> String {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let path = models.canonicalize().unwrap_or(models).join(model);
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    model: {{format: onnx, uri: {}}}\n    minReplicas: 2\n  rollout: {{maxSurge: 1, maxUnavailable: 0}}\n",
        path.display()
    )
}

/// Run the test bed's own kubectl (`testbed/run/kubectl`, linked by up.sh) with the admin
/// kubeconfig; `stdin` is fed to it.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let run = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../run");
    let kubeconfig =
        std::env::var_os("FERRY_TESTBED_KUBECONFIG").expect("FERRY_TESTBED_KUBECONFIG");
    let mut child = std::process::Command::new(run.join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test bed's kubectl runs");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("kubectl finishes")
}

/// Install Ferry's CRDs (`deploy/crds/`) with server-side apply and wait until established.
pub async fn install_crds(client: &Client) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let crd: serde_json::Value = serde_norway::from_str(&text)?;
        let name = crd["metadata"]["name"]
            .as_str()
            .context("CRD without a name")?
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply("ferry-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        names.push(name);
    }
    for name in names {
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await;
    }
    Ok(())
}

/// A namespace for one test; [`TempNamespace::delete`] removes it (and everything in it).
pub struct TempNamespace {
    pub name: String,
    client: Client,
}

impl TempNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Result<TempNamespace> {
        let name = format!("{prefix}-{}", std::process::id() % 100_000);
        let api: Api<Namespace> = Api::all(client.clone());
        // A leftover of an earlier run with the same pid: wait until it is gone.
        let _ = api.delete(&name, &DeleteParams::default()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.get_opt(&name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {name} from an earlier run does not go away");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"ferry.dev/test": prefix}}
        }))?;
        api.create(&PostParams::default(), &namespace)
            .await
            .context("create namespace")?;
        Ok(TempNamespace {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client);
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Poll `check` until it returns `Some`, or fail with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(what, timeout, check, String::new).await
}

/// What a namespace holds, for a failure's message: its InferenceServices (with status),
/// Deployments, ReplicaSets, Pods and Events, and the operator pods.
pub fn dump(ns: &str) -> String {
    let text = |args: &[&str]| String::from_utf8_lossy(&kubectl(args, None).stdout).into_owned();
    format!(
        "--- {ns}:\n{}\n{}\n{}\n--- ferry-system:\n{}",
        text(&["get", "isvc,deploy,rs,pods", "-n", ns, "-o", "wide"]),
        text(&["get", "isvc", "-n", ns, "-o", "jsonpath={.items[*].status}"]),
        text(&["get", "events", "-n", ns]),
        text(&["get", "pods", "-n", "ferry-system", "-o", "wide"]),
    )
}

/// As [`eventually`], and on a timeout the failure shows what `ns` holds ([`dump`]).
pub async fn eventually_in<T, F, Fut>(ns: &str, what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(what, timeout, check, || dump(ns)).await
}

/// Poll `check` every 200 ms until it returns `Some`; past `timeout`, fail with `what` and
/// what `context` says.
async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for: {what}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The admin token of the test bed's routers (Secret `ferry-system/ferry-router-admin`).
pub const ROUTER_ADMIN_TOKEN: &str = "testbed-router-admin-token";

/// The `ferry` binary the test bed runs (testbed/up.sh copies it).
pub fn ferry_binary() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../run/bin/ferry")
}

/// Apply `deploy/<file>` with server-side apply, as a user installs Ferry.
pub fn apply_deploy(file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("deploy/ file reads");
    // The routers' admin token, before their pods start (router and operator read it from
    // this optional Secret): the router's numbers stay readable while namespaces have keys.
    let admin = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ferry-system}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ferry-router-admin, namespace: ferry-system}}\nstringData: {{token: {ROUTER_ADMIN_TOKEN}}}\n"
    );
    let applied = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=ferry-testbed",
            "-f",
            "-",
        ],
        Some(&admin),
    );
    assert!(
        applied.status.success(),
        "the admin token Secret: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // Forced: deploy/'s manifests win over fields a test's Helm install of the same objects
    // left owned by the "helm" manager on a test bed that was kept (down.sh without --purge).
    let applied = kubectl(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&text),
    );
    assert!(
        applied.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// Install the CRDs and the operator (deploy/operator.yaml: two replicas, leader election) and
/// wait until a replica leads; returns the leading pod.
pub async fn install_operator(client: &Client) -> k8s_openapi::api::core::v1::Pod {
    install_crds(client).await.expect("CRDs install");
    apply_deploy("operator.yaml");
    operator_leader(client).await
}

/// Install deploy/router.yaml (and the CRDs) and wait for a Ready router pod; returns its IP (a
/// process-node loopback address, 127.2.x.y), where it serves REST and gRPC on port 8080.
pub async fn install_router(client: &Client) -> String {
    install_crds(client).await.expect("CRDs install");
    apply_deploy("router.yaml");
    let ip = ready_pod_ip(
        client,
        "ferry-system",
        "app.kubernetes.io/name=ferry-router",
    )
    .await;
    assert!(ip.starts_with("127.2."), "{ip}");
    ip
}

/// The IP of a Ready pod of `namespace` that `selector` selects and that is not leaving
/// (waits up to a minute).
pub async fn ready_pod_ip(client: &Client, namespace: &str, selector: &str) -> String {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let what = format!("a Ready pod {selector}");
    eventually(&what, Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&kube::api::ListParams::default().labels(selector))
                .await
                .ok()?;
            list.items.iter().find_map(|p| {
                let status = p.status.as_ref()?;
                let ready = status
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (ready && p.metadata.deletion_timestamp.is_none())
                    .then(|| status.pod_ip.clone())
                    .flatten()
            })
        }
    })
    .await
}

/// An OIP request body for the iris models: one flower.
pub fn iris_body() -> serde_json::Value {
    serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]})
}

/// POST [`iris_body`] to `model` in namespace `ns` through the router at `router_ip`: the HTTP
/// status, the `ferry-revision` header and the JSON answer (`Null` when not JSON), or `None`
/// when no answer came.
pub async fn infer_via_router(
    http: &reqwest::Client,
    router_ip: &str,
    ns: &str,
    model: &str,
) -> Option<(u16, String, serde_json::Value)> {
    let response = http
        .post(format!("http://{router_ip}:8080/v2/models/{model}/infer"))
        .header("ferry-namespace", ns)
        .json(&iris_body())
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let revision = response
        .headers()
        .get("ferry-revision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some((status, revision, response.json().await.unwrap_or_default()))
}

/// The operator pod that holds the Lease `ferry-system/ferry-operator` and is Running.
pub async fn operator_leader(client: &Client) -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ferry-system");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ferry-system");
    eventually("an operator replica leads", Duration::from_secs(90), || {
        let (leases, pods) = (leases.clone(), pods.clone());
        async move {
            let holder = leases
                .get_opt("ferry-operator")
                .await
                .ok()??
                .spec?
                .holder_identity?;
            let pod = pods.get_opt(&holder).await.ok()??;
            let running = pod.status.as_ref()?.phase.as_deref() == Some("Running");
            running.then_some(pod)
        }
    })
    .await
}

/// `kubectl get isvc NAME -n NS -o json`, or `Null` when it cannot be read.
pub fn isvc_json(ns: &str, name: &str) -> serde_json::Value {
    let out = kubectl(&["get", "isvc", name, "-n", ns, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// A condition of an InferenceService's status: `(status, reason, message)`, empty when absent.
pub fn condition(isvc: &serde_json::Value, type_: &str) -> (String, String, String) {
    isvc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or("").to_string();
            (text("status"), text("reason"), text("message"))
        })
        .unwrap_or_default()
}

/// Apply a manifest in `ns` with server-side apply (as kubectl users do) and assert it worked.
pub fn apply_in(ns: &str, manifest: &str) {
    let applied = kubectl(
        &["apply", "--server-side", "-n", ns, "-f", "-"],
        Some(manifest),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// `kubectl get ARGS` as a table: the header row, then the rows, split on whitespace.
pub fn kubectl_table(args: &[&str]) -> Vec<Vec<String>> {
    let mut full = vec!["get"];
    full.extend_from_slice(args);
    let out = kubectl(&full, None);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// The process of a process-node pod's first container (the agent names it
/// `process://PID` in the container ID).
pub fn pod_pid(pod: &k8s_openapi::api::core::v1::Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone())
        .and_then(|id| id.strip_prefix("process://").and_then(|p| p.parse().ok()))
        .expect("a running container names its process")
}
