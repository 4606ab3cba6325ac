//! A/B experiments in the spec and the status: variants with their own models beside the
//! predictor (the control), sticky assignment, and the per-variant figures.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The name of the predictor's own variant in an experiment.
pub const CONTROL_VARIANT: &str = "control";

/// Request header that chooses a variant of an experiment; responses carry it too.
pub const HEADER_VARIANT: &str = "ferry-variant";

/// Response header with the router's id of the request (feedback names it).
pub const HEADER_REQUEST_ID: &str = "ferry-request-id";

/// An A/B experiment: long-lived variants beside the predictor (the control).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSpec {
    /// The variants; the control (the predictor) takes what their weights leave.
    pub variants: Vec<VariantSpec>,
    /// Keep a caller on one variant, by a hash of a header or a cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySpec>,
}

/// One variant: a full revision serving its own model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantSpec {
    /// A DNS label, unique, not `control`.
    pub name: String,
    /// Percent of the traffic (1–100; all variants together at most 100).
    pub weight: u32,
    /// The variant's model, in place of the predictor's.
    pub model: crate::ModelSpec,
}

/// What keeps a caller on one variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StickySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// One variant's figures, as the status reports them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantStatus {
    pub name: String,
    pub revision: String,
    pub weight: u32,
    pub requests: u64,
    pub errors: u64,
    pub error_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_latency_ms: Option<f64>,
    /// Rewards received (`POST /v2/models/{model}/feedback`).
    pub feedback: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_reward: Option<f64>,
    /// The 95 % interval of the mean reward (normal approximation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_high: Option<f64>,
}

/// An experiment's figures per variant, since the router(s) started counting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentStatus {
    pub variants: Vec<VariantStatus>,
}

/// Problems of an experiment, each with its field path.
pub(crate) fn check_experiment(
    isvc: &crate::InferenceService,
    errors: &mut Vec<crate::FieldError>,
) {
    use crate::FieldError;
    let Some(experiment) = &isvc.spec.experiment else {
        return;
    };
    if experiment.variants.is_empty() {
        errors.push(FieldError::new(
            "spec.experiment.variants",
            "Required value: at least one variant",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut sum = 0;
    for (i, variant) in experiment.variants.iter().enumerate() {
        let path = format!("spec.experiment.variants[{i}]");
        if !crate::validate::is_dns_label(&variant.name, 30) {
            errors.push(FieldError::new(
                &format!("{path}.name"),
                format!(
                    "Invalid value: {:?}: a lower-case DNS label of at most 30 characters",
                    variant.name
                ),
            ));
        } else if variant.name == CONTROL_VARIANT {
            errors.push(FieldError::new(
                &format!("{path}.name"),
                "Invalid value: \"control\": the name of the predictor's own variant",
            ));
        } else if !seen.insert(variant.name.clone()) {
            errors.push(FieldError::new(
                &format!("{path}.name"),
                format!("Duplicate value: {:?}", variant.name),
            ));
        }
        if !(1..=100).contains(&variant.weight) {
            errors.push(FieldError::new(
                &format!("{path}.weight"),
                format!(
                    "Invalid value: {}: must be between 1 and 100",
                    variant.weight
                ),
            ));
        }
        sum += variant.weight;
        if variant.model == isvc.spec.predictor.model {
            errors.push(FieldError::new(
                &format!("{path}.model"),
                "Invalid value: the same model as spec.predictor.model: a variant serves another one",
            ));
        }
    }
    if sum > 100 {
        errors.push(FieldError::new(
            "spec.experiment.variants",
            format!("Invalid value: the weights add up to {sum}: at most 100"),
        ));
    }
    if let Some(sticky) = &experiment.sticky
        && sticky.header.is_some() == sticky.cookie.is_some()
    {
        errors.push(FieldError::new(
            "spec.experiment.sticky",
            "Invalid value: give exactly one of header or cookie",
        ));
    }
    if isvc
        .spec
        .rollout
        .as_ref()
        .is_some_and(|r| r.strategy() != crate::RolloutStrategy::Rolling)
        || isvc.spec.predictor.canary_traffic_percent.is_some()
    {
        errors.push(FieldError::new(
            "spec.experiment",
            "Forbidden: an experiment runs beside rolling updates only, not a canary or blue-green rollout",
        ));
    }
}

/// Shadow traffic: a share of live requests mirrored to another model, its answers compared
/// with the live ones and never returned.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSpec {
    /// The shadow's model, in place of the predictor's (a full revision of its own).
    pub model: crate::ModelSpec,
    /// Percent of live REST requests mirrored (0–100).
    pub percent: u32,
}

/// The shadow's figures since the router(s) started counting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStatus {
    pub revision: String,
    pub percent: u32,
    /// Live requests the router saw, and copies sent to the shadow.
    pub live: u64,
    pub mirrored: u64,
    /// Copies whose answer matched the live one (integer outputs equal; floats within a
    /// tolerance), and did not.
    pub agreed: u64,
    pub disagreed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement_percent: Option<f64>,
    /// Copies the shadow failed, and copies dropped because the queue was full.
    pub failed: u64,
    pub dropped: u64,
}

/// Problems of a shadow, each with its field path.
pub(crate) fn check_shadow(isvc: &crate::InferenceService, errors: &mut Vec<crate::FieldError>) {
    let Some(shadow) = &isvc.spec.shadow else {
        return;
    };
    if shadow.percent > 100 {
        errors.push(crate::FieldError::new(
            "spec.shadow.percent",
            format!(
                "Invalid value: {}: must be between 0 and 100",
                shadow.percent
            ),
        ));
    }
    if shadow.model == isvc.spec.predictor.model {
        errors.push(crate::FieldError::new(
            "spec.shadow.model",
            "Invalid value: the same model as spec.predictor.model: a shadow serves another one",
        ));
    }
}
