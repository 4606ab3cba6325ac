//! Optional backend (cargo feature `onnxruntime`): ONNX Runtime, loaded at run time from the
//! shared library named by `ORT_DYLIB_PATH` (the `onnxruntime` PyPI wheel ships one in
//! `onnxruntime/capi/`). For compute-heavy graphs such as transformers, where its kernels beat
//! tract's; chosen per model with `backend=onnxruntime`.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use ort::environment::Environment;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::{Backend, BackendFailure, Signature, TensorSpec};
use crate::tensor::{DataType, Tensor, TensorData};

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

fn environment() -> Result<&'static Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = std::env::var("ORT_DYLIB_PATH").map_err(|_| {
                "backend onnxruntime needs ORT_DYLIB_PATH set to libonnxruntime.so \
                 (e.g. site-packages/onnxruntime/capi/libonnxruntime.so.* from the onnxruntime wheel)"
                    .to_string()
            })?;
            if !Path::new(&path).exists() {
                return Err(format!("ORT_DYLIB_PATH={path} does not exist"));
            }
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {path}: {e}"))?
                .with_name("ferry")
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn wire_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: name.to_string(),
            datatype: wire_type(*ty)
                .ok_or_else(|| format!("tensor '{name}' has unsupported type {ty:?}"))?,
            shape: shape.iter().copied().collect(),
        }),
        other => Err(format!("'{name}' is not a tensor ({other:?})")),
    }
}

/// An ONNX Runtime session. `Session::run` needs `&mut`, so calls take turns; the session's own
/// intra-op threads use the cores.
pub struct OrtBackend {
    session: Mutex<Session>,
    signature: Signature,
}

impl OrtBackend {
    pub fn load(path: &Path) -> Result<Self, String> {
        let env = environment()?;
        let session = Session::builder(env)
            .map_err(|e| e.to_string())?
            .commit_from_file(path)
            .map_err(|e| format!("cannot load {} into ONNX Runtime: {e}", path.display()))?;
        let signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|o| spec(o.name(), o.dtype()))
                .collect::<Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(|o| spec(o.name(), o.dtype()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            session: Mutex::new(session),
            signature,
        })
    }
}

fn to_ort(t: &Tensor) -> ort::Result<DynValue> {
    let shape = t.shape.clone();
    Ok(match &t.data {
        TensorData::Bool(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::U8(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::U16(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::U32(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::U64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I8(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I16(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I32(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::F16(v) => {
            let as_f32: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
            OrtTensor::from_array((shape, as_f32))?.into_dyn()
        }
        TensorData::F32(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::F64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::Bytes(v) => {
            let strings: Vec<String> = v
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            OrtTensor::from_string_array((shape, strings.as_slice()))?.into_dyn()
        }
    })
}

fn from_ort(name: &str, value: &DynValue) -> ort::Result<Tensor> {
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(ort::Error::new(format!("output '{name}' is {other:?}"))),
    };
    let (shape, data) = match ty {
        TensorElementType::Bool => extract!(bool, Bool),
        TensorElementType::Uint8 => extract!(u8, U8),
        TensorElementType::Uint16 => extract!(u16, U16),
        TensorElementType::Uint32 => extract!(u32, U32),
        TensorElementType::Uint64 => extract!(u64, U64),
        TensorElementType::Int8 => extract!(i8, I8),
        TensorElementType::Int16 => extract!(i16, I16),
        TensorElementType::Int32 => extract!(i32, I32),
        TensorElementType::Int64 => extract!(i64, I64),
        TensorElementType::Float32 => extract!(f32, F32),
        TensorElementType::Float64 => extract!(f64, F64),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings()?;
            (
                shape.to_vec(),
                TensorData::Bytes(strings.into_iter().map(Bytes::from).collect()),
            )
        }
        other => {
            return Err(ort::Error::new(format!(
                "output '{name}' has unsupported type {other:?}"
            )));
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        shape: shape.iter().map(|d| (*d).max(0) as usize).collect(),
        data,
    })
}

impl Backend for OrtBackend {
    fn platform(&self) -> &'static str {
        "onnxruntime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn parallelism(&self) -> usize {
        // One session, one call at a time; its intra-op threads use the cores.
        1
    }

    fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendFailure> {
        let failed = |e: ort::Error| BackendFailure::Failed(e.to_string());
        let values: Vec<(String, DynValue)> = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), to_ort(t)?)))
            .collect::<ort::Result<_>>()
            .map_err(failed)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| BackendFailure::Failed("session lock poisoned".into()))?;
        let outputs = session.run(values).map_err(failed)?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(spec.name.as_str()).ok_or_else(|| {
                    BackendFailure::Failed(format!("output '{}' missing", spec.name))
                })?;
                from_ort(&spec.name, value).map_err(failed)
            })
            .collect()
    }
}
