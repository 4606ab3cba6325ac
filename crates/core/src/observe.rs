//! What an executor observed about one replica (a process locally, a Pod in a cluster).

use serde::{Deserialize, Serialize};

/// Health of one replica as the executor last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ReplicaHealth {
    /// Running, model not ready yet (loading, warming up), for `for_seconds`.
    Starting { for_seconds: u64 },
    /// Serving: the model-ready check passed.
    Ready,
    /// Running but the model server says the model cannot serve (`reason` from the server).
    ModelNotReady { reason: String, for_seconds: u64 },
    /// Not placed: the scheduler's reason (`0/5 nodes are available: 1 Insufficient nvidia.com/gpu`).
    Unschedulable { message: String },
    /// Exited and waiting to be restarted (back-off); `last_exit` quotes how it ended.
    CrashLoop { restarts: u32, last_exit: String },
    /// Its container cannot even start: `reason` is one of
    /// [`crate::reason::CONTAINER_FAILURES`] (the image cannot be pulled, its configuration is
    /// invalid), `message` the kubelet's words.
    ContainerFailed {
        reason: crate::reason::Reason,
        message: String,
    },
}

/// One replica, as the decisions need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    pub id: String,
    pub revision: String,
    pub health: ReplicaHealth,
    /// Leaving: out of the route table, finishing in-flight requests, then stopped.
    pub terminating: bool,
}

impl ReplicaView {
    pub fn ready(&self) -> bool {
        self.health == ReplicaHealth::Ready && !self.terminating
    }
}
