//! The ServerPool planner (`ferry_core::placement::plan`) on 10,000 models × 100 servers: the
//! time to plan from nothing, to re-plan a settled pool (nothing moves), and to re-plan after
//! one server is lost; and how well it packs, against the spreading rule of Seldon Core v2's
//! scheduler (each model to the server with the most free memory, in arrival order) on the
//! same models, same run. Model sizes are mixed (a few large, many small) and the pool's
//! capacity is 102 % of what the copies need: whether everything fits is up to the rule, and
//! what is left over shows as the largest model one more server could still take.
//! Prints one `key=value` line per measure (medians of the rounds for times).
//!
//! usage: ferry-bench-place [ROUNDS]

use std::collections::BTreeMap;
use std::time::Instant;

use ferry_core::placement::{Current, Model, Placement, Server, plan};

const MB: u64 = 1 << 20;

/// A deterministic mix: sizes from 1 MB to 2 GB, heavy-tailed (xorshift, fixed seed).
fn models(n: usize) -> Vec<Model> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let roll = next() % 1000;
            let bytes = match roll {
                0..=9 => 512 + next() % 1536, // 1 %: 0.5–2 GB
                10..=99 => 64 + next() % 448, // 9 %: 64–512 MB
                _ => 1 + next() % 63,         // 90 %: 1–64 MB
            } * MB;
            Model {
                id: format!("m{i:05}"),
                bytes,
                copies: 1 + u32::from(roll % 5 == 0),
                busy: roll % 2 == 0,
            }
        })
        .collect()
}

/// Seldon's rule: each copy, in arrival order, to the server with the most free memory that
/// does not hold it yet. Returns the copies placed and the most free bytes left on a server.
fn spread(servers: &[Server], models: &[Model]) -> (usize, u64) {
    let mut free: Vec<u64> = servers.iter().map(|s| s.capacity).collect();
    let mut placed = 0;
    for model in models {
        let mut used = Vec::new();
        for _ in 0..model.copies {
            let best = (0..free.len())
                .filter(|i| !used.contains(i))
                .max_by_key(|i| (free[*i], std::cmp::Reverse(*i)));
            match best {
                Some(i) if free[i] >= model.bytes => {
                    free[i] -= model.bytes;
                    used.push(i);
                    placed += 1;
                }
                _ => break,
            }
        }
    }
    (placed, free.into_iter().max().unwrap_or(0))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let models = models(10_000);
    let wanted: u64 = models.iter().map(|m| m.bytes * u64::from(m.copies)).sum();
    let copies: usize = models.iter().map(|m| m.copies as usize).sum();
    let each = wanted * 102 / 100 / 100;
    let servers: Vec<Server> = (0..100)
        .map(|i| Server {
            id: format!("s{i:03}"),
            capacity: each,
        })
        .collect();
    let (mut cold, mut warm, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    let mut first = Placement::default();
    for _ in 0..rounds {
        let started = Instant::now();
        first = plan(&servers, &models, &Current::new());
        cold.push(started.elapsed().as_secs_f64() * 1e3);
        let current = first.settled();
        let started = Instant::now();
        let again = plan(&servers, &models, &current);
        warm.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            again.added(&current),
            0,
            "a settled pool re-plans to itself"
        );
        let started = Instant::now();
        let fewer = plan(&servers[1..], &models, &current);
        lost.push(started.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(fewer);
    }
    let current = first.settled();
    let moved = plan(&servers[1..], &models, &current);
    let on_lost = current
        .values()
        .filter(|on| on.contains_key(&servers[0].id))
        .count();
    let packed: usize = first.servers.values().map(Vec::len).sum();
    let started = Instant::now();
    let (spread_placed, spread_hole) = spread(&servers, &models);
    let hole = first.used.values().map(|u| each - u).max().unwrap_or(0);
    let spread_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut sizes = BTreeMap::new();
    for m in &models {
        *sizes.entry(m.bytes / MB >= 512).or_insert(0) += 1;
    }
    println!(
        "models={} copies={copies} servers={} capacity_mb={}",
        models.len(),
        servers.len(),
        each / MB
    );
    println!("plan_cold_ms={:.1}", median(cold));
    println!("plan_settled_ms={:.1}", median(warm));
    println!("plan_lost_server_ms={:.1}", median(lost));
    println!(
        "lost_server_copies={on_lost} added_after_loss={} removed_after_loss={}",
        moved.added(&current),
        moved.removed(&current)
    );
    println!(
        "ferry_placed={packed} ({:.2} %) ferry_largest_free_mb={}",
        100.0 * packed as f64 / copies as f64,
        hole / MB
    );
    println!(
        "spread_placed={spread_placed} ({:.2} %) spread_largest_free_mb={} spread_ms={spread_ms:.1}",
        100.0 * spread_placed as f64 / copies as f64,
        spread_hole / MB
    );
    println!("large_models={}", sizes.get(&true).copied().unwrap_or(0));
}
