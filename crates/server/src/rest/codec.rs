//! The REST wire format: OIP v2 JSON (flat or nested `data`) and the binary tensor data
//! extension (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`), both ways.
//!
//! Tensor data is decoded in one pass straight into a typed vector (no `serde_json::Value` tree):
//! the header is parsed with `data` kept as a borrowed raw slice, then each slice is flattened by
//! a visitor that knows the declared datatype.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use half::f16;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::protocol::{InferRequest, InferResponse, Parameters, RequestedOutput};
use crate::tensor::{DataType, Tensor, TensorData, each_variant, element_count, shape_from_wire};

/// The header that carries the JSON part's length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<WireInput<'a>>,
    #[serde(default)]
    outputs: Vec<WireOutput>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// A decoded REST request and how its outputs should be encoded.
#[derive(Debug)]
pub struct DecodedRequest {
    pub request: InferRequest,
    /// `parameters.binary_data_output` of the request: every output in binary unless it says no.
    pub binary_output_default: bool,
}

fn bool_param(parameters: &Option<Parameters>, key: &str) -> Option<bool> {
    parameters.as_ref()?.get(key)?.as_bool()
}

/// Decodes an OIP v2 REST infer body. `json_length` is the value of the
/// `Inference-Header-Content-Length` header, when present.
pub fn decode_request(body: &[u8], json_length: Option<usize>) -> Result<DecodedRequest> {
    let (json, mut binary) = match json_length {
        Some(n) if n > body.len() => {
            return Err(Error::invalid(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            )));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let wire: WireRequest<'_> = serde_json::from_slice(json)
        .map_err(|e| Error::invalid(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for input in wire.inputs {
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            Error::invalid(format!(
                "input '{}': unknown datatype '{}'",
                input.name, input.datatype
            ))
        })?;
        let shape = shape_from_wire(&input.shape, &input.name)?;
        let expected = element_count(&shape).ok_or_else(|| {
            Error::invalid(format!(
                "input '{}': shape {:?} is too large",
                input.name, shape
            ))
        })?;
        let binary_size = input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    Error::invalid(format!(
                        "input '{}': parameters.binary_data_size must be a non-negative integer",
                        input.name
                    ))
                })
            })
            .transpose()?;
        let data = match (binary_size, input.data) {
            (Some(size), _) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(Error::invalid(format!(
                        "input '{}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                        input.name,
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_raw(datatype, mine, &input.name)?
            }
            (None, Some(raw)) => decode_data(raw.get(), datatype, expected, &input.name)?,
            (None, None) => {
                return Err(Error::invalid(format!(
                    "input '{}' has neither 'data' nor parameters.binary_data_size",
                    input.name
                )));
            }
        };
        let tensor = Tensor {
            name: input.name,
            shape,
            data,
        };
        tensor.check_element_count()?;
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(Error::invalid(format!(
            "{} binary bytes follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let binary_output_default = bool_param(&wire.parameters, "binary_data_output").unwrap_or(false);
    let outputs = wire
        .outputs
        .into_iter()
        .map(|o| RequestedOutput {
            binary: bool_param(&o.parameters, "binary_data"),
            name: o.name,
        })
        .collect();
    Ok(DecodedRequest {
        request: InferRequest {
            id: wire.id,
            parameters: wire.parameters,
            inputs,
            outputs,
        },
        binary_output_default,
    })
}

/// Decodes a JSON `data` value (flat or nested arrays, or a scalar) of `datatype`.
pub fn decode_data(
    json: &str,
    datatype: DataType,
    capacity_hint: usize,
    tensor: &str,
) -> Result<TensorData> {
    let mut data = TensorData::with_capacity(datatype, capacity_hint.min(1 << 20));
    let mut de = serde_json::Deserializer::from_str(json);
    let result = each_variant!(&mut data, v => Flatten { out: v }.deserialize(&mut de));
    result
        .and_then(|()| de.end())
        .map_err(|e| Error::invalid(format!("input '{tensor}': data: {e}")))?;
    Ok(data)
}

/// An element type that JSON numbers, booleans or strings convert into.
trait Element: Sized {
    const EXPECTING: &'static str;
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

macro_rules! int_element {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            const EXPECTING: &'static str = concat!("an array of ", $name, " integers");
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
        }
    };
}
int_element!(u8, "UINT8");
int_element!(u16, "UINT16");
int_element!(u32, "UINT32");
int_element!(u64, "UINT64");
int_element!(i8, "INT8");
int_element!(i16, "INT16");
int_element!(i32, "INT32");
int_element!(i64, "INT64");

macro_rules! float_element {
    ($t:ty, $name:literal, $conv:expr) => {
        impl Element for $t {
            const EXPECTING: &'static str = concat!("an array of ", $name, " numbers");
            fn from_u64(v: u64) -> Option<Self> {
                Some($conv(v as f64))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($conv(v as f64))
            }
            fn from_f64(v: f64) -> Option<Self> {
                Some($conv(v))
            }
        }
    };
}
float_element!(f32, "FP32", |v: f64| v as f32);
float_element!(f64, "FP64", |v: f64| v);
float_element!(f16, "FP16", f16::from_f64);

impl Element for bool {
    const EXPECTING: &'static str = "an array of BOOL values (true/false)";
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl Element for Bytes {
    const EXPECTING: &'static str = "an array of BYTES strings";
    fn from_str(v: &str) -> Option<Self> {
        Some(Bytes::copy_from_slice(v.as_bytes()))
    }
}

/// Pushes every leaf of a (nested) JSON array into `out`.
struct Flatten<'v, T> {
    out: &'v mut Vec<T>,
}

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(FlattenVisitor {
            out: self.out,
            _t: PhantomData,
        })
    }
}

struct FlattenVisitor<'v, T> {
    out: &'v mut Vec<T>,
    _t: PhantomData<T>,
}

