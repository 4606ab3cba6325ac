//! Phase 2 of the request path, authorize / limit: which API key a request carries, whether
//! it may reach the namespace, and whether its buckets (the key's, the service's) have a token.
//!
//! A namespace that has API keys takes only requests with one of its keys (`Authorization:
//! Bearer KEY` or `x-api-key: KEY`): none, an unknown one, a revoked one (gone from the table)
//! or an expired one → 401; another namespace's key → 403. Only the key's SHA-256 is known
//! here, compared in constant time; the key is never logged and never forwarded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferry_core::routes::{ApiKey, RouteTable};
use http::{HeaderMap, HeaderName, header};
use subtle::ConstantTimeEq;

use crate::error::{AuthFailure, RouterError};
use crate::limit::{Limiter, Limiters, now};

/// The header an API key may come in instead of `Authorization: Bearer`.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// One key as the router checks it.
pub struct CompiledKey {
    pub key: ApiKey,
    hash: [u8; 32],
    pub limiter: Option<Arc<Limiter>>,
}

/// Every namespace's keys, by key ID.
#[derive(Default)]
pub struct Access {
    keys: HashMap<String, CompiledKey>,
    protected: HashSet<String>,
    /// Namespaces' own buckets (annotation `ferry.dev/rate-limit`).
    namespaces: HashMap<String, Arc<Limiter>>,
}

impl Access {
    /// The keys of `table`, with their buckets (recorded in `seen`).
    pub(crate) fn compile(
        table: &RouteTable,
        limiters: &Limiters,
        seen: &mut HashMap<String, Arc<Limiter>>,
    ) -> Access {
        let mut access = Access::default();
        for (namespace, limit) in &table.namespace_limits {
            let limiter = limiters.get(seen, format!("namespace/{namespace}"), limit);
            access.namespaces.insert(namespace.clone(), limiter);
        }
        for (namespace, keys) in &table.keys {
            if keys.is_empty() {
                continue;
            }
            access.protected.insert(namespace.clone());
            for key in keys {
                let Some(hash) = decode_hash(&key.hash) else {
                    tracing::warn!(id = %key.id, namespace = %namespace, "API key with a malformed hash: ignored");
                    continue;
                };
                let limiter = key
                    .rate_limit
                    .as_ref()
                    .map(|limit| limiters.get(seen, format!("key/{}", key.id), limit));
                access.keys.insert(
                    key.id.clone(),
                    CompiledKey {
                        key: key.clone(),
                        hash,
                        limiter,
                    },
                );
            }
        }
        access
    }

    /// The namespace's own bucket, when it has one.
    pub fn namespace_limiter(&self, namespace: &str) -> Option<&Arc<Limiter>> {
        self.namespaces.get(namespace)
    }

    /// Whether any namespace requires keys.
    pub fn any(&self) -> bool {
        !self.protected.is_empty()
    }

    /// Whether `namespace` requires one of its keys.
    pub fn protects(&self, namespace: &str) -> bool {
        self.protected.contains(namespace)
    }

    /// The key a request to `namespace` may go on with (`None`: the namespace is open), or
    /// why not.
    pub fn authorize(
        &self,
        namespace: &str,
        headers: &HeaderMap,
    ) -> Result<Option<&CompiledKey>, RouterError> {
        if !self.protects(namespace) {
            return Ok(None);
        }
        let unauthenticated = |failure| RouterError::Unauthenticated {
            namespace: namespace.to_string(),
            failure,
        };
        let presented = presented_key(headers).ok_or(unauthenticated(AuthFailure::Missing))?;
        let found = ferry_api::api_key_id(presented)
            .and_then(|id| self.keys.get(id))
            .filter(|known| {
                let hash: [u8; 32] = sha2_digest(presented);
                bool::from(hash.ct_eq(&known.hash))
            })
            .ok_or(unauthenticated(AuthFailure::Invalid))?;
        if found.key.namespace != namespace {
            return Err(RouterError::Forbidden {
                namespace: namespace.to_string(),
                id: found.key.id.clone(),
            });
        }
        if let Some(expires) = found.key.expires_unix
            && unix_now() >= expires
        {
            return Err(unauthenticated(AuthFailure::Expired));
        }
        Ok(Some(found))
    }
}

/// The router's own numbers while namespaces have keys: only with the admin token.
pub fn admin(token: Option<&str>, headers: &HeaderMap) -> Result<(), RouterError> {
    let refused = || RouterError::AdminOnly;
    let token = token.ok_or_else(refused)?;
    let presented = presented_key(headers).ok_or_else(refused)?;
    if bool::from(sha2_digest(presented).ct_eq(&sha2_digest(token))) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Take a token from `limiter` (the bucket of `what`), or the 429 that says when to retry.
pub fn take(limiter: &Limiter, what: impl FnOnce() -> String) -> Result<(), RouterError> {
    match limiter.check(now()) {
        Ok(_) => Ok(()),
        Err(refused) => Err(RouterError::RateLimited {
            what: what(),
            limit: limiter.limit.text.clone(),
            per_second: limiter.limit.per_second,
            retry_after: seconds_up(refused.wait_nanos),
            reset: seconds_up(refused.reset_nanos),
        }),
    }
}

fn seconds_up(nanos: u64) -> u32 {
    u32::try_from(nanos.div_ceil(1_000_000_000))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The key a request carries: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = value.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim());
    }
    headers
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Remove the credentials the router consumed, so that replicas never see a key.
pub fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(API_KEY_HEADER);
}

fn sha2_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

fn decode_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, namespace: &str, secret: &str, expires_unix: Option<i64>) -> (String, ApiKey) {
        let text = format!("fry_{id}_{secret}");
        let record = ApiKey {
            id: id.into(),
            namespace: namespace.into(),
            name: String::new(),
            hash: ferry_api::api_key_hash(&text),
            rate_limit: None,
            expires_unix,
        };
        (text, record)
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    #[test]
    fn a_protected_namespace_takes_only_its_own_live_keys() {
        let (a, a_record) = key("00000000000000aa", "a", &"1".repeat(64), None);
        let (b, b_record) = key("00000000000000bb", "b", &"2".repeat(64), None);
        let (old, old_record) = key("00000000000000cc", "a", &"3".repeat(64), Some(1));
        let table = RouteTable::default().with_keys([a_record, b_record, old_record]);
        let access = Access::compile(&table, &Limiters::default(), &mut HashMap::new());

        let ok = access.authorize("a", &headers("authorization", &format!("Bearer {a}")));
        assert_eq!(ok.unwrap().unwrap().key.id, "00000000000000aa");
        assert!(access.authorize("a", &headers("x-api-key", &a)).is_ok());
        let status = |ns: &str, h: HeaderMap| {
            access
                .authorize(ns, &h)
                .err()
                .map(|e| e.http_status().as_u16())
        };
        assert_eq!(status("b", headers("x-api-key", &a)), Some(403));
        assert_eq!(status("a", HeaderMap::new()), Some(401));
        assert_eq!(
            status("a", headers("x-api-key", &old)),
            Some(401),
            "expired"
        );
        let forged = format!("{}{}", &a[..a.len() - 1], "0");
        assert_eq!(status("a", headers("x-api-key", &forged)), Some(401));
        assert_eq!(
            status("a", headers("authorization", "Basic eDp5")),
            Some(401)
        );
        // A namespace without keys is open; a key of another namespace changes nothing there.
        assert_eq!(status("open", HeaderMap::new()), None);
        assert_eq!(status("open", headers("x-api-key", &b)), None);
    }
}
