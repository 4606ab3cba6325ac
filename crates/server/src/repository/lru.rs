//! Which resident models to evict so that a model of `need` bytes fits a memory budget: the
//! least recently used first, idle ones before busy ones, and only as many bytes as needed.
//! Pure: the repository hands in what is resident and carries the answer out.

/// One resident model, as the eviction choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub name: String,
    /// Its accounted bytes (measured footprint, or the estimate it was loaded under).
    pub bytes: u64,
    /// When a request last used it (any monotonic unit; larger is more recent).
    pub last_used: u64,
    /// Requests are in flight on it: evicted only when idle models do not free enough.
    pub busy: bool,
}

/// Why a model cannot be made room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeverFits {
    pub need: u64,
    pub budget: u64,
}

/// The models to evict, oldest first, so that `need` more bytes fit `budget`; empty when they
/// already fit. A model larger than the whole budget never fits.
pub fn to_evict(resident: &[Resident], budget: u64, need: u64) -> Result<Vec<String>, NeverFits> {
    if need > budget {
        return Err(NeverFits { need, budget });
    }
    let mut used: u64 = resident.iter().map(|r| r.bytes).sum();
    if used.saturating_add(need) <= budget {
        return Ok(Vec::new());
    }
    let mut order: Vec<&Resident> = resident.iter().collect();
    order.sort_by(|a, b| (a.busy, a.last_used, &a.name).cmp(&(b.busy, b.last_used, &b.name)));
    let mut evict = Vec::new();
    for candidate in order {
        if used.saturating_add(need) <= budget {
            break;
        }
        used -= candidate.bytes;
        evict.push(candidate.name.clone());
    }
    Ok(evict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, bytes: u64, last_used: u64, busy: bool) -> Resident {
        Resident {
            name: name.into(),
            bytes,
            last_used,
            busy,
        }
    }

    #[test]
    fn nothing_is_evicted_while_it_fits() {
        let resident = [r("a", 40, 1, false), r("b", 40, 2, false)];
        assert_eq!(to_evict(&resident, 100, 20), Ok(vec![]));
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        let resident = [
            r("new", 30, 9, false),
            r("old", 30, 1, false),
            r("mid", 30, 5, false),
        ];
        // 90 used, 30 more needed under 100: one model (the oldest) is enough.
        assert_eq!(to_evict(&resident, 100, 30), Ok(vec!["old".into()]));
        // 60 more: two, oldest first.
        assert_eq!(
            to_evict(&resident, 100, 60),
            Ok(vec!["old".into(), "mid".into()])
        );
    }

    #[test]
    fn busy_models_go_only_when_idle_ones_do_not_free_enough() {
        let resident = [r("busy-old", 50, 1, true), r("idle-new", 40, 9, false)];
        assert_eq!(to_evict(&resident, 100, 40), Ok(vec!["idle-new".into()]));
        assert_eq!(
            to_evict(&resident, 100, 90),
            Ok(vec!["idle-new".into(), "busy-old".into()])
        );
    }

    #[test]
    fn a_model_larger_than_the_budget_never_fits() {
        assert_eq!(
            to_evict(&[], 100, 101),
            Err(NeverFits {
                need: 101,
                budget: 100
            })
        );
    }
}
