//! Fair sharing of in-flight slots among namespaces, carried out for
//! [`ferry_core::fairness`]: a request of a namespace at its share waits in that namespace's
//! own queue; a slot freed goes to the queued namespaces in turn (round robin), each only while
//! it is under its share. A full queue, or a wait past [`FairConfig::wait`], answers 503 with
//! `Retry-After`. A request given up by its client while queued leaves no slot taken.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::fairness;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::RouterError;

/// The slots namespaces share and how long their queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairConfig {
    /// In-flight requests the shared compute serves at once (local mode: the machine's cores).
    pub slots: usize,
    /// Requests one namespace may have queued.
    pub queue: usize,
    /// How long a queued request waits for its turn.
    pub wait: Duration,
}

impl FairConfig {
    /// `slots` shared, with the default queue ([`fairness::QUEUE_PER_SLOT`] per slot) and wait.
    pub fn slots(slots: usize) -> FairConfig {
        let slots = slots.max(1);
        FairConfig {
            slots,
            queue: slots * fairness::QUEUE_PER_SLOT,
            wait: fairness::QUEUE_WAIT,
        }
    }

    /// As `--fair-slots N --fair-queue Q` ask: `None` (first come, first served) for 0
    /// slots; the default queue when `queue` is `None`.
    pub fn from_flags(slots: usize, queue: Option<usize>) -> Option<FairConfig> {
        (slots > 0).then(|| {
            let mut config = FairConfig::slots(slots);
            if let Some(queue) = queue {
                config.queue = queue;
            }
            config
        })
    }
}

/// The gate every forwarded request passes (one per router).
pub(crate) struct Fair {
    config: FairConfig,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tenants: HashMap<Arc<str>, Tenant>,
    /// Namespaces with queued requests, in their turn's order.
    waiting: VecDeque<Arc<str>>,
    next_id: u64,
}

struct Tenant {
    in_flight: usize,
    queue: VecDeque<Waiter>,
    last_seen: Instant,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// A slot taken; given back on drop.
pub(crate) struct Slot {
    fair: Arc<Fair>,
    namespace: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.fair.release(&self.namespace);
    }
}

/// A queued request; dropped unserved (its client gave up), it leaves the queue, and a slot
/// granted to it meanwhile is given back.
struct Queued {
    fair: Arc<Fair>,
    namespace: Arc<str>,
    id: u64,
    granted: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if !self.fair.dequeue(&self.namespace, self.id) && self.granted.try_recv().is_ok() {
            self.fair.release(&self.namespace);
        }
    }
}

impl Fair {
    pub(crate) fn new(config: FairConfig) -> Arc<Fair> {
        Arc::new(Fair {
            config,
            state: Mutex::new(State::default()),
        })
    }

