//! What walls a service's pods off: a NetworkPolicy per InferenceService that lets only pods of
//! Ferry's own namespace (the router; the operator) reach its predictor pods, and the pod
//! security fields every predictor pod carries (non-root, read-only root filesystem, no
//! capabilities, seccomp `RuntimeDefault`, no ServiceAccount token: the pods never call the
//! Kubernetes API).

use ferry_api::InferenceService;
use k8s_openapi::api::core::v1::SeccompProfile;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The namespace the router (and the operator) run in (`deploy/`).
pub const SYSTEM_NAMESPACE: &str = "ferry-system";

/// `<name>`: ingress to the service's predictor pods (every revision, variants and shadow
/// included) only from pods in [`SYSTEM_NAMESPACE`]. Kubelet probes are not subject to it.
pub fn network_policy(isvc: &InferenceService) -> NetworkPolicy {
    let name = isvc.metadata.name.clone().unwrap_or_default();
    let mut labels = crate::labels(&name, "");
    labels.remove(ferry_api::LABEL_REVISION);
    let selector = [
        ("app.kubernetes.io/managed-by", "ferry"),
        ("app.kubernetes.io/component", "predictor"),
        (ferry_api::LABEL_SERVICE, name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    NetworkPolicy {
        metadata: crate::metadata(isvc, &name, labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(
                            [(
                                "kubernetes.io/metadata.name".to_string(),
                                SYSTEM_NAMESPACE.to_string(),
                            )]
                            .into(),
                        ),
                        ..LabelSelector::default()
                    }),
                    ..NetworkPolicyPeer::default()
                }]),
                ..NetworkPolicyIngressRule::default()
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The default seccomp profile of the container runtime.
pub fn runtime_default_seccomp() -> Option<SeccompProfile> {
    Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    })
}
