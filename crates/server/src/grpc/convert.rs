//! OIP v2 protobuf messages ↔ the protocol-neutral request and response.
//!
//! Inputs come either all as `raw_input_contents` (little-endian, one entry per input; what
//! tritonclient sends) or as typed `contents`. The response mirrors the request: raw outputs for a
//! raw request, typed ones otherwise.

use bytes::Bytes;

use super::pb;
use crate::error::{Error, Result};
use crate::protocol::{InferRequest, InferResponse, Parameters, RequestedOutput};
use crate::tensor::{DataType, Tensor, TensorData, shape_from_wire};

/// A decoded ModelInfer call.
#[derive(Debug)]
pub struct DecodedInfer {
    pub model: String,
    pub version: Option<String>,
    pub request: InferRequest,
    /// The request used `raw_input_contents`: answer with `raw_output_contents`.
    pub raw: bool,
}

fn parameter_to_json(p: &pb::InferParameter) -> serde_json::Value {
    use pb::infer_parameter::ParameterChoice as C;
    match &p.parameter_choice {
        Some(C::BoolParam(v)) => (*v).into(),
        Some(C::Int64Param(v)) => (*v).into(),
        Some(C::StringParam(v)) => v.clone().into(),
        Some(C::DoubleParam(v)) => serde_json::Number::from_f64(*v)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(C::Uint64Param(v)) => (*v).into(),
        None => serde_json::Value::Null,
    }
}

fn parameter_from_json(v: &serde_json::Value) -> pb::InferParameter {
    use pb::infer_parameter::ParameterChoice as C;
    let choice = match v {
        serde_json::Value::Bool(b) => Some(C::BoolParam(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(C::Int64Param)
            .or_else(|| n.as_u64().map(C::Uint64Param))
            .or_else(|| n.as_f64().map(C::DoubleParam)),
        serde_json::Value::String(s) => Some(C::StringParam(s.clone())),
        other => Some(C::StringParam(other.to_string())),
    };
    pb::InferParameter {
        parameter_choice: choice,
    }
}

fn parameters_to_json(
    map: &std::collections::HashMap<String, pb::InferParameter>,
) -> Option<Parameters> {
    if map.is_empty() {
        return None;
    }
    Some(
        map.iter()
            .map(|(k, v)| (k.clone(), parameter_to_json(v)))
            .collect(),
    )
}

fn narrow<S: Copy, T: TryFrom<S>>(
    values: &[S],
    tensor: &str,
    datatype: DataType,
) -> Result<Vec<T>> {
    values
        .iter()
        .map(|v| {
            T::try_from(*v).map_err(|_| {
                Error::invalid(format!(
                    "input '{tensor}': a value is out of range for {}",
                    datatype.name()
                ))
            })
        })
        .collect()
}

fn typed_to_data(
    datatype: DataType,
    c: pb::InferTensorContents,
    tensor: &str,
) -> Result<TensorData> {
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::I8 => TensorData::I8(narrow(&c.int_contents, tensor, datatype)?),
        DataType::I16 => TensorData::I16(narrow(&c.int_contents, tensor, datatype)?),
        DataType::I32 => TensorData::I32(c.int_contents),
        DataType::I64 => TensorData::I64(c.int64_contents),
        DataType::U8 => TensorData::U8(narrow(&c.uint_contents, tensor, datatype)?),
        DataType::U16 => TensorData::U16(narrow(&c.uint_contents, tensor, datatype)?),
        DataType::U32 => TensorData::U32(c.uint_contents),
        DataType::U64 => TensorData::U64(c.uint64_contents),
        DataType::F32 => TensorData::F32(c.fp32_contents),
        DataType::F64 => TensorData::F64(c.fp64_contents),
        DataType::Bytes => {
            TensorData::Bytes(c.bytes_contents.into_iter().map(Bytes::from).collect())
        }
        DataType::F16 => {
            return Err(Error::invalid(format!(
                "input '{tensor}': FP16 has no typed contents; send it in raw_input_contents"
            )));
        }
    })
}

fn data_to_typed(data: &TensorData) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v.clone(),
        TensorData::I8(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
        TensorData::I16(v) => c.int_contents = v.iter().map(|x| i32::from(*x)).collect(),
        TensorData::I32(v) => c.int_contents = v.clone(),
        TensorData::I64(v) => c.int64_contents = v.clone(),
        TensorData::U8(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
        TensorData::U16(v) => c.uint_contents = v.iter().map(|x| u32::from(*x)).collect(),
        TensorData::U32(v) => c.uint_contents = v.clone(),
        TensorData::U64(v) => c.uint64_contents = v.clone(),
        TensorData::F16(v) => c.fp32_contents = v.iter().map(|x| x.to_f32()).collect(),
        TensorData::F32(v) => c.fp32_contents = v.clone(),
        TensorData::F64(v) => c.fp64_contents = v.clone(),
        TensorData::Bytes(v) => c.bytes_contents = v.iter().map(|b| b.to_vec()).collect(),
    }
    c
}

