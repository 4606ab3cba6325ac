//! Leader election with a `coordination.k8s.io/v1` Lease, so that several operator replicas can
//! run and exactly one reconciles.
//!
//! The algorithm is client-go's: a candidate takes the Lease when it is free (no holder), held by
//! itself (a restarted process of the same pod), or when its record has not changed for a whole
//! lease duration *as observed by this candidate's own clock* (so clock skew between machines
//! does not matter). Every write carries the resourceVersion it read: of two candidates racing
//! for an expired Lease, the apiserver lets one win. The leader renews every `renew_every`; when
//! it cannot renew for a whole lease duration it has lost, and the caller stops reconciling.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// One candidate for one Lease.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_every: Duration,
    /// The record last seen held by another candidate, and when this candidate first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("another candidate holds the lease now: {0}")]
    TakenBy(String),
    #[error("could not renew the lease for {0:?}: {1}")]
    RenewFailed(Duration, kube::Error),
}

impl LeaderElection {
    /// A candidate `identity` (e.g. the pod name) for the Lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            observed: Mutex::new(None),
        }
    }

    /// Shorter timings (tests).
    pub fn with_timings(mut self, lease_duration: Duration, renew_every: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renew_every = renew_every;
        self
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Wait until this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(None) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(Some(holder)) => {
                    tracing::debug!(lease = %self.name, %holder, "standing by: another candidate leads")
                }
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "cannot read the lease"),
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Renew until leadership is lost; returns why.
    pub async fn hold(&self) -> Lost {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(None) => renewed = Instant::now(),
                Ok(Some(holder)) => return Lost::TakenBy(holder),
                Err(e) if renewed.elapsed() >= self.lease_duration => {
                    return Lost::RenewFailed(renewed.elapsed(), e);
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "lease renewal failed; retrying")
                }
            }
        }
    }

    /// Give the Lease up at once (a clean shutdown), so a standby need not wait for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(lease = %self.name, error = %e, "cannot release the lease");
        }
    }

    /// One attempt: `Ok(None)` when this candidate holds the Lease afterwards,
    /// `Ok(Some(holder))` when another one does.
    async fn try_acquire_or_renew(&self) -> Result<Option<String>, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = self.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some("(racing)".into())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() {
            let record = lease.metadata.resource_version.clone().unwrap_or_default();
            let duration = spec
                .lease_duration_seconds
                .map_or(
                    self.lease_duration,
                    |s| Duration::from_secs(s.max(0) as u64),
                );
            let mut observed = self.observed.lock().expect("observed poisoned");
            let since = match observed.as_ref() {
                Some((seen, at)) if *seen == record => *at,
                _ => {
                    *observed = Some((record, Instant::now()));
                    Instant::now()
                }
            };
            if since.elapsed() < duration {
                return Ok(Some(holder));
            }
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                *self.observed.lock().expect("observed poisoned") = None;
                Ok(None)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Some(holder)),
            Err(e) => Err(e),
        }
    }
}
