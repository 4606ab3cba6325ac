//! What a pool's executors read from a `ferry server` (local mode and the operator alike): the
//! entries of its repository index (`POST /v2/repository/index`, with Ferry's extensions
//! `memoryBytes` and `onDemand`) and its residency (`GET /v2/repository/residency`); with the
//! `client` feature, [`Client`]: those reads and the register / unload calls, one copy for both
//! executors.

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

/// A pool server's repository API over plain HTTP (pool servers listen on loopback locally and
/// on pod IPs in a cluster).
#[cfg(feature = "client")]
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

#[cfg(feature = "client")]
impl Default for Client {
    fn default() -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
        }
    }
}

#[cfg(feature = "client")]
impl Client {
    /// The server's repository index and residency.
    pub async fn observe(
        &self,
        at: std::net::SocketAddr,
    ) -> Result<(Vec<RepositoryEntry>, Residency), reqwest::Error> {
        let index = self
            .http
            .post(format!("http://{at}/v2/repository/index"))
            .json(&serde_json::json!({}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let residency = self
            .http
            .get(format!("http://{at}/v2/repository/residency"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok((index, residency))
    }

    /// Register `model` (its file or URI at `path`) to load on demand.
    pub async fn register(
        &self,
        at: std::net::SocketAddr,
        model: &str,
        path: &str,
    ) -> Result<(), String> {
        let body = serde_json::json!({ "parameters": { "path": path } });
        self.call(at, &format!("models/{model}/register"), Some(body))
            .await
    }

    /// Unload and forget `model`.
    pub async fn unregister(&self, at: std::net::SocketAddr, model: &str) -> Result<(), String> {
        self.call(at, &format!("models/{model}/unload"), None).await
    }

    /// POST to the repository API: the status and the server's reason on failure.
    async fn call(
        &self,
        at: std::net::SocketAddr,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), String> {
        let mut request = self.http.post(format!("http://{at}/v2/repository/{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(format!(
            "{status}: {}",
            response.text().await.unwrap_or_default()
        ))
    }
}
