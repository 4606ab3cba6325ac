use super::*;

fn spec(budget: &str, overcommit: u32) -> ServerPoolSpec {
    ServerPoolSpec {
        replicas: Some(2),
        memory_budget: Some(budget.into()),
        overcommit_percent: Some(overcommit),
        ..Default::default()
    }
}

fn server(id: &str, budget: u64, models: &[(&str, Option<u64>)]) -> PoolServer {
    PoolServer {
        id: id.into(),
        ready: true,
        budget,
        models: models
            .iter()
            .map(|(m, measured)| {
                (
                    m.to_string(),
                    ServerModel {
                        resident: measured.is_some(),
                        measured: *measured,
                        failed: None,
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn pooled(model: &str, file: u64, copies: u32) -> Pooled {
    Pooled {
        service: model.into(),
        model: model.into(),
        file_bytes: Some(file),
        copies,
        measured: None,
    }
}

#[test]
fn new_models_are_registered_by_estimate_and_copies_go_to_different_servers() {
    let servers = [server("a", 1000, &[]), server("b", 1000, &[])];
    let models = [pooled("m1", 100, 2), pooled("m2", 100, 1)];
    let decision = decide(&spec("1000", 0), &servers, &models);
    assert_eq!(decision.placement.servers["m1"], ["a", "b"]);
    assert_eq!(decision.placement.servers["m2"].len(), 1);
    assert_eq!(decision.register.len(), 3);
    assert!(decision.unregister.is_empty());
    // Before any measurement the estimate is the file size times the default ratio.
    let m1 = &decision.status.models[0];
    assert_eq!(m1.predicted_bytes, Some(200));
    assert_eq!(m1.measured_bytes, None);
    assert_eq!(decision.status.registered_models, 2);
    assert_eq!(decision.status.memory_budget_bytes, 2000);
}

#[test]
fn measurements_correct_the_estimates_of_the_models_not_yet_measured() {
    // m1 measured at 5x its file: m2's estimate follows (5 x 100), and with 600 bytes of
    // room per server, m2 no longer fits beside m1.
    let servers = [server("a", 600, &[("m1", Some(500))])];
    let models = [pooled("m1", 100, 1), pooled("m2", 100, 1)];
    let one_server = ServerPoolSpec {
        replicas: Some(1),
        ..spec("600", 0)
    };
    let decision = decide(&one_server, &servers, &models);
    assert_eq!(decision.status.models[1].predicted_bytes, Some(500));
    assert!(decision.placement.unplaced.contains_key("m2"));
    assert!(decision.register.is_empty());
    let problem = not_placed(true, "small", "m2", Some(&decision.placement)).unwrap();
    assert_eq!(problem.reason, Reason::NotPlaced);
    assert!(problem.message.contains("500 bytes"), "{}", problem.message);
}

#[test]
fn overcommit_places_more_than_the_budget_and_a_model_too_large_is_named() {
    let servers = [server("a", 100, &[])];
    let models = [
        pooled("m1", 50, 1),
        pooled("m2", 50, 1),
        pooled("huge", 1000, 1),
    ];
    // 100 % overcommit: 200 bytes may be placed; m1 and m2 at 100 each fit.
    let decision = decide(&spec("100", 100), &servers, &models);
    assert_eq!(decision.placement.servers.len(), 2);
    let problem = not_placed(true, "small", "huge", Some(&decision.placement)).unwrap();
    assert_eq!(problem.reason, Reason::ModelTooLarge);
    let none = decide(&spec("100", 0), &servers, &models);
    assert_eq!(none.placement.servers.len(), 1);
    // Within the overcommitted 200 bytes but above the 100-byte budget: never resident, so
    // never placed, and named with the budget.
    let over = decide(&spec("100", 100), &servers, &[pooled("big", 75, 1)]);
    assert!(over.register.is_empty(), "{:?}", over.register);
    let problem = not_placed(true, "small", "big", Some(&over.placement)).unwrap();
    assert_eq!(problem.reason, Reason::ModelTooLarge);
    assert!(
        problem.message.contains("150 bytes") && problem.message.contains("(100 bytes)"),
        "{}",
        problem.message
    );
}

#[test]
fn what_is_placed_stays_and_what_is_no_longer_asked_for_is_unregistered() {
    let servers = [
        server("a", 1000, &[("m1", Some(100)), ("gone", Some(100))]),
        server("b", 1000, &[]),
    ];
    let models = [pooled("m1", 50, 1)];
    let decision = decide(&spec("1000", 0), &servers, &models);
    assert_eq!(decision.placement.servers["m1"], ["a"]);
    assert!(decision.register.is_empty());
    assert_eq!(decision.unregister, [("a".to_string(), "gone".to_string())]);
}

#[test]
fn a_server_gone_has_its_copies_placed_again_on_the_others() {
    let mut servers = [
        server("a", 1000, &[("m1", Some(100))]),
        server("b", 1000, &[("m1", Some(100))]),
        server("c", 1000, &[]),
    ];
    servers[0].ready = false;
    let decision = decide(&spec("1000", 0), &servers, &[pooled("m1", 50, 2)]);
    assert_eq!(decision.placement.servers["m1"], ["b", "c"]);
    assert_eq!(decision.register, [("c".to_string(), "m1".to_string())]);
    let copies = copies("m1", "m1-abc", &decision.placement, &servers);
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().any(|c| c.id == "b" && c.ready()));
    assert!(
        copies.iter().any(|c| c.id == "c" && !c.ready()),
        "not registered yet"
    );
}

#[test]
fn a_pooled_service_is_ready_on_one_ready_copy_and_names_a_missing_pool() {
    let text = "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: m1}\nspec:\n  predictor:\n    pool: small\n    minReplicas: 2\n    model: {format: onnx, uri: models/iris.onnx}\n";
    let isvc = &ferry_api::parse_manifests(text, "default").unwrap()[0].isvc;
    let servers = [server("a", 1000, &[("m1", None)]), server("b", 1000, &[])];
    let decision = decide(&spec("1000", 0), &servers, &[pooled("m1", 50, 2)]);
    let copies = copies("m1", "m1-abc", &decision.placement, &servers);
    let now = "2026-12-06T00:00:00Z";
    let status = service_status(isvc, "m1-abc", &copies, None, None, "http://x".into(), now);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True", "{status:?}");
    assert_eq!(status.revisions[0].ready_replicas, 1);
    assert_eq!(status.revisions[0].replicas, 2);

    let problem = not_placed(false, "small", "m1", None);
    let status = service_status(isvc, "m1-abc", &[], problem, None, "http://x".into(), now);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "PoolNotFound");
}

#[test]
fn the_pool_scales_stopping_servers_that_are_not_ready_first() {
    let view = |id: &str, ready: bool| ReplicaView {
        id: id.into(),
        revision: "pool".into(),
        health: if ready {
            ReplicaHealth::Ready
        } else {
            ReplicaHealth::Starting { for_seconds: 1 }
        },
        terminating: false,
    };
    assert_eq!(scale(3, &[view("a", true)]), (2, vec![]));
    assert_eq!(
        scale(1, &[view("a", true), view("b", false)]),
        (0, vec!["b".to_string()])
    );
}

#[test]
fn a_pool_with_no_ready_server_is_starting_not_failed() {
    // Servers that have not answered their probe yet take nothing, and the services wait.
    let mut starting = server("a", 1000, &[]);
    starting.ready = false;
    let models = [pooled("m1", 100, 1)];
    let decision = decide(&spec("1000", 0), &[starting], &models);
    assert!(decision.register.is_empty());
    let problem = not_placed(true, "small", "m1", Some(&decision.placement)).unwrap();
    assert_eq!(problem.reason, Reason::PoolServersStarting);
    assert!(!problem.reason.is_failure(), "{}", problem.message);
    assert!(
        problem.message.contains("0 of 2 ready"),
        "{}",
        problem.message
    );
    // Once one is ready, the model is placed and the problem is gone.
    let decision = decide(&spec("1000", 0), &[server("a", 1000, &[])], &models);
    assert_eq!(decision.register, [("a".to_string(), "m1".to_string())]);
    assert!(not_placed(true, "small", "m1", Some(&decision.placement)).is_none());
}

#[test]
fn a_measurement_outlives_the_copy_that_made_it() {
    // m1 was measured at 700 bytes on server a, which is gone; the new server b has not
    // loaded it. The status recorded then is what the next pass reads it from.
    let before = decide(
        &spec("2000", 0),
        &[server("a", 2000, &[("m1", Some(700))])],
        &[pooled("m1", 100, 1)],
    );
    let mut m1 = pooled("m1", 100, 1);
    m1.measured = last_recorded(Some(&before.status), "m1");
    assert_eq!(m1.measured, Some(700));
    assert_eq!(last_recorded(Some(&before.status), "m2"), None);
    assert_eq!(last_recorded(None, "m1"), None);
    let models = [m1, pooled("m2", 100, 1)];
    let decision = decide(&spec("2000", 0), &[server("b", 2000, &[])], &models);
    assert_eq!(decision.status.models[0].measured_bytes, Some(700));
    // It is planned at its measurement, and the fit learns from it (7x the file).
    assert_eq!(decision.placement.used["b"], 1400);
}

#[test]
fn what_does_not_fit_while_servers_start_waits_for_them() {
    // Two servers wanted, one ready with room for one of the two models.
    let mut starting = server("b", 100, &[]);
    starting.ready = false;
    let servers = [server("a", 100, &[]), starting];
    let models = [pooled("m1", 50, 1), pooled("m2", 50, 1)];
    let decision = decide(&spec("100", 0), &servers, &models);
    assert_eq!(decision.placement.servers.len(), 1);
    let waiting = ["m1", "m2"]
        .into_iter()
        .find(|m| !decision.placement.servers.contains_key(*m))
        .unwrap();
    let problem = not_placed(true, "small", waiting, Some(&decision.placement)).unwrap();
    assert_eq!(problem.reason, Reason::PoolServersStarting);
    assert!(
        problem.message.contains("1 of 2 ready"),
        "{}",
        problem.message
    );
    // Both ready and still no room (each estimated at 2 x 25 bytes): a failure, named.
    let decision = decide(
        &spec("100", 0),
        &[server("a", 100, &[]), server("b", 40, &[])],
        &[
            pooled("m1", 25, 1),
            pooled("m2", 25, 1),
            pooled("m3", 25, 1),
        ],
    );
    let unplaced: Vec<&String> = decision.placement.unplaced.keys().collect();
    assert_eq!(unplaced.len(), 1, "{unplaced:?}");
    let problem = not_placed(true, "small", unplaced[0], Some(&decision.placement)).unwrap();
    assert_eq!(problem.reason, Reason::NotPlaced);
}

#[test]
fn a_server_is_read_from_its_index_and_residency() {
    use ferry_api::repository::{RepositoryEntry, Residency};
    let entry = |name: &str, state: &str, on_demand: bool, bytes: Option<u64>| RepositoryEntry {
        name: name.into(),
        state: state.into(),
        reason: String::new(),
        on_demand,
        memory_bytes: bytes,
    };
    let entries = [
        entry("hot", "READY", true, Some(500)),
        entry("cold", "UNLOADED", true, Some(300)),
        entry("new", "UNLOADED", true, None),
        entry("broken", "UNAVAILABLE", true, None),
        // A model the server serves of its own is no pool's copy.
        entry("own", "READY", false, Some(900)),
    ];
    let residency = Residency {
        budget_bytes: 0,
        used_bytes: 500,
        evictions: 3,
        ..Residency::default()
    };
    let server = PoolServer::observed("s", 2000, &entries, &residency);
    assert!(server.ready);
    // A server without a budget of its own keeps the pool's.
    assert_eq!(
        (server.budget, server.used, server.evictions),
        (2000, 500, 3)
    );
    assert_eq!(
        server.models.keys().collect::<Vec<_>>(),
        ["broken", "cold", "hot", "new"]
    );
    assert!(server.models["hot"].resident && !server.models["cold"].resident);
    assert_eq!(server.models["cold"].measured, Some(300));
    assert_eq!(server.models["broken"].failed.as_deref(), Some("failed"));
    let own_budget = Residency {
        budget_bytes: 1500,
        ..residency
    };
    assert_eq!(
        PoolServer::observed("s", 2000, &entries, &own_budget).budget,
        1500
    );
}

#[test]
fn a_failed_registration_leaves_the_placement_and_the_status() {
    let servers = [server("a", 1000, &[]), server("b", 1000, &[])];
    let mut decision = decide(&spec("1000", 0), &servers, &[pooled("m", 100, 2)]);
    decision.registration_failed("b", "m");
    assert_eq!(decision.placement.servers["m"], ["a"]);
    assert_eq!(decision.status.models[0].servers, ["a"]);
}

#[test]
fn a_pooled_service_reads_its_copies_and_its_problem_from_the_recorded_status() {
    let servers = [
        PoolServer {
            restarts: 1,
            ..server("a", 1000, &[("m", Some(100))])
        },
        server("b", 1000, &[("m", Some(100))]),
    ];
    let models = [pooled("m", 50, 2), pooled("huge", 5000, 1)];
    let mut status = decide(&spec("1000", 0), &servers, &models).status;
    let copies = recorded_copies(&status, "m", "rev");
    assert_eq!(copies.len(), 2);
    assert!(copies.iter().all(|c| c.ready() && c.revision == "rev"));
    assert!(recorded_copies(&status, "huge", "rev").is_empty());
    status.servers[1].ready = false;
    let copies = recorded_copies(&status, "m", "rev");
    assert_eq!(copies.iter().filter(|c| c.ready()).count(), 1);

    // Only servers that are still the processes the pool observed take requests.
    let now = |id: &str| match id {
        "a" => Some(1),
        "b" => Some(1), // restarted since: empty until registered again
        _ => None,
    };
    assert_eq!(routable_servers(&status, "m", now), ["a"]);
    assert!(routable_servers(&status, "m", |_| None).is_empty());

    let pool = ferry_api::ServerPool {
        metadata: Default::default(),
        spec: spec("1000", 0),
        status: Some(status),
    };
    let problem = recorded_problem(Some(&pool), "small", "huge").unwrap();
    assert_eq!(problem.reason, Reason::ModelTooLarge);
    assert!(
        problem.message.contains("(1000 bytes)"),
        "{}",
        problem.message
    );
    assert_eq!(recorded_problem(Some(&pool), "small", "m"), None);
    let unknown = recorded_problem(Some(&pool), "small", "later").unwrap();
    assert_eq!(unknown.reason, Reason::PoolServersStarting);
    assert_eq!(
        recorded_problem(None, "gone", "m").unwrap().reason,
        Reason::PoolNotFound
    );
}

#[test]
fn a_pool_is_ready_with_its_servers_and_says_why_not() {
    let view = |id: &str, health: ReplicaHealth| ReplicaView {
        id: id.into(),
        revision: "pool".into(),
        health,
        terminating: false,
    };
    let ready = ready_condition(
        2,
        &[
            view("a", ReplicaHealth::Ready),
            view("b", ReplicaHealth::Ready),
        ],
        None,
        "t0",
    );
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "ServersReady")
    );
    let pending = view(
        "b",
        ReplicaHealth::Unschedulable {
            message: "0/3 nodes are available: 3 Insufficient nvidia.com/mig-1g.10gb".into(),
        },
    );
    let previous = ServerPoolStatus {
        conditions: vec![ready_condition(
            2,
            &[view("a", ReplicaHealth::Ready), pending.clone()],
            None,
            "t1",
        )],
        ..Default::default()
    };
    let held = ready_condition(
        2,
        &[view("a", ReplicaHealth::Ready), pending],
        Some(&previous),
        "t2",
    );
    assert_eq!(
        (held.status.as_str(), held.reason.as_str()),
        ("False", "Unschedulable")
    );
    assert!(
        held.message.contains("nvidia.com/mig-1g.10gb"),
        "{}",
        held.message
    );
    // The same condition keeps its transition time.
    assert_eq!(held.last_transition_time.as_deref(), Some("t1"));
    let starting = ready_condition(
        2,
        &[view("a", ReplicaHealth::Starting { for_seconds: 1 })],
        None,
        "t3",
    );
    assert_eq!(starting.reason, "PoolServersStarting");
}

#[test]
fn a_model_of_unknown_size_is_placed_as_at_most_a_budget_until_measured() {
    let servers = [server("a", 1000, &[])];
    let unknown = Pooled {
        file_bytes: None,
        ..pooled("m", 0, 1)
    };
    let decision = decide(&spec("1000", 0), &servers, &[unknown]);
    assert_eq!(decision.placement.servers["m"], ["a"]);
}