/// Decodes a ModelInfer request, checking datatypes, shapes and element counts.
pub fn decode_infer_request(message: pb::ModelInferRequest) -> Result<DecodedInfer> {
    let raw = !message.raw_input_contents.is_empty();
    if raw && message.raw_input_contents.len() != message.inputs.len() {
        return Err(Error::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs: give one per input",
            message.raw_input_contents.len(),
            message.inputs.len()
        )));
    }
    let mut raw_contents = message.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(message.inputs.len());
    for input in message.inputs {
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            Error::invalid(format!(
                "input '{}': unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        let shape = shape_from_wire(&input.shape, &input.name)?;
        let data = if raw {
            if input.contents.is_some() {
                return Err(Error::invalid(format!(
                    "input '{}': has typed contents although raw_input_contents is used",
                    input.name
                )));
            }
            let bytes = raw_contents.next().unwrap_or_default();
            TensorData::from_raw(datatype, &bytes, &input.name)?
        } else {
            let contents = input.contents.ok_or_else(|| {
                Error::invalid(format!(
                    "input '{}' has no contents (and no raw_input_contents)",
                    input.name
                ))
            })?;
            typed_to_data(datatype, contents, &input.name)?
        };
        let tensor = Tensor {
            name: input.name,
            shape,
            data,
        };
        tensor.check_element_count()?;
        inputs.push(tensor);
    }
    let outputs = message
        .outputs
        .into_iter()
        .map(|o| RequestedOutput {
            name: o.name,
            binary: None,
        })
        .collect();
    Ok(DecodedInfer {
        model: message.model_name,
        version: (!message.model_version.is_empty()).then_some(message.model_version),
        request: InferRequest {
            id: (!message.id.is_empty()).then_some(message.id),
            parameters: parameters_to_json(&message.parameters),
            inputs,
            outputs,
        },
        raw,
    })
}

/// Encodes a response, with raw or typed output contents.
pub fn encode_infer_response(response: InferResponse, raw: bool) -> pb::ModelInferResponse {
    let mut raw_output_contents = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|o| {
            let contents = if raw {
                raw_output_contents.push(Bytes::from(o.data.to_raw()));
                None
            } else {
                Some(data_to_typed(&o.data))
            };
            pb::model_infer_response::InferOutputTensor {
                name: o.name.clone(),
                datatype: o.datatype().name().to_string(),
                shape: o.shape.iter().map(|d| *d as i64).collect(),
                parameters: Default::default(),
                contents,
            }
        })
        .collect();
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        parameters: response
            .parameters
            .map(|p| {
                p.iter()
                    .map(|(k, v)| (k.clone(), parameter_from_json(v)))
                    .collect()
            })
            .unwrap_or_default(),
        outputs,
        raw_output_contents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_inputs_decode_alike() {
        let mut typed = input("x", "FP32", vec![1, 2]);
        typed.contents = Some(pb::InferTensorContents {
            fp32_contents: vec![1.5, 2.5],
            ..Default::default()
        });
        let a = decode_infer_request(pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![typed],
            ..Default::default()
        })
        .unwrap();
        let mut raw = Vec::new();
        raw.extend_from_slice(&1.5f32.to_le_bytes());
        raw.extend_from_slice(&2.5f32.to_le_bytes());
        let b = decode_infer_request(pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("x", "FP32", vec![1, 2])],
            raw_input_contents: vec![Bytes::from(raw)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.request, b.request);
        assert!(!a.raw && b.raw);
    }

    #[test]
    fn raw_count_mismatch_is_invalid() {
        let err = decode_infer_request(pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![1]), input("y", "FP32", vec![1])],
            raw_input_contents: vec![Bytes::from_static(&[0, 0, 0, 0])],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("raw_input_contents has 1 entries"),
            "{err}"
        );
    }

    #[test]
    fn narrowing_out_of_range_names_the_input() {
        let mut t = input("small", "INT8", vec![1]);
        t.contents = Some(pb::InferTensorContents {
            int_contents: vec![1000],
            ..Default::default()
        });
        let err = decode_infer_request(pb::ModelInferRequest {
            inputs: vec![t],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("input 'small'"), "{err}");
    }
}
