//! SQLite state (WAL): services (desired spec + last derived status), revisions (immutable
//! history), replicas (process identity and addresses) and events. Every decision is written
//! here before it is carried out, so a restarted daemon picks up where the last one stopped.

use std::path::Path;
use std::sync::Mutex;

use ferry_api::k8s_openapi::jiff;
use ferry_api::{InferenceService, InferenceServiceStatus, PredictorSpec};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::Result;
pub use apply::ApplyOutcomes;
use apply::{delete_document, upsert_document};
use changes::Changes;
pub use changes::{Actor, ChangeRow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS services (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    manifest TEXT NOT NULL,
    generation INTEGER NOT NULL,
    revision TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    status TEXT,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS revisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    predictor TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (namespace, service, name)
);
CREATE TABLE IF NOT EXISTS replicas (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    service TEXT NOT NULL,
    revision TEXT NOT NULL,
    pid INTEGER,
    start_time INTEGER,
    http_addr TEXT,
    grpc_addr TEXT,
    terminating INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    namespace TEXT NOT NULL,
    service TEXT NOT NULL,
    type TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quotas (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS pools (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    manifest TEXT NOT NULL,
    status TEXT,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    cause TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    diff TEXT
);
CREATE INDEX IF NOT EXISTS changes_by_object ON changes (kind, namespace, name, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    rate TEXT,
    expires_at TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
";

mod apply;
pub mod changes;
pub mod keys;
mod namespaces;
mod pools;
mod quotas;

/// The current time, RFC 3339.
pub fn now() -> String {
    ferry_core::service::timestamp(jiff::Timestamp::now())
}

/// One InferenceService as stored.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub isvc: InferenceService,
    pub generation: i64,
    pub revision: String,
    pub created_at: String,
    pub deleted: bool,
    pub status: Option<InferenceServiceStatus>,
}

impl ServiceRow {
    pub fn namespace(&self) -> String {
        self.isvc.namespace_or_default()
    }
    pub fn name(&self) -> String {
        self.isvc.metadata.name.clone().unwrap_or_default()
    }
    /// The full object as `get -o yaml` shows it.
    pub fn to_object(&self) -> InferenceService {
        let mut isvc = self.isvc.clone();
        isvc.metadata.generation = Some(self.generation);
        isvc.metadata.creation_timestamp = self
            .created_at
            .parse::<jiff::Timestamp>()
            .ok()
            .map(k8s_time);
        isvc.status = self.status.clone();
        isvc
    }
}

fn k8s_time(t: jiff::Timestamp) -> ferry_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    ferry_api::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)
}

/// One revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRow {
    pub seq: i64,
    pub name: String,
    pub predictor: PredictorSpec,
    pub created_at: String,
}

/// One replica's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRow {
    pub id: String,
    pub namespace: String,
    pub service: String,
    pub revision: String,
    pub pid: Option<i32>,
    /// Start time of the process (clock ticks since boot, from /proc): with the pid, the identity.
    pub start_time: Option<u64>,
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub terminating: bool,
    pub created_at: String,
}

impl ReplicaRow {
    /// A replica about to be started: `<prefix>-<5 random characters>`, no process yet.
    pub fn fresh(namespace: &str, service: &str, revision: &str, prefix: &str) -> Self {
        let suffix: String = (0..5)
            .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
            .collect();
        ReplicaRow {
            id: format!("{prefix}-{suffix}"),
            namespace: namespace.to_string(),
            service: service.to_string(),
            revision: revision.to_string(),
            pid: None,
            start_time: None,
            http_addr: None,
            grpc_addr: None,
            terminating: false,
            created_at: now(),
        }
    }
}

