//! Every OIP datatype end to end, through a real model (`models/datatypes.onnx`: one input and
//! one output per datatype, `out_T = Concat(in_T, in_T)`), over REST JSON, REST binary, gRPC
//! typed contents and gRPC raw contents. Extreme values included.

use super::common;

use bytes::Bytes;
use common::{TestServer, model};
use ferry_server::grpc::pb;
use ferry_server::tensor::{DataType, TensorData};
use half::f16;
use serde_json::{Value, json};

/// Two rows of two values per datatype, and the JSON form of the same values.
fn cases() -> Vec<(DataType, TensorData, Value)> {
    vec![
        (
            DataType::Bool,
            TensorData::Bool(vec![true, false, false, true]),
            json!([true, false, false, true]),
        ),
        (
            DataType::U8,
            TensorData::U8(vec![0, 255, 7, 128]),
            json!([0, 255, 7, 128]),
        ),
        (
            DataType::U16,
            TensorData::U16(vec![0, 65535, 7, 300]),
            json!([0, 65535, 7, 300]),
        ),
        (
            DataType::U32,
            TensorData::U32(vec![0, u32::MAX, 7, 70000]),
            json!([0, u32::MAX, 7, 70000]),
        ),
        (
            DataType::U64,
            TensorData::U64(vec![0, u64::MAX, 7, 1 << 40]),
            json!([0, u64::MAX, 7, 1u64 << 40]),
        ),
        (
            DataType::I8,
            TensorData::I8(vec![-128, 127, 0, -5]),
            json!([-128, 127, 0, -5]),
        ),
        (
            DataType::I16,
            TensorData::I16(vec![-32768, 32767, 0, -5]),
            json!([-32768, 32767, 0, -5]),
        ),
        (
            DataType::I32,
            TensorData::I32(vec![i32::MIN, i32::MAX, 0, -5]),
            json!([i32::MIN, i32::MAX, 0, -5]),
        ),
        (
            DataType::I64,
            TensorData::I64(vec![i64::MIN, i64::MAX, 0, -5]),
            json!([i64::MIN, i64::MAX, 0, -5]),
        ),
        (
            DataType::F16,
            TensorData::F16(vec![
                f16::from_f32(1.5),
                f16::from_f32(-2.0),
                f16::from_f32(0.25),
                f16::from_f32(65504.0),
            ]),
            json!([1.5, -2.0, 0.25, 65504.0]),
        ),
        (
            DataType::F32,
            TensorData::F32(vec![1.5, -2.5, 3.25e10, 1e-30]),
            json!([1.5, -2.5, 3.25e10, 1e-30]),
        ),
        (
            DataType::F64,
            TensorData::F64(vec![1e300, -1e-300, 0.1, 2.5]),
            json!([1e300, -1e-300, 0.1, 2.5]),
        ),
        (
            DataType::Bytes,
            TensorData::Bytes(vec![
                Bytes::from("a"),
                Bytes::from("héllo"),
                Bytes::new(),
                Bytes::from("xyz"),
            ]),
            json!(["a", "héllo", "", "xyz"]),
        ),
    ]
}

/// `Concat(x, x)` on axis 1 of a [2, 2] tensor, as a flat [2, 4] buffer.
fn doubled(data: &TensorData) -> TensorData {
    let mut out = data.slice(0, 2);
    out.extend_from(&data.slice(0, 2));
    out.extend_from(&data.slice(2, 4));
    out.extend_from(&data.slice(2, 4));
    out
}

