//! Applying documents: InferenceServices, ResourceQuotas, Namespaces and ServerPools in one
//! transaction (or a dry run that rolls back), each change recorded in the audit trail.

use ferry_api::{InferenceService, revision_name};
use ferry_core::reason::{EventType, Reason};
use rusqlite::{OptionalExtension, params};

use super::changes::{Actor, ChangeRow, Changes};
use super::{Applied, Store, namespaces, now, pools, quotas};
use crate::Result;

/// Store `manifest` in `table` (a document table of `kind`: key columns — `namespace, name`
/// or `name` — and `manifest`) under the key `columns` = `values`, replacing what was there:
/// what the apply did, recorded in `changes` unless nothing changed.
#[allow(clippy::too_many_arguments)]
pub(super) fn upsert_document(
    tx: &rusqlite::Transaction<'_>,
    changes: &mut Changes<'_>,
    kind: &str,
    table: &str,
    columns: &[&str],
    values: &[&str],
    manifest: &str,
) -> Result<Applied> {
    let matching = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let existing: Option<String> = tx
        .query_row(
            &format!("SELECT manifest FROM {table} WHERE {matching}"),
            rusqlite::params_from_iter(values),
            |row| row.get(0),
        )
        .optional()?;
    let placeholders: Vec<String> = (1..=columns.len() + 1).map(|i| format!("?{i}")).collect();
    tx.execute(
        &format!(
            "INSERT INTO {table} ({}, manifest) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET manifest = excluded.manifest",
            columns.join(", "),
            placeholders.join(", "),
            columns.join(", ")
        ),
        rusqlite::params_from_iter(values.iter().copied().chain([manifest])),
    )?;
    let applied = match &existing {
        Some(old) if old == manifest => Applied::Unchanged,
        Some(_) => Applied::Configured,
        None => Applied::Created,
    };
    if applied != Applied::Unchanged {
        let (namespace, name) = match values {
            [namespace, name] => (*namespace, *name),
            [name] => ("", *name),
            _ => ("", ""),
        };
        changes.record(
            tx,
            kind,
            namespace,
            name,
            applied.as_str(),
            existing.as_deref(),
            Some(manifest),
        )?;
    }
    Ok(applied)
}

/// Delete `namespace/name` from the document table `table` of `kind`, recording the change;
/// `false` when there was none.
pub(super) fn delete_document(
    tx: &rusqlite::Transaction<'_>,
    changes: &mut Changes<'_>,
    kind: &str,
    table: &str,
    namespace: &str,
    name: &str,
) -> Result<bool> {
    let existing: Option<String> = tx
        .query_row(
            &format!("SELECT manifest FROM {table} WHERE namespace = ?1 AND name = ?2"),
            params![namespace, name],
            |row| row.get(0),
        )
        .optional()?;
    let Some(old) = existing else {
        return Ok(false);
    };
    tx.execute(
        &format!("DELETE FROM {table} WHERE namespace = ?1 AND name = ?2"),
        params![namespace, name],
    )?;
    changes.record(tx, kind, namespace, name, "deleted", Some(&old), None)?;
    Ok(true)
}

/// What an apply did (or, dry, would do): per InferenceService (with its revision), per
/// ResourceQuota, per Namespace, per ServerPool; and the changes, with their diffs.
pub struct ApplyOutcomes {
    pub services: Vec<(Applied, String)>,
    pub quotas: Vec<Applied>,
    pub namespaces: Vec<Applied>,
    pub pools: Vec<Applied>,
    pub changes: Vec<ChangeRow>,
}

impl Store {
    /// Apply every object in one transaction: all are stored or none.
    pub fn apply_all(
        &self,
        actor: &Actor,
        objects: &[InferenceService],
    ) -> Result<Vec<(Applied, String)>> {
        Ok(self
            .apply_documents(actor, false, objects, &[], &[], &[])?
            .services)
    }

