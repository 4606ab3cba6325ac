//! `ferry predict`: one inference through local mode's router, from rows of numbers (JSON or
//! CSV, shaped after the model's first input) or a whole OIP request.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::ctl::Common;

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    common: Common,
    /// The InferenceService (its model) to call.
    name: String,
    /// Rows as JSON (`[[5.1, 3.5, 1.4, 0.2]]`), or a whole OIP request (`{"inputs": ...}`).
    #[arg(short, long, conflicts_with = "csv")]
    data: Option<String>,
    /// Rows from a CSV file of numbers (a header line is skipped).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// `table` (default): a row per input row, a column per output, and the revision that
    /// answered; `json`: the OIP response as the server sent it, nothing else.
    #[arg(short, long, value_enum, default_value_t = PredictOutput::Table)]
    output: PredictOutput,
}

/// How `ferry predict` prints the answer.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PredictOutput {
    Table,
    Json,
}

pub async fn predict(args: PredictArgs) -> Result<()> {
    let dirs = args.common.dirs();
    let api: Value = serde_json::from_str(
        &std::fs::read_to_string(dirs.api_file()).context("ferry up is not running")?,
    )?;
    let router = api["router"]
        .as_str()
        .context("api.json names no router")?
        .to_string();
    let client = args.common.client()?;
    let model = client
        .get(&args.common.namespace, &args.name)
        .await?
        .model_name();
    let http = reqwest::Client::new();
    let base = format!("http://{router}/v2/models/{model}");
    let ns = args.common.namespace.as_str();
    let request = match (&args.data, &args.csv) {
        (Some(data), _) => {
            let value: Value = serde_json::from_str(data).context("--data is not JSON")?;
            if value.get("inputs").is_some() {
                value
            } else {
                rows_request(&http, &base, ns, rows_of(&value)?).await?
            }
        }
        (None, Some(csv)) => {
            let text = std::fs::read_to_string(csv)
                .with_context(|| format!("cannot read {}", csv.display()))?;
            rows_request(&http, &base, ns, csv_rows(&text)?).await?
        }
        (None, None) => bail!("give --data or --csv"),
    };
    let response = http
        .post(format!("{base}/infer"))
        .header(ferry_api::HEADER_NAMESPACE, ns)
        .json(&request)
        .send()
        .await
        .with_context(|| format!("cannot reach the router at {router}"))?;
    let status = response.status();
    let revision = response
        .headers()
        .get(ferry_api::HEADER_REVISION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let body: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("request failed")
        );
    }
    match args.output {
        PredictOutput::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        PredictOutput::Table => {
            let batch = request["inputs"][0]["shape"][0].as_u64().unwrap_or(1) as usize;
            print!("{}", answer_table(&body, &revision, batch))
        }
    }
    Ok(())
}

/// The answer as a table: a row per request row (`batch`, the first input's first dimension),
/// a column per output (a row's values joined by commas when an output has more than one per
/// row), then the revision. An output whose first dimension is not the batch is one cell of the
/// first row.
fn answer_table(body: &Value, revision: &str, batch: usize) -> String {
    let outputs = body["outputs"].as_array().cloned().unwrap_or_default();
    let batch = batch.max(1);
    let mut header = vec!["ROW".to_string()];
    header.extend(
        outputs
            .iter()
            .map(|o| o["name"].as_str().unwrap_or("output").to_uppercase()),
    );
    header.push("REVISION".into());
    let mut rows = vec![header];
    let cells: Vec<Vec<String>> = outputs.iter().map(|o| per_row(o, batch)).collect();
    for row in 0..batch {
        let mut line = vec![row.to_string()];
        line.extend(
            cells
                .iter()
                .map(|c| c.get(row).cloned().unwrap_or_default()),
        );
        line.push(revision.to_string());
        rows.push(line);
    }
    crate::print::columns(&rows)
}

/// One output's values cut into `batch` rows.
fn per_row(output: &Value, batch: usize) -> Vec<String> {
    let data = output["data"].as_array().cloned().unwrap_or_default();
    let first = output["shape"]
        .as_array()
        .and_then(|s| s.first())
        .and_then(Value::as_u64);
    if first != Some(batch as u64) || data.len() % batch != 0 {
        return vec![data.iter().map(cell).collect::<Vec<_>>().join(", ")];
    }
    data.chunks(data.len() / batch)
        .map(|chunk| chunk.iter().map(cell).collect::<Vec<_>>().join(", "))
        .collect()
}

/// A value as a person reads it: integers as they are, floats to 4 decimals, strings bare.
fn cell(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let text = format!("{:.4}", n.as_f64().unwrap_or_default());
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn rows_of(value: &Value) -> Result<Vec<Vec<f64>>> {
    let rows = value
        .as_array()
        .context("--data must be an array of rows")?;
    rows.iter()
        .map(|row| {
            let cells = match row {
                Value::Array(cells) => cells.clone(),
                single => vec![single.clone()],
            };
            cells
                .iter()
                .map(|c| c.as_f64().context("--data cells must be numbers"))
                .collect()
        })
        .collect()
}

fn csv_rows(text: &str) -> Result<Vec<Vec<f64>>> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cells: Result<Vec<f64>, _> = line.split(',').map(|c| c.trim().parse::<f64>()).collect();
        match cells {
            Ok(cells) => rows.push(cells),
            Err(_) if index == 0 => continue, // header
            Err(e) => bail!("CSV line {}: {e}", index + 1),
        }
    }
    Ok(rows)
}

/// An OIP request for `rows`, named and typed after the model's first input.
async fn rows_request(
    http: &reqwest::Client,
    base: &str,
    namespace: &str,
    rows: Vec<Vec<f64>>,
) -> Result<Value> {
    let metadata: Value = http
        .get(base)
        .header(ferry_api::HEADER_NAMESPACE, namespace)
        .send()
        .await
        .context("cannot reach the router")?
        .json()
        .await
        .unwrap_or_default();
    let input = &metadata["inputs"][0];
    let name = input["name"]
        .as_str()
        .context("the model's metadata names no input")?;
    let datatype = input["datatype"].as_str().unwrap_or("FP32");
    let width = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != width) {
        bail!("every row needs the same number of values");
    }
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    Ok(
        json!({"inputs": [{"name": name, "datatype": datatype, "shape": [rows.len(), width], "data": data}]}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_row_each_with_a_column_per_output() {
        let body = json!({"outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
             "data": [0.98, 0.015, 0.005, 0.0, 0.25, 0.75]},
        ]});
        let table = answer_table(&body, "iris-00002", 2);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[0].starts_with("ROW")
                && lines[0].contains("LABEL")
                && lines[0].contains("PROBABILITIES"),
            "{table}"
        );
        assert!(
            lines[1].contains("0.98, 0.015, 0.005") && lines[1].ends_with("iris-00002"),
            "{table}"
        );
        assert!(
            lines[2].starts_with('1')
                && lines[2].contains(" 2 ")
                && lines[2].contains("0, 0.25, 0.75"),
            "{table}"
        );
    }

    #[test]
    fn an_output_that_is_not_per_row_is_one_cell() {
        let body = json!({"outputs": [
            {"name": "label", "shape": [2], "data": [1, 1]},
            {"name": "bias", "shape": [3], "data": [0.5, 0.5, 0.5]},
        ]});
        let table = answer_table(&body, "r", 2);
        assert!(
            table.lines().nth(1).unwrap().contains("0.5, 0.5, 0.5"),
            "{table}"
        );
    }
}
