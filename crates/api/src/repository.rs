//! What a pool's executors read from a `ferry server` (local mode and the operator alike): the
//! entries of its repository index (`POST /v2/repository/index`, with Ferry's extensions
//! `memoryBytes` and `onDemand`) and its residency (`GET /v2/repository/residency`).

use serde::{Deserialize, Serialize};

/// One model of a server's repository index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryEntry {
    pub name: String,
    /// `READY`, `LOADING`, `UNAVAILABLE`, `UNLOADED`…
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Registered to load on its first request (a pool's copy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// Its footprint measured after load and warm-up (kept while it is evicted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// A pool server's memory and LRU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Residency {
    /// Its memory budget; 0 when it has none.
    pub budget_bytes: u64,
    /// Bytes of resident models.
    pub used_bytes: u64,
    #[serde(default)]
    pub resident_models: u64,
    #[serde(default)]
    pub registered_models: u64,
    /// Models evicted since it started.
    #[serde(default)]
    pub evictions: u64,
}
