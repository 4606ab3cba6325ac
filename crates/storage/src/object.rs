//! `s3://`, `gs://` and `http(s)://` through the `object_store` crate: what a URI names (one
//! object, or every object under a prefix), and each object's download, streamed to a file and
//! checked against the size and, for single-part S3 uploads, the MD5 ETag.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, RetryConfig};

use crate::Env;
use crate::error::{FetchError, Kind, chain, store_answer};

/// One object of a listing, `rel` its path below the URI (the file name for a single object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub rel: String,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// An object store and the key (or prefix) the URI names in it.
pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    key: String,
    uri: String,
    /// http(s) has no listing: the URI is always one object.
    single_only: bool,
}

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    }
}

/// The store's configuration keys among `env`'s `PREFIX*` variables (as the builders' own
/// `from_env` reads the process environment).
fn configs<'a, K: std::str::FromStr>(
    env: &'a Env,
    prefix: &'a str,
) -> impl Iterator<Item = (K, &'a String)> + 'a {
    env.iter()
        .filter(move |(k, _)| k.starts_with(prefix))
        .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v)))
}

fn any_env(env: &Env, names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| env.get(*n).is_some_and(|v| !v.is_empty()))
}

impl Remote {
    pub(crate) fn s3(env: &Env, uri: &str, bucket: &str, key: &str) -> Result<Remote, FetchError> {
        let mut builder = configs(env, "AWS_")
            .fold(object_store::aws::AmazonS3Builder::new(), |b, (k, v)| {
                b.with_config(k, v)
            })
            .with_bucket_name(bucket)
            .with_retry(retry());
        // KServe's storage initializer reads S3_ENDPOINT (and S3_USE_HTTPS); the AWS SDKs
        // AWS_ENDPOINT_URL, which from_env has already taken.
        let endpoint = env
            .get("AWS_ENDPOINT_URL")
            .or_else(|| env.get("S3_ENDPOINT"))
            .filter(|e| !e.is_empty())
            .cloned();
        if let Some(endpoint) = endpoint {
            let endpoint = if endpoint.contains("://") {
                endpoint
            } else if env.get("S3_USE_HTTPS").map(String::as_str) == Some("0") {
                format!("http://{endpoint}")
            } else {
                format!("https://{endpoint}")
            };
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        if !any_env(env, &["AWS_REGION", "AWS_DEFAULT_REGION"]) {
            builder = builder.with_region("us-east-1");
        }
        // Without credentials of any kind, read anonymously rather than ask an instance
        // metadata service (a link-local address a laptop or a test must never dial).
        if !any_env(
            env,
            &[
                "AWS_ACCESS_KEY_ID",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "FERRY_S3_INSTANCE_CREDENTIALS",
            ],
        ) {
            builder = builder.with_skip_signature(true);
        }
        Remote::listing(uri, key, builder.build())
    }

    pub(crate) fn gs(env: &Env, uri: &str, bucket: &str, key: &str) -> Result<Remote, FetchError> {
        let mut builder = configs(env, "GOOGLE_")
            .fold(
                object_store::gcp::GoogleCloudStorageBuilder::new(),
                |b, (k, v)| b.with_config(k, v),
            )
            .with_bucket_name(bucket)
            .with_retry(retry());
        if !any_env(
            env,
            &[
                "GOOGLE_SERVICE_ACCOUNT",
                "GOOGLE_SERVICE_ACCOUNT_PATH",
                "GOOGLE_SERVICE_ACCOUNT_KEY",
                "GOOGLE_APPLICATION_CREDENTIALS",
                "FERRY_GCS_INSTANCE_CREDENTIALS",
            ],
        ) {
            builder = builder.with_skip_signature(true);
        }
        Remote::listing(uri, key, builder.build())
    }

    /// A store that lists (S3, GCS), once its builder has built it.
    fn listing(
        uri: &str,
        key: &str,
        built: object_store::Result<impl ObjectStore>,
    ) -> Result<Remote, FetchError> {
        let store = built.map_err(|e| FetchError::new(uri, Kind::Unsupported, chain(&e)))?;
        Ok(Remote {
            store: Arc::new(store),
            key: key.to_string(),
            uri: uri.to_string(),
            single_only: false,
        })
    }

    pub(crate) fn http(url: &str) -> Result<Remote, FetchError> {
        let parsed = url.split(['?', '#']).next().unwrap_or(url);
        let (scheme, rest) = parsed.split_once("://").unwrap_or(("http", parsed));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let options = object_store::ClientOptions::new().with_allow_http(true);
        let store = object_store::http::HttpBuilder::new()
            .with_url(format!("{scheme}://{authority}"))
            .with_client_options(options)
            .with_retry(retry())
            .build()
            .map_err(|e| FetchError::new(url, Kind::Unsupported, chain(&e)))?;
        Ok(Remote {
            store: Arc::new(store),
            key: path.to_string(),
            uri: url.to_string(),
            single_only: true,
        })
    }

    fn failed(&self, e: &object_store::Error) -> FetchError {
        let text = chain(e);
        let kind = match e {
            object_store::Error::NotFound { .. } => Kind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => Kind::Denied,
            _ if text.contains("status 401") || text.contains("status 403") => Kind::Denied,
            _ if text.contains("status 404") => Kind::NotFound,
            _ => Kind::Unreachable,
        };
        let answer = match (&kind, store_answer(&text)) {
            (Kind::NotFound, Some(a)) if a.contains("404") => a,
            (Kind::NotFound, _) => "404 NoSuchKey (no such object)".to_string(),
            (Kind::Denied, Some(a)) if !a.starts_with("40") => format!("403 {a}"),
            (Kind::Denied, Some(a)) => a,
            (Kind::Denied, None) => "403 AccessDenied".to_string(),
            (_, _) => text,
        };
        FetchError::new(&self.uri, kind, answer)
    }

    /// The objects the URI names: the one object at the key, else every object under the
    /// key as a prefix (a directory). A key ending in `/` is a directory only.
    pub(crate) async fn list(&self) -> Result<(Vec<Object>, bool), FetchError> {
        let trimmed = self.key.trim_end_matches('/');
        if !self.key.ends_with('/') || self.single_only {
            match self.store.head(&StorePath::from(trimmed)).await {
                Ok(meta) => {
                    let rel = trimmed.rsplit('/').next().unwrap_or(trimmed);
                    let object = Object {
                        rel: if rel.is_empty() {
                            "model".into()
                        } else {
                            rel.into()
                        },
                        key: trimmed.to_string(),
                        size: meta.size,
                        etag: meta.e_tag,
                    };
                    return Ok((vec![object], false));
                }
                Err(e) if self.single_only => return Err(self.failed(&e)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    let failed = self.failed(&e);
                    // A HEAD answer has no body: a GET's names the store's error code.
                    if failed.kind == Kind::Denied
                        && !failed.answer.contains(' ')
                        && let Err(e) = self.store.get(&StorePath::from(trimmed)).await
                    {
                        return Err(self.failed(&e));
                    }
                    return Err(failed);
                }
            }
        }
        let prefix = StorePath::from(trimmed);
        let mut listing = self.store.list(Some(&prefix));
        let mut objects = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.failed(&e))?;
            let key = meta.location.to_string();
            let Some(rel) = key
                .strip_prefix(trimmed)
                .map(|r| r.trim_start_matches('/'))
                .filter(|r| !r.is_empty())
            else {
                continue;
            };
            objects.push(Object {
                rel: rel.to_string(),
                key: key.clone(),
                size: meta.size,
                etag: meta.e_tag,
            });
        }
        if objects.is_empty() {
            return Err(FetchError::new(
                &self.uri,
                Kind::NotFound,
                format!("404 NoSuchKey (no object at {trimmed:?} and none under {trimmed}/)"),
            ));
        }
        objects.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok((objects, true))
    }

    /// Downloads `object` to `file`, checking its size and (single-part S3) MD5.
    pub(crate) async fn download(
        &self,
        object: &Object,
        file: &Path,
        progress: &mut crate::Progress,
    ) -> Result<u64, FetchError> {
        let disk = |e: std::io::Error| {
            FetchError::new(
                &self.uri,
                Kind::Disk,
                format!("cannot write {}: {e}", file.display()),
            )
        };
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(disk)?;
        }
        let got = self
            .store
            .get(&StorePath::from(object.key.as_str()))
            .await
            .map_err(|e| self.failed(&e))?;
        let mut stream = got.into_stream();
        let sink = crate::sink::Sink::create(file).map_err(disk)?;
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                FetchError::new(
                    &self.uri,
                    Kind::Unreachable,
                    format!("download of {} broke off: {}", object.key, chain(&e)),
                )
            })?;
            bytes += chunk.len() as u64;
            progress.add(chunk.len() as u64);
            if sink.write(chunk).await.is_err() {
                break; // the writer failed: finish() says why
            }
        }
        let md5 = sink.finish().await.map_err(disk)?;
        if bytes != object.size {
            return Err(FetchError::new(
                &self.uri,
                Kind::Corrupt,
                format!(
                    "{}: got {bytes} bytes, the store said {}",
                    object.key, object.size
                ),
            ));
        }
        if let Some(expected) = object.etag.as_deref().and_then(md5_etag) {
            let actual = md5;
            if actual != expected {
                return Err(FetchError::new(
                    &self.uri,
                    Kind::Corrupt,
                    format!(
                        "{}: MD5 {actual} differs from the store's ETag {expected}",
                        object.key
                    ),
                ));
            }
        }
        Ok(bytes)
    }
}

