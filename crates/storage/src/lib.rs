//! Ferry's model storage: the one place that turns a model URI into files on this machine, for
//! the model server (local replicas and Ferry's pods), `ferry fetch` (a ServingRuntime pod's
//! init step) and the benchmark.
//!
//! - Paths and `file://` are used where they are; `pvc://` is a mount the operator renders, so
//!   the fetcher refuses it (the caller maps it to the mount).
//! - `http(s)://`, `s3://` and `gs://` go through `object_store` ([`object`]); `oci://` through
//!   `oci-client` ([`oci`]). A URI naming a prefix (or a multi-file OCI artifact) fetches the
//!   directory.
//! - Everything lands in the per-node [`cache::Cache`]: streamed into a staging directory,
//!   checked (sizes, MD5 ETags, sha256 digests), renamed into place only when complete — no
//!   partial model is ever loaded — and found again by the next replica without downloading.
//! - A failure is a [`FetchError`] whose text names the URI and the store's answer
//!   (`ModelFetchFailed: s3://models/iris.onnx: 403 InvalidAccessKeyId`).

pub mod cache;
mod error;
pub mod layout;
mod object;
mod oci;
mod sink;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::PathBuf;
use std::time::Instant;

pub use cache::Cache;
pub use error::{FetchError, Kind, REASON};
use ferry_api::ModelUri;

/// Default cache size limit: 20 GiB.
pub const DEFAULT_LIMIT_BYTES: u64 = 20 << 30;

/// A fetched model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The model: a file, or a directory (model + tokenizer + config).
    pub path: PathBuf,
    /// Found in the cache: nothing was downloaded.
    pub cache_hit: bool,
    /// Bytes downloaded (0 on a hit).
    pub bytes: u64,
    /// Files in the model.
    pub files: usize,
}

/// The environment a fetch reads its endpoints and credentials from (`AWS_*`, `S3_ENDPOINT`,
/// `GOOGLE_*`, `FERRY_OCI_*`).
pub type Env = std::collections::BTreeMap<String, String>;

/// Fetches models into a cache.
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache: Cache,
    env: Env,
}

impl Fetcher {
    /// A fetcher reading the process environment.
    pub fn new(cache: Cache) -> Fetcher {
        Fetcher::with_env(cache, std::env::vars().collect())
    }

    /// A fetcher reading `env` instead.
    pub fn with_env(cache: Cache, env: Env) -> Fetcher {
        Fetcher { cache, env }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The model `uri` names, fetched (or found in the cache) when it is remote.
    pub async fn fetch(&self, uri: &str) -> Result<Fetched, FetchError> {
        let parsed =
            ModelUri::parse(uri).map_err(|e| FetchError::new(uri, Kind::Unsupported, e))?;
        let started = Instant::now();
        let fetched = match &parsed {
            ModelUri::Local(path) => {
                let path = PathBuf::from(path);
                if !path.exists() {
                    return Err(FetchError::new(
                        uri,
                        Kind::NotFound,
                        "no such file or directory",
                    ));
                }
                return Ok(Fetched {
                    path,
                    cache_hit: false,
                    bytes: 0,
                    files: 1,
                });
            }
            ModelUri::Pvc { .. } => {
                return Err(FetchError::new(
                    uri,
                    Kind::Unsupported,
                    "pvc:// is mounted by the operator, not fetched",
                ));
            }
            ModelUri::Http(url) => self.objects(uri, object::Remote::http(url)?).await?,
            ModelUri::S3 { bucket, key } => {
                self.objects(uri, object::Remote::s3(&self.env, uri, bucket, key)?)
                    .await?
            }
            ModelUri::Gs { bucket, key } => {
                self.objects(uri, object::Remote::gs(&self.env, uri, bucket, key)?)
                    .await?
            }
            ModelUri::Oci {
                registry,
                repository,
                reference,
            } => {
                let client = oci::Oci::new(&self.env, uri, registry, repository, reference);
                self.oci(uri, client).await?
            }
        };
        tracing::info!(uri, cache_hit = fetched.cache_hit, bytes = fetched.bytes, files = fetched.files,
            ms = started.elapsed().as_millis() as u64, path = %fetched.path.display(), "model fetched");
        Ok(fetched)
    }

    async fn locked<F, Fut>(&self, uri: &str, key: &str, fetch: F) -> Result<Fetched, FetchError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = Result<(cache::Meta, usize), FetchError>>,
    {
        if let Some((path, _)) = self.cache.hit(key) {
            return Ok(hit(path));
        }
        let disk = |e: std::io::Error| {
            FetchError::new(
                uri,
                Kind::Disk,
                format!("model cache {}: {e}", self.cache.dir().display()),
            )
        };
        let cache = self.cache.clone();
        let owned = key.to_string();
        // Another process may be fetching the same entry: wait for it, then take its result.
        let _lock = tokio::task::spawn_blocking(move || cache.lock(&owned))
            .await
            .map_err(|e| disk(std::io::Error::other(e)))?
            .map_err(disk)?;
        if let Some((path, _)) = self.cache.hit(key) {
            return Ok(hit(path));
        }
        let staging = self.cache.staging(key).map_err(disk)?;
        let outcome = fetch(staging.clone()).await;
        let (meta, files) = match outcome {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Err(e);
            }
        };
        let path = self.cache.commit(key, &staging, &meta).map_err(disk)?;
        self.cache.evict(key);
        Ok(Fetched {
            path,
            cache_hit: false,
            bytes: meta.bytes,
            files,
        })
    }

