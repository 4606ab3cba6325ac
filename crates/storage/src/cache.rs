//! The per-node model cache. An entry is keyed by the sha256 of the URI and the store's own
//! identity of its content (S3/GCS/HTTP ETags and sizes, an OCI manifest digest), so every
//! replica and revision that names the same object shares one copy, and a changed object is a
//! new entry. Layout:
//!
//! ```text
//! DIR/entries/KEY/content/…   the model (a file or a directory)
//! DIR/entries/KEY/meta.json   uri, version, bytes, the model's path below content/; its
//!                             mtime is the entry's last use (LRU)
//! DIR/locks/KEY.lock          one fetch per entry at a time, across processes
//! DIR/staging/KEY-PID-N/      a fetch in progress; renamed into entries/ only when complete
//! ```
//!
//! Eviction keeps the total under the limit, least recently used first, and never removes an
//! entry used in the last [`IN_USE_SECONDS`] (a replica may be loading it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// An entry used this recently is not evicted.
pub const IN_USE_SECONDS: u64 = 120;

static STAGING: AtomicU64 = AtomicU64::new(0);

/// What `meta.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub uri: String,
    pub version: String,
    pub bytes: u64,
    /// The model below `content/` ("" for the directory itself).
    pub model: String,
}

/// A cache directory and its size limit.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    limit_bytes: u64,
}

/// The key of `uri` at `version`.
pub fn key(uri: &str, version: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{uri}\n{version}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>, limit_bytes: u64) -> Cache {
        Cache {
            dir: dir.into(),
            limit_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join("entries").join(key)
    }

    /// The model's path when the entry is complete; marks it used.
    pub fn hit(&self, key: &str) -> Option<(PathBuf, Meta)> {
        let entry = self.entry(key);
        let meta_file = entry.join("meta.json");
        let meta: Meta = serde_json::from_slice(&std::fs::read(&meta_file).ok()?).ok()?;
        if let Ok(file) = std::fs::File::options().append(true).open(&meta_file) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some((entry.join("content").join(&meta.model), meta))
    }

    /// Holds the entry's lock (blocking: call from a blocking thread) until the guard drops.
    pub fn lock(&self, key: &str) -> std::io::Result<std::fs::File> {
        let dir = self.dir.join("locks");
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{key}.lock")))?;
        file.lock()?;
        Ok(file)
    }

    /// A fresh staging directory for `key`.
    pub fn staging(&self, key: &str) -> std::io::Result<PathBuf> {
        let n = STAGING.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .dir
            .join("staging")
            .join(format!("{key}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("content"))?;
        Ok(dir)
    }

    /// Moves a complete staging directory into place; returns the model's path.
    pub fn commit(&self, key: &str, staging: &Path, meta: &Meta) -> std::io::Result<PathBuf> {
        std::fs::write(
            staging.join("meta.json"),
            serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?,
        )?;
        let entry = self.entry(key);
        std::fs::create_dir_all(self.dir.join("entries"))?;
        let _ = std::fs::remove_dir_all(&entry);
        std::fs::rename(staging, &entry)?;
        Ok(entry.join("content").join(&meta.model))
    }

    /// Every complete entry: key, bytes, last use.
    pub fn entries(&self) -> Vec<(String, u64, SystemTime)> {
        let Ok(read) = std::fs::read_dir(self.dir.join("entries")) else {
            return Vec::new();
        };
        read.flatten()
            .filter_map(|e| {
                let meta_file = e.path().join("meta.json");
                let used = std::fs::metadata(&meta_file).ok()?.modified().ok()?;
                let meta: Meta = serde_json::from_slice(&std::fs::read(&meta_file).ok()?).ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    meta.bytes,
                    used,
                ))
            })
            .collect()
    }

    /// Removes least recently used entries (never `keep`, never one in use) until the total is
    /// within the limit; returns the keys removed.
    pub fn evict(&self, keep: &str) -> Vec<String> {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let recent = SystemTime::now() - Duration::from_secs(IN_USE_SECONDS);
        let mut removed = Vec::new();
        for (key, bytes, used) in entries {
            if total <= self.limit_bytes {
                break;
            }
            if key == keep || used > recent {
                continue;
            }
            if std::fs::remove_dir_all(self.entry(&key)).is_ok() {
                tracing::info!(entry = %key, bytes, "model cache: evicted");
                total -= bytes;
                removed.push(key);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &Cache, key: &str, bytes: u64) -> PathBuf {
        let staging = cache.staging(key).unwrap();
        std::fs::write(staging.join("content/m.onnx"), vec![0u8; bytes as usize]).unwrap();
        let meta = Meta {
            uri: format!("s3://b/{key}"),
            version: "v".into(),
            bytes,
            model: "m.onnx".into(),
        };
        cache.commit(key, &staging, &meta).unwrap()
    }

    fn age(cache: &Cache, key: &str, seconds: u64) {
        let file = std::fs::File::options()
            .append(true)
            .open(cache.entry(key).join("meta.json"))
            .unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds))
            .unwrap();
    }

    #[test]
    fn a_hit_is_the_committed_file_and_eviction_takes_the_least_recently_used() {
        let dir = std::env::temp_dir().join(format!("ferry-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::new(&dir, 250);
        assert!(cache.hit("a").is_none());
        let path = put(&cache, "a", 100);
        assert_eq!(cache.hit("a").unwrap().0, path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
        put(&cache, "b", 100);
        put(&cache, "c", 100);
        age(&cache, "a", 1000);
        age(&cache, "b", 500);
        age(&cache, "c", 900);
        // 300 > 250: the oldest (a) goes, and that is enough.
        assert_eq!(cache.evict("c"), vec!["a".to_string()]);
        assert!(cache.hit("a").is_none());
        assert!(cache.hit("b").is_some());
        // b was just used (the hit): c, older, goes; b stays though it is older than d.
        put(&cache, "d", 100);
        assert_eq!(cache.evict("d"), vec!["c".to_string()]);
        assert!(cache.hit("b").is_some());
        assert_ne!(key("s3://b/k", "etag1"), key("s3://b/k", "etag2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
