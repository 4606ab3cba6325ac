//! What the client commands print: kubectl-like tables, `describe`, rollout progress.

use std::fmt::Write as _;

use ferry_api::k8s_openapi::jiff;
use serde_json::Value;

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn desired_replicas(object: &Value) -> u64 {
    object
        .pointer("/spec/predictor/minReplicas")
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

fn latest_ready(object: &Value) -> u64 {
    let latest = text(object, "/status/latestRevision");
    object
        .pointer("/status/revisions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|r| r["name"] == latest)
        .and_then(|r| r["readyReplicas"].as_u64())
        .unwrap_or(0)
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

fn columns(rows: &[Vec<String>]) -> String {
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
pub fn table(items: &[Value], with_namespace: bool, wide: bool) -> String {
    let mut rows = Vec::new();
    let mut header: Vec<String> = Vec::new();
    if with_namespace {
        header.push("NAMESPACE".into());
    }
    header.extend(["NAME", "URL", "READY", "REVISION", "REPLICAS", "AGE"].map(String::from));
    if wide {
        header.push("REASON".into());
    }
    rows.push(header);
    for item in items {
        let mut row = Vec::new();
        if with_namespace {
            row.push(text(item, "/metadata/namespace").to_string());
        }
        let ready = condition(item, "Ready");
        row.push(text(item, "/metadata/name").to_string());
        row.push(text(item, "/status/url").to_string());
        row.push(
            ready
                .and_then(|c| c["status"].as_str())
                .unwrap_or("Unknown")
                .to_string(),
        );
        row.push(text(item, "/status/latestRevision").to_string());
        row.push(format!("{}/{}", latest_ready(item), desired_replicas(item)));
        row.push(age(text(item, "/metadata/creationTimestamp")));
        if wide {
            let latest = condition(item, "LatestRevisionReady");
            row.push(
                latest
                    .and_then(|c| c["reason"].as_str())
                    .unwrap_or("")
                    .to_string(),
            );
        }
        rows.push(row);
    }
    columns(&rows)
}

/// `ferry describe isvc NAME`.
pub fn describe(object: &Value, replicas: &Value, events: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", text(object, "/metadata/name"));
    let _ = writeln!(out, "Namespace:    {}", text(object, "/metadata/namespace"));
    let _ = writeln!(out, "URL:          {}", text(object, "/status/url"));
    let _ = writeln!(
        out,
        "Generation:   {} (observed {})",
        object
            .pointer("/metadata/generation")
            .unwrap_or(&Value::Null),
        object
            .pointer("/status/observedGeneration")
            .unwrap_or(&Value::Null)
    );
    let _ = writeln!(
        out,
        "Model:        {} ({})",
        text(object, "/spec/predictor/model/uri"),
        text(object, "/spec/predictor/model/format")
    );
    let _ = writeln!(out, "Replicas:     {} desired", desired_replicas(object));
    let _ = writeln!(
        out,
        "Revision:     {}",
        text(object, "/status/latestRevision")
    );
    let _ = writeln!(out, "Conditions:");
    let mut rows = vec![
        ["TYPE", "STATUS", "REASON", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for c in object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        rows.push(
            ["type", "status", "reason", "message"]
                .map(|k| c[k].as_str().unwrap_or("").to_string())
                .to_vec(),
        );
    }
    indent(&mut out, &columns(&rows));
    let _ = writeln!(out, "Revisions:");
    let mut rows = vec![
        ["NAME", "REPLICAS", "READY", "TRAFFIC"]
            .map(String::from)
            .to_vec(),
    ];
    for r in object
        .pointer("/status/revisions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        rows.push(vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["replicas"].to_string(),
            r["readyReplicas"].to_string(),
            format!("{}%", r["trafficPercent"]),
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
    let items = replicas["items"].as_array().cloned().unwrap_or_default();
    for r in &items {
        let state = if r["terminating"] == true {
            "Terminating".to_string()
        } else {
            r.pointer("/health/state")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
                .to_string()
        };
        rows.push(vec![
            r["id"].as_str().unwrap_or("").to_string(),
            r["revision"].as_str().unwrap_or("").to_string(),
            state,
            r["restarts"].to_string(),
            r["pid"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            r["http"].as_str().unwrap_or("-").to_string(),
            r["lastExit"].as_str().unwrap_or("").to_string(),
        ]);
    }
    indent(&mut out, &columns(&rows));
    for r in &items {
        let lines = r["lastLogLines"].as_array().cloned().unwrap_or_default();
        if !lines.is_empty() {
            let _ = writeln!(
                out,
                "  Last log lines of {}:",
                r["id"].as_str().unwrap_or("")
            );
            for line in lines {
                let _ = writeln!(out, "    {}", line.as_str().unwrap_or(""));
            }
        }
    }
    let _ = writeln!(out, "Events:");
    let mut rows = vec![
        ["AGE", "TYPE", "REASON", "MESSAGE"]
            .map(String::from)
            .to_vec(),
    ];
    for e in events["items"].as_array().into_iter().flatten() {
        rows.push(vec![
            age(e["at"].as_str().unwrap_or("")),
            e["type"].as_str().unwrap_or("").to_string(),
            e["reason"].as_str().unwrap_or("").to_string(),
            e["message"].as_str().unwrap_or("").to_string(),
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
pub fn history(revisions: &Value) -> String {
    let mut rows = vec![
        ["REVISION", "CREATED", "MODEL", "CURRENT"]
            .map(String::from)
            .to_vec(),
    ];
    for r in revisions["items"].as_array().into_iter().flatten() {
        rows.push(vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["createdAt"].as_str().unwrap_or("").to_string(),
            r.pointer("/predictor/model/uri")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            if r["current"] == true {
                "*".into()
            } else {
                String::new()
            },
        ]);
    }
    columns(&rows)
}

/// Where a rollout stands: the core reads it from the status.
pub fn rollout_progress(object: &Value) -> ferry_core::status::RolloutProgress {
    match serde_json::from_value::<ferry_api::InferenceService>(object.clone()) {
        Ok(isvc) => ferry_core::status::rollout_progress(&isvc),
        Err(e) => ferry_core::status::RolloutProgress {
            done: false,
            failed: None,
            message: format!("the InferenceService does not read back: {e}"),
        },
    }
}