impl<T: Element> FlattenVisitor<'_, T> {
    fn push<E: de::Error>(self, v: Option<T>, unexpected: de::Unexpected<'_>) -> Result<(), E> {
        match v {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => Err(E::invalid_value(unexpected, &T::EXPECTING)),
        }
    }
}

impl<'de, T: Element> Visitor<'de> for FlattenVisitor<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.out.reserve(n);
        }
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), de::Unexpected::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), de::Unexpected::Signed(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), de::Unexpected::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), de::Unexpected::Bool(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(T::from_str(v), de::Unexpected::Str(v))
    }
}

/// Serializes tensor data as a flat JSON array.
struct DataJson<'a>(&'a TensorData);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::F16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
            TensorData::Bool(v) => v.serialize(s),
            TensorData::U8(v) => v.serialize(s),
            TensorData::U16(v) => v.serialize(s),
            TensorData::U32(v) => v.serialize(s),
            TensorData::U64(v) => v.serialize(s),
            TensorData::I8(v) => v.serialize(s),
            TensorData::I16(v) => v.serialize(s),
            TensorData::I32(v) => v.serialize(s),
            TensorData::I64(v) => v.serialize(s),
            TensorData::F32(v) => v.serialize(s),
            TensorData::F64(v) => v.serialize(s),
        }
    }
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a Parameters>,
    outputs: Vec<WireOutputTensor<'a>>,
}

#[derive(Serialize)]
struct WireOutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// An encoded REST response body, with the JSON length when binary outputs follow it.
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_length: Option<usize>,
}

/// Encodes a response; outputs whose `binary` flag (or the request default) is set go after
/// the JSON as raw bytes.
pub fn encode_response(
    response: &InferResponse,
    requested: &[RequestedOutput],
    binary_default: bool,
) -> EncodedResponse {
    let binary_flags: Vec<bool> = response
        .outputs
        .iter()
        .map(|o| {
            requested
                .iter()
                .find(|r| r.name == o.name)
                .and_then(|r| r.binary)
                .unwrap_or(binary_default)
        })
        .collect();
    let mut raw_parts: Vec<Vec<u8>> = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .zip(&binary_flags)
        .map(|(o, binary)| {
            if *binary {
                let raw = o.data.to_raw();
                let size = raw.len();
                raw_parts.push(raw);
                WireOutputTensor {
                    name: &o.name,
                    datatype: o.datatype().name(),
                    shape: &o.shape,
                    parameters: Some(BinarySize {
                        binary_data_size: size,
                    }),
                    data: None,
                }
            } else {
                WireOutputTensor {
                    name: &o.name,
                    datatype: o.datatype().name(),
                    shape: &o.shape,
                    parameters: None,
                    data: Some(DataJson(&o.data)),
                }
            }
        })
        .collect();
    let wire = WireResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        parameters: response.parameters.as_ref(),
        outputs,
    };
    let mut body = Vec::with_capacity(256);
    // Serializing plain structs of strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, &wire);
    if raw_parts.is_empty() {
        return EncodedResponse {
            body,
            json_length: None,
        };
    }
    let json_length = body.len();
    for part in raw_parts {
        body.extend_from_slice(&part);
    }
    EncodedResponse {
        body,
        json_length: Some(json_length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let flat =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#;
        let nested =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#;
        let a = decode_request(flat, None).unwrap().request;
        let b = decode_request(nested, None).unwrap().request;
        assert_eq!(a, b);
        assert_eq!(a.inputs[0].data, TensorData::F32(vec![1.0, 2.0, 3.0, 4.5]));
    }

    #[test]
    fn out_of_range_integer_names_the_input() {
        let body = br#"{"inputs":[{"name":"small","shape":[1],"datatype":"UINT8","data":[300]}]}"#;
        let err = decode_request(body, None).unwrap_err().to_string();
        assert!(
            err.contains("input 'small'") && err.contains("UINT8"),
            "{err}"
        );
    }

    #[test]
    fn binary_inputs_are_read_after_the_header() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        let decoded = decode_request(&body, Some(header.len())).unwrap();
        assert_eq!(decoded.request.inputs[0].data, TensorData::I32(vec![7, -1]));
        assert!(decoded.binary_output_default);
    }

    #[test]
    fn binary_size_past_the_end_is_rejected() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":80}}]}"#;
        let err = decode_request(header, Some(header.len()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("binary_data_size 80 exceeds"), "{err}");
    }

    #[test]
    fn binary_outputs_follow_the_json() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("42".into()),
            parameters: None,
            outputs: vec![Tensor {
                name: "y".into(),
                shape: vec![2],
                data: TensorData::F32(vec![1.0, 2.0]),
            }],
        };
        let encoded = encode_response(&response, &[], true);
        let n = encoded.json_length.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(json["id"], "42");
        assert_eq!(&encoded.body[n..n + 4], &1.0f32.to_le_bytes());
    }
}
