//! Shadow traffic: after a live REST request is answered, a share of them (the plan's
//! percent) is copied to the shadow revision in the background — never delaying the client;
//! at most [`IN_FLIGHT`] copies at once, further ones dropped and counted — and its answer is
//! compared with the live one and discarded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferry_core::experiment::ShadowCounts;
use serde_json::Value;

/// Copies in flight at once per router; beyond, copies are dropped.
pub const IN_FLIGHT: usize = 64;

/// A shadow's counters.
#[derive(Default)]
pub struct ShadowCounters {
    pub live: AtomicU64,
    pub mirrored: AtomicU64,
    pub agreed: AtomicU64,
    pub disagreed: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

impl ShadowCounters {
    pub fn snapshot(&self) -> ShadowCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShadowCounts {
            live: get(&self.live),
            mirrored: get(&self.mirrored),
            agreed: get(&self.agreed),
            disagreed: get(&self.disagreed),
            failed: get(&self.failed),
            dropped: get(&self.dropped),
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether two OIP JSON answers agree: every integer output (a label, a class id) equal;
/// for a model without integer outputs, every float within 1e-5 absolute or 0.1 % relative.
/// `None` when either is not an OIP answer.
pub fn answers_agree(live: &Bytes, shadow: &Bytes) -> Option<bool> {
    let live: Value = serde_json::from_slice(live).ok()?;
    let shadow: Value = serde_json::from_slice(shadow).ok()?;
    let outputs = |v: &Value| -> Option<Vec<(String, String, Vec<Value>)>> {
        let mut out: Vec<(String, String, Vec<Value>)> = v["outputs"]
            .as_array()?
            .iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap_or("").to_string(),
                    o["datatype"].as_str().unwrap_or("").to_string(),
                    o["data"].as_array().cloned().unwrap_or_default(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Some(out)
    };
    let (live, shadow) = (outputs(&live)?, outputs(&shadow)?);
    let integer = |datatype: &str| {
        datatype.starts_with("INT") || datatype.starts_with("UINT") || datatype == "BOOL"
    };
    let judged: Vec<&(String, String, Vec<Value>)> = if live.iter().any(|o| integer(&o.1)) {
        live.iter().filter(|o| integer(&o.1)).collect()
    } else {
        live.iter().collect()
    };
    Some(judged.iter().all(|(name, datatype, data)| {
        let Some(other) = shadow.iter().find(|o| &o.0 == name) else {
            return false;
        };
        if integer(datatype) {
            return *data == other.2;
        }
        data.len() == other.2.len()
            && data
                .iter()
                .zip(&other.2)
                .all(|(a, b)| match (a.as_f64(), b.as_f64()) {
                    (Some(a), Some(b)) => {
                        (a - b).abs() <= 1e-5 || (a - b).abs() <= 1e-3 * a.abs().max(b.abs())
                    }
                    _ => a == b,
                })
    }))
}

/// The per-router limit on copies in flight.
pub fn limit() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(label: i64, p: f64) -> Bytes {
        Bytes::from(format!(
            r#"{{"model_name":"iris","outputs":[{{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[{p},{}]}},{{"name":"label","datatype":"INT64","shape":[1],"data":[{label}]}}]}}"#,
            1.0 - p
        ))
    }

    #[test]
    fn classifiers_agree_on_their_labels_and_regressions_within_a_tolerance() {
        assert_eq!(answers_agree(&answer(1, 0.7), &answer(1, 0.6)), Some(true));
        assert_eq!(answers_agree(&answer(1, 0.7), &answer(2, 0.7)), Some(false));
        let floats = |x: f64| {
            Bytes::from(format!(
                r#"{{"outputs":[{{"name":"y","datatype":"FP32","data":[{x}]}}]}}"#
            ))
        };
        assert_eq!(answers_agree(&floats(1.0), &floats(1.0005)), Some(true));
        assert_eq!(answers_agree(&floats(1.0), &floats(1.1)), Some(false));
        assert_eq!(
            answers_agree(&floats(1.0), &Bytes::from_static(b"oops")),
            None
        );
    }
}
