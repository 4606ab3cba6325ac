//! Closed-loop gRPC load for the benchmark: C connections, each sending one ModelInfer after the
//! other for D seconds (as wrk does for HTTP), with raw_input_contents as tritonclient sends.
//! Prints one line: `requests=N errors=E rps=R p50_ms=A p99_ms=B`.
//!
//! usage: ferry-bench-load ADDR MODEL CONCURRENCY SECONDS FP32_VALUES_COMMA_SEPARATED

use std::time::{Duration, Instant};

use ferry_server::grpc::GrpcInferenceServiceClient;
use ferry_server::grpc::pb::{ModelInferRequest, model_infer_request::InferInputTensor};

fn request(model: &str, values: &[f32]) -> ModelInferRequest {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    ModelInferRequest {
        model_name: model.to_string(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, values.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: ferry-bench-load ADDR MODEL CONCURRENCY SECONDS V1,V2,...");
        std::process::exit(2);
    }
    let addr = format!("http://{}", args[1]);
    let model = args[2].clone();
    let concurrency: usize = args[3].parse().expect("CONCURRENCY");
    let seconds: u64 = args[4].parse().expect("SECONDS");
    let values: Vec<f32> = args[5]
        .split(',')
        .map(|v| v.parse().expect("FP32 value"))
        .collect();
    let message = request(&model, &values);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let addr = addr.clone();
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = GrpcInferenceServiceClient::connect(addr)
                .await
                .expect("connect");
            let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                match client.model_infer(message.clone()).await {
                    Ok(_) => latencies_us.push(started.elapsed().as_micros() as u32),
                    Err(_) => errors += 1,
                }
            }
            (latencies_us, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    println!(
        "requests={} errors={} rps={:.1} p50_ms={:.3} p99_ms={:.3}",
        all.len(),
        errors,
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
