//! ServerPools in the store: the documents as applied, and each pool's last status.

use ferry_api::{ServerPool, ServerPoolStatus};
use rusqlite::{Transaction, params};

use super::changes::{Actor, Changes};
use super::{Applied, Store, delete_document, upsert_document};
use crate::Result;

/// Store `pools` in `tx`: what each apply did.
pub(super) fn store(
    tx: &Transaction<'_>,
    changes: &mut Changes<'_>,
    pools: &[ServerPool],
) -> Result<Vec<Applied>> {
    pools
        .iter()
        .map(|pool| {
            let namespace = pool.metadata.namespace.clone().unwrap_or_default();
            let name = pool.metadata.name.clone().unwrap_or_default();
            let mut spec_only = pool.clone();
            spec_only.status = None;
            let manifest = serde_json::to_string(&spec_only).expect("serializes");
            upsert_document(
                tx,
                changes,
                "ServerPool",
                "pools",
                &["namespace", "name"],
                &[&namespace, &name],
                &manifest,
            )
        })
        .collect()
}

impl Store {
    /// The pools of `namespace` (of all when `None`), each with its last status.
    pub fn pools(&self, namespace: Option<&str>) -> Result<Vec<ServerPool>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT manifest, status FROM pools WHERE (?1 IS NULL OR namespace = ?1) ORDER BY namespace, name",
        )?;
        let rows = statement.query_map(params![namespace], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        let mut pools = Vec::new();
        for row in rows {
            let (manifest, status) = row?;
            if let Ok(mut pool) = serde_json::from_str::<ServerPool>(&manifest) {
                pool.status = status.and_then(|s| serde_json::from_str(&s).ok());
                pools.push(pool);
            }
        }
        Ok(pools)
    }

    /// Record the status of pool `name` of `namespace`.
    pub fn set_pool_status(
        &self,
        namespace: &str,
        name: &str,
        status: &ServerPoolStatus,
    ) -> Result<()> {
        let status = serde_json::to_string(status).expect("serializes");
        self.conn().execute(
            "UPDATE pools SET status = ?3 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, status],
        )?;
        Ok(())
    }

    /// Delete pool `name` of `namespace`; `false` when there was none. Its servers stop on the
    /// next reconcile.
    pub fn delete_pool(&self, actor: &Actor, namespace: &str, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let deleted = delete_document(
            &tx,
            &mut Changes::new(actor),
            "ServerPool",
            "pools",
            namespace,
            name,
        )?;
        tx.commit()?;
        Ok(deleted)
    }
}
