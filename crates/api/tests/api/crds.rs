//! The committed CRDs under deploy/crds/ are exactly what the types generate (CI fails on drift),
//! and they carry what `kubectl` shows: printer columns, short names, docs from the types.

use ferry_api::crd::{crds, file_name, to_yaml};

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for crd in crds() {
        let path = dir.join(file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == to_yaml(&crd),
            "{} drifted from the types: run `cargo run -p ferry -- crd --write deploy/crds` and commit",
            path.display()
        );
    }
}

#[test]
fn crds_carry_columns_short_names_and_docs() {
    let all = crds();
    let isvc = all
        .iter()
        .find(|c| c.spec.names.kind == "InferenceService")
        .unwrap();
    assert_eq!(
        isvc.spec.names.short_names.as_deref(),
        Some(&["isvc".to_string()][..])
    );
    let version = &isvc.spec.versions[0];
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        vec![
            "URL", "Ready", "Revision", "Replicas", "Rollout", "Canary", "Age"
        ]
    );
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let yaml = to_yaml(isvc);
    assert!(
        yaml.contains("The model server replicas: which model, how many, with what resources."),
        "doc comments become descriptions"
    );
    assert!(all.iter().any(|c| c.spec.names.kind == "ServingRuntime"));
}
