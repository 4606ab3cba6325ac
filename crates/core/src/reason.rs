//! One vocabulary for both modes: the reasons of conditions and events, and event types.
//!
//! A reason is typed here and becomes a string only at the edge (the status subresource, a
//! Kubernetes Event, a row in local mode's events table), so a typo is a compile error and
//! both executors cannot drift apart.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $text:literal, failure = $failure:literal; )*) => {
        /// Why a condition has its status, or why an event was emitted.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The reason as written to the status, an Event or local mode's events.
            pub const fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $text,)* }
            }

            /// Whether it names a failure: the revision cannot become ready without a change
            /// (to the spec or the cluster). `ferry apply --wait` stops on it, and an event
            /// carrying it is a warning.
            pub const fn is_failure(self) -> bool {
                match self { $(Reason::$variant => $failure,)* }
            }
        }
    };
}

reasons! {
    // Conditions: progress and success.
    /// LatestRevisionReady: every desired replica of the latest revision is ready.
    RevisionReady = "RevisionReady", failure = false;
    /// A rollout is under way: some replicas are not ready yet.
    RolloutInProgress = "RolloutInProgress", failure = false;
    /// Ready: at least one revision takes traffic.
    Serving = "Serving", failure = false;
    /// Ready=False although the latest revision reported ready: nothing takes traffic.
    NoReadyReplicas = "NoReadyReplicas", failure = true;
    /// IngressReady: the Ingress exists.
    IngressCreated = "IngressCreated", failure = false;
    /// IngressReady: the HTTPRoute exists.
    HttpRouteCreated = "HTTPRouteCreated", failure = false;
    // Conditions: failures of a revision.
    /// A replica exits again and again (the last exit is quoted).
    CrashLoopBackOff = "CrashLoopBackOff", failure = true;
    /// The model server runs but says the model cannot serve.
    ModelNotReady = "ModelNotReady", failure = true;
    /// The model could not be fetched from its store (the message names the URI and the
    /// store's answer).
    ModelFetchFailed = "ModelFetchFailed", failure = true;
    /// A replica has been starting for longer than `startupTimeoutSeconds`.
    ProgressDeadlineExceeded = "ProgressDeadlineExceeded", failure = true;
    /// The scheduler cannot place a replica.
    Unschedulable = "Unschedulable", failure = true;
    /// Replicas cannot even be created (a ResourceQuota, an admission webhook).
    FailedCreate = "FailedCreate", failure = true;
    /// AutoscalerReady: KEDA's ScaledObject exists.
    ScaledObjectCreated = "ScaledObjectCreated", failure = false;
    /// The spec asks KEDA to scale where the cluster has no KEDA (no ScaledObject CRD).
    KedaMissing = "KEDAMissing", failure = true;
    /// The spec asks for an HTTPRoute where the cluster serves no Gateway API.
    GatewayApiMissing = "GatewayAPIMissing", failure = true;
    /// The ServingRuntime the predictor names does not exist.
    RuntimeNotFound = "RuntimeNotFound", failure = true;
    /// The named ServingRuntime does not support the model's format.
    UnsupportedModelFormat = "UnsupportedModelFormat", failure = true;
    /// No server (Ferry's own or a ServingRuntime) runs the model's format.
    NoRuntimeForFormat = "NoRuntimeForFormat", failure = true;
    // The kubelet's container waiting reasons that need a change to clear.
    ErrImagePull = "ErrImagePull", failure = true;
    ImagePullBackOff = "ImagePullBackOff", failure = true;
    InvalidImageName = "InvalidImageName", failure = true;
    CreateContainerConfigError = "CreateContainerConfigError", failure = true;
    CreateContainerError = "CreateContainerError", failure = true;
    // Events of the plan's decisions.
    /// A revision got its first replicas.
    RevisionCreated = "RevisionCreated", failure = false;
    /// A revision got more replicas.
    ScaledUp = "ScaledUp", failure = false;
    /// A revision got fewer replicas (drained first).
    ScaledDown = "ScaledDown", failure = false;
    /// A step started fewer replicas than it wanted: a ResourceQuota has no room for more.
    QuotaHeld = "QuotaHeld", failure = false;
    /// A revision that no longer takes traffic lost its last replica and its objects.
    RevisionRetired = "RevisionRetired", failure = false;
    /// The objects of a revision were re-applied with a new template (cluster mode: a new
    /// operator's rendering), its replica count unchanged.
    Updated = "Updated", failure = false;
    // Events of a progressive rollout's decisions.
    /// A canary rollout began beside the stable revision.
    CanaryStarted = "CanaryStarted", failure = false;
    /// A blue-green rollout began: the new revision comes up at full size beside the old.
    BlueGreenStarted = "BlueGreenStarted", failure = false;
    /// The new revision's share of traffic moved to the next step.
    TrafficShifted = "TrafficShifted", failure = false;
    /// An analysis interval failed its rules (the numbers are in the note).
    AnalysisFailed = "AnalysisFailed", failure = false;
    /// `ferry rollout pause` holds the rollout.
    RolloutPaused = "RolloutPaused", failure = false;
    /// The pause was lifted.
    RolloutResumed = "RolloutResumed", failure = false;
    /// The new revision takes all traffic.
    RolloutPromoted = "RolloutPromoted", failure = false;
    /// `ferry rollout abort` sent all traffic back to the stable revision.
    RolloutAborted = "RolloutAborted", failure = true;
    /// The analysis (or a new revision that cannot become ready) sent all traffic back to the
    /// stable revision.
    RolledBackAutomatically = "RolledBackAutomatically", failure = true;
    // The autoscaler's decisions.
    /// Ready: no replica runs, the next request starts one (`minReplicas: 0`); also the event
    /// of the last replica going.
    ScaledToZero = "ScaledToZero", failure = false;
    /// Ready: requests are held while a replica starts from zero; also the event.
    ColdStart = "ColdStart", failure = false;
    /// The short window asks for far more than is ready: scaling on it, never down (the
    /// event of panic beginning and ending).
    PanicMode = "PanicMode", failure = false;
    // A pooled model's placement.
    /// The ServerPool a service names does not exist in its namespace.
    PoolNotFound = "PoolNotFound", failure = true;
    /// No pool server has room left for a copy of the model (more servers, or a larger
    /// budget or overcommit, would place it).
    NotPlaced = "NotPlaced", failure = true;
    /// The model is larger than any server of its pool may hold: it can never be placed.
    ModelTooLarge = "ModelTooLarge", failure = true;
    /// The pool is still starting servers (none ready, or fewer than it runs) and the model
    /// waits for them.
    PoolServersStarting = "PoolServersStarting", failure = false;
    /// A ServerPool's Ready condition: every server it runs is ready.
    ServersReady = "ServersReady", failure = false;
    /// The spec was refused by validation.
    InvalidSpec = "InvalidSpec", failure = true;
    // Local mode's control API records what a user did (a cluster's audit log does that).
    /// A manifest was applied (created or configured).
    Applied = "Applied", failure = false;
    // A cluster's audit trail: each new generation, with its change cause.
    SpecChanged = "SpecChanged", failure = false;
    /// `ferry rollout undo` set the predictor to an earlier revision.
    RolledBack = "RolledBack", failure = false;
}

