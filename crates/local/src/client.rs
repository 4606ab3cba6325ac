//! A client of the control API, found through the state directory (`api.json` + `token`).

use std::time::Duration;

use ferry_api::InferenceService;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::paths::StateDir;
use crate::wire::{
    ApplyRequest, ApplyResponse, Deleted, ErrorBody, EventRow, Items, ReplicaInfo, RevisionInfo,
    RollbackRequest, RolledBack,
};

/// Why a control-API call failed, as the CLI shows it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "ferry up is not running with state directory {dir} (no {file}); start it with `ferry up`"
    )]
    NotRunning { dir: String, file: String },
    #[error("cannot reach the control API at {addr}: {cause} (is `ferry up` still running?)")]
    Unreachable { addr: String, cause: String },
    /// The API refused the call; `body` holds its answer.
    #[error("{}", body.error)]
    Refused { status: u16, body: ErrorBody },
    /// The API answered something this client does not read.
    #[error("unexpected answer from the control API: {0}")]
    Unexpected(String),
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
        let api: serde_json::Value = std::fs::read_to_string(dirs.api_file())
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

    async fn call<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.base.clone(),
            cause: e.to_string(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or_else(|_| ErrorBody {
            error: format!("request refused ({status})"),
            documents: Vec::new(),
        });
        Err(ClientError::Refused { status, body })
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let response = self.call(method, path, body).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Unexpected(e.to_string()))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(reqwest::Method::GET, path, None::<&()>).await
    }

    pub async fn apply(
        &self,
        manifests: &str,
        namespace: &str,
    ) -> Result<ApplyResponse, ClientError> {
        self.apply_request(&ApplyRequest {
            manifests: manifests.to_string(),
            namespace: namespace.to_string(),
            dry_run: false,
            cause: None,
        })
        .await
    }

    /// An apply as asked: dry (`ferry diff`) or not, with its cause for the audit trail.
    pub async fn apply_request(
        &self,
        request: &ApplyRequest,
    ) -> Result<ApplyResponse, ClientError> {
        self.json(reqwest::Method::POST, "/v1/apply", Some(request))
            .await
    }

    /// The audit trail of `kind` `namespace/name`, oldest first.
    pub async fn history(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<crate::wire::ChangeRow>, ClientError> {
        let path = format!("/v1/history?kind={kind}&namespace={namespace}&name={name}");
        Ok(self
            .get_json::<Items<crate::wire::ChangeRow>>(&path)
            .await?
            .items)
    }

    pub async fn list(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<InferenceService>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/v1/inferenceservices?namespace={ns}"),
            None => "/v1/inferenceservices".to_string(),
        };
        let list: Items<InferenceService> = self.get_json(&path).await?;
        Ok(list.items)
    }

    fn object_path(namespace: &str, name: &str) -> String {
        format!("/v1/namespaces/{namespace}/inferenceservices/{name}")
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<InferenceService, ClientError> {
        self.get_json(&Self::object_path(namespace, name)).await
    }

    pub async fn delete(&self, namespace: &str, name: &str) -> Result<Deleted, ClientError> {
        self.json(
            reqwest::Method::DELETE,
            &Self::object_path(namespace, name),
            None::<&()>,
        )
        .await
    }

    /// A service's events, oldest first.
    pub async fn events(&self, namespace: &str, name: &str) -> Result<Vec<EventRow>, ClientError> {
        let path = format!("{}/events", Self::object_path(namespace, name));
        Ok(self.get_json::<Items<EventRow>>(&path).await?.items)
    }

    /// A service's revisions, newest first.
    pub async fn revisions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<RevisionInfo>, ClientError> {
        let path = format!("{}/revisions", Self::object_path(namespace, name));
        Ok(self.get_json::<Items<RevisionInfo>>(&path).await?.items)
    }

    /// A service's replicas.
    pub async fn replicas(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<ReplicaInfo>, ClientError> {
        let path = format!("{}/replicas", Self::object_path(namespace, name));
        Ok(self.get_json::<Items<ReplicaInfo>>(&path).await?.items)
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
                None::<&()>,
            )
            .await?;
        Ok(response.text().await.unwrap_or_default())
    }

    pub async fn rollback(
        &self,
        namespace: &str,
        name: &str,
        revision: Option<&str>,
    ) -> Result<RolledBack, ClientError> {
        let request = RollbackRequest {
            revision: revision.map(String::from),
        };
        self.json(
            reqwest::Method::POST,
            &format!("{}/rollback", Self::object_path(namespace, name)),
            Some(&request),
        )
        .await
    }

    /// Promote, abort, pause or resume the rollout in progress.
    pub async fn control_rollout(
        &self,
        namespace: &str,
        name: &str,
        control: ferry_core::progressive::Control,
    ) -> Result<InferenceService, ClientError> {
        self.json(
            reqwest::Method::POST,
            &format!("{}/rollout", Self::object_path(namespace, name)),
            Some(&control),
        )
        .await
    }

    /// `ferry apikey create`: the key, shown this once.
    pub async fn create_api_key(
        &self,
        namespace: &str,
        request: &crate::wire::CreateApiKey,
    ) -> Result<crate::wire::CreatedApiKey, ClientError> {
        self.json(
            reqwest::Method::POST,
            &format!("/v1/namespaces/{namespace}/apikeys"),
            Some(request),
        )
        .await
    }

    /// `ferry apikey list`.
    pub async fn api_keys(
        &self,
        namespace: &str,
    ) -> Result<Vec<crate::wire::ApiKeyInfo>, ClientError> {
        let items: Items<crate::wire::ApiKeyInfo> = self
            .get_json(&format!("/v1/namespaces/{namespace}/apikeys"))
            .await?;
        Ok(items.items)
    }

    /// `ferry apikey revoke`.
    pub async fn revoke_api_key(&self, namespace: &str, id: &str) -> Result<Deleted, ClientError> {
        self.json(
            reqwest::Method::DELETE,
            &format!("/v1/namespaces/{namespace}/apikeys/{id}"),
            None::<&()>,
        )
        .await
    }

    /// `ferry get quota`.
    pub async fn quotas(
        &self,
        namespace: &str,
    ) -> Result<Vec<crate::wire::QuotaInfo>, ClientError> {
        let items: Items<crate::wire::QuotaInfo> = self
            .get_json(&format!("/v1/namespaces/{namespace}/quotas"))
            .await?;
        Ok(items.items)
    }

    /// `ferry delete quota NAME`.
    pub async fn delete_quota(&self, namespace: &str, name: &str) -> Result<Deleted, ClientError> {
        self.json(
            reqwest::Method::DELETE,
            &format!("/v1/namespaces/{namespace}/quotas/{name}"),
            None::<&()>,
        )
        .await
    }

    /// `ferry get serverpool`.
    pub async fn pools(&self, namespace: &str) -> Result<Vec<ferry_api::ServerPool>, ClientError> {
        let items: Items<ferry_api::ServerPool> = self
            .get_json(&format!("/v1/namespaces/{namespace}/serverpools"))
            .await?;
        Ok(items.items)
    }

    /// `ferry delete serverpool NAME`.
    pub async fn delete_pool(&self, namespace: &str, name: &str) -> Result<Deleted, ClientError> {
        self.json(
            reqwest::Method::DELETE,
            &format!("/v1/namespaces/{namespace}/serverpools/{name}"),
            None::<&()>,
        )
        .await
    }
}
