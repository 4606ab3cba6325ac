//! KServe v1 protocol: `POST /v1/models/{name}:predict` with `{"instances": [...]}` and
//! `GET /v1/models/{name}`. The model must have exactly one input; each instance is one row.
//! Predictions are the rows of the model's first output (the label of a classifier).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::codec::decode_data;
use super::{ApiResult, AppState, json_value, read_body};
use crate::error::Error;
use crate::protocol::{InferRequest, Protocol};
use crate::tensor::{Tensor, TensorData};

#[derive(Deserialize)]
struct PredictRequest<'a> {
    #[serde(borrow)]
    instances: &'a RawValue,
}

pub async fn status(State(s): State<AppState>, Path(model): Path<String>) -> ApiResult {
    let view = s.repo.known(&model, None)?;
    let ready = view.state.servable();
    Ok(json_value(
        StatusCode::OK,
        json!({ "name": model, "ready": ready }),
    ))
}

pub async fn predict(
    State(s): State<AppState>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let Some(model) = target.strip_suffix(":predict") else {
        return Err(Error::invalid(format!(
            "unsupported v1 verb in '{target}': only ':predict' is served"
        ))
        .into());
    };
    let bytes = read_body(&headers, body, s.max_body_bytes).await?;
    let request: PredictRequest<'_> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(format!("invalid v1 predict body: {e}")))?;
    let loaded = s.repo.serving(model, None).await?;
    let [spec] = loaded.signature().inputs.as_slice() else {
        return Err(Error::invalid(format!(
            "model '{model}' has {} inputs; the v1 protocol serves single-input models only",
            loaded.signature().inputs.len()
        ))
        .into());
    };
    let rows = serde_json::from_str::<Vec<&RawValue>>(request.instances.get())
        .map_err(|e| Error::invalid(format!("instances: must be an array: {e}")))?
        .len();
    let data = decode_data(request.instances.get(), spec.datatype, 0, "instances")?;
    let per_row = data.len().checked_div(rows).unwrap_or(0);
    let mut shape = vec![rows];
    if spec.shape.len() > 1 {
        // A row of a [-1, 4] model is 4 values; deeper fixed shapes are taken from the model.
        let trailing: Vec<usize> = spec.shape[1..]
            .iter()
            .map(|d| (*d).max(0) as usize)
            .collect();
        if trailing.iter().product::<usize>() == per_row {
            shape.extend(trailing);
        } else {
            shape.push(per_row);
        }
    }
    let request = InferRequest {
        inputs: vec![Tensor {
            name: spec.name.clone(),
            shape,
            data,
        }],
        ..InferRequest::default()
    };
    let response = s
        .repo
        .infer(
            model,
            None,
            request,
            Protocol::Rest,
            &ferry_trace::Remote::from_headers(&headers),
        )
        .await?;
    let first = response
        .outputs
        .first()
        .ok_or_else(|| Error::Internal("model returned no outputs".into()))?;
    Ok(json_value(
        StatusCode::OK,
        json!({ "predictions": rows_json(first) }),
    ))
}

/// The rows of a tensor as JSON: scalars for a 1-D tensor, arrays otherwise.
fn rows_json(t: &Tensor) -> Value {
    let values: Vec<Value> = match &t.data {
        TensorData::Bytes(v) => v
            .iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect(),
        TensorData::F16(v) => v.iter().map(|x| json!(x.to_f32())).collect(),
        TensorData::Bool(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::U8(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::U16(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::U32(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::U64(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::I8(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::I16(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::I32(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::I64(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::F32(v) => v.iter().map(|x| json!(x)).collect(),
        TensorData::F64(v) => v.iter().map(|x| json!(x)).collect(),
    };
    let rows = t.shape.first().copied().unwrap_or(1).max(1);
    if t.shape.len() <= 1 {
        return Value::Array(values);
    }
    let per_row = values.len() / rows;
    Value::Array(
        values
            .chunks(per_row.max(1))
            .map(|c| Value::Array(c.to_vec()))
            .collect(),
    )
}
