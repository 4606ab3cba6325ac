//! A step held to the room a namespace's ResourceQuotas leave (`Observation::quota_room`):
//! local mode's quota enforcement of rollouts and scale-ups, decided here for the plan.

use super::Observation;
use crate::rollout;

/// Hold the replicas a step starts to the room the namespace's quotas leave (replicas that
/// are leaving, this step's too, still take theirs until they are gone); the note an event of
/// the held rollout carries, when it is held.
pub(super) fn hold_to_room(step: &mut rollout::Step, observed: &Observation<'_>) -> Option<String> {
    let (quota, room) = observed.quota_room.as_ref()?;
    if step.start <= *room {
        return None;
    }
    step.start = *room;
    Some(format!(
        " (held by ResourceQuota {quota}: room for {room} more replica{} now; the rest start as others leave)",
        if *room == 1 { "" } else { "s" }
    ))
}
