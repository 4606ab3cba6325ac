//! Tenancy through the router pod: API keys kept as Secrets (made by `ferry apikey create
//! --kubeconfig`, watched by the router) wall a namespace off; a key of another namespace is
//! refused; a revoked key stops working; `spec.rateLimit` holds; the router's own numbers
//! need its admin token while keys exist.

use std::time::Duration;

use ferry_testbed_e2e::{
    ROUTER_ADMIN_TOKEN, TempNamespace, admin_client, apply_deploy, eventually, ferry_binary,
    install_crds, install_router, iris_body, kubectl,
};

use super::serving_v1;

fn ferry(args: &[&str]) -> std::process::Output {
    std::process::Command::new(ferry_binary())
        .args(args)
        .arg("--kubeconfig")
        .arg(std::env::var_os("FERRY_TESTBED_KUBECONFIG").expect("FERRY_TESTBED_KUBECONFIG"))
        .output()
        .expect("ferry runs")
}

async fn status(http: &reqwest::Client, router_ip: &str, ns: &str, key: Option<&str>) -> u16 {
    answer(http, router_ip, ns, key).await.map_or(0, |a| a.0)
}

/// The router's answer to one inference request of `ns` (status and body); `None` when the
/// request failed.
async fn answer(
    http: &reqwest::Client,
    router_ip: &str,
    ns: &str,
    key: Option<&str>,
) -> Option<(u16, String)> {
    let mut request = http
        .post(format!("http://{router_ip}:8080/v2/models/iris/infer"))
        .header("ferry-namespace", ns)
        .json(&iris_body());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// `n` requests of `ns` at once with `key`: every answer, or `None` when one failed.
async fn at_once(
    http: &reqwest::Client,
    router_ip: &str,
    ns: &str,
    key: &str,
    n: usize,
) -> Option<Vec<(u16, String)>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, router_ip, ns, key) = (
                http.clone(),
                router_ip.to_string(),
                ns.to_string(),
                key.to_string(),
            );
            tokio::spawn(async move { answer(&http, &router_ip, &ns, Some(&key)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.ok().flatten()?);
    }
    Some(answers)
}

