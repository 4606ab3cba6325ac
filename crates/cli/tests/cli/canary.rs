//! Canary rollouts in local mode, end to end under continuous load: the real `ferry up`, real
//! replicas, real traffic through the router; the split is counted by the client.

use std::time::{Duration, Instant};

use ferry_api::{RolloutPhase, RolloutStatus};

use crate::local::harness::*;

/// `manifest` with `rollout` in place of its rolling-update bounds.
fn canary_manifest(model_file: &str, rollout: &str) -> String {
    let base = manifest("iris", model_file, 2);
    let cut = base
        .find("  rollout:\n")
        .expect("the base manifest has a rollout");
    format!("{}  rollout:\n{rollout}", &base[..cut])
}

async fn rollout(daemon: &Daemon) -> Option<RolloutStatus> {
    daemon
        .client()
        .get("default", "iris")
        .await
        .ok()?
        .status?
        .rollout
}

/// Poll the rollout state every 100 ms until `done` says so (or `timeout`): the timeline of
/// (when, weight, phase) it went through.
async fn follow(
    daemon: &Daemon,
    timeout: Duration,
    done: impl Fn(&RolloutStatus) -> bool,
) -> Vec<(Instant, u32, RolloutPhase)> {
    let deadline = Instant::now() + timeout;
    let mut timeline = Vec::new();
    loop {
        if let Some(state) = rollout(daemon).await {
            timeline.push((Instant::now(), state.weight, state.phase));
            if done(&state) {
                return timeline;
            }
        }
        assert!(
            Instant::now() < deadline,
            "rollout not done after {timeout:?}: {:?}\n{}",
            timeline.last(),
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The share of answers from `revision` among samples sent while the weight was `weight`
/// (from 0.5 s after it was first seen to when it was last seen), and their count.
fn share_at(
    samples: &[Sample],
    timeline: &[(Instant, u32, RolloutPhase)],
    weight: u32,
    revision: &str,
) -> (f64, usize) {
    let seen: Vec<Instant> = timeline
        .iter()
        .filter(|(_, w, _)| *w == weight)
        .map(|(t, _, _)| *t)
        .collect();
    let (from, to) = (seen[0] + Duration::from_millis(500), *seen.last().unwrap());
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= from && s.sent <= to && s.status == 200)
        .collect();
    let hits = during.iter().filter(|s| s.revision == revision).count();
    (
        hits as f64 * 100.0 / during.len().max(1) as f64,
        during.len(),
    )
}

async fn event_reasons(daemon: &Daemon) -> Vec<(String, String)> {
    daemon
        .client()
        .events("default", "iris")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.reason, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_moves_traffic_step_by_step_and_a_promote_finishes_it() {
    let daemon = Daemon::start("canary-steps");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let stable = revision_of(&applied);
    let load = Load::start(&daemon.router, "iris", 4);
    let applied = daemon.apply(
        &canary_manifest(
            "iris-v2.onnx",
            "    strategy: canary\n    steps: [{weight: 10, pause: 8s}, {weight: 50, pause: untilPromoted}]\n    analysis: {interval: 2s, minRequests: 10, maxErrorPercent: 1}\n",
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let canary = revision_of(&applied);
    let mut timeline = follow(&daemon, Duration::from_secs(90), |s| {
        s.phase == RolloutPhase::WaitingForPromotion
    })
    .await;
    // Held at 50 % until promoted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    timeline.extend(follow(&daemon, Duration::from_secs(5), |_| true).await);
    assert_eq!(timeline.last().unwrap().1, 50, "untilPromoted holds");
    let promoted = daemon.ferry(&["rollout", "promote", "iris"]);
    assert!(promoted.status.success(), "{}", stderr(&promoted));
    assert!(stdout(&promoted).contains(&canary), "{}", stdout(&promoted));
    timeline.extend(
        follow(&daemon, Duration::from_secs(60), |s| {
            s.phase == RolloutPhase::Succeeded
        })
        .await,
    );
    let done = Instant::now();
    let waited = daemon.ferry(&["rollout", "status", "iris", "--timeout", "60"]);
    assert!(waited.status.success(), "{}", stderr(&waited));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let samples = load.finish().await;

    let (failures, by_revision) = summarize(&samples);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures.first()
    );
    for weight in [10, 50] {
        let (share, count) = share_at(&samples, &timeline, weight, &canary);
        eprintln!("canary at {weight}%: {share:.1}% of {count} answers from {canary}");
        assert!(count >= 200, "too few answers at {weight}%: {count}");
        assert!(
            (share - f64::from(weight)).abs() <= 3.0,
            "{share:.1}% of answers from the canary at step weight {weight}% ({count} answers)"
        );
    }
    let late: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > done + Duration::from_millis(300))
        .collect();
    assert!(!late.is_empty() && late.iter().all(|s| s.revision == canary));
    assert!(by_revision.contains_key(&stable));
    let reasons: Vec<String> = event_reasons(&daemon)
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    for reason in [
        "CanaryStarted",
        "TrafficShifted",
        "RolloutPromoted",
        "RevisionRetired",
    ] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason}: {reasons:?}"
        );
    }
    eventually(
        "only the canary's 2 replicas run",
        Duration::from_secs(30),
        || async {
            let reps = replicas(&daemon, "iris").await;
            reps.len() == 2 && reps.iter().all(|r| r["revision"] == canary.as_str())
        },
    )
    .await;
}

