//! What the client commands print: kubectl-like tables and `describe`, from the control API's
//! typed answers.

use std::fmt::Write as _;

use ferry_api::k8s_openapi::jiff;
use ferry_api::{Condition, InferenceService};
use ferry_core::ReplicaHealth;
use ferry_local::wire::{EventRow, ReplicaInfo, RevisionInfo};

fn condition<'a>(isvc: &'a InferenceService, type_: &str) -> Option<&'a Condition> {
    isvc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn status_text(
    isvc: &InferenceService,
    field: impl Fn(&ferry_api::InferenceServiceStatus) -> Option<&String>,
) -> String {
    isvc.status
        .as_ref()
        .and_then(field)
        .cloned()
        .unwrap_or_default()
}

fn latest_ready(isvc: &InferenceService) -> u32 {
    let Some(status) = &isvc.status else {
        return 0;
    };
    status
        .revisions
        .iter()
        .find(|r| Some(&r.name) == status.latest_revision.as_ref())
        .map_or(0, |r| r.ready_replicas)
}

/// A replica's state as `describe` shows it (the names of the control API's `health.state`).
fn state(replica: &ReplicaInfo) -> &'static str {
    if replica.terminating {
        return "Terminating";
    }
    match &replica.health {
        None => "Unknown",
        Some(ReplicaHealth::Starting { .. }) => "starting",
        Some(ReplicaHealth::Ready) => "ready",
        Some(ReplicaHealth::ModelNotReady { .. }) => "modelNotReady",
        Some(ReplicaHealth::Unschedulable { .. }) => "unschedulable",
        Some(ReplicaHealth::CrashLoop { .. }) => "crashLoop",
        Some(ReplicaHealth::ContainerFailed { .. }) => "containerFailed",
    }
}

/// Human age of an RFC 3339 timestamp ("5s", "3m", "2h", "4d").
pub fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "?".into();
    };
    let seconds = (jiff::Timestamp::now().as_second() - then.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// `ferry get isvc`.
pub fn table(items: &[InferenceService], with_namespace: bool, wide: bool) -> String {
    let mut rows = Vec::new();
    let mut header: Vec<String> = Vec::new();
    if with_namespace {
        header.push("NAMESPACE".into());
    }
    header.extend(["NAME", "URL", "READY", "REVISION", "REPLICAS", "AGE"].map(String::from));
    if wide {
        header.extend(["REASON", "ROLLOUT", "SPLIT", "AUTOSCALE"].map(String::from));
    }
    rows.push(header);
    for item in items {
        let mut row = Vec::new();
        if with_namespace {
            row.push(item.namespace_or_default());
        }
        row.push(item.metadata.name.clone().unwrap_or_default());
        row.push(status_text(item, |s| s.url.as_ref()));
        row.push(
            condition(item, "Ready")
                .map_or("Unknown", |c| c.status.as_str())
                .to_string(),
        );
        row.push(status_text(item, |s| s.latest_revision.as_ref()));
        // Ready of the size asked for: the autoscaler's, else minReplicas.
        let desired = item
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.as_ref())
            .map_or(item.spec.predictor.replicas(), |a| a.desired_replicas);
        row.push(format!("{}/{desired}", latest_ready(item)));
        row.push(
            item.metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(|| "?".to_string(), |t| age(&t.0.to_string())),
        );
        if wide {
            row.push(
                condition(item, "LatestRevisionReady")
                    .map(|c| c.reason.clone())
                    .unwrap_or_default(),
            );
            let status = item.status.as_ref();
            row.push(
                status
                    .and_then(|s| s.rollout.as_ref())
                    .map_or("-".to_string(), |r| format!("{:?}", r.phase)),
            );
            // Every revision that takes traffic, with its share.
            let split: Vec<String> = status
                .map(|s| {
                    s.revisions
                        .iter()
                        .filter(|r| r.traffic_percent > 0)
                        .map(|r| format!("{}={}%", r.name, r.traffic_percent))
                        .collect()
                })
                .unwrap_or_default();
            row.push(if split.is_empty() {
                "-".into()
            } else {
                split.join(",")
            });
            row.push(
                status
                    .and_then(|s| s.autoscaling.as_ref())
                    .map_or("-".to_string(), autoscale_cell),
            );
        }
        rows.push(row);
    }
    columns(&rows)
}

/// The AUTOSCALE column: `metric value/target→desired`, with panic, zero or held requests.
fn autoscale_cell(a: &ferry_api::AutoscalingStatus) -> String {
    let value = a.value.map_or("?".to_string(), |v| format!("{v:.1}"));
    let mut cell = format!("{} {value}/{}→{}", a.metric, a.target, a.desired_replicas);
    if a.panic {
        cell.push_str(" panic");
    }
    if a.scaled_to_zero {
        cell.push_str(" zero");
    }
    if a.held_requests > 0 {
        cell.push_str(&format!(" held={}", a.held_requests));
    }
    cell
}

