//! The audit trail: every change to a stored document — who made it (the control token's
//! holder), when, what (the action and its cause) and the diff of what its author wrote —,
//! written in the same transaction as the change itself and kept after the object is deleted
//! (`ferry history`).

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Store;
use crate::Result;

/// Who changes the store, and why: `who` is the control token's holder, `cause` the command
/// (`ferry apply`, `ferry rollout undo`, `ferry delete`, ...).
#[derive(Debug, Clone)]
pub struct Actor {
    pub who: String,
    pub cause: String,
}

impl Actor {
    pub fn new(who: &str, cause: &str) -> Self {
        Actor {
            who: who.to_string(),
            cause: cause.to_string(),
        }
    }
}

/// One recorded change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRow {
    pub seq: i64,
    pub at: String,
    pub who: String,
    pub cause: String,
    pub kind: String,
    /// Empty for a Namespace.
    pub namespace: String,
    pub name: String,
    /// `created`, `configured` or `deleted`.
    pub action: String,
    /// The unified diff of the authored object, before → after.
    pub diff: Option<String>,
}

/// Changes recorded in one transaction (what a dry run reports, and a real one returns).
pub(crate) struct Changes<'a> {
    pub actor: &'a Actor,
    pub at: String,
    pub rows: Vec<ChangeRow>,
}

impl<'a> Changes<'a> {
    pub fn new(actor: &'a Actor) -> Self {
        Changes {
            actor,
            at: super::now(),
            rows: Vec::new(),
        }
    }

    /// Record one change of `kind` `namespace/name` from the stored JSON `old` to `new`
    /// (`None`: absent — created or deleted).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        conn: &Connection,
        kind: &str,
        namespace: &str,
        name: &str,
        action: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<()> {
        let authored = |json: Option<&str>| {
            json.and_then(|j| serde_json::from_str::<Value>(j).ok())
                .map(|v| ferry_api::diff::authored_yaml(&v))
                .unwrap_or_default()
        };
        let path = if namespace.is_empty() {
            format!("{kind}/{name}")
        } else {
            format!("{kind}/{namespace}/{name}")
        };
        let diff = ferry_api::diff::unified(
            &authored(old),
            &authored(new),
            &format!("a/{path}"),
            &format!("b/{path}"),
        );
        conn.execute(
            "INSERT INTO changes (at, who, cause, kind, namespace, name, action, diff) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![self.at, self.actor.who, self.actor.cause, kind, namespace, name, action, diff],
        )?;
        self.rows.push(ChangeRow {
            seq: conn.last_insert_rowid(),
            at: self.at.clone(),
            who: self.actor.who.clone(),
            cause: self.actor.cause.clone(),
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            action: action.to_string(),
            diff,
        });
        Ok(())
    }
}

impl Store {
    /// The recorded changes of `kind` `namespace/name`, oldest first.
    pub fn changes(&self, kind: &str, namespace: &str, name: &str) -> Result<Vec<ChangeRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT seq, at, who, cause, kind, namespace, name, action, diff FROM changes WHERE kind = ?1 AND namespace = ?2 AND name = ?3 ORDER BY seq",
        )?;
        let rows = statement.query_map(params![kind, namespace, name], |row| {
            Ok(ChangeRow {
                seq: row.get(0)?,
                at: row.get(1)?,
                who: row.get(2)?,
                cause: row.get(3)?,
                kind: row.get(4)?,
                namespace: row.get(5)?,
                name: row.get(6)?,
                action: row.get(7)?,
                diff: row.get(8)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}