/// The kubelet's container waiting reasons that need a change to the spec or the cluster to
/// clear (a subset of [`Reason`]).
pub const CONTAINER_FAILURES: &[Reason] = &[
    Reason::ErrImagePull,
    Reason::ImagePullBackOff,
    Reason::InvalidImageName,
    Reason::CreateContainerConfigError,
    Reason::CreateContainerError,
];

impl Reason {
    /// The reason written as `text`, when it is one of Ferry's.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == text)
    }

    /// The container failure the kubelet's waiting reason `text` names.
    pub fn container_failure(text: &str) -> Option<Reason> {
        CONTAINER_FAILURES
            .iter()
            .copied()
            .find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Reason::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {text:?}")))
    }
}

/// Whether a reason written as text (a stored status) names a failure.
pub fn is_failure(text: &str) -> bool {
    Reason::parse(text).is_some_and(Reason::is_failure)
}

/// Kubernetes' two event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An event the plan asks an executor to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedEvent {
    pub type_: EventType,
    pub reason: Reason,
    pub note: String,
    /// What was done, machine-readable; `None`: a reconcile. A cluster folds repeats of one
    /// (reason, action) on an object into a series that keeps the first note, so an event
    /// each of whose notes matters (one per generation) has an action of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl PlannedEvent {
    /// A `Normal` event, or a `Warning` when `reason` names a failure.
    pub fn new(reason: Reason, note: String) -> Self {
        let type_ = if reason.is_failure() {
            EventType::Warning
        } else {
            EventType::Normal
        };
        PlannedEvent {
            type_,
            reason,
            note,
            action: None,
        }
    }
}

/// A condition's state before it is written: whether it holds, why, and the words for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionState {
    pub ok: bool,
    pub reason: Reason,
    pub message: String,
}

impl ConditionState {
    pub fn new(ok: bool, reason: Reason, message: impl Into<String>) -> Self {
        ConditionState {
            ok,
            reason,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_and_failures_are_warnings() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(*reason));
        }
        assert_eq!(Reason::parse("Nope"), None);
        assert!(is_failure("ImagePullBackOff"));
        assert!(!is_failure("RolloutInProgress"));
        assert!(!is_failure("SomethingElse"));
        assert_eq!(
            PlannedEvent::new(Reason::CrashLoopBackOff, String::new()).type_,
            EventType::Warning
        );
        assert_eq!(
            PlannedEvent::new(Reason::ScaledUp, String::new()).type_,
            EventType::Normal
        );
        assert_eq!(
            Reason::container_failure("ErrImagePull"),
            Some(Reason::ErrImagePull)
        );
        assert_eq!(Reason::container_failure("ModelNotReady"), None);
    }
}