/// `ferry experiment status NAME`: one row per variant.
pub fn experiment(status: &ferry_api::ExperimentStatus) -> String {
    let mut rows = vec![
        [
            "VARIANT",
            "REVISION",
            "WEIGHT",
            "REQUESTS",
            "ERRORS",
            "ERROR%",
            "P99(ms)",
            "FEEDBACK",
            "MEAN REWARD",
            "95% INTERVAL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let or_dash =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for v in &status.variants {
        rows.push(vec![
            v.name.clone(),
            v.revision.clone(),
            format!("{}%", v.weight),
            v.requests.to_string(),
            v.errors.to_string(),
            format!("{:.2}", v.error_percent),
            or_dash(v.p99_latency_ms, 2),
            v.feedback.to_string(),
            or_dash(v.mean_reward, 4),
            match (v.reward_low, v.reward_high) {
                (Some(low), Some(high)) => format!("[{low:.4}, {high:.4}]"),
                _ => "-".into(),
            },
        ]);
    }
    columns(&rows)
}

/// `ferry describe isvc NAME`.
pub fn describe(isvc: &InferenceService, replicas: &[ReplicaInfo], events: &[EventRow]) -> String {
    let mut out = String::new();
    let predictor = &isvc.spec.predictor;
    let observed = isvc
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .map_or_else(|| "null".to_string(), |g| g.to_string());
    let generation = isvc
        .metadata
        .generation
        .map_or_else(|| "null".to_string(), |g| g.to_string());
    let _ = writeln!(
        out,
        "Name:         {}",
        isvc.metadata.name.as_deref().unwrap_or("")
    );
    let _ = writeln!(out, "Namespace:    {}", isvc.namespace_or_default());
    let _ = writeln!(
        out,
        "URL:          {}",
        status_text(isvc, |s| s.url.as_ref())
    );
    let _ = writeln!(out, "Generation:   {generation} (observed {observed})");
    let _ = writeln!(
        out,
        "Model:        {} ({})",
        predictor.model.uri, predictor.model.format
    );
    let _ = writeln!(out, "Replicas:     {} desired", predictor.replicas());
    let _ = writeln!(
        out,
        "Revision:     {}",
        status_text(isvc, |s| s.latest_revision.as_ref())
    );
    let status = isvc.status.clone().unwrap_or_default();
    let _ = writeln!(out, "Conditions:");
    let mut rows = vec![
        ["TYPE", "STATUS", "REASON", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for c in &status.conditions {
        rows.push(vec![
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
        ]);
    }
    indent(&mut out, &columns(&rows));
    if let Some(rollout) = &status.rollout {
        let _ = writeln!(
            out,
            "Rollout:      {:?} {:?}: {} → {} at {}% (step {}): {}",
            rollout.strategy,
            rollout.phase,
            rollout.stable_revision,
            rollout.canary_revision,
            rollout.weight,
            rollout.step,
            rollout.message
        );
        if let Some(analysis) = &rollout.last_analysis {
            let _ = writeln!(
                out,
                "Analysis:     {:?} at {}: {}",
                analysis.verdict, analysis.time, analysis.message
            );
        }
    }
    if let Some(a) = &status.autoscaling {
        let _ = writeln!(
            out,
            "Autoscaling:  {} on {} (target {} per replica): {} desired, {} ready{}{}; {}",
            a.engine,
            a.metric,
            a.target,
            a.desired_replicas,
            a.actual_replicas,
            if a.panic { ", panic" } else { "" },
            if a.scaled_to_zero {
                ", scaled to zero"
            } else {
                ""
            },
            a.message.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "Revisions:");
    let mut rows = vec![
        ["NAME", "REPLICAS", "READY", "TRAFFIC"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &status.revisions {
        rows.push(vec![
            r.name.clone(),
            r.replicas.to_string(),
            r.ready_replicas.to_string(),
            format!("{}%", r.traffic_percent),
        ]);
    }
    indent(&mut out, &columns(&rows));
    let _ = writeln!(out, "Replicas:");
    let mut rows = vec![
        [
            "ID",
            "REVISION",
            "STATE",
            "RESTARTS",
            "PID",
            "ADDRESS",
            "LAST EXIT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in replicas {
        rows.push(vec![
            r.id.clone(),
            r.revision.clone(),
            state(r).to_string(),
            r.restarts.to_string(),
            r.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            r.http.clone().unwrap_or_else(|| "-".into()),
            r.last_exit.clone().unwrap_or_default(),
        ]);
    }
    indent(&mut out, &columns(&rows));
    for r in replicas.iter().filter(|r| !r.last_log_lines.is_empty()) {
        let _ = writeln!(out, "  Last log lines of {}:", r.id);
        for line in &r.last_log_lines {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = writeln!(out, "Events:");
    let mut rows = vec![
        ["AGE", "TYPE", "REASON", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for e in events {
        rows.push(vec![
            age(&e.at),
            e.type_.clone(),
            e.reason.clone(),
            e.message.clone(),
        ]);
    }
    indent(&mut out, &columns(&rows));
    out
}

fn indent(out: &mut String, block: &str) {
    for line in block.lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// `ferry rollout history NAME`.
pub fn history(revisions: &[RevisionInfo]) -> String {
    let mut rows = vec![
        ["REVISION", "CREATED", "MODEL", "CURRENT"]
            .map(String::from)
            .to_vec(),
    ];
    for r in revisions {
        rows.push(vec![
            r.revision.name.clone(),
            r.revision.created_at.clone(),
            r.revision.predictor.model.uri.clone(),
            if r.current { "*".into() } else { String::new() },
        ]);
    }
    columns(&rows)
}
