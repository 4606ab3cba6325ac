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
    eprintln!("revision: {revision}");
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
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
