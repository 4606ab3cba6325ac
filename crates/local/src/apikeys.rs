//! API keys in local mode: made here (a random ID and secret from the OS), stored as a hash
//! (`store/keys.rs`), and published to the router with every route table. A create or a
//! revoke publishes at once and waits until the router routes by it, so a revoked key is
//! refused as soon as `ferry apikey revoke` returns.

use std::sync::{Arc, RwLock};

use ferry_api::k8s_openapi::api::core::v1::Namespace;
use ferry_api::k8s_openapi::jiff;
use ferry_core::routes::{ApiKey, RouteTable};
use tokio::sync::watch;

use crate::store::Store;
use crate::store::keys::KeyRow;
use crate::wire::{ApiKeyInfo, CreateApiKey, CreatedApiKey};
use crate::{Error, Result};

/// A new key: `fry_<16 hex ID>_<64 hex secret>` (64 random bits of ID, 256 of secret).
pub fn generate() -> Result<(String, String)> {
    let mut bytes = [0u8; 40];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Internal(format!("no randomness from the OS for an API key: {e}")))?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let id = hex(&bytes[..8]);
    let key = format!("{}{id}_{}", ferry_api::API_KEY_PREFIX, hex(&bytes[8..]));
    Ok((id, key))
}

/// What a create asks for, checked by field: the namespace, the name, the rate, the expiry.
pub fn check(namespace: &str, request: &CreateApiKey) -> Result<()> {
    let invalid = |field: &str, message: String| Error::BadRequest(format!("{field}: {message}"));
    if !ferry_api::validate::is_dns_label(namespace, 63) {
        return Err(invalid(
            "namespace",
            format!("Invalid value: {namespace:?}: must be a DNS label"),
        ));
    }
    if request.name.len() > 253 || request.name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            "name",
            "Invalid value: at most 253 printable characters".into(),
        ));
    }
    if let Some(rate) = &request.rate {
        let mut errors = Vec::new();
        rate.check("rate", &mut errors);
        if let Some(error) = errors.first() {
            return Err(Error::BadRequest(error.to_string()));
        }
    }
    if let Some(expires) = &request.expires {
        let at: jiff::Timestamp = expires.parse().map_err(|e| {
            invalid(
                "expires",
                format!("Invalid value: {expires:?}: not an RFC 3339 time ({e})"),
            )
        })?;
        if at <= jiff::Timestamp::now() {
            return Err(invalid(
                "expires",
                format!("Invalid value: {expires:?}: already past"),
            ));
        }
    }
    Ok(())
}

/// Make and store a key of `namespace`.
pub fn create(store: &Store, namespace: &str, request: CreateApiKey) -> Result<CreatedApiKey> {
    check(namespace, &request)?;
    let (id, key) = generate()?;
    let info = ApiKeyInfo {
        id,
        namespace: namespace.to_string(),
        name: request.name,
        rate: request.rate,
        expires: request.expires,
        created: crate::store::now(),
    };
    store.create_api_key(&KeyRow {
        info: info.clone(),
        hash: ferry_api::api_key_hash(&key),
    })?;
    tracing::info!(namespace = %namespace, id = %info.id, "API key created");
    Ok(CreatedApiKey { info, key })
}

/// The keys and namespace rate limits the router checks, and the one way a route table
/// reaches the router: every table goes out with the current ones.
pub struct KeyRing {
    keys: RwLock<Vec<ApiKey>>,
    /// Namespace documents (their rate-limit annotations), by name.
    namespaces: RwLock<Vec<Namespace>>,
    routes: watch::Sender<Arc<RouteTable>>,
}

/// `table` with `keys` and the namespaces' limits in place of what it had (one router).
fn with_tenancy(mut table: RouteTable, keys: Vec<ApiKey>, namespaces: &[Namespace]) -> RouteTable {
    table.keys.clear();
    table.with_keys(keys).with_namespace_limits(namespaces, 1)
}

impl KeyRing {
    /// A ring publishing on `routes`, with the store's live keys.
    pub fn new(store: &Store, routes: watch::Sender<Arc<RouteTable>>) -> Result<KeyRing> {
        let ring = KeyRing {
            keys: RwLock::new(Vec::new()),
            namespaces: RwLock::new(Vec::new()),
            routes,
        };
        ring.reload(store)?;
        Ok(ring)
    }

    /// Publish `table` with the current keys (when it differs from the last one).
    pub fn publish(&self, table: RouteTable) {
        self.routes.send_if_modified(|current| {
            let keys = self.keys.read().expect("key ring poisoned").clone();
            let namespaces = self.namespaces.read().expect("key ring poisoned");
            let next = with_tenancy(table, keys, &namespaces);
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
    }

    /// Read the live keys again and publish them with the current table.
    pub fn reload(&self, store: &Store) -> Result<()> {
        let live: Vec<ApiKey> = store.api_keys(None)?.iter().map(KeyRow::to_route).collect();
        let namespaces = store.namespaces()?;
        self.routes.send_if_modified(|current| {
            // Under the channel's lock: a table published meanwhile is not sent with old keys.
            *self.keys.write().expect("key ring poisoned") = live.clone();
            *self.namespaces.write().expect("key ring poisoned") = namespaces.clone();
            let next = with_tenancy((**current).clone(), live, &namespaces);
            if **current == next {
                false
            } else {
                *current = Arc::new(next);
                true
            }
        });
        Ok(())
    }
}
