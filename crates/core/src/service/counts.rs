//! A step's replica counts per revision and the changes worth an event (`RevisionCreated`,
//! `ScaledUp`, `ScaledDown`, `RevisionRetired`): what both modes carry out for a rolling step.

use std::collections::BTreeMap;

use super::{Observation, RevisionChange};
use crate::reason::{PlannedEvent, Reason};
use crate::rollout::Target;

/// The replica counts after a rollout step of `start` new replicas and `stop`ped ones, and
/// what changed.
pub(super) fn scale_after(
    target: &Target,
    observed: &Observation<'_>,
    start: u32,
    stop: &[String],
) -> (BTreeMap<String, u32>, Vec<RevisionChange>) {
    let latest = target.revision.as_str();
    let replicas = observed.replicas;
    let staying = |revision: &str| {
        replicas
            .iter()
            .filter(|r| r.revision == revision && !r.terminating && !stop.contains(&r.id))
            .count()
    };
    let mut scale = observed.scale.clone();
    let mut changes = Vec::new();

    // The latest revision: what it is set to, raised by what starts (never above the target),
    // or the target when it is set to more (scaling down).
    let current = observed.scale.get(latest).copied();
    let live = replicas
        .iter()
        .filter(|r| r.revision == latest && !r.terminating)
        .count() as u32;
    let set = current.unwrap_or(0);
    let after = if set >= target.replicas {
        target.replicas
    } else {
        set.max(live + start).min(target.replicas)
    };
    scale.insert(latest.to_string(), after);
    if current != Some(after) && (current.is_some() || after > 0) {
        changes.push(count_change(latest, current, after));
    }

    // Older revisions lose what is stopped; one left with nothing is retired.
    for (revision, before) in observed.scale.iter().filter(|(r, _)| *r != latest) {
        let stopped = replicas
            .iter()
            .filter(|r| &r.revision == revision && stop.contains(&r.id))
            .count() as u32;
        let after = before.saturating_sub(stopped);
        if after == 0 && staying(revision) == 0 {
            scale.remove(revision);
            changes.push(RevisionChange {
                revision: revision.clone(),
                before: Some(*before),
                after: 0,
                retire: true,
                event: PlannedEvent::new(
                    Reason::RevisionRetired,
                    format!("revision {revision}: no traffic and no replica left; its objects go"),
                ),
            });
        } else if after != *before {
            scale.insert(revision.clone(), after);
            changes.push(count_change(revision, Some(*before), after));
        }
    }
    (scale, changes)
}

pub(super) fn count_change(revision: &str, before: Option<u32>, after: u32) -> RevisionChange {
    let (reason, note) = match before {
        None => (
            Reason::RevisionCreated,
            format!("created revision {revision} with {after} replicas"),
        ),
        Some(before) if before < after => (
            Reason::ScaledUp,
            format!("revision {revision}: {before} → {after} replicas"),
        ),
        Some(before) => (
            Reason::ScaledDown,
            format!("revision {revision}: {before} → {after} replicas"),
        ),
    };
    RevisionChange {
        revision: revision.to_string(),
        before,
        after,
        retire: false,
        event: PlannedEvent::new(reason, note),
    }
}
