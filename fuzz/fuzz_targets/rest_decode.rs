//! Fuzzes the REST decoder (OIP v2 JSON and the binary tensor extension) and the input checks
//! that follow it: any byte string must give a request or an error, never a panic or a hang.
#![no_main]

use ferry_server::backend::{Signature, TensorSpec};
use ferry_server::repository::order_inputs;
use ferry_server::rest::codec::decode_request;
use ferry_server::tensor::DataType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the Inference-Header-Content-Length (or none).
    let (length, body) = match data {
        [a, b, rest @ ..] => {
            let n = u16::from_le_bytes([*a, *b]) as usize;
            (if n == 0 { None } else { Some(n) }, rest)
        }
        _ => (None, data),
    };
    if let Ok(decoded) = decode_request(body, length) {
        let signature = Signature {
            inputs: vec![TensorSpec { name: "input".into(), datatype: DataType::F32, shape: vec![-1, 4] }],
            outputs: vec![],
        };
        let _ = order_inputs("fuzz", &signature, decoded.request.inputs);
    }
});
