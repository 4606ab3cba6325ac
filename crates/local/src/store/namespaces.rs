//! Namespace documents in the store (their annotations carry the namespace's rate limit): the
//! documents as applied, one row each.

use ferry_api::k8s_openapi::api::core::v1::Namespace;
use rusqlite::Transaction;

use super::changes::Changes;
use super::{Applied, Store, upsert_document};
use crate::Result;

/// Store `namespaces` in `tx`: what each apply did.
pub(super) fn store(
    tx: &Transaction<'_>,
    changes: &mut Changes<'_>,
    namespaces: &[Namespace],
) -> Result<Vec<Applied>> {
    namespaces
        .iter()
        .map(|namespace| {
            let name = namespace.metadata.name.clone().unwrap_or_default();
            let manifest = serde_json::to_string(namespace).expect("serializes");
            upsert_document(
                tx,
                changes,
                "Namespace",
                "namespaces",
                &["name"],
                &[&name],
                &manifest,
            )
        })
        .collect()
}

impl Store {
    /// Every Namespace document applied, by name.
    pub fn namespaces(&self) -> Result<Vec<Namespace>> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT manifest FROM namespaces ORDER BY name")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        let mut namespaces = Vec::new();
        for row in rows {
            if let Ok(namespace) = serde_json::from_str(&row?) {
                namespaces.push(namespace);
            }
        }
        Ok(namespaces)
    }
}
