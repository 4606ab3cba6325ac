//! A client of the control API, found through the state directory (`api.json` + `token`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::paths::StateDir;

/// Why a control-API call failed, as the CLI shows it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "ferry up is not running with state directory {dir} (no {file}); start it with `ferry up`"
    )]
    NotRunning { dir: String, file: String },
    #[error("cannot reach the control API at {addr}: {cause} (is `ferry up` still running?)")]
    Unreachable { addr: String, cause: String },
    /// The API refused the call; `body` holds its JSON answer.
    #[error("{message}")]
    Refused {
        status: u16,
        message: String,
        body: Value,
    },
}

/// Control API client.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Connect to the daemon of `dirs`.
    pub fn connect(dirs: &StateDir) -> Result<Client, ClientError> {
        let not_running = |file: &std::path::Path| ClientError::NotRunning {
            dir: dirs.root.display().to_string(),
            file: file.display().to_string(),
        };
        let api: Value = std::fs::read_to_string(dirs.api_file())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| not_running(&dirs.api_file()))?;
        let token =
            std::fs::read_to_string(dirs.token()).map_err(|_| not_running(&dirs.token()))?;
        let addr = api["api"].as_str().unwrap_or_default();
        Ok(Client {
            base: format!("http://{addr}"),
            token: token.trim().to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.base.clone(),
            cause: e.to_string(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        Err(ClientError::Refused {
            status,
            message: body["error"]
                .as_str()
                .unwrap_or("request refused")
                .to_string(),
            body,
        })
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let response = self.call(method, path, body).await?;
        Ok(response.json().await.unwrap_or_default())
    }

    pub async fn apply(&self, manifests: &str, namespace: &str) -> Result<Value, ClientError> {
        self.json(
            reqwest::Method::POST,
            "/v1/apply",
            Some(json!({"manifests": manifests, "namespace": namespace})),
        )
        .await
    }

    pub async fn list(&self, namespace: Option<&str>) -> Result<Value, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/v1/inferenceservices?namespace={ns}"),
            None => "/v1/inferenceservices".to_string(),
        };
        self.json(reqwest::Method::GET, &path, None).await
    }

    fn object_path(namespace: &str, name: &str) -> String {
        format!("/v1/namespaces/{namespace}/inferenceservices/{name}")
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.json(
            reqwest::Method::GET,
            &Self::object_path(namespace, name),
            None,
        )
        .await
    }

    pub async fn delete(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.json(
            reqwest::Method::DELETE,
            &Self::object_path(namespace, name),
            None,
        )
        .await
    }

    /// `events`, `revisions` or `replicas` of a service.
    pub async fn detail(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
    ) -> Result<Value, ClientError> {
        self.json(
            reqwest::Method::GET,
            &format!("{}/{what}", Self::object_path(namespace, name)),
            None,
        )
        .await
    }

    pub async fn logs(
        &self,
        namespace: &str,
        name: &str,
        tail: usize,
    ) -> Result<String, ClientError> {
        let response = self
            .call(
                reqwest::Method::GET,
                &format!("{}/logs?tail={tail}", Self::object_path(namespace, name)),
                None,
            )
            .await?;
        Ok(response.text().await.unwrap_or_default())
    }

    pub async fn rollback(
        &self,
        namespace: &str,
        name: &str,
        revision: Option<&str>,
    ) -> Result<Value, ClientError> {
        self.json(
            reqwest::Method::POST,
            &format!("{}/rollback", Self::object_path(namespace, name)),
            Some(json!({ "revision": revision })),
        )
        .await
    }
}
