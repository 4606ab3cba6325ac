//! The storage layer against real stores: MinIO (S3) and a Debian docker-registry (OCI) with
//! an image pushed by skopeo. One integration binary for the crate.

use std::path::{Path, PathBuf};

use ferry_storage::testing::{Gcs, Minio, Registry};
use ferry_storage::{Cache, Env, Fetcher, Kind};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(name: &str) -> PathBuf {
    repo_root().join("models").join(name)
}

fn cache_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-storage-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn fetcher(dir: &Path, env: Vec<(String, String)>) -> Fetcher {
    Fetcher::with_env(Cache::new(dir, 1 << 30), env.into_iter().collect::<Env>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_and_prefixes_are_fetched_once_then_found_in_the_cache() {
    let Some(minio) = Minio::start() else { return };
    minio.make_bucket("models");
    minio.put("models", "iris/iris.onnx", &model("iris-v1.onnx"));
    minio.put("models", "pair/model.onnx", &model("iris-v2.onnx"));
    minio.put("models", "pair/config.json", &model("expected.json"));
    let dir = cache_dir("s3");
    let fetcher = fetcher(&dir, minio.env());

    let first = fetcher.fetch("s3://models/iris/iris.onnx").await.unwrap();
    assert!(!first.cache_hit);
    assert_eq!(
        std::fs::read(&first.path).unwrap(),
        std::fs::read(model("iris-v1.onnx")).unwrap()
    );
    assert_eq!(
        first.bytes,
        std::fs::metadata(model("iris-v1.onnx")).unwrap().len()
    );
    assert!(first.path.starts_with(&dir), "{}", first.path.display());

    // A second fetcher on the same cache (another replica on the node): nothing downloaded.
    let again = fetcher.fetch("s3://models/iris/iris.onnx").await.unwrap();
    assert!(again.cache_hit);
    assert_eq!((again.bytes, &again.path), (0, &first.path));

    // A prefix is a directory: both files, the model found in it.
    let pair = fetcher.fetch("s3://models/pair/").await.unwrap();
    assert_eq!(pair.files, 2);
    let (onnx, _) = ferry_storage::layout::model_files(&pair.path).unwrap();
    assert_eq!(
        std::fs::read(onnx).unwrap(),
        std::fs::read(model("iris-v2.onnx")).unwrap()
    );
    // The same key without the slash: not an object, so the prefix.
    let bare = fetcher.fetch("s3://models/pair").await.unwrap();
    assert_eq!(bare.files, 2);

    // The object changes in the store: a new entry, downloaded again.
    minio.put("models", "iris/iris.onnx", &model("iris-v2.onnx"));
    let changed = fetcher.fetch("s3://models/iris/iris.onnx").await.unwrap();
    assert!(!changed.cache_hit);
    assert_ne!(changed.path, first.path);
    assert_eq!(
        std::fs::read(&changed.path).unwrap(),
        std::fs::read(model("iris-v2.onnx")).unwrap()
    );
    // Nothing is left half-written.
    let staging: Vec<_> = std::fs::read_dir(dir.join("staging"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(staging.is_empty(), "{staging:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failures_name_the_uri_and_the_stores_answer() {
    let Some(minio) = Minio::start() else { return };
    minio.make_bucket("models");
    minio.put("models", "iris.onnx", &model("iris-v1.onnx"));
    let dir = cache_dir("s3-failures");

    let missing = fetcher(&dir, minio.env())
        .fetch("s3://models/nope.onnx")
        .await
        .unwrap_err();
    assert_eq!(missing.kind, Kind::NotFound, "{missing}");
    let text = missing.to_string();
    assert!(
        text.starts_with("ModelFetchFailed: s3://models/nope.onnx: 404"),
        "{text}"
    );

    let mut wrong = minio.env();
    wrong[1].1 = "not-the-secret".into();
    let denied = fetcher(&dir, wrong)
        .fetch("s3://models/iris.onnx")
        .await
        .unwrap_err();
    assert_eq!(denied.kind, Kind::Denied, "{denied}");
    eprintln!("{missing}\n{denied}");
    assert!(
        denied
            .to_string()
            .starts_with("ModelFetchFailed: s3://models/iris.onnx: 403"),
        "{denied}"
    );

    let mut nowhere = minio.env();
    nowhere[2].1 = "http://127.0.0.1:9".into();
    let unreachable = fetcher(&dir, nowhere)
        .fetch("s3://models/iris.onnx")
        .await
        .unwrap_err();
    assert_eq!(unreachable.kind, Kind::Unreachable, "{unreachable}");
    assert!(
        dir.join("entries")
            .read_dir()
            .map_or(true, |mut d| d.next().is_none())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_modelcar_pushed_by_skopeo_is_its_models_directory() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let uri = registry.push_modelcar(&repo_root(), &model("iris-v1.onnx"), "models/iris", "v1");
    let dir = cache_dir("oci");
    let fetcher = fetcher(&dir, Vec::new());
    let fetched = fetcher.fetch(&uri).await.unwrap();
    assert!(!fetched.cache_hit);
    assert_eq!(fetched.path.file_name().unwrap(), "iris-v1.onnx");
    assert_eq!(
        std::fs::read(&fetched.path).unwrap(),
        std::fs::read(model("iris-v1.onnx")).unwrap()
    );
    let again = fetcher.fetch(&uri).await.unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.path, fetched.path);

    let missing = fetcher
        .fetch(&format!("oci://{}/models/iris:v9", registry.address))
        .await
        .unwrap_err();
    assert_eq!(missing.kind, Kind::NotFound, "{missing}");
    assert!(missing.to_string().contains(":v9: 404"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_objects_and_prefixes_come_from_a_gcs_compatible_server() {
    let (v1, v2, expected) = (
        model("iris-v1.onnx"),
        model("iris-v2.onnx"),
        model("expected.json"),
    );
    let Some(gcs) = Gcs::start(&[
        ("models", "iris/iris.onnx", &v1),
        ("models", "pair/model.onnx", &v2),
        ("models", "pair/config.json", &expected),
    ]) else {
        return;
    };
    let dir = cache_dir("gcs");
    let fetcher = fetcher(&dir, gcs.env());
    let file = fetcher.fetch("gs://models/iris/iris.onnx").await.unwrap();
    assert!(!file.cache_hit);
    assert_eq!(
        std::fs::read(&file.path).unwrap(),
        std::fs::read(&v1).unwrap()
    );
    assert!(
        fetcher
            .fetch("gs://models/iris/iris.onnx")
            .await
            .unwrap()
            .cache_hit
    );
    let pair = fetcher.fetch("gs://models/pair/").await.unwrap();
    assert_eq!(pair.files, 2);
    let missing = fetcher.fetch("gs://models/nope.onnx").await.unwrap_err();
    assert_eq!(missing.kind, Kind::NotFound, "{missing}");
    assert!(
        missing.to_string().contains("gs://models/nope.onnx: 404"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
