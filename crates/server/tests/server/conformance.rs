//! The named OIP v2 conformance cases in `tests/server/conformance.json`, each run four ways against one
//! real server: REST JSON, REST with binary tensors both ways, gRPC typed contents, gRPC raw
//! contents. Every way must give the same status, outputs, id and parameters.

use super::common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::TestServer;
use ferry_server::grpc::pb;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
struct Output {
    datatype: String,
    shape: Vec<usize>,
    data: Vec<f64>,
}

#[derive(Debug, Default)]
struct Outcome {
    status: String,
    error: String,
    id: Option<String>,
    model_version: Option<String>,
    parameters: Option<Value>,
    outputs: BTreeMap<String, Output>,
}

fn flatten(v: &Value, out: &mut Vec<f64>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        Value::Number(n) => out.push(n.as_f64().unwrap()),
        Value::Bool(b) => out.push(f64::from(u8::from(*b))),
        other => panic!("unexpected data value {other}"),
    }
}

fn to_raw(datatype: &str, values: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        match datatype {
            "FP32" => out.extend_from_slice(&(*v as f32).to_le_bytes()),
            "FP64" => out.extend_from_slice(&v.to_le_bytes()),
            "INT64" => out.extend_from_slice(&(*v as i64).to_le_bytes()),
            "INT32" => out.extend_from_slice(&(*v as i32).to_le_bytes()),
            other => panic!("test harness has no raw encoder for {other}"),
        }
    }
    out
}

fn from_raw(datatype: &str, raw: &[u8]) -> Vec<f64> {
    match datatype {
        "FP32" => raw
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        "INT64" => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("test harness has no raw decoder for {other}"),
    }
}

fn status_of_http(code: u16) -> String {
    match code {
        200 => "ok",
        400 => "invalid",
        404 => "not_found",
        429 => "overloaded",
        503 => "unavailable",
        _ => "other",
    }
    .into()
}

fn status_of_grpc(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::InvalidArgument => "invalid",
        tonic::Code::NotFound => "not_found",
        tonic::Code::ResourceExhausted => "overloaded",
        tonic::Code::Unavailable => "unavailable",
        _ => "other",
    }
    .into()
}

fn infer_path(case: &Value) -> String {
    let model = case["model"].as_str().unwrap();
    match case["version"].as_str() {
        Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
        None => format!("/v2/models/{model}/infer"),
    }
}

