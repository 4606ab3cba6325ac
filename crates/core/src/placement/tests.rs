use super::*;
use proptest::prelude::*;

const MB: u64 = 1 << 20;

fn server(id: &str, capacity: u64) -> Server {
    Server {
        id: id.into(),
        capacity,
    }
}

fn model(id: &str, bytes: u64, copies: u32) -> Model {
    Model {
        id: id.into(),
        bytes,
        copies,
        busy: true,
    }
}

#[test]
fn packs_largest_first_on_the_fullest_server_that_fits() {
    let servers = [server("a", 100 * MB), server("b", 100 * MB)];
    let models = [
        model("small-1", 10 * MB, 1),
        model("small-2", 10 * MB, 1),
        model("big", 70 * MB, 1),
        model("huge", 95 * MB, 1),
    ];
    let placement = plan(&servers, &models, &Current::new());
    // huge fills a; big goes to b; the small ones pack beside big, not on a fresh server.
    assert_eq!(placement.servers["huge"], ["a"]);
    assert_eq!(placement.servers["big"], ["b"]);
    assert_eq!(placement.servers["small-1"], ["b"]);
    assert_eq!(placement.servers["small-2"], ["b"]);
    assert_eq!(placement.used["b"], 90 * MB);
    assert!(placement.unplaced.is_empty());
}

#[test]
fn copies_go_to_different_servers_and_the_reasons_say_why_not() {
    let servers = [server("a", 100 * MB), server("b", 100 * MB)];
    let models = [
        model("two", 60 * MB, 2),
        model("three", MB, 3),
        model("giant", 101 * MB, 1),
        model("late", 50 * MB, 2),
    ];
    let placement = plan(&servers, &models, &Current::new());
    assert_eq!(placement.servers["two"], ["a", "b"]);
    assert_eq!(placement.servers["three"], ["a", "b"]);
    assert_eq!(
        placement.unplaced["three"],
        Unplaced::FewerServers {
            copies: 3,
            servers: 2
        }
    );
    assert_eq!(
        placement.unplaced["giant"],
        Unplaced::TooLarge {
            bytes: 101 * MB,
            largest: 100 * MB
        }
    );
    assert_eq!(
        placement.unplaced["late"].to_string(),
        format!("0 of 2 copies placed: no server has {} bytes left", 50 * MB)
    );
}

#[test]
fn a_busy_models_last_ready_copy_drains_until_another_is_ready() {
    let servers = [server("a", 100 * MB), server("b", 100 * MB)];
    let first = plan(&servers, &[model("x", 40 * MB, 1)], &Current::new());
    let on = first.servers["x"][0].clone();
    // It grew (measured): its server has no room now beside a newcomer that keeps its place.
    let mut current = first.settled();
    current.insert("other".into(), BTreeMap::from([(on.clone(), true)]));
    let models = [model("x", 80 * MB, 1), model("other", 60 * MB, 1)];
    let moved = plan(&servers, &models, &current);
    assert_ne!(moved.servers["x"], std::slice::from_ref(&on));
    assert_eq!(moved.draining.get("x"), Some(&on), "{moved:?}");
    // Once the new copy is ready, the old one goes.
    let mut current = moved.settled();
    current.get_mut("x").unwrap().insert(on.clone(), true);
    let done = plan(&servers, &models, &current);
    assert!(done.draining.is_empty(), "{done:?}");
    assert_eq!(done.removed(&current), 1);
    // A model without traffic is not held.
    let mut idle = models.clone();
    idle[0].busy = false;
    let current = {
        let mut c = first.settled();
        c.insert("other".into(), BTreeMap::from([(on.clone(), true)]));
        c
    };
    assert!(plan(&servers, &idle, &current).draining.is_empty());
}

#[test]
fn overcommit_raises_what_may_be_placed() {
    assert_eq!(capacity(3 * 1024 * MB, 100), 6 * 1024 * MB);
    assert_eq!(capacity(100, 0), 100);
    assert_eq!(capacity(u64::MAX, 100), u64::MAX);
}

fn inputs() -> impl Strategy<Value = (Vec<Server>, Vec<Model>)> {
    let servers = proptest::collection::vec(10u64..200, 1..8).prop_map(|caps| {
        caps.into_iter()
            .enumerate()
            .map(|(i, c)| server(&format!("s{i}"), c * MB))
            .collect::<Vec<_>>()
    });
    let models =
        proptest::collection::vec((1u64..120, 1u32..4, any::<bool>()), 0..40).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (bytes, copies, busy))| Model {
                    id: format!("m{i:02}"),
                    bytes: bytes * MB,
                    copies,
                    busy,
                })
                .collect::<Vec<_>>()
        });
    (servers, models)
}