    async fn objects(&self, uri: &str, remote: object::Remote) -> Result<Fetched, FetchError> {
        let (objects, directory) = remote.list().await?;
        let version: Vec<String> = objects
            .iter()
            .map(|o| format!("{}:{}:{}", o.rel, o.size, o.etag.as_deref().unwrap_or("")))
            .collect();
        let key = cache::key(uri, &version.join("\n"));
        let total = objects.iter().map(|o| o.size).sum();
        self.locked(uri, &key, |staging| async move {
            let content = staging.join("content");
            let mut bytes = 0;
            let mut progress = Progress::new(uri, total);
            progress.log();
            for object in &objects {
                bytes += remote
                    .download(object, &content.join(&object.rel), &mut progress)
                    .await?;
            }
            let model = if directory {
                String::new()
            } else {
                objects[0].rel.clone()
            };
            let meta = cache::Meta {
                uri: uri.to_string(),
                version: version.join("\n"),
                bytes,
                model,
            };
            Ok((meta, objects.len()))
        })
        .await
    }

    async fn oci(&self, uri: &str, client: oci::Oci) -> Result<Fetched, FetchError> {
        let resolved = client.resolve().await?;
        let key = cache::key(uri, &resolved.digest);
        self.locked(uri, &key, |staging| async move {
            let content = staging.join("content");
            let total = resolved.layers.iter().map(|l| l.size.max(0) as u64).sum();
            let mut progress = Progress::new(uri, total);
            progress.log();
            let bytes = client
                .download(&resolved, &staging, &content, &mut progress)
                .await?;
            let root = oci::model_root(&content);
            let files = layout::count_files(&root);
            // One file and nothing else: the model is that file.
            let model = layout::single_file(&root).unwrap_or(root);
            let model = model
                .strip_prefix(&content)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = cache::Meta {
                uri: uri.to_string(),
                version: resolved.digest.clone(),
                bytes,
                model,
            };
            Ok((meta, files))
        })
        .await
    }
}

/// Logs a download's progress: at the start, then at most once a second (`ferry fetch` shows
/// these lines; `ferry apply --wait` shows a starting replica's latest one).
pub(crate) struct Progress {
    uri: String,
    total: u64,
    done: u64,
    started: Instant,
    logged: Option<Instant>,
}

impl Progress {
    pub(crate) fn new(uri: &str, total: u64) -> Progress {
        Progress {
            uri: uri.to_string(),
            total,
            done: 0,
            started: Instant::now(),
            logged: None,
        }
    }

    pub(crate) fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
        {
            self.log();
        }
    }

    pub(crate) fn log(&mut self) {
        self.logged = Some(Instant::now());
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let mb = |b: u64| b as f64 / 1e6;
        tracing::info!(
            uri = %self.uri,
            "fetching {:.1} of {:.1} MB ({}%, {:.0} MB/s)",
            mb(self.done),
            mb(self.total),
            (self.done * 100).checked_div(self.total).unwrap_or(100),
            mb(self.done) / seconds
        );
    }
}

fn hit(path: PathBuf) -> Fetched {
    Fetched {
        files: layout::count_files(&path),
        path,
        cache_hit: true,
        bytes: 0,
    }
}
