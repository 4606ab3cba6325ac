//! A step held to the room a namespace's ResourceQuotas leave (`Observation::quota_room`):
//! local mode's quota enforcement of rollouts and scale-ups, decided here for the plan.

use super::Observation;
use crate::rollout;

/// Hold the replicas a step starts to the room the namespace's quotas leave (replicas that
/// are leaving, this step's too, still take theirs until they are gone); the note an event of
/// the held rollout carries, when it is held.
pub(super) fn hold_to_room(step: &mut rollout::Step, observed: &Observation<'_>) -> Option<String> {
    let (room, note) = held(step.start, observed)?;
    step.start = room;
    Some(note)
}

/// As [`hold_to_room`] for a progressive rollout's starts (several revisions at once): the
/// room goes to `latest` first, then to the others by name.
pub(super) fn hold_starts(
    start: &mut std::collections::BTreeMap<String, u32>,
    latest: &str,
    observed: &Observation<'_>,
) -> Option<String> {
    let (mut left, note) = held(start.values().sum(), observed)?;
    let mut order: Vec<String> = start.keys().cloned().collect();
    order.sort_by_key(|revision| revision != latest);
    for revision in order {
        let count = start.get_mut(&revision).expect("a key of start");
        *count = (*count).min(left);
        left -= *count;
    }
    Some(note)
}

/// When starting `wanted` replicas exceeds the room: the room, and the words saying which
/// quota holds the rest.
fn held(wanted: u32, observed: &Observation<'_>) -> Option<(u32, String)> {
    let (quota, room) = observed.quota_room.as_ref()?;
    (wanted > *room).then(|| {
        let note = format!(
            "held by ResourceQuota {quota}: room for {room} more replica{} now; the rest start as others leave",
            if *room == 1 { "" } else { "s" }
        );
        (*room, note)
    })
}

/// The event of a held step (`QuotaHeld`, an event of its own so that a cluster's event
/// series, which fold events of one reason, keep it), when the step changes `revision`'s
/// count: a step that starts nothing changes nothing, and says nothing again.
pub(super) fn held_event(
    note: Option<String>,
    revision: &str,
    changes: &[super::RevisionChange],
) -> Option<crate::reason::PlannedEvent> {
    let note = note?;
    changes.iter().any(|c| c.revision == revision).then(|| {
        crate::reason::PlannedEvent::new(
            crate::reason::Reason::QuotaHeld,
            format!("revision {revision}: {note}"),
        )
    })
}
