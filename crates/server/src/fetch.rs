//! Models that are not plain files (feature `storage`, on by default): a remote URI (`s3://`,
//! `gs://`, `http(s)://`, `oci://`) is fetched through `ferry-storage` into the node's model
//! cache, and a directory (fetched or local) is resolved to its `.onnx` file and
//! `tokenizer.json`. Without the feature (the fuzz build) a model is a local file.

use std::path::{Path, PathBuf};

/// What a load reads: the model file, its tokenizer if the directory has one, and, for a
/// remote model, whether the cache had it and the bytes downloaded.
pub struct Resolved {
    pub file: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub fetched: Option<(bool, u64)>,
}

/// Brings models to local files.
pub struct Fetcher {
    #[cfg(feature = "storage")]
    inner: ferry_storage::Fetcher,
}

impl Fetcher {
    /// A fetcher with its cache at `dir`, bounded to `limit_bytes`.
    #[cfg_attr(not(feature = "storage"), allow(unused_variables))]
    pub fn new(dir: &Path, limit_bytes: u64) -> Fetcher {
        Fetcher {
            #[cfg(feature = "storage")]
            inner: ferry_storage::Fetcher::new(ferry_storage::Cache::new(dir, limit_bytes)),
        }
    }

    /// The local files of the model at `path` (a path or URI).
    pub async fn resolve(&self, path: &Path) -> Result<Resolved, String> {
        #[cfg(feature = "storage")]
        {
            let uri = path.to_string_lossy();
            let mut fetched = None;
            let mut local = path.to_path_buf();
            if ferry_api::ModelUri::parse(&uri).is_ok_and(|u| u.is_remote()) {
                let got = self.inner.fetch(&uri).await.map_err(|e| e.to_string())?;
                fetched = Some((got.cache_hit, got.bytes));
                local = got.path;
            }
            let (file, tokenizer) = ferry_storage::layout::model_files(&local)?;
            Ok(Resolved {
                file,
                tokenizer,
                fetched,
            })
        }
        #[cfg(not(feature = "storage"))]
        {
            let text = path.to_string_lossy();
            if text.contains("://") && !text.starts_with("file://") {
                return Err(format!(
                    "{text}: this build fetches no remote models (cargo feature `storage`)"
                ));
            }
            Ok(Resolved {
                file: path.to_path_buf(),
                tokenizer: None,
                fetched: None,
            })
        }
    }
}
