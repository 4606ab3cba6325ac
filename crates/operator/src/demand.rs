//! The cluster router's demand signal for scale from zero: when the router holds a request
//! for a service with no ready replica, it stamps the InferenceService with
//! [`ferry_api::ANNOTATION_DEMAND`] (a merge patch of that one annotation). The operator's
//! watch delivers the change at once, and the reconcile counts the fresh stamp as a held
//! request before the collected numbers show it: no poll interval on the cold path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::InferenceService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::mpsc;

/// Called with (namespace, service) for each held request (`ferry_router::Demand`).
pub type Demand = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One service is stamped at most this often.
const EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
struct DemandPatch {
    metadata: ObjectMeta,
}

/// A demand callback for `ferry_router::Router::on_demand`: stamps run on a task of their own,
/// off the request path (a full queue drops the stamp; the held count still reaches the
/// operator through the collected numbers).
pub fn waker(client: Client) -> Demand {
    let (tx, mut rx) = mpsc::channel::<(String, String)>(1024);
    tokio::spawn(async move {
        let mut last: HashMap<(String, String), Instant> = HashMap::new();
        while let Some(key) = rx.recv().await {
            if last.get(&key).is_some_and(|at| at.elapsed() < EVERY) {
                continue;
            }
            last.insert(key.clone(), Instant::now());
            let (namespace, name) = key;
            let patch = DemandPatch {
                metadata: ObjectMeta {
                    annotations: Some(
                        [(
                            ferry_api::ANNOTATION_DEMAND.to_string(),
                            Timestamp::now().to_string(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                },
            };
            let api: Api<InferenceService> = Api::namespaced(client.clone(), &namespace);
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::debug!(%namespace, %name, "demand stamped"),
                Err(e) => tracing::warn!(%namespace, %name, error = %e, "cannot stamp demand"),
            }
        }
    });
    Arc::new(move |namespace: &str, service: &str| {
        let _ = tx.try_send((namespace.to_string(), service.to_string()));
    })
}
