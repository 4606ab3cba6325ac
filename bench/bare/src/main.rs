//! The benchmark's floor: the least an OIP v2 server can do. One axum route, `serde_json::Value`
//! in and out, tract inference inline, no metrics, no validation, no admission, no batching.
//! Ferry must come within 10% of it (and aims to beat it).
//!
//! usage: ferry-bench-bare MODEL.onnx ADDR

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

type Plan = Arc<TypedRunnableModel>;

fn load(path: &str) -> TractResult<Plan> {
    let mut model = tract_onnx::onnx().model_for_path(path)?;
    let batch = model.sym("N");
    let fact = model.input_fact(0)?.clone();
    let features = fact
        .shape
        .dims()
        .nth(1)
        .and_then(|d| d.concretize())
        .and_then(|d| d.to_i64().ok())
        .unwrap_or(4) as usize;
    model.set_input_fact(0, f32::fact(&[batch.to_dim(), features.to_dim()]).into())?;
    model.into_optimized()?.into_runnable()
}

async fn infer(State(plan): State<Plan>, Json(body): Json<Value>) -> Json<Value> {
    let input = &body["inputs"][0];
    let shape: Vec<usize> = input["shape"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_u64())
                .map(|d| d as usize)
                .collect()
        })
        .unwrap_or_default();
    let data: Vec<f32> = input["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_f64())
                .map(|v| v as f32)
                .collect()
        })
        .unwrap_or_default();
    let tensor = match Tensor::from_shape(&shape, &data) {
        Ok(t) => t,
        Err(e) => return Json(json!({ "error": e.to_string() })),
    };
    let outputs = match plan.run(tvec!(tensor.into_tvalue())) {
        Ok(o) => o,
        Err(e) => return Json(json!({ "error": e.to_string() })),
    };
    let label: Vec<i64> = outputs[0]
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<i64>().map(|s| s.to_vec()))
        .unwrap_or_default();
    let probabilities: Vec<f32> = outputs[1]
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec()))
        .unwrap_or_default();
    Json(json!({
        "model_name": "iris",
        "outputs": [
            { "name": "label", "datatype": "INT64", "shape": outputs[0].shape(), "data": label },
            { "name": "probabilities", "datatype": "FP32", "shape": outputs[1].shape(), "data": probabilities },
        ]
    }))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(model), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: ferry-bench-bare MODEL.onnx ADDR");
        std::process::exit(2);
    };
    let plan = load(model).unwrap_or_else(|e| {
        eprintln!("cannot load {model}: {e}");
        std::process::exit(1)
    });
    let app = Router::new()
        .route("/v2/models/{model}/infer", post(infer))
        .with_state(plan);
    let listener = tokio::net::TcpListener::bind(addr.as_str())
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1)
        });
    eprintln!("bare handler listening on {addr}");
    let _ = axum::serve(listener, app).await;
}