/// One event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
    pub at: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// What `apply` did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    Created,
    Configured,
    Unchanged,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Configured => "configured",
            Applied::Unchanged => "unchanged",
        }
    }
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store mutex poisoned")
    }

    /// Every service, deleted ones included (their replicas still have to stop).
    pub fn services(&self) -> Result<Vec<ServiceRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT manifest, generation, revision, created_at, deleted, status FROM services ORDER BY namespace, name",
        )?;
        let rows = statement.query_map([], service_row)?;
        Ok(rows
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect())
    }

    pub fn service(&self, namespace: &str, name: &str) -> Result<Option<ServiceRow>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT manifest, generation, revision, created_at, deleted, status FROM services WHERE namespace = ?1 AND name = ?2 AND deleted = 0",
                params![namespace, name],
                service_row,
            )
            .optional()?;
        Ok(row.flatten())
    }

    /// Mark deleted; the reconciler stops its replicas and then forgets it.
    pub fn delete(&self, actor: &Actor, namespace: &str, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old: Option<String> = tx
            .query_row(
                "SELECT manifest FROM services WHERE namespace = ?1 AND name = ?2 AND deleted = 0",
                params![namespace, name],
                |row| row.get(0),
            )
            .optional()?;
        let Some(old) = old else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE services SET deleted = 1 WHERE namespace = ?1 AND name = ?2 AND deleted = 0",
            params![namespace, name],
        )?;
        tx.execute(
            "INSERT INTO events (at, namespace, service, type, reason, message) VALUES (?1, ?2, ?3, 'Normal', 'Deleted', 'deletion requested')",
            params![now(), namespace, name],
        )?;
        Changes::new(actor).record(
            &tx,
            "InferenceService",
            namespace,
            name,
            "deleted",
            Some(&old),
            None,
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Forget a deleted service whose replicas are gone.
    pub fn purge(&self, namespace: &str, name: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM services WHERE namespace = ?1 AND name = ?2 AND deleted = 1",
            params![namespace, name],
        )?;
        conn.execute(
            "DELETE FROM revisions WHERE namespace = ?1 AND service = ?2",
            params![namespace, name],
        )?;
        conn.execute(
            "DELETE FROM events WHERE namespace = ?1 AND service = ?2",
            params![namespace, name],
        )?;
        Ok(())
    }

    /// Replace the stored object's annotations (rollout controls): neither the spec nor the
    /// generation changes.
    pub fn set_annotations(
        &self,
        actor: &Actor,
        namespace: &str,
        name: &str,
        annotations: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let Some(row) = self.service(namespace, name)? else {
            return Ok(());
        };
        let old = serde_json::to_string(&row.isvc).expect("serializes");
        let mut isvc = row.isvc;
        isvc.metadata.annotations = (!annotations.is_empty()).then(|| annotations.clone());
        let new = serde_json::to_string(&isvc).expect("serializes");
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE services SET manifest = ?3 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, new],
        )?;
        if old != new {
            Changes::new(actor).record(
                &tx,
                "InferenceService",
                namespace,
                name,
                "configured",
                Some(&old),
                Some(&new),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn set_status(
        &self,
        namespace: &str,
        name: &str,
        status: &InferenceServiceStatus,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE services SET status = ?3 WHERE namespace = ?1 AND name = ?2",
            params![
                namespace,
                name,
                serde_json::to_string(status).expect("serializes")
            ],
        )?;
        Ok(())
    }

    /// Revisions of a service, newest first.
    pub fn revisions(&self, namespace: &str, service: &str) -> Result<Vec<RevisionRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT seq, name, predictor, created_at FROM revisions WHERE namespace = ?1 AND service = ?2 ORDER BY seq DESC",
        )?;
        let rows = statement.query_map(params![namespace, service], |row| {
            let predictor: String = row.get(2)?;
            Ok((row.get(0)?, row.get(1)?, predictor, row.get(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, name, predictor, created_at) = row?;
            if let Ok(predictor) = serde_json::from_str(&predictor) {
                out.push(RevisionRow {
                    seq,
                    name,
                    predictor,
                    created_at,
                });
            }
        }
        Ok(out)
    }

    pub fn insert_replica(&self, replica: &ReplicaRow) -> Result<()> {
        self.conn().execute(
            "INSERT INTO replicas (id, namespace, service, revision, pid, start_time, http_addr, grpc_addr, terminating, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                replica.id,
                replica.namespace,
                replica.service,
                replica.revision,
                replica.pid,
                replica.start_time.map(|t| t as i64),
                replica.http_addr,
                replica.grpc_addr,
                replica.terminating as i64,
                replica.created_at
            ],
        )?;
        Ok(())
    }

    /// Record the process now running a replica (pid, start time; addresses once known).
    pub fn set_replica_process(
        &self,
        id: &str,
        pid: Option<i32>,
        start_time: Option<u64>,
        addrs: Option<(&str, &str)>,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE replicas SET pid = ?2, start_time = ?3, http_addr = ?4, grpc_addr = ?5 WHERE id = ?1",
            params![id, pid, start_time.map(|t| t as i64), addrs.map(|a| a.0), addrs.map(|a| a.1)],
        )?;
        Ok(())
    }

    pub fn set_terminating(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE replicas SET terminating = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    pub fn delete_replica(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM replicas WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn replicas(&self) -> Result<Vec<ReplicaRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, namespace, service, revision, pid, start_time, http_addr, grpc_addr, terminating, created_at FROM replicas ORDER BY created_at, id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(ReplicaRow {
                id: row.get(0)?,
                namespace: row.get(1)?,
                service: row.get(2)?,
                revision: row.get(3)?,
                pid: row.get(4)?,
                start_time: row.get::<_, Option<i64>>(5)?.map(|t| t as u64),
                http_addr: row.get(6)?,
                grpc_addr: row.get(7)?,
                terminating: row.get::<_, i64>(8)? != 0,
                created_at: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    pub fn event(
        &self,
        namespace: &str,
        service: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO events (at, namespace, service, type, reason, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now(), namespace, service, type_, reason, message],
        )?;
        Ok(())
    }

    /// The latest `limit` events of a service, oldest first.
    pub fn events(&self, namespace: &str, service: &str, limit: usize) -> Result<Vec<EventRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT at, type, reason, message FROM events WHERE namespace = ?1 AND service = ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(params![namespace, service, limit as i64], |row| {
            Ok(EventRow {
                at: row.get(0)?,
                type_: row.get(1)?,
                reason: row.get(2)?,
                message: row.get(3)?,
            })
        })?;
        let mut events: Vec<EventRow> = rows.collect::<std::result::Result<_, _>>()?;
        events.reverse();
        Ok(events)
    }
}

fn service_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<ServiceRow>> {
    let manifest: String = row.get(0)?;
    let status: Option<String> = row.get(5)?;
    let Ok(isvc) = serde_json::from_str::<InferenceService>(&manifest) else {
        return Ok(None);
    };
    Ok(Some(ServiceRow {
        isvc,
        generation: row.get(1)?,
        revision: row.get(2)?,
        created_at: row.get(3)?,
        deleted: row.get::<_, i64>(4)? != 0,
        status: status.and_then(|s| serde_json::from_str(&s).ok()),
    }))
}