/// The MD5 an ETag states: 32 hex digits (quoted or not); multipart ETags (`…-N`) state none.
fn md5_etag(etag: &str) -> Option<String> {
    let etag = etag.trim_start_matches("W/").trim_matches('"');
    (etag.len() == 32 && etag.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| etag.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_that_differ_from_what_the_store_said_are_refused() {
        let store = Arc::new(object_store::memory::InMemory::new());
        store
            .put(
                &StorePath::from("m/iris.onnx"),
                b"onnx bytes".to_vec().into(),
            )
            .await
            .unwrap();
        let remote = Remote {
            store,
            key: "m/iris.onnx".into(),
            uri: "s3://b/m/iris.onnx".into(),
            single_only: false,
        };
        let (objects, directory) = remote.list().await.unwrap();
        assert!(!directory);
        let dir = std::env::temp_dir().join(format!("ferry-object-{}", std::process::id()));
        let mut progress = crate::Progress::new("s3://b/m/iris.onnx", 10);
        let file = dir.join("iris.onnx");
        let good = Object {
            etag: Some("\"8d0b2b8e4d7d7b1b0b5b7c1b6d8a3f10\"".into()),
            ..objects[0].clone()
        };
        let e = remote
            .download(&good, &file, &mut progress)
            .await
            .unwrap_err();
        assert_eq!(e.kind, Kind::Corrupt);
        assert!(e.answer.contains("differs from the store's ETag"), "{e}");
        let short = Object {
            size: 99,
            etag: None,
            ..objects[0].clone()
        };
        let e = remote
            .download(&short, &file, &mut progress)
            .await
            .unwrap_err();
        assert!(e.answer.contains("got 10 bytes, the store said 99"), "{e}");
        let plain = Object {
            etag: None,
            ..objects[0].clone()
        };
        assert_eq!(
            remote.download(&plain, &file, &mut progress).await.unwrap(),
            10
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_single_part_etags_state_an_md5() {
        assert_eq!(
            md5_etag("\"D41D8CD98F00B204E9800998ECF8427E\"").as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(md5_etag("\"9b2cf535f27731c974343645a3985328-3\""), None);
        assert_eq!(md5_etag("W/\"5e-1a2b\""), None);
    }
}