fn requested_outputs(case: &Value) -> Vec<String> {
    case["outputs"]
        .as_array()
        .map(|a| a.iter().map(|o| o.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn outcome_from_json(status: String, body: &Value, binary: &[u8]) -> Outcome {
    let mut outcome = Outcome {
        status,
        error: body["error"].as_str().unwrap_or_default().to_string(),
        id: body["id"].as_str().map(str::to_string),
        model_version: body["model_version"].as_str().map(str::to_string),
        parameters: body.get("parameters").cloned(),
        ..Outcome::default()
    };
    let mut offset = 0;
    for o in body["outputs"].as_array().into_iter().flatten() {
        let datatype = o["datatype"].as_str().unwrap().to_string();
        let data = match o["parameters"]["binary_data_size"].as_u64() {
            Some(size) => {
                let size = size as usize;
                let values = from_raw(&datatype, &binary[offset..offset + size]);
                offset += size;
                values
            }
            None => {
                let mut values = Vec::new();
                flatten(&o["data"], &mut values);
                values
            }
        };
        outcome.outputs.insert(
            o["name"].as_str().unwrap().to_string(),
            Output {
                datatype,
                shape: serde_json::from_value(o["shape"].clone()).unwrap(),
                data,
            },
        );
    }
    outcome
}

async fn run_rest(server: &TestServer, case: &Value, binary: bool) -> Outcome {
    let mut inputs = Vec::new();
    let mut raw = Vec::new();
    for input in case["inputs"].as_array().unwrap() {
        let mut i = json!({
            "name": input["name"], "datatype": input["datatype"], "shape": input["shape"],
        });
        if binary {
            let mut values = Vec::new();
            flatten(&input["data"], &mut values);
            let bytes = to_raw(input["datatype"].as_str().unwrap(), &values);
            i["parameters"] = json!({ "binary_data_size": bytes.len() });
            raw.extend(bytes);
        } else {
            i["data"] = input["data"].clone();
        }
        inputs.push(i);
    }
    let mut body = json!({ "inputs": inputs });
    if let Some(id) = case.get("id") {
        body["id"] = id.clone();
    }
    if let Some(p) = case.get("parameters") {
        body["parameters"] = p.clone();
    }
    let outputs = requested_outputs(case);
    if !outputs.is_empty() {
        body["outputs"] = outputs
            .iter()
            .map(|n| {
                if binary {
                    json!({ "name": n, "parameters": { "binary_data": true } })
                } else {
                    json!({ "name": n })
                }
            })
            .collect();
    } else if binary {
        let params = body.get("parameters").cloned().unwrap_or_else(|| json!({}));
        let mut params = params;
        params["binary_data_output"] = json!(true);
        body["parameters"] = params;
    }
    let mut request = server.http.post(server.url(&infer_path(case)));
    let payload = if binary {
        let header = serde_json::to_vec(&body).unwrap();
        request = request
            .header("Inference-Header-Content-Length", header.len())
            .header("Content-Type", "application/octet-stream");
        let mut all = header;
        all.extend(raw);
        all
    } else {
        request = request.header("Content-Type", "application/json");
        serde_json::to_vec(&body).unwrap()
    };
    let response = request.body(payload).send().await.unwrap();
    let status = status_of_http(response.status().as_u16());
    let json_len = response
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let bytes = response.bytes().await.unwrap();
    let (header, rest) = match json_len {
        Some(n) => bytes.split_at(n),
        None => (&bytes[..], &[][..]),
    };
    let value: Value = serde_json::from_slice(header).unwrap();
    let mut outcome = outcome_from_json(status, &value, rest);
    if binary && outcome.status == "ok" {
        // The binary run asked for binary outputs: every output must have come back binary.
        assert!(
            json_len.is_some(),
            "{}: binary outputs were not binary",
            case["name"]
        );
        if let Some(Value::Object(p)) = &mut outcome.parameters {
            p.remove("binary_data_output");
            if p.is_empty() {
                outcome.parameters = None;
            }
        }
    }
    outcome
}

fn grpc_parameter(v: &Value) -> pb::InferParameter {
    use pb::infer_parameter::ParameterChoice as C;
    pb::InferParameter {
        parameter_choice: Some(match v {
            Value::Bool(b) => C::BoolParam(*b),
            Value::Number(n) => C::Int64Param(n.as_i64().unwrap()),
            Value::String(s) => C::StringParam(s.clone()),
            other => panic!("no gRPC parameter for {other}"),
        }),
    }
}

fn json_of_parameter(p: &pb::InferParameter) -> Value {
    use pb::infer_parameter::ParameterChoice as C;
    match p.parameter_choice.as_ref().unwrap() {
        C::BoolParam(b) => json!(b),
        C::Int64Param(i) => json!(i),
        C::StringParam(s) => json!(s),
        C::DoubleParam(d) => json!(d),
        C::Uint64Param(u) => json!(u),
    }
}

async fn run_grpc(server: &TestServer, case: &Value, raw: bool) -> Outcome {
    let mut request = pb::ModelInferRequest {
        model_name: case["model"].as_str().unwrap().into(),
        model_version: case["version"].as_str().unwrap_or_default().into(),
        id: case["id"].as_str().unwrap_or_default().into(),
        ..Default::default()
    };
    if let Some(Value::Object(p)) = case.get("parameters") {
        request.parameters = p
            .iter()
            .map(|(k, v)| (k.clone(), grpc_parameter(v)))
            .collect();
    }
    for input in case["inputs"].as_array().unwrap() {
        let datatype = input["datatype"].as_str().unwrap();
        let mut values = Vec::new();
        flatten(&input["data"], &mut values);
        let mut tensor = pb::model_infer_request::InferInputTensor {
            name: input["name"].as_str().unwrap().into(),
            datatype: datatype.into(),
            shape: serde_json::from_value(input["shape"].clone()).unwrap(),
            ..Default::default()
        };
        if raw {
            request
                .raw_input_contents
                .push(Bytes::from(to_raw(datatype, &values)));
        } else {
            let mut contents = pb::InferTensorContents::default();
            match datatype {
                "FP32" => contents.fp32_contents = values.iter().map(|v| *v as f32).collect(),
                "INT64" => contents.int64_contents = values.iter().map(|v| *v as i64).collect(),
                other => panic!("no typed encoder for {other}"),
            }
            tensor.contents = Some(contents);
        }
        request.inputs.push(tensor);
    }
    for name in requested_outputs(case) {
        request
            .outputs
            .push(pb::model_infer_request::InferRequestedOutputTensor {
                name,
                ..Default::default()
            });
    }
    let mut client = server.grpc().await;
    match client.model_infer(request).await {
        Err(status) => Outcome {
            status: status_of_grpc(status.code()),
            error: status.message().to_string(),
            ..Outcome::default()
        },
        Ok(response) => {
            let r = response.into_inner();
            assert_eq!(
                !r.raw_output_contents.is_empty(),
                raw,
                "{}: gRPC answer must mirror the request's encoding",
                case["name"]
            );
            let mut outcome = Outcome {
                status: "ok".into(),
                id: (!r.id.is_empty()).then(|| r.id.clone()),
                model_version: Some(r.model_version.clone()),
                parameters: (!r.parameters.is_empty()).then(|| {
                    Value::Object(
                        r.parameters
                            .iter()
                            .map(|(k, v)| (k.clone(), json_of_parameter(v)))
                            .collect(),
                    )
                }),
                ..Outcome::default()
            };
            for (i, o) in r.outputs.iter().enumerate() {
                let data = if raw {
                    from_raw(&o.datatype, &r.raw_output_contents[i])
                } else {
                    let c = o.contents.as_ref().unwrap();
                    match o.datatype.as_str() {
                        "FP32" => c.fp32_contents.iter().map(|v| f64::from(*v)).collect(),
                        "INT64" => c.int64_contents.iter().map(|v| *v as f64).collect(),
                        other => panic!("no typed decoder for {other}"),
                    }
                };
                outcome.outputs.insert(
                    o.name.clone(),
                    Output {
                        datatype: o.datatype.clone(),
                        shape: o.shape.iter().map(|d| *d as usize).collect(),
                        data,
                    },
                );
            }
            outcome
        }
    }
}

fn check(case: &Value, way: &str, got: &Outcome) -> Vec<String> {
    let name = case["name"].as_str().unwrap();
    let expect = &case["expect"];
    let mut failures = Vec::new();
    let mut fail = |m: String| failures.push(format!("{name} [{way}]: {m}"));
    let status = expect["status"].as_str().unwrap();
    if got.status != status {
        fail(format!(
            "status {} (error {:?}), want {status}",
            got.status, got.error
        ));
        return failures;
    }
    if let Some(needle) = expect["error_contains"].as_str()
        && !got.error.contains(needle)
    {
        fail(format!("error {:?} does not contain {needle:?}", got.error));
    }
    if status != "ok" {
        return failures;
    }
    if let Some(id) = expect["id"].as_str()
        && got.id.as_deref() != Some(id)
    {
        fail(format!("id {:?}, want {id}", got.id));
    }
    if let Some(p) = expect.get("parameters")
        && got.parameters.as_ref() != Some(p)
    {
        fail(format!("parameters {:?}, want {p}", got.parameters));
    }
    if let Some(v) = expect["model_version"].as_str()
        && got.model_version.as_deref() != Some(v)
    {
        fail(format!("model_version {:?}, want {v}", got.model_version));
    }
    if let Some(Value::Object(outputs)) = expect.get("outputs") {
        if expect["only_listed_outputs"].as_bool() == Some(true)
            && got.outputs.len() != outputs.len()
        {
            fail(format!(
                "got outputs {:?}, want only {:?}",
                got.outputs.keys(),
                outputs.keys()
            ));
        }
        for (oname, want) in outputs {
            let Some(o) = got.outputs.get(oname) else {
                fail(format!("output {oname} missing"));
                continue;
            };
            if o.datatype != want["datatype"].as_str().unwrap() {
                fail(format!("output {oname} datatype {}", o.datatype));
            }
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            if o.shape != shape {
                fail(format!(
                    "output {oname} shape {:?}, want {shape:?}",
                    o.shape
                ));
            }
            if let Some(data) = want.get("data") {
                let mut values = Vec::new();
                flatten(data, &mut values);
                if o.data != values {
                    fail(format!("output {oname} data {:?}, want {values:?}", o.data));
                }
            }
            if o.datatype == "FP32" && oname == "probabilities" {
                // Each row of class probabilities sums to one.
                let per_row = *o.shape.last().unwrap();
                for row in o.data.chunks(per_row) {
                    let sum: f64 = row.iter().sum();
                    if (sum - 1.0).abs() > 1e-4 {
                        fail(format!("probabilities row sums to {sum}"));
                    }
                }
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cases_pass_on_rest_and_grpc() {
    let cases: Vec<Value> = serde_json::from_str(include_str!("conformance.json")).unwrap();
    assert!(cases.len() >= 15, "the case list shrank");
    let server = TestServer::start(common::shipped_models()).await;
    let mut failures = Vec::new();
    for case in &cases {
        let ways = [
            ("rest-json", run_rest(&server, case, false).await),
            ("rest-binary", run_rest(&server, case, true).await),
            ("grpc-typed", run_grpc(&server, case, false).await),
            ("grpc-raw", run_grpc(&server, case, true).await),
        ];
        for (way, outcome) in &ways {
            failures.extend(check(case, way, outcome));
        }
        // All four ways agree on the outputs themselves, not only on what the case pins.
        let reference = &ways[0].1.outputs;
        for (way, outcome) in &ways[1..] {
            for (name, o) in reference {
                let other = &outcome.outputs[name];
                let close = o.data.len() == other.data.len()
                    && o.data
                        .iter()
                        .zip(&other.data)
                        .all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs().max(1.0));
                if !close || o.shape != other.shape {
                    failures.push(format!(
                        "{} [{way}]: output {name} differs from rest-json",
                        case["name"]
                    ));
                }
            }
        }
        println!(
            "case {:<45} ok={}",
            case["name"].as_str().unwrap(),
            failures.is_empty()
        );
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}
