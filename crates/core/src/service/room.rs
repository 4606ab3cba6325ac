//! A step held to the room a namespace's ResourceQuotas leave (`Observation::quota_room`):
//! local mode's quota enforcement of rollouts and scale-ups, decided here for the plan.

use super::Observation;
use crate::rollout;
use k8s_openapi::jiff::Timestamp;

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

/// How long a quota must have left no room, with nothing under way, before the status says
/// the latest revision is stalled: a cluster's quota status counts a deleted pod until its
/// controller catches up (seconds under load), and a moment with no room is not a failure.
pub const STALL_CONFIRM_SECONDS: i64 = 6;

/// When each service's plans began to see its latest revision stalled by a quota
/// ([`super::ServicePlan::stalling`]): an executor's memory, given back to the plan as
/// [`super::Observation::stalled_since`]. After a restart it starts again at the first look.
#[derive(Debug)]
pub struct Stalls<K> {
    since: std::collections::HashMap<K, Timestamp>,
}

impl<K> Default for Stalls<K> {
    fn default() -> Self {
        Self {
            since: std::collections::HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Stalls<K> {
    /// Since when `key`'s plans have seen it stalled.
    pub fn since(&self, key: &K) -> Option<Timestamp> {
        self.since.get(key).copied()
    }

    /// What the plan of `key` saw at `now`: the stall's start is kept while it lasts.
    pub fn record(&mut self, key: K, stalling: bool, now: Timestamp) {
        if stalling {
            self.since.entry(key).or_insert(now);
        } else {
            self.since.remove(&key);
        }
    }
}

/// Why the latest revision stands still, when a quota leaves no room for even one more of
/// its replicas and nothing will free any by itself (none of its replicas is starting or on
/// its way, none of the service's is leaving or scaled down, this step starts and stops
/// nothing), and that has held for [`STALL_CONFIRM_SECONDS`]: the status's `FailedCreate`
/// message, as the API server's refusal reads (a cluster's API server is never asked for a
/// pod it would refuse). The first value says whether it stands still now, confirmed or not.
pub(super) fn stalled(
    observed: &Observation<'_>,
    latest: &str,
    wanted: u32,
    start: &std::collections::BTreeMap<String, u32>,
    stop: &[String],
    now: Timestamp,
) -> (bool, Option<String>) {
    let Some((quota, room)) = observed.quota_room.as_ref() else {
        return (false, None);
    };
    let mine = |r: &&crate::ReplicaView| r.revision == latest && !r.terminating;
    let live = observed.replicas.iter().filter(mine).count() as u32;
    let starting = observed.replicas.iter().filter(mine).any(|r| !r.ready());
    let leaving = observed.replicas.iter().any(|r| r.terminating);
    let starts = start.values().sum::<u32>() > 0;
    // Set to more than are seen: pods on their way (a cluster's caches lag each other).
    let coming = observed.scale.get(latest).copied().unwrap_or(0) > live;
    // Set to fewer than are seen: pods of a revision scaled down, not yet seen terminating.
    let going = observed.scale.iter().any(|(revision, set)| {
        let seen = observed
            .replicas
            .iter()
            .filter(|r| &r.revision == revision && !r.terminating)
            .count() as u32;
        *set < seen
    });
    let idle = !starting && !leaving && !going && !starts && !coming && stop.is_empty();
    let stalling = *room == 0 && live < wanted && idle;
    let confirmed = observed
        .stalled_since
        .is_some_and(|since| now.duration_since(since).as_secs() >= STALL_CONFIRM_SECONDS);
    let message = (stalling && confirmed).then(|| {
        format!(
            "exceeded quota: {quota}: no room for another replica of {latest} ({live} of {wanted} running)"
        )
    });
    (stalling, message)
}
