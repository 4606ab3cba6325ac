//! ResourceQuotas in the store: the documents as applied, one row each.

use ferry_api::k8s_openapi::api::core::v1::ResourceQuota;
use rusqlite::{Transaction, params};

use super::changes::{Actor, Changes};
use super::{Applied, Store, delete_document, upsert_document};
use crate::Result;

/// Store `quotas` in `tx`: what each apply did.
pub(super) fn store(
    tx: &Transaction<'_>,
    changes: &mut Changes<'_>,
    quotas: &[ResourceQuota],
) -> Result<Vec<Applied>> {
    quotas
        .iter()
        .map(|quota| {
            let namespace = quota.metadata.namespace.clone().unwrap_or_default();
            let name = quota.metadata.name.clone().unwrap_or_default();
            let manifest = serde_json::to_string(quota).expect("serializes");
            upsert_document(
                tx,
                changes,
                "ResourceQuota",
                "quotas",
                &["namespace", "name"],
                &[&namespace, &name],
                &manifest,
            )
        })
        .collect()
}

impl Store {
    /// The quotas of `namespace` (of all when `None`).
    pub fn quotas(&self, namespace: Option<&str>) -> Result<Vec<ResourceQuota>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT manifest FROM quotas WHERE (?1 IS NULL OR namespace = ?1) ORDER BY namespace, name",
        )?;
        let rows = statement.query_map(params![namespace], |row| row.get::<_, String>(0))?;
        let mut quotas = Vec::new();
        for row in rows {
            if let Ok(quota) = serde_json::from_str(&row?) {
                quotas.push(quota);
            }
        }
        Ok(quotas)
    }

    /// Delete quota `name` of `namespace`; `false` when there was none.
    pub fn delete_quota(&self, actor: &Actor, namespace: &str, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let deleted = delete_document(
            &tx,
            &mut Changes::new(actor),
            "ResourceQuota",
            "quotas",
            namespace,
            name,
        )?;
        tx.commit()?;
        Ok(deleted)
    }
}
