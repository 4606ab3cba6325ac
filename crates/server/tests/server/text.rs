//! Sentences in, embeddings out: all-MiniLM-L6-v2 behind its tokenizer.json, checked against
//! onnxruntime's embeddings of the same sentences (models/minilm/reference.json), unbatched and
//! under dynamic batching with padding. The model is built by `make minilm` (90 MB, not
//! committed); `make test` builds it and sets FERRY_REQUIRE_MINILM=1 so its absence fails.

use super::common;

use std::time::Duration;

use common::{TestServer, models_dir};
use ferry_server::ModelConfig;
use ferry_server::grpc::pb;
use serde_json::{Value, json};

fn minilm(name: &str, batch: usize) -> Option<ModelConfig> {
    let dir = models_dir().join("minilm");
    if !dir.join("model.onnx").exists() || !dir.join("reference.json").exists() {
        assert!(
            std::env::var_os("FERRY_REQUIRE_MINILM").is_none(),
            "models/minilm is missing: run `make minilm`"
        );
        eprintln!("SKIPPED: models/minilm not built (make minilm)");
        return None;
    }
    let mut config = ModelConfig::new(name, dir.join("model.onnx"));
    config.tokenizer = Some(dir.join("tokenizer.json"));
    config.max_batch_size = batch;
    config.max_queue_delay = Duration::from_millis(30);
    Some(config)
}

fn reference() -> (Vec<String>, Vec<Vec<f64>>) {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(models_dir().join("minilm/reference.json")).unwrap(),
    )
    .unwrap();
    (
        serde_json::from_value(r["sentences"].clone()).unwrap(),
        serde_json::from_value(r["embeddings"].clone()).unwrap(),
    )
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-4, "{what}: differs from onnxruntime by {worst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentence_embeddings_match_onnxruntime() {
    let (Some(plain), Some(batched)) = (minilm("minilm", 0), minilm("minilm-batched", 16)) else {
        return;
    };
    let server = TestServer::start(vec![plain, batched]).await;
    let (sentences, embeddings) = reference();

    // Each copy's host memory, measured while it loaded (one load at a time): the 87 MB of
    // weights are resident, the warm-up peaks above; the index and /metrics say the same.
    let index = server.post_json("/v2/repository/index", &json!({})).await;
    let metrics = server.metrics().await;
    const MB: u64 = 1_000_000;
    for name in ["minilm", "minilm-batched"] {
        let entry = index
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {index}"));
        let memory = entry["memoryBytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{entry}"));
        let peak = entry["peakMemoryBytes"].as_u64().unwrap();
        assert!((60 * MB..1_000 * MB).contains(&memory), "{name}: {entry}");
        assert!(peak >= memory, "{name}: {entry}");
        let line =
            format!("ferry_server_model_memory_bytes{{model=\"{name}\",version=\"1\"}} {memory}");
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in {metrics}"
        );
    }

    // Metadata advertises text in, embedding out.
    let meta: Value = server.get_json("/v2/models/minilm").await;
    assert_eq!(
        meta["inputs"],
        json!([{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "sentence_embedding", "datatype": "FP32", "shape": [-1, 384]}])
    );

    // All sentences in one request (padded to the longest): each row equals the unpadded reference.
    let body = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [sentences.len()], "data": sentences}]});
    let r: Value = server.post_json("/v2/models/minilm/infer", &body).await;
    assert_eq!(
        r["outputs"][0]["shape"],
        json!([sentences.len(), 384]),
        "{r}"
    );
    let flat: Vec<f64> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
    for (i, want) in embeddings.iter().enumerate() {
        assert_close(&flat[i * 384..(i + 1) * 384], want, &sentences[i]);
    }

    // One request per sentence, concurrently, through the dynamic batcher.
    let tasks: Vec<_> = sentences
        .iter()
        .map(|s| {
            let http = server.http.clone();
            let url = server.url("/v2/models/minilm-batched/infer");
            let body = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [s]}]});
            tokio::spawn(async move { http.post(url).json(&body).send().await.unwrap().json::<Value>().await.unwrap() })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        let got: Vec<f64> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
        assert_close(&got, &embeddings[i], &format!("batched: {}", sentences[i]));
    }

    // gRPC with BYTES contents; similar sentences are closer than unrelated ones.
    let mut grpc = server.grpc().await;
    let reply = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: "minilm".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![3],
                contents: Some(pb::InferTensorContents {
                    bytes_contents: sentences[..3]
                        .iter()
                        .map(|s| s.as_bytes().to_vec())
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = &reply.outputs[0].contents.as_ref().unwrap().fp32_contents;
    let dot =
        |a: usize, b: usize| -> f32 { (0..384).map(|k| e[a * 384 + k] * e[b * 384 + k]).sum() };
    assert!(
        dot(0, 1) > 0.6 && dot(0, 1) > dot(0, 2) + 0.3,
        "food~bread {} vs food~horse {}",
        dot(0, 1),
        dot(0, 2)
    );

    // Text that is not UTF-8 is the client's error.
    let mut bad = vec![0xffu8, 0xfe];
    let mut raw = (bad.len() as u32).to_le_bytes().to_vec();
    raw.append(&mut bad);
    let err = grpc
        .model_infer(pb::ModelInferRequest {
            model_name: "minilm".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                ..Default::default()
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not UTF-8"), "{err}");
}