/// Canary to `model_file` under load, judged by `analysis`: rolled back automatically; the
/// failed requests the client saw, and the rollout's last state.
async fn rolled_back(
    test: &str,
    model_file: &str,
    analysis: &str,
    retry: bool,
) -> (usize, usize, RolloutStatus, Vec<(String, String)>) {
    let daemon = Daemon::start(test);
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let stable = revision_of(&applied);
    let load = Load::start(&daemon.router, "iris", 4);
    let applied = daemon.apply(
        &canary_manifest(
            model_file,
            &format!("    strategy: canary\n    steps: [{{weight: 50, pause: 1h}}]\n    analysis: {analysis}\n    retryOnStable: {retry}\n"),
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let timeline = follow(&daemon, Duration::from_secs(90), |s| {
        s.phase == RolloutPhase::Aborted
    })
    .await;
    // Judged within failureLimit + 1 intervals of the canary taking traffic.
    let took_traffic = timeline.iter().find(|(_, w, _)| *w > 0).map(|(t, _, _)| *t);
    let aborted = timeline.last().unwrap().0;
    if let Some(from) = took_traffic {
        assert!(
            aborted - from <= Duration::from_secs(3 * 2 + 2),
            "rolled back {:?} after the canary took traffic",
            aborted - from
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = load.finish().await;
    let (failures, _) = summarize(&samples);
    let late: Vec<&Sample> = samples.iter().filter(|s| s.sent > after).collect();
    assert!(!late.is_empty() && late.iter().all(|s| s.revision == stable && s.status == 200));
    let state = rollout(&daemon).await.unwrap();
    (
        failures.len(),
        samples.len(),
        state,
        event_reasons(&daemon).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_fails_requests_is_rolled_back_and_no_client_sees_a_failure() {
    let (failed, total, state, events) =
        rolled_back("canary-faulty", "faulty.onnx", ERROR_RULE, true).await;
    assert_eq!(
        failed, 0,
        "retryOnStable: the stable revision answers for the canary"
    );
    let analysis = state.last_analysis.unwrap();
    assert!(
        analysis.message.contains("maxErrorPercent"),
        "{}",
        analysis.message
    );
    assert_eq!(analysis.error_percent, 100.0);
    assert!(
        events.iter().any(|(r, _)| r == "RolledBackAutomatically"),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|(r, _)| r == "AnalysisFailed").count(),
        2,
        "{events:?}"
    );
    eprintln!("faulty canary with retryOnStable: 0 of {total} requests failed");
    // Without the retry, clients see the canary's failures until it is rolled back.
    let (failed, total, _, _) =
        rolled_back("canary-faulty-no-retry", "faulty.onnx", ERROR_RULE, false).await;
    assert!(failed > 0, "without retryOnStable some requests fail");
    eprintln!("faulty canary without retryOnStable: {failed} of {total} requests failed");
}

const ERROR_RULE: &str = "{interval: 2s, minRequests: 10, maxErrorPercent: 1, failureLimit: 2}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_canary_is_rolled_back_by_the_latency_rule() {
    let analysis = "{interval: 2s, minRequests: 10, maxP99LatencyRatio: 2.0, failureLimit: 2}";
    let (failed, _, state, _) = rolled_back("canary-slow", "iris-slow.onnx", analysis, true).await;
    assert_eq!(failed, 0);
    let analysis = state
        .last_analysis
        .clone()
        .unwrap_or_else(|| panic!("{state:?}"));
    assert!(
        analysis.message.contains("maxP99LatencyRatio"),
        "{}",
        analysis.message
    );
    let (p99, stable) = (
        analysis.p99_latency_ms.unwrap(),
        analysis.stable_p99_latency_ms.unwrap(),
    );
    eprintln!("slow canary: p99 {p99:.2} ms vs stable {stable:.2} ms");
    assert!(
        p99 >= 5.0 * stable / 1.5,
        "p99 {p99} ms vs stable {stable} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_resumes_at_the_same_step_after_kill_9() {
    let mut daemon = Daemon::start("canary-kill");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let applied = daemon.apply(
        &canary_manifest(
            "iris-v2.onnx",
            "    strategy: canary\n    steps: [{weight: 20, pause: 10s}, {weight: 60, pause: 1h}]\n",
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    follow(&daemon, Duration::from_secs(60), |s| s.weight == 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rollout(&daemon).await.unwrap();
    daemon.kill9();
    let dir = daemon.dir.clone();
    let daemon = Daemon::start_in(dir);
    let resumed = follow(&daemon, Duration::from_secs(30), |_| true).await;
    let after = rollout(&daemon).await.unwrap();
    assert_eq!(resumed.last().unwrap().1, 20);
    assert_eq!(
        (after.step, after.step_started.as_ref()),
        (before.step, before.step_started.as_ref()),
        "the same step, started when it first started"
    );
    // The pause counts from the step's start, not from the restart: 60 % about 10 s after it.
    let started: ferry_api::k8s_openapi::jiff::Timestamp =
        before.step_started.unwrap().parse().unwrap();
    follow(&daemon, Duration::from_secs(30), |s| s.weight == 60).await;
    let at = ferry_api::k8s_openapi::jiff::Timestamp::now();
    let held = at.duration_since(started).as_secs();
    assert!((10..=16).contains(&held), "held 20 % for {held} s");
    let shifts: Vec<String> = event_reasons(&daemon)
        .await
        .into_iter()
        .filter(|(r, _)| r == "TrafficShifted" || r == "CanaryStarted")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        shifts.iter().filter(|m| m.contains("→ 20%")).count(),
        1,
        "no step repeated: {shifts:?}"
    );
    assert_eq!(
        shifts.iter().filter(|m| m.starts_with("canary")).count(),
        1,
        "{shifts:?}"
    );
}
