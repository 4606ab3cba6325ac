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
            "    strategy: canary\n    steps: [{weight: 10, pause: 8s}, {weight: 50, pause: 8s}, {weight: 70, pause: untilPromoted}]\n    analysis: {interval: 2s, minRequests: 10, maxErrorPercent: 1}\n",
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let canary = revision_of(&applied);
    let mut timeline = follow(&daemon, Duration::from_secs(90), |s| {
        s.phase == RolloutPhase::WaitingForPromotion
    })
    .await;
    // 10 % and 50 % went by themselves; 70 % is held until promoted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    timeline.extend(follow(&daemon, Duration::from_secs(5), |_| true).await);
    assert_eq!(timeline.last().unwrap().1, 70, "untilPromoted holds");
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

/// The share of `revision` among the answers to requests sent in `[from, to]`.
fn share_between(samples: &[Sample], from: Instant, to: Instant, revision: &str) -> (f64, usize) {
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

fn with_canary_percent(manifest: String, percent: u32) -> String {
    manifest.replace(
        "    minReplicas: 2\n",
        &format!("    minReplicas: 2\n    canaryTrafficPercent: {percent}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kserve_canary_traffic_percent_splits_promotes_and_pins() {
    let daemon = Daemon::start("canary-kserve");
    let applied = daemon.apply(&kserve_manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let v1 = revision_of(&applied);
    let load = Load::start(&daemon.router, "iris", 4);
    // 10 %: the latest revision takes a tenth, the previously rolled-out one the rest.
    let applied = daemon.apply(
        &with_canary_percent(kserve_manifest("iris", "iris-v2.onnx", 2), 10),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let v2 = revision_of(&applied);
    follow(&daemon, Duration::from_secs(60), |s| s.weight == 10).await;
    let at_ten = Instant::now() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ten_until = Instant::now();
    // The field removed: the latest takes everything.
    let applied = daemon.apply(&kserve_manifest("iris", "iris-v2.onnx", 2), &[]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    assert_eq!(
        revision_of(&applied),
        v2,
        "the split is not part of the revision"
    );
    follow(&daemon, Duration::from_secs(60), |s| {
        s.phase == RolloutPhase::Succeeded
    })
    .await;
    let promoted = Instant::now() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let promoted_until = Instant::now();
    // 0 for a new revision: every request stays on the one rolled out before.
    let applied = daemon.apply(
        &with_canary_percent(kserve_manifest("iris", "iris-v1.onnx", 2), 0),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let v3 = revision_of(&applied);
    follow(&daemon, Duration::from_secs(60), |s| {
        s.canary_revision == v3 && s.phase == RolloutPhase::WaitingForPromotion
    })
    .await;
    let pinned = Instant::now() + Duration::from_millis(500);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pinned_until = Instant::now();
    let samples = load.finish().await;
    let (failures, _) = summarize(&samples);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures.first()
    );
    let (ten, n) = share_between(&samples, at_ten, ten_until, &v2);
    eprintln!("canaryTrafficPercent 10: {ten:.1}% of {n} answers from {v2} (v1 {v1})");
    assert!((ten - 10.0).abs() <= 3.0 && n >= 200, "{ten:.1}% of {n}");
    let (all, n) = share_between(&samples, promoted, promoted_until, &v2);
    eprintln!("removed: {all:.1}% of {n} answers from {v2}");
    assert_eq!(all, 100.0);
    let (none, n) = share_between(&samples, pinned, pinned_until, &v3);
    let (previous, _) = share_between(&samples, pinned, pinned_until, &v2);
    eprintln!(
        "canaryTrafficPercent 0: {none:.1}% of {n} answers from {v3}, {previous:.1}% from {v2}"
    );
    assert_eq!((none, previous), (0.0, 100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switches_with_no_failed_request_and_an_undo_returns_at_once() {
    let daemon = Daemon::start("blue-green");
    let applied = daemon.apply(&manifest("iris", "iris-v1.onnx", 2), &["--wait"]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    let blue = revision_of(&applied);
    let load = Load::start(&daemon.router, "iris", 4);
    let applied = daemon.apply(
        &canary_manifest(
            "iris-v2.onnx",
            "    strategy: blueGreen\n    blueGreen: {autoPromoteSeconds: 3, scaleDownDelaySeconds: 120}\n",
        ),
        &[],
    );
    assert!(applied.status.success(), "{}", stderr(&applied));
    let green = revision_of(&applied);
    // Before the switch: the green revision answers only requests that pin it (a preview).
    eventually(
        "green is ready at full size",
        Duration::from_secs(60),
        || async {
            replicas(&daemon, "iris")
                .await
                .iter()
                .filter(|r| r["revision"] == green.as_str() && r["ready"] == true)
                .count()
                == 2
        },
    )
    .await;
    let preview = reqwest::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", daemon.router))
        .header("ferry-revision", &green)
        .json(&iris_request())
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), 200);
    assert_eq!(preview.headers()["ferry-revision"], green.as_str());
    follow(&daemon, Duration::from_secs(60), |s| {
        s.phase == RolloutPhase::Succeeded
    })
    .await;
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Undo within scaleDownDelaySeconds: blue is still warm, traffic returns at once.
    let undo_at = Instant::now();
    let undone = daemon.ferry(&["rollout", "undo", "iris"]);
    assert!(undone.status.success(), "{}", stderr(&undone));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = load.finish().await;
    let (failures, _) = summarize(&samples);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        failures.first()
    );
    let (before, n) = share_between(
        &samples,
        undo_at - Duration::from_secs(10),
        switched - Duration::from_secs(1),
        &blue,
    );
    assert!(
        n > 0 && before == 100.0,
        "before the switch only blue answers: {before:.1}% of {n}"
    );
    let (after, n) = share_between(
        &samples,
        switched + Duration::from_millis(500),
        undo_at,
        &green,
    );
    assert!(
        n > 0 && after == 100.0,
        "after the switch only green answers: {after:.1}% of {n}"
    );
    // The last answer from green came within a second of the undo.
    let last_green = samples
        .iter()
        .filter(|s| s.revision == green && s.sent >= undo_at)
        .map(|s| s.sent)
        .max()
        .unwrap_or(undo_at);
    let back = last_green - undo_at;
    eprintln!(
        "blue-green: {} requests, 0 failed; undo returned traffic to {blue} in {back:?}",
        samples.len()
    );
    assert!(
        back < Duration::from_secs(1),
        "traffic back on blue {back:?} after the undo"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_never_gets_ready_is_rolled_back_at_once() {
    let (failed, _, state, events) =
        rolled_back("canary-broken", "broken.onnx", ERROR_RULE, true).await;
    assert_eq!(failed, 0);
    assert_eq!(state.weight, 0);
    assert!(
        state.message.contains("cannot become ready") && state.last_analysis.is_none(),
        "rolled back on its readiness, before any traffic: {state:?}"
    );
    assert!(
        events.iter().any(|(r, _)| r == "RolledBackAutomatically"),
        "{events:?}"
    );
}