fn json_of(data: &TensorData) -> Value {
    match data {
        TensorData::Bool(v) => json!(v),
        TensorData::U8(v) => json!(v),
        TensorData::U16(v) => json!(v),
        TensorData::U32(v) => json!(v),
        TensorData::U64(v) => json!(v),
        TensorData::I8(v) => json!(v),
        TensorData::I16(v) => json!(v),
        TensorData::I32(v) => json!(v),
        TensorData::I64(v) => json!(v),
        TensorData::F16(v) => json!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>()),
        TensorData::F32(v) => json!(v),
        TensorData::F64(v) => json!(v),
        TensorData::Bytes(v) => json!(
            v.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_round_trips_through_a_model() {
    let server = TestServer::start(vec![model("types", "datatypes.onnx")]).await;
    let meta: Value = server
        .http
        .get(server.url("/v2/models/types"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["state"], "READY", "{meta}");
    let url = server.url("/v2/models/types/infer");

    // REST JSON (nested rows) in, JSON out.
    let inputs: Vec<Value> = cases()
        .iter()
        .map(|(dt, _, values)| {
            let v = values.as_array().unwrap();
            json!({"name": format!("in_{}", dt.name()), "datatype": dt.name(), "shape": [2, 2],
                   "data": [[v[0], v[1]], [v[2], v[3]]]})
        })
        .collect();
    let r = server
        .http
        .post(&url)
        .json(&json!({ "inputs": inputs }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    for (dt, data, _) in cases() {
        let out = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == format!("out_{}", dt.name()))
            .unwrap();
        assert_eq!(out["datatype"], dt.name());
        assert_eq!(out["shape"], json!([2, 4]));
        if let TensorData::F32(want) = doubled(&data) {
            // JSON numbers of FP32 tensors are written in f32's shortest form.
            let got: Vec<f32> = serde_json::from_value(out["data"].clone()).unwrap();
            assert_eq!(got, want, "FP32 over REST JSON");
        } else {
            assert_eq!(
                out["data"],
                json_of(&doubled(&data)),
                "{} over REST JSON",
                dt.name()
            );
        }
    }

    // REST binary in and out.
    let mut raw = Vec::new();
    let inputs: Vec<Value> = cases()
        .iter()
        .map(|(dt, data, _)| {
            let bytes = data.to_raw();
            let size = bytes.len();
            raw.extend(bytes);
            json!({"name": format!("in_{}", dt.name()), "datatype": dt.name(), "shape": [2, 2],
                   "parameters": {"binary_data_size": size}})
        })
        .collect();
    let header =
        serde_json::to_vec(&json!({"inputs": inputs, "parameters": {"binary_data_output": true}}))
            .unwrap();
    let mut payload = header.clone();
    payload.extend(raw);
    let r = server
        .http
        .post(&url)
        .header("Inference-Header-Content-Length", header.len())
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    let mut offset = json_len;
    for out in body["outputs"].as_array().unwrap() {
        let dt = DataType::parse(out["datatype"].as_str().unwrap()).unwrap();
        let size = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        let got = TensorData::from_raw(dt, &bytes[offset..offset + size], "out").unwrap();
        offset += size;
        let (_, data, _) = cases().into_iter().find(|c| c.0 == dt).unwrap();
        assert_eq!(got, doubled(&data), "{} over REST binary", dt.name());
    }
    assert_eq!(offset, bytes.len());

    // gRPC raw in and out.
    let mut grpc = server.grpc().await;
    let mut request = pb::ModelInferRequest {
        model_name: "types".into(),
        ..Default::default()
    };
    for (dt, data, _) in cases() {
        request
            .inputs
            .push(pb::model_infer_request::InferInputTensor {
                name: format!("in_{}", dt.name()),
                datatype: dt.name().into(),
                shape: vec![2, 2],
                ..Default::default()
            });
        request.raw_input_contents.push(data.to_raw().into());
    }
    let reply = grpc.model_infer(request).await.unwrap().into_inner();
    for (i, out) in reply.outputs.iter().enumerate() {
        let dt = DataType::parse(&out.datatype).unwrap();
        let got = TensorData::from_raw(dt, &reply.raw_output_contents[i], "out").unwrap();
        let (_, data, _) = cases().into_iter().find(|c| c.0 == dt).unwrap();
        assert_eq!(got, doubled(&data), "{} over gRPC raw", dt.name());
        assert_eq!(out.shape, vec![2, 4]);
    }

    // gRPC typed contents (FP16 has no typed field: it must come raw, and typed FP16 is refused).
    let mut request = pb::ModelInferRequest {
        model_name: "types".into(),
        ..Default::default()
    };
    for (dt, data, _) in cases() {
        let mut c = pb::InferTensorContents::default();
        match &data {
            TensorData::Bool(v) => c.bool_contents = v.clone(),
            TensorData::U8(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
            TensorData::U16(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
            TensorData::U32(v) => c.uint_contents = v.clone(),
            TensorData::U64(v) => c.uint64_contents = v.clone(),
            TensorData::I8(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
            TensorData::I16(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
            TensorData::I32(v) => c.int_contents = v.clone(),
            TensorData::I64(v) => c.int64_contents = v.clone(),
            TensorData::F16(_) => c.fp32_contents = vec![1.5, -2.0, 0.25, 65504.0],
            TensorData::F32(v) => c.fp32_contents = v.clone(),
            TensorData::F64(v) => c.fp64_contents = v.clone(),
            TensorData::Bytes(v) => c.bytes_contents = v.iter().map(|b| b.to_vec()).collect(),
        }
        request
            .inputs
            .push(pb::model_infer_request::InferInputTensor {
                name: format!("in_{}", dt.name()),
                datatype: dt.name().into(),
                shape: vec![2, 2],
                contents: Some(c),
                ..Default::default()
            });
    }
    let err = grpc.model_infer(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("FP16 has no typed contents"),
        "{err}"
    );
    request.inputs.retain(|i| i.datatype != "FP16");
    request
        .inputs
        .push(pb::model_infer_request::InferInputTensor {
            name: "in_FP16".into(),
            datatype: "FP16".into(),
            shape: vec![2, 2],
            ..Default::default()
        });
    // Mixing typed and raw inputs is refused with the reason.
    request.raw_input_contents = vec![Bytes::from(cases()[9].1.to_raw())];
    let err = grpc.model_infer(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("raw_input_contents has 1 entries"),
        "{err}"
    );
}
