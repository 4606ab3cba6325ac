//! The optional ONNX Runtime backend (cargo feature `onnxruntime`): the same models, the same
//! answers as tract. Needs ORT_DYLIB_PATH (set by `make test` from the onnxruntime wheel).
#![cfg(feature = "onnxruntime")]

use super::common;

use common::{TestServer, model, models_dir};
use ferry_server::config::BackendKind;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_answers_like_tract() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH to libonnxruntime.so (make test does)"
    );
    let mut models = vec![
        model("iris-tract", "iris-v2.onnx"),
        model("digits-tract", "digits.onnx"),
    ];
    let mut ort_iris = model("iris-ort", "iris-v2.onnx");
    ort_iris.backend = BackendKind::OnnxRuntime;
    let mut ort_digits = model("digits-ort", "digits.onnx");
    ort_digits.backend = BackendKind::OnnxRuntime;
    models.extend([ort_iris, ort_digits]);
    let minilm = models_dir().join("minilm");
    let with_text = minilm.join("model.onnx").exists();
    if with_text {
        let mut m = ferry_server::ModelConfig::new("minilm-ort", minilm.join("model.onnx"));
        m.backend = BackendKind::OnnxRuntime;
        m.tokenizer = Some(minilm.join("tokenizer.json"));
        models.push(m);
    }
    let server = TestServer::start(models).await;
    let meta: Value = server.get_json("/v2/models/iris-ort").await;
    assert_eq!(meta["state"], "READY", "{meta}");
    assert_eq!(meta["platform"], "onnxruntime");

    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("expected.json")).unwrap())
            .unwrap();
    for (tract, ort, key) in [
        ("iris-tract", "iris-ort", "iris-v2"),
        ("digits-tract", "digits-ort", "digits"),
    ] {
        let rows = &expected[key]["input"];
        let n = rows.as_array().unwrap().len();
        let width = rows[0].as_array().unwrap().len();
        let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, width], "data": rows}]});
        let mut answers = Vec::new();
        for name in [tract, ort] {
            let r: Value = server
                .post_json(&format!("/v2/models/{name}/infer"), &body)
                .await;
            answers.push(r["outputs"].clone());
        }
        assert_eq!(
            answers[0][0]["data"], answers[1][0]["data"],
            "{key}: labels differ between tract and onnxruntime"
        );
        assert_eq!(answers[1][0]["data"], expected[key]["label"]);
        let a: Vec<f64> = serde_json::from_value(answers[0][1]["data"].clone()).unwrap();
        let b: Vec<f64> = serde_json::from_value(answers[1][1]["data"].clone()).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{key}: tract {x} vs onnxruntime {y}");
        }
    }
    if with_text {
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(minilm.join("reference.json")).unwrap())
                .unwrap();
        let body = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [reference["sentences"][0]]}]});
        let r: Value = server.post_json("/v2/models/minilm-ort/infer", &body).await;
        let got: Vec<f64> = serde_json::from_value(r["outputs"][0]["data"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(reference["embeddings"][0].clone()).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-4,
            "onnxruntime MiniLM differs from the reference by {worst}"
        );
    }
}
