//! API keys in the store: only the SHA-256 of a key is kept; a revoked key keeps its row
//! (with `revoked_at`) so that its ID is never handed out again.

use ferry_api::RateLimitSpec;
use ferry_core::routes::ApiKey;
use rusqlite::params;

use super::{Store, now};
use crate::Result;
use crate::wire::ApiKeyInfo;

/// A key as stored (its hash, never the key).
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub info: ApiKeyInfo,
    pub hash: String,
}

impl KeyRow {
    /// The router's view of the key (one router: the whole rate).
    pub fn to_route(&self) -> ApiKey {
        ApiKey::of(
            &ferry_api::ApiKeyRecord {
                id: self.info.id.clone(),
                namespace: self.info.namespace.clone(),
                name: self.info.name.clone(),
                hash: self.hash.clone(),
                rate: self.info.rate,
                expires: self.info.expires.clone(),
                created: self.info.created.clone(),
            },
            1,
        )
    }
}

impl Store {
    /// Store a new key (its ID and hash made by the caller).
    pub fn create_api_key(&self, row: &KeyRow) -> Result<()> {
        let info = &row.info;
        let rate = info
            .rate
            .as_ref()
            .map(|r| serde_json::to_string(r).expect("serializes"));
        self.conn().execute(
            "INSERT INTO api_keys (id, namespace, name, hash, rate, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                info.id,
                info.namespace,
                info.name,
                row.hash,
                rate,
                info.expires,
                info.created
            ],
        )?;
        Ok(())
    }

    /// The keys not revoked, of `namespace` or of all, by namespace then creation.
    pub fn api_keys(&self, namespace: Option<&str>) -> Result<Vec<KeyRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, namespace, name, hash, rate, expires_at, created_at FROM api_keys
             WHERE revoked_at IS NULL AND (?1 IS NULL OR namespace = ?1)
             ORDER BY namespace, created_at, id",
        )?;
        let rows = statement.query_map(params![namespace], |row| {
            let rate: Option<String> = row.get(4)?;
            Ok(KeyRow {
                info: ApiKeyInfo {
                    id: row.get(0)?,
                    namespace: row.get(1)?,
                    name: row.get(2)?,
                    rate: rate.and_then(|r| serde_json::from_str::<RateLimitSpec>(&r).ok()),
                    expires: row.get(5)?,
                    created: row.get(6)?,
                },
                hash: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke key `id` of `namespace`; `false` when there is no such live key.
    pub fn revoke_api_key(&self, namespace: &str, id: &str) -> Result<bool> {
        let changed = self.conn().execute(
            "UPDATE api_keys SET revoked_at = ?3
             WHERE namespace = ?1 AND id = ?2 AND revoked_at IS NULL",
            params![namespace, id, now()],
        )?;
        Ok(changed > 0)
    }
}
