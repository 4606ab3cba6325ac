//! Fair sharing of in-flight slots among namespaces (tenants) that share compute: one rule,
//! carried out by the router in both modes.
//!
//! While one namespace alone is sending, it may use every slot and more (no cap: batching
//! wants many requests in flight). Once two or more are active, each may have its equal share
//! of the slots in flight (at least one); a namespace at its share waits in its own queue, and
//! a namespace under it is let through at once, so a tenant sending ten times what it can be
//! served queues behind its own requests, not in front of another's.
//!
//! "Active" is sending now or in the last [`ACTIVE_WINDOW`]: a steady tenant keeps its share
//! between requests instead of finding the slots taken each time it comes back.

use std::time::Duration;

/// How long a namespace counts as active after its last request.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

/// Queued requests per namespace, per slot, by default (beyond: 503 + `Retry-After`): a
/// batching client's burst of a few dozen waits its turn instead of being refused.
pub const QUEUE_PER_SLOT: usize = 64;

/// How long a queued request waits for its turn by default (then 503 + `Retry-After`).
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// The in-flight requests a namespace may have while `active` namespaces (itself included)
/// share `slots`: `None` (no cap) when it is the only one.
pub fn share(slots: usize, active: usize) -> Option<usize> {
    (active > 1).then(|| (slots / active).max(1))
}

/// Whether a namespace with `in_flight` requests may send one more now.
pub fn admits(in_flight: usize, slots: usize, active: usize) -> bool {
    share(slots, active).is_none_or(|share| in_flight < share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_a_namespace_is_never_capped() {
        assert_eq!(share(2, 1), None);
        assert!(admits(1_000, 2, 1));
        assert!(admits(0, 2, 0));
    }

    #[test]
    fn shared_slots_are_split_evenly_and_never_below_one() {
        assert_eq!(share(2, 2), Some(1));
        assert_eq!(share(8, 3), Some(2));
        assert_eq!(share(2, 5), Some(1));
        assert!(admits(0, 2, 2));
        assert!(!admits(1, 2, 2));
        assert!(admits(1, 8, 3));
        assert!(!admits(2, 8, 3));
    }
}
