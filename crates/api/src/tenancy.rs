//! What one workspace (namespace) may ask of the router: rate limits (`spec.rateLimit` of an
//! InferenceService, `--rate` of an API key) and the API key format.
//!
//! A rate limit is a token bucket: `requestsPerSecond` tokens flow in per second, up to
//! `burst` wait in the bucket, and every request takes one. The router checks it before any
//! other work and answers 429 with `Retry-After` when the bucket is empty.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// A token bucket: a sustained rate and the burst above it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained requests per second (may be fractional: 0.5 is one request every 2 s).
    pub requests_per_second: f64,
    /// Requests that may arrive at once (the bucket's size; default: one second's worth, at
    /// least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimitSpec {
    /// A limit of `rate` per second with the default burst.
    pub fn per_second(rate: f64) -> Self {
        RateLimitSpec {
            requests_per_second: rate,
            burst: None,
        }
    }

    /// The burst, with its default.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.requests_per_second.ceil().clamp(1.0, 1e7) as u32)
            .max(1)
    }

    /// Problems with this limit, reported at `path`.
    pub fn check(&self, path: &str, errors: &mut Vec<FieldError>) {
        let rate = self.requests_per_second;
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e7) {
            errors.push(FieldError::new(
                &format!("{path}.requestsPerSecond"),
                format!("Invalid value: {rate}: must be greater than 0 and at most 10000000"),
            ));
        }
        if let Some(burst) = self.burst
            && !(1..=10_000_000).contains(&burst)
        {
            errors.push(FieldError::new(
                &format!("{path}.burst"),
                format!("Invalid value: {burst}: must be between 1 and 10000000"),
            ));
        }
    }

    /// As `ferry apikey --rate` writes it: `50/s`, `600/m`, `1000/h` (or `50`: per second).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (number, per) = match text.trim().split_once('/') {
            Some((n, unit)) => (n.trim(), unit.trim()),
            None => (text.trim(), "s"),
        };
        let seconds = match per {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            other => {
                return Err(format!(
                    "rate {text:?}: unknown unit {other:?} (use N/s, N/m or N/h)"
                ));
            }
        };
        let count: f64 = number
            .parse()
            .map_err(|_| format!("rate {text:?}: {number:?} is not a number"))?;
        let limit = RateLimitSpec::per_second(count / seconds);
        let mut errors = Vec::new();
        limit.check("rate", &mut errors);
        match errors.first() {
            Some(error) => Err(format!("{error}")),
            None => Ok(limit),
        }
    }
}

impl std::fmt::Display for RateLimitSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.requests_per_second;
        if rate >= 1.0 || rate == 0.0 {
            write!(f, "{}/s", trim(rate))?;
        } else if rate * 60.0 >= 1.0 {
            write!(f, "{}/m", trim(rate * 60.0))?;
        } else {
            write!(f, "{}/h", trim(rate * 3600.0))?;
        }
        if let Some(burst) = self.burst {
            write!(f, " (burst {burst})")?;
        }
        Ok(())
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Prefix of every API key (`fry_<id>_<secret>`), so a key in a log or a repository is
/// recognisable as Ferry's.
pub const API_KEY_PREFIX: &str = "fry_";

/// The ID part of an API key (`fry_<id>_<secret>`), which names the key in listings and
/// revocations; `None` when `key` does not have that shape.
pub fn api_key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (id.len() == 16 && hex(id) && secret.len() >= 32 && hex(secret)).then_some(id)
}

/// The stored form of an API key: the SHA-256 of the whole key, in lower-case hex.
pub fn api_key_hash(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Label on the Secret that holds one API key's hash, in a cluster (the router watches them).
pub const LABEL_API_KEY: &str = "ferry.dev/api-key";
/// The `type` of such a Secret.
pub const API_KEY_SECRET_TYPE: &str = "ferry.dev/api-key";

/// One API key as it is kept: never the key, only its SHA-256 ([`api_key_hash`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub hash: String,
    pub rate: Option<RateLimitSpec>,
    /// RFC 3339.
    pub expires: Option<String>,
    /// RFC 3339.
    pub created: String,
}

impl ApiKeyRecord {
    /// The Secret name of key `id`.
    pub fn secret_name(id: &str) -> String {
        format!("ferry-apikey-{id}")
    }