proptest! {
    /// Budgets hold, copies are on distinct servers, a model is either fully placed or says
    /// why not, and the same input gives the same plan.
    #[test]
    fn budgets_copies_and_determinism((servers, models) in inputs()) {
        let placement = plan(&servers, &models, &Current::new());
        for s in &servers {
            prop_assert!(placement.used[&s.id] <= s.capacity, "{} over: {placement:?}", s.id);
            let on: u64 = placement
                .servers
                .iter()
                .filter(|(_, on)| on.contains(&s.id))
                .map(|(m, _)| models.iter().find(|x| &x.id == m).unwrap().bytes)
                .sum();
            prop_assert_eq!(on, placement.used[&s.id]);
        }
        for m in &models {
            let on = placement.servers.get(&m.id).cloned().unwrap_or_default();
            let distinct: BTreeSet<_> = on.iter().collect();
            prop_assert_eq!(distinct.len(), on.len());
            prop_assert!(on.len() as u32 <= m.copies);
            prop_assert!(on.len() as u32 == m.copies || placement.unplaced.contains_key(&m.id));
        }
        let mut reversed = models.clone();
        reversed.reverse();
        prop_assert_eq!(plan(&servers, &reversed, &Current::new()), placement);
    }

    /// From a settled placement, adding a model or losing a server moves only what it must:
    /// every copy that still has its server stays where it is.
    #[test]
    fn a_change_moves_only_what_it_must(
        (servers, models) in inputs(),
        extra in 1u64..60,
        lost in 0usize..8,
    ) {
        let first = plan(&servers, &models, &Current::new());
        let current = first.settled();
        let mut more = models.clone();
        more.push(model("new", extra * MB, 1));
        let grown = plan(&servers, &more, &current);
        for (m, on) in &first.servers {
            prop_assert_eq!(&grown.servers[m], on);
        }
        prop_assert_eq!(grown.removed(&current), 0);
        prop_assert!(grown.added(&current) <= 1);

        let lost = &servers[lost % servers.len()].id;
        let fewer: Vec<Server> = servers.iter().filter(|s| &s.id != lost).cloned().collect();
        let shrunk = plan(&fewer, &models, &current);
        for (m, on) in &first.servers {
            for s in on.iter().filter(|s| *s != lost) {
                prop_assert!(shrunk.servers[m].contains(s), "{m} left {s}");
            }
        }
    }
}

#[test]
fn ten_thousand_models_on_a_hundred_servers_plan_quickly() {
    // The timing itself is a benchmark (bench/); here: it completes and fills sensibly.
    let servers: Vec<Server> = (0..100)
        .map(|i| server(&format!("s{i:03}"), 8192 * MB))
        .collect();
    let models: Vec<Model> = (0..10_000u64)
        .map(|i| {
            model(
                &format!("m{i:05}"),
                (1 + i % 61) * MB,
                1 + (i % 3 == 0) as u32,
            )
        })
        .collect();
    let placement = plan(&servers, &models, &Current::new());
    assert!(
        placement.unplaced.is_empty(),
        "{:?}",
        placement.unplaced.iter().next()
    );
    let again = plan(&servers, &models, &placement.settled());
    assert_eq!(again.added(&placement.settled()), 0);
}

#[test]
fn servers_needed_packs_and_names_what_cannot_fit() {
    let model = |id: &str, bytes: u64, copies: u32| Model {
        id: id.into(),
        bytes,
        copies,
        busy: false,
    };
    // 60 + 40 fill one server, 30 + 30 + 30 a second; the copy of b goes to a third.
    let models = [
        model("a", 60, 1),
        model("b", 40, 2),
        model("c", 30, 1),
        model("d", 30, 1),
        model("e", 30, 1),
    ];
    assert_eq!(servers_needed(100, &models), Some(3));
    assert_eq!(
        servers_needed(1000, &models),
        Some(2),
        "b's copies are on 2 servers"
    );
    assert_eq!(
        servers_needed(50, &models),
        None,
        "a is larger than a server"
    );
    assert_eq!(servers_needed(100, &[]), Some(0));
}