    /// As [`Store::apply_all`], with ResourceQuotas, Namespaces and ServerPools in the same
    /// transaction. `dry_run`: everything is worked out — outcomes, diffs — and nothing kept.
    pub fn apply_documents(
        &self,
        actor: &Actor,
        dry_run: bool,
        objects: &[InferenceService],
        quotas: &[ferry_api::k8s_openapi::api::core::v1::ResourceQuota],
        namespaces: &[ferry_api::k8s_openapi::api::core::v1::Namespace],
        pools: &[ferry_api::ServerPool],
    ) -> Result<ApplyOutcomes> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut changes = Changes::new(actor);
        let quota_outcomes = quotas::store(&tx, &mut changes, quotas)?;
        let namespace_outcomes = namespaces::store(&tx, &mut changes, namespaces)?;
        let pool_outcomes = pools::store(&tx, &mut changes, pools)?;
        let mut outcomes = Vec::new();
        let at = now();
        for isvc in objects {
            let namespace = isvc.namespace_or_default();
            let name = isvc.metadata.name.clone().unwrap_or_default();
            let revision = revision_name(&name, &isvc.spec.predictor);
            let manifest = serde_json::to_string(isvc).expect("serializes");
            let existing: Option<(String, i64, bool)> = tx
                .query_row(
                    "SELECT manifest, generation, deleted FROM services WHERE namespace = ?1 AND name = ?2",
                    params![namespace, name],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? != 0)),
                )
                .optional()?;
            // Rollout controls set by `ferry rollout ...` stay unless the manifest sets them
            // (as `kubectl apply` keeps annotations it did not apply).
            let manifest = match existing
                .as_ref()
                .and_then(|(old, _, _)| serde_json::from_str::<InferenceService>(old).ok())
            {
                Some(old) => {
                    let mut merged = isvc.clone();
                    let kept: Vec<(String, String)> = old
                        .metadata
                        .annotations
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(k, _)| k.starts_with(ferry_api::ROLLOUT_ANNOTATION_PREFIX))
                        .collect();
                    if !kept.is_empty() {
                        let annotations = merged.metadata.annotations.get_or_insert_default();
                        for (key, value) in kept {
                            annotations.entry(key).or_insert(value);
                        }
                    }
                    serde_json::to_string(&merged).expect("serializes")
                }
                None => manifest,
            };
            let previous = existing
                .as_ref()
                .filter(|(_, _, deleted)| !deleted)
                .map(|(old, _, _)| old.clone());
            let outcome = match existing {
                Some((old, _, false)) if old == manifest => Applied::Unchanged,
                Some((old, generation, deleted)) => {
                    let spec_changed = deleted
                        || serde_json::from_str::<InferenceService>(&old)
                            .map(|o| o.spec != isvc.spec)
                            .unwrap_or(true);
                    let generation = if spec_changed {
                        generation + 1
                    } else {
                        generation
                    };
                    tx.execute(
                        "UPDATE services SET manifest = ?3, generation = ?4, revision = ?5, deleted = 0 WHERE namespace = ?1 AND name = ?2",
                        params![namespace, name, manifest, generation, revision],
                    )?;
                    if deleted {
                        Applied::Created
                    } else {
                        Applied::Configured
                    }
                }
                None => {
                    tx.execute(
                        "INSERT INTO services (namespace, name, manifest, generation, revision, created_at) VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                        params![namespace, name, manifest, revision, at],
                    )?;
                    Applied::Created
                }
            };
            tx.execute(
                "INSERT OR IGNORE INTO revisions (namespace, service, name, predictor, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![namespace, name, revision, serde_json::to_string(&isvc.spec.predictor).expect("serializes"), at],
            )?;
            // An experiment's variants and a shadow are revisions too: their replicas start from them.
            let shadow = isvc.shadow().map(|(percent, predictor, revision)| {
                (String::new(), percent, predictor, revision)
            });
            for (_, _, predictor, variant_revision) in isvc.variants().into_iter().chain(shadow) {
                tx.execute(
                    "INSERT OR IGNORE INTO revisions (namespace, service, name, predictor, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![namespace, name, variant_revision, serde_json::to_string(&predictor).expect("serializes"), at],
                )?;
            }
            if outcome != Applied::Unchanged {
                changes.record(
                    &tx,
                    "InferenceService",
                    &namespace,
                    &name,
                    outcome.as_str(),
                    previous.as_deref(),
                    Some(&manifest),
                )?;
                let message = format!(
                    "{} (revision {revision})",
                    match outcome {
                        Applied::Created => "created",
                        _ => "configured",
                    }
                );
                tx.execute(
                    "INSERT INTO events (at, namespace, service, type, reason, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        at,
                        namespace,
                        name,
                        EventType::Normal.as_str(),
                        Reason::Applied.as_str(),
                        message
                    ],
                )?;
            }
            outcomes.push((outcome, revision));
        }
        if !dry_run {
            tx.commit()?;
        }
        // Dropped uncommitted, a dry run's transaction rolls back.
        Ok(ApplyOutcomes {
            services: outcomes,
            quotas: quota_outcomes,
            namespaces: namespace_outcomes,
            pools: pool_outcomes,
            changes: changes.rows,
        })
    }
}