    /// A slot for a request of `namespace`: at once while it is under its share, else after
    /// its turn in the namespace's queue; `queued` is told when it had to wait.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        namespace: &str,
        queued: impl FnOnce(),
    ) -> Result<Slot, RouterError> {
        let (namespace, id, granted) = {
            let mut state = self.lock();
            let now = Instant::now();
            let key: Arc<str> = match state.tenants.get_key_value(namespace) {
                Some((key, _)) => key.clone(),
                None => Arc::from(namespace),
            };
            let tenant = state.tenants.entry(key.clone()).or_insert(Tenant {
                in_flight: 0,
                queue: VecDeque::new(),
                last_seen: now,
            });
            tenant.last_seen = now;
            let active = state.active(now);
            let slots = self.config.slots;
            let tenant = state.tenants.get_mut(&key).expect("inserted above");
            tenant.queue.retain(|w| !w.grant.is_closed());
            if tenant.queue.is_empty() && fairness::admits(tenant.in_flight, slots, active) {
                tenant.in_flight += 1;
                return Ok(self.slot(key));
            }
            if tenant.queue.len() >= self.config.queue {
                return Err(RouterError::Overloaded {
                    namespace: namespace.to_string(),
                    reason: format!(
                        "{} requests of this namespace already wait for their share of {} slots",
                        tenant.queue.len(),
                        slots
                    ),
                });
            }
            let (grant, granted) = oneshot::channel();
            state.next_id += 1;
            let id = state.next_id;
            let tenant = state.tenants.get_mut(&key).expect("inserted above");
            tenant.queue.push_back(Waiter { id, grant });
            if tenant.queue.len() == 1 {
                state.waiting.push_back(key.clone());
            }
            (key, id, granted)
        };
        queued();
        let mut waiting = Queued {
            fair: self.clone(),
            namespace: namespace.clone(),
            id,
            granted,
            done: false,
        };
        let outcome = tokio::time::timeout(self.config.wait, &mut waiting.granted).await;
        if matches!(outcome, Ok(Ok(()))) || !self.dequeue(&namespace, id) {
            // Granted (perhaps between the timeout and the dequeue): the slot is this request's.
            waiting.done = true;
            return Ok(self.slot(namespace));
        }
        waiting.done = true;
        Err(RouterError::Overloaded {
            namespace: namespace.to_string(),
            reason: format!(
                "no turn within {}s of waiting for its share of {} slots",
                self.config.wait.as_secs(),
                self.config.slots
            ),
        })
    }

    fn slot(self: &Arc<Self>, namespace: Arc<str>) -> Slot {
        Slot {
            fair: self.clone(),
            namespace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take waiter `id` out of `namespace`'s queue; false when it is not there (granted).
    fn dequeue(&self, namespace: &str, id: u64) -> bool {
        let mut state = self.lock();
        let Some(tenant) = state.tenants.get_mut(namespace) else {
            return false;
        };
        let Some(position) = tenant.queue.iter().position(|w| w.id == id) else {
            return false;
        };
        tenant.queue.remove(position);
        true
    }

    fn release(&self, namespace: &str) {
        let mut state = self.lock();
        if let Some(tenant) = state.tenants.get_mut(namespace) {
            tenant.in_flight = tenant.in_flight.saturating_sub(1);
        }
        state.dispatch(Instant::now(), self.config.slots);
    }
}

impl State {
    /// Namespaces sending now or within [`fairness::ACTIVE_WINDOW`]; forgets the others.
    fn active(&mut self, now: Instant) -> usize {
        self.tenants.retain(|_, t| {
            t.in_flight > 0
                || !t.queue.is_empty()
                || now.duration_since(t.last_seen) < fairness::ACTIVE_WINDOW
        });
        self.tenants.len()
    }

    /// Give free slots to queued namespaces in turn, each while under its share.
    fn dispatch(&mut self, now: Instant, slots: usize) {
        loop {
            let active = self.active(now);
            let mut granted = false;
            for _ in 0..self.waiting.len() {
                let Some(namespace) = self.waiting.pop_front() else {
                    break;
                };
                let Some(tenant) = self.tenants.get_mut(&namespace) else {
                    continue;
                };
                while fairness::admits(tenant.in_flight, slots, active) {
                    let Some(waiter) = tenant.queue.pop_front() else {
                        break;
                    };
                    if waiter.grant.send(()).is_ok() {
                        tenant.in_flight += 1;
                        granted = true;
                        break;
                    }
                }
                if !tenant.queue.is_empty() {
                    self.waiting.push_back(namespace);
                }
            }
            if !granted {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(slots: usize, queue: usize) -> Arc<Fair> {
        Fair::new(FairConfig {
            slots,
            queue,
            wait: Duration::from_secs(5),
        })
    }

    #[tokio::test]
    async fn a_lone_namespace_is_not_capped() {
        let fair = gate(2, 1);
        let slots: Vec<Slot> = futures_join(&fair, "a", 10).await;
        assert_eq!(slots.len(), 10);
    }

    async fn futures_join(fair: &Arc<Fair>, ns: &str, n: usize) -> Vec<Slot> {
        let mut slots = Vec::new();
        for _ in 0..n {
            slots.push(fair.acquire(ns, || panic!("queued")).await.unwrap());
        }
        slots
    }

    #[tokio::test]
    async fn a_second_namespace_gets_its_share_at_once_and_the_first_queues() {
        let fair = gate(2, 2);
        let a = futures_join(&fair, "a", 3).await;
        // b is under its share (1 of 2 slots): through at once, although a holds three.
        let b = fair.acquire("b", || panic!("b queued")).await.unwrap();
        // a is over its share now: it queues, and beyond its queue it is refused.
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (fair, queued) = (fair.clone(), queued.clone());
                tokio::spawn(async move {
                    fair.acquire("a", || {
                        queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    })
                    .await
                    .map(drop)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        while queued.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = fair.acquire("a", || {}).await;
        let Err(RouterError::Overloaded { namespace, reason }) = refused else {
            panic!("not refused");
        };
        assert_eq!(namespace, "a");
        assert!(reason.contains("2 requests"), "{reason}");
        // a's slots come back one by one; only the last brings a under its share of one.
        drop(a);
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_is_refused_after_the_wait_and_leaves_no_slot_taken() {
        let fair = gate(2, 4);
        let _a = fair.acquire("a", || {}).await.unwrap();
        let b = fair.acquire("b", || {}).await.unwrap();
        let refused = fair.acquire("a", || {}).await;
        assert!(
            matches!(&refused, Err(RouterError::Overloaded { reason, .. }) if reason.contains("within 5s")),
            "{:?}",
            refused.err()
        );
        // a client that gives up while queued: nothing left behind.
        let gave_up = tokio::time::timeout(Duration::from_secs(1), fair.acquire("a", || {})).await;
        assert!(gave_up.is_err());
        assert!(fair.lock().tenants["a"].queue.is_empty());
        drop(b);
        assert_eq!(fair.lock().tenants["a"].in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_gone_quiet_gives_its_share_back() {
        let fair = gate(2, 4);
        drop(fair.acquire("b", || {}).await.unwrap());
        let _a1 = fair.acquire("a", || {}).await.unwrap();
        tokio::time::advance(fairness::ACTIVE_WINDOW + Duration::from_millis(1)).await;
        // b is quiet for longer than the window: a is alone again and not capped.
        let _a2 = fair
            .acquire("a", || panic!("queued though alone"))
            .await
            .unwrap();
    }
}
