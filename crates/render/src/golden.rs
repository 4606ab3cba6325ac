//! `ferry render`'s output, byte for byte, against files captured from the renderer before it
//! was rebuilt on typed objects (tests/golden: each `X.yaml` renders to `X.out.yaml`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{RenderOptions, documents};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn default_options() -> RenderOptions {
    RenderOptions {
        image: concat!("ghcr.io/ferry-dev/ferry:", env!("CARGO_PKG_VERSION")).into(),
        node_selector: BTreeMap::new(),
        model_cache_host_path: None,
        server_env: Vec::new(),
    }
}

fn read(name: &str) -> String {
    std::fs::read_to_string(golden().join(name)).unwrap()
}

/// `expected`'s file, or (with `FERRY_UPDATE_GOLDEN=1`, after a deliberate change) `rendered`
/// written over it; review the diff before committing.
fn expect(name: &str, rendered: &str) -> String {
    if std::env::var_os("FERRY_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden().join(name), rendered).unwrap();
    }
    read(name)
}

#[test]
fn every_manifest_renders_as_before() {
    let mut compared = 0;
    for entry in std::fs::read_dir(golden()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if !file.ends_with(".yaml") || file.ends_with(".out.yaml") {
            continue;
        }
        let manifests = ferry_api::parse_cluster_manifests(&read(&file), "default").unwrap();
        let rendered = documents(&manifests, &default_options()).unwrap();
        let expected = expect(&file.replace(".yaml", ".out.yaml"), &rendered);
        assert!(
            rendered == expected,
            "{file} renders differently:\n{rendered}"
        );
        compared += 1;
    }
    assert!(compared >= 7, "only {compared} manifests compared");
    // The example the quick start applies is one of them.
    assert_eq!(
        read("iris.yaml"),
        include_str!("../../../examples/iris.yaml")
    );
}

#[test]
fn options_and_owner_references_render_as_before() {
    let manifests = ferry_api::parse_cluster_manifests(&read("iris.yaml"), "prod").unwrap();
    let options = RenderOptions {
        image: "registry.local/ferry:dev".into(),
        node_selector: BTreeMap::from([
            ("ferry.dev/process-node".to_string(), "true".to_string()),
            ("zone".to_string(), "a".to_string()),
        ]),
        model_cache_host_path: None,
        server_env: Vec::new(),
    };
    let rendered = documents(&manifests, &options).unwrap();
    assert!(rendered == expect("iris-options.out.yaml", &rendered));

    // As the operator renders: the InferenceService has a uid, so everything is owned by it.
    let manifests = ferry_api::parse_cluster_manifests(&read("owned.yaml"), "default").unwrap();
    let mut isvc = manifests.services[0].isvc.clone();
    isvc.metadata.uid = Some("6f1c2b1e-0d7a-4c55-9a43-5b2a1f0e9c11".into());
    let revision = ferry_core::runtime::revision(&isvc, None);
    let objects = crate::render(&isvc, &revision, 2, &default_options(), None);
    let service = crate::render_service(&isvc, &revision);
    let documents: Vec<String> = objects
        .to_values()
        .unwrap()
        .into_iter()
        .chain(service.to_values().unwrap())
        .map(|v| serde_norway::to_string(&v).unwrap())
        .collect();
    let rendered = documents.join("---\n");
    assert!(rendered == expect("owned-by-operator.out.yaml", &rendered));
}