/// `kubectl patch` the service's `spec.rateLimit` to `limit` (JSON; `null` removes it).
fn patch_rate_limit(ns: &str, limit: &str) {
    let patched = kubectl(
        &[
            "patch",
            "isvc",
            "iris",
            "-n",
            ns,
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"rateLimit":{limit}}}}}"#),
        ],
        None,
    );
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_keys_from_secrets_and_rate_limits_hold_at_the_cluster_router() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "tenancy").await.unwrap();
    let other = TempNamespace::create(&client, "tenancy-other")
        .await
        .unwrap();
    serving_v1(&router_ip, &ns.name).await;
    let http = reqwest::Client::new();

    let created = ferry(&["apikey", "create", "-n", &ns.name, "--name", "ci"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8_lossy(&created.stdout).trim().to_string();
    let id = ferry_api::api_key_id(&key).expect("a key").to_string();
    let foreign = ferry(&["apikey", "create", "-n", &other.name]);
    assert!(foreign.status.success());
    let foreign = String::from_utf8_lossy(&foreign.stdout).trim().to_string();
    // Only the hash is in the cluster.
    let secret = kubectl(
        &[
            "get",
            "secret",
            "-n",
            &ns.name,
            &format!("ferry-apikey-{id}"),
            "-o",
            "json",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&secret.stdout);
    assert!(
        secret.status.success() && !text.contains(&key[20..]),
        "{text}"
    );

    eventually("the router requires a key", Duration::from_secs(30), || {
        let (http, router_ip, ns) = (http.clone(), router_ip.clone(), ns.name.clone());
        async move { (status(&http, &router_ip, &ns, None).await == 401).then_some(()) }
    })
    .await;
    assert_eq!(status(&http, &router_ip, &ns.name, Some(&key)).await, 200);
    assert_eq!(
        status(&http, &router_ip, &ns.name, Some(&foreign)).await,
        403
    );
    let listed = ferry(&["apikey", "list", "-n", &ns.name]);
    let listing = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listing
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&id) && l.contains("ci")),
        "{listing}"
    );

    // The router's numbers: not with a tenant's key, yes with the admin token.
    let metrics = |token: &str| {
        http.get(format!("http://{router_ip}:8080/metrics"))
            .bearer_auth(token.to_string())
            .send()
    };
    assert_eq!(metrics(&key).await.unwrap().status(), 403);
    assert_eq!(metrics(ROUTER_ADMIN_TOKEN).await.unwrap().status(), 200);

    // spec.rateLimit: 10 at once on a bucket of 4 (1/s): 4 pass.
    patch_rate_limit(&ns.name, r#"{"requestsPerSecond":1,"burst":4}"#);
    eventually(
        "the limit reaches the router",
        Duration::from_secs(30),
        || {
            let (http, router_ip, ns, key) = (
                http.clone(),
                router_ip.clone(),
                ns.name.clone(),
                key.clone(),
            );
            async move {
                let answers = at_once(&http, &router_ip, &ns, &key, 10).await?;
                let ok = answers.iter().filter(|a| a.0 == 200).count();
                let limited = answers.iter().filter(|a| a.0 == 429).count();
                (limited > 0 && ok + limited == 10 && ok <= 5).then_some(())
            }
        },
    )
    .await;

    // Revoked: the Secret is gone, the key stops working.
    let revoked = ferry(&["apikey", "revoke", "-n", &ns.name, &id]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    // Another key keeps the namespace closed, so the revoked one is refused (not let in).
    let second = ferry(&["apikey", "create", "-n", &ns.name]);
    assert!(second.status.success());
    eventually(
        "the revoked key is refused",
        Duration::from_secs(30),
        || {
            let (http, router_ip, ns, key) = (
                http.clone(),
                router_ip.clone(),
                ns.name.clone(),
                key.clone(),
            );
            async move { (status(&http, &router_ip, &ns, Some(&key)).await == 401).then_some(()) }
        },
    )
    .await;

    // The namespace's own limit (annotation on the Namespace), shared by all its requests:
    // 10 at once on a bucket of 3 (the service's limit removed first).
    let second = String::from_utf8_lossy(&second.stdout).trim().to_string();
    patch_rate_limit(&ns.name, "null");
    let annotated = kubectl(
        &[
            "annotate",
            "namespace",
            &ns.name,
            "ferry.dev/rate-limit=1/s",
            "ferry.dev/rate-limit-burst=3",
        ],
        None,
    );
    assert!(
        annotated.status.success(),
        "{}",
        String::from_utf8_lossy(&annotated.stderr)
    );
    eventually(
        "the namespace's limit reaches the router",
        Duration::from_secs(30),
        || {
            let (http, router_ip, ns, key) = (
                http.clone(),
                router_ip.clone(),
                ns.name.clone(),
                second.clone(),
            );
            async move {
                let answers = at_once(&http, &router_ip, &ns, &key, 10).await?;
                let ok = answers.iter().filter(|a| a.0 == 200).count();
                let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
                (!limited.is_empty()
                    && ok + limited.len() == 10
                    && ok <= 4
                    && limited
                        .iter()
                        .all(|a| a.1.contains(&format!("namespace {ns}"))))
                .then_some(())
            }
        },
    )
    .await;
}

/// `kubectl auth can-i --list` of a ServiceAccount in `namespace`: its resource rules, sorted.
fn can_i(account: &str, namespace: &str) -> Vec<String> {
    let out = kubectl(
        &[
            "auth",
            "can-i",
            "--list",
            "-n",
            namespace,
            &format!("--as=system:serviceaccount:ferry-system:{account}"),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    rules.sort();
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_operator_creates_is_walled_off_and_rbac_is_the_least_needed() {
    let Some(client) = admin_client().await else {
        return;
    };
    install_crds(&client).await.unwrap();
    apply_deploy("operator.yaml");
    let router_ip = install_router(&client).await;
    let ns = TempNamespace::create(&client, "isolation").await.unwrap();
    serving_v1(&router_ip, &ns.name).await;

    // Only ferry-system reaches the predictor pods.
    let policy = kubectl(
        &["get", "networkpolicy", "iris", "-n", &ns.name, "-o", "json"],
        None,
    );
    assert!(
        policy.status.success(),
        "{}",
        String::from_utf8_lossy(&policy.stderr)
    );
    let policy: serde_json::Value = serde_json::from_slice(&policy.stdout).unwrap();
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["ferry.dev/inferenceservice"],
        "iris"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ferry-system"
    );
    // The pods: non-root, read-only root, no capabilities, seccomp RuntimeDefault, no token.
    let pods = kubectl(
        &[
            "get",
            "pods",
            "-n",
            &ns.name,
            "-l",
            "ferry.dev/inferenceservice=iris",
            "-o",
            "json",
        ],
        None,
    );
    let pods: serde_json::Value = serde_json::from_slice(&pods.stdout).unwrap();
    let pod = &pods["items"][0]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0]["securityContext"];
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(
        container["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );

    // RBAC: what each ServiceAccount may do, in a tenant's namespace and in ferry-system,
    // against the checked-in expectation.
    let mut found = String::new();
    for account in ["ferry-operator", "ferry-router"] {
        for namespace in ["default", "ferry-system"] {
            found.push_str(&format!("# {account} in {namespace}\n"));
            for rule in can_i(account, namespace) {
                found.push_str(&rule);
                found.push('\n');
            }
        }
    }
    let expected_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("expected/rbac.txt");
    if std::env::var_os("FERRY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &found).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert!(
        found == expected,
        "RBAC differs from testbed/e2e/expected/rbac.txt:\n{found}"
    );
}
