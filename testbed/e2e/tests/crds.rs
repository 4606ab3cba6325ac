//! Ferry's CRDs on the real apiserver: the same manifest `ferry apply` takes is accepted by
//! `kubectl apply`, unknown fields are refused by the apiserver's strict field validation,
//! `kubectl get isvc` shows the printer columns and `kubectl explain` the types' docs.

use ferry_testbed_e2e::{
    TempNamespace, admin_client, apply_in, install_crds, kubectl, kubectl_table,
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
