//! Fuzzes the gRPC path: protobuf bytes → ModelInferRequest → the protocol-neutral request →
//! the input checks. Any byte string must give a request or an error, never a panic.
#![no_main]

use ferry_server::backend::{Signature, TensorSpec};
use ferry_server::grpc::convert::decode_infer_request;
use ferry_server::grpc::pb::ModelInferRequest;
use ferry_server::repository::order_inputs;
use ferry_server::tensor::DataType;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ModelInferRequest::decode(data) else {
        return;
    };
    if let Ok(decoded) = decode_infer_request(message) {
        let signature = Signature {
            inputs: vec![TensorSpec { name: "input".into(), datatype: DataType::Bytes, shape: vec![-1] }],
            outputs: vec![],
        };
        let _ = order_inputs("fuzz", &signature, decoded.request.inputs);
    }
});