    /// The Secret that holds it in a cluster: in the key's namespace, labelled for the router.
    pub fn to_secret(&self) -> k8s_openapi::api::core::v1::Secret {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let mut data = std::collections::BTreeMap::new();
        data.insert("id".to_string(), self.id.clone());
        data.insert("hash".to_string(), self.hash.clone());
        data.insert("created".to_string(), self.created.clone());
        if !self.name.is_empty() {
            data.insert("name".to_string(), self.name.clone());
        }
        if let Some(rate) = &self.rate {
            data.insert(
                "rate".to_string(),
                serde_json::to_string(rate).expect("serializes"),
            );
        }
        if let Some(expires) = &self.expires {
            data.insert("expires".to_string(), expires.clone());
        }
        k8s_openapi::api::core::v1::Secret {
            metadata: ObjectMeta {
                name: Some(Self::secret_name(&self.id)),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        (LABEL_API_KEY.to_string(), "true".to_string()),
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "ferry".to_string(),
                        ),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some(API_KEY_SECRET_TYPE.to_string()),
            string_data: Some(data),
            ..Default::default()
        }
    }

    /// The key a Secret holds; `None` when it is not an API key Secret or is malformed.
    pub fn from_secret(secret: &k8s_openapi::api::core::v1::Secret) -> Option<ApiKeyRecord> {
        if secret.type_.as_deref() != Some(API_KEY_SECRET_TYPE) {
            return None;
        }
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let id = text("id")?;
        let hash = text("hash")?;
        (id.len() == 16 && hash.len() == 64).then_some(())?;
        Some(ApiKeyRecord {
            id,
            namespace: secret.metadata.namespace.clone()?,
            name: text("name").unwrap_or_default(),
            hash,
            rate: text("rate").and_then(|r| serde_json::from_str(&r).ok()),
            expires: text("expires"),
            created: text("created").unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_every_unit_and_print_back() {
        assert_eq!(
            RateLimitSpec::parse("50/s").unwrap().requests_per_second,
            50.0
        );
        assert_eq!(
            RateLimitSpec::parse("50").unwrap().requests_per_second,
            50.0
        );
        assert_eq!(
            RateLimitSpec::parse("120/m").unwrap().requests_per_second,
            2.0
        );
        assert_eq!(RateLimitSpec::parse("30/m").unwrap().to_string(), "30/m");
        assert_eq!(RateLimitSpec::parse("36/h").unwrap().to_string(), "36/h");
        let error = RateLimitSpec::parse("5/d").unwrap_err();
        assert!(error.contains("unknown unit \"d\""), "{error}");
        let error = RateLimitSpec::parse("0/s").unwrap_err();
        assert!(error.contains("rate.requestsPerSecond"), "{error}");
        assert!(RateLimitSpec::parse("x/s").is_err());
    }

    #[test]
    fn the_default_burst_is_a_second_at_least_one() {
        assert_eq!(RateLimitSpec::per_second(50.0).burst(), 50);
        assert_eq!(RateLimitSpec::per_second(0.5).burst(), 1);
        let explicit = RateLimitSpec {
            requests_per_second: 50.0,
            burst: Some(20),
        };
        assert_eq!(explicit.burst(), 20);
    }

    #[test]
    fn a_key_round_trips_through_its_secret() {
        let record = ApiKeyRecord {
            id: "0123456789abcdef".into(),
            namespace: "team-a".into(),
            name: "ci".into(),
            hash: "ab".repeat(32),
            rate: Some(RateLimitSpec::per_second(5.0)),
            expires: Some("2030-01-01T00:00:00Z".into()),
            created: "2026-12-01T00:00:00Z".into(),
        };
        let mut secret = record.to_secret();
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("ferry-apikey-0123456789abcdef")
        );
        // What the API server hands back: data, not stringData.
        secret.data = Some(
            secret
                .string_data
                .take()
                .unwrap()
                .into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                .collect(),
        );
        assert_eq!(ApiKeyRecord::from_secret(&secret), Some(record));
        secret.type_ = Some("Opaque".into());
        assert_eq!(ApiKeyRecord::from_secret(&secret), None);
    }

    #[test]
    fn key_ids_come_only_from_well_formed_keys() {
        let key = format!("fry_0123456789abcdef_{}", "ab".repeat(32));
        assert_eq!(api_key_id(&key), Some("0123456789abcdef"));
        assert_eq!(api_key_id("fry_0123_abcd"), None);
        assert_eq!(api_key_id("Bearer x"), None);
        assert_eq!(api_key_hash("x").len(), 64);
        assert_ne!(api_key_hash(&key), api_key_hash("x"));
    }
}
