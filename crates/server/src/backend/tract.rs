//! The default backend: pure-Rust ONNX inference with tract.
//!
//! Unknown dimensions in the ONNX graph (skl2onnx leaves the batch dimension unnamed) are given
//! one symbol per axis position, `N` for the first axis, so one optimized plan serves any batch.

use std::path::Path;
use std::sync::Arc;

use half::f16;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{Backend, BackendFailure, Signature, TensorSpec};
use crate::tensor::{DataType, Tensor as WireTensor, TensorData};

type Plan = Arc<TypedRunnableModel>;

/// An ONNX model optimized and planned by tract.
pub struct TractBackend {
    plan: Plan,
    signature: Signature,
}

fn to_wire_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F16 => DataType::F16,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::String => DataType::Bytes,
        // Integer results of shape arithmetic (e.g. a label picked by ArrayFeatureExtractor).
        DatumType::TDim => DataType::I64,
        _ => return None,
    })
}

fn spec_of(name: String, fact: &TypedFact) -> Result<TensorSpec, String> {
    let datatype = to_wire_type(fact.datum_type)
        .ok_or_else(|| format!("tensor '{name}' has unsupported type {:?}", fact.datum_type))?;
    let shape = fact
        .shape
        .iter()
        .map(|d| d.to_i64().unwrap_or(-1))
        .collect();
    Ok(TensorSpec {
        name,
        datatype,
        shape,
    })
}

impl TractBackend {
    /// Loads, types, optimizes and plans the ONNX file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| format!("cannot read ONNX file {}: {e:#}", path.display()))?;
        for index in 0..model.inputs.len() {
            let fact = model.input_fact(index).map_err(|e| e.to_string())?.clone();
            let datum_type = fact.datum_type.concretize().ok_or_else(|| {
                format!("input #{index} of {} has no element type", path.display())
            })?;
            let dims: Vec<TDim> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(axis, dim)| {
                    dim.concretize().unwrap_or_else(|| {
                        let name = if axis == 0 {
                            "N".to_string()
                        } else {
                            format!("D{axis}")
                        };
                        model.sym(&name).to_dim()
                    })
                })
                .collect();
            model
                .set_input_fact(index, InferenceFact::dt_shape(datum_type, dims))
                .map_err(|e| e.to_string())?;
        }
        let typed = model
            .into_optimized()
            .map_err(|e| format!("cannot optimize {}: {e:#}", path.display()))?;
        let mut signature = Signature::default();
        for (index, outlet) in typed
            .input_outlets()
            .map_err(|e| e.to_string())?
            .iter()
            .enumerate()
        {
            let name = typed.node(outlet.node).name.clone();
            let fact = typed.input_fact(index).map_err(|e| e.to_string())?;
            signature.inputs.push(spec_of(name, fact)?);
        }
        for (index, outlet) in typed
            .output_outlets()
            .map_err(|e| e.to_string())?
            .iter()
            .enumerate()
        {
            let name = typed
                .outlet_label(*outlet)
                .map(str::to_string)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            let fact = typed.output_fact(index).map_err(|e| e.to_string())?;
            signature.outputs.push(spec_of(name, fact)?);
        }
        let plan = typed
            .into_runnable()
            .map_err(|e| format!("cannot plan {}: {e:#}", path.display()))?;
        Ok(Self { plan, signature })
    }
}

impl TractBackend {
    /// Runs the plan on wire tensors (in signature order).
    pub fn run(&self, inputs: &[WireTensor]) -> TractResult<Vec<WireTensor>> {
        let values: TVec<TValue> = inputs.iter().map(to_tract).collect::<TractResult<_>>()?;
        let outputs = self.plan.run(values)?;
        outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| from_tract(&spec.name, value))
            .collect()
    }
}

fn to_tract(t: &WireTensor) -> TractResult<TValue> {
    let shape = &t.shape;
    let tensor = match &t.data {
        TensorData::Bool(v) => Tensor::from_shape(shape, v)?,
        TensorData::U8(v) => Tensor::from_shape(shape, v)?,
        TensorData::U16(v) => Tensor::from_shape(shape, v)?,
        TensorData::U32(v) => Tensor::from_shape(shape, v)?,
        TensorData::U64(v) => Tensor::from_shape(shape, v)?,
        TensorData::I8(v) => Tensor::from_shape(shape, v)?,
        TensorData::I16(v) => Tensor::from_shape(shape, v)?,
        TensorData::I32(v) => Tensor::from_shape(shape, v)?,
        TensorData::I64(v) => Tensor::from_shape(shape, v)?,
        TensorData::F16(v) => {
            let bits: Vec<f16> = v.clone();
            Tensor::from_shape(shape, &bits)?
        }
        TensorData::F32(v) => Tensor::from_shape(shape, v)?,
        TensorData::F64(v) => Tensor::from_shape(shape, v)?,
        TensorData::Bytes(v) => {
            let strings: Vec<String> = v
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            tract_ndarray::ArrayD::from_shape_vec(shape.as_slice(), strings)?.into_tensor()
        }
    };
    Ok(tensor.into_tvalue())
}

fn from_tract(name: &str, t: &Tensor) -> TractResult<WireTensor> {
    let view = t.try_as_plain_ram()?;
    let data = match t.datum_type() {
        DatumType::Bool => TensorData::Bool(view.as_slice::<bool>()?.to_vec()),
        DatumType::U8 => TensorData::U8(view.as_slice::<u8>()?.to_vec()),
        DatumType::U16 => TensorData::U16(view.as_slice::<u16>()?.to_vec()),
        DatumType::U32 => TensorData::U32(view.as_slice::<u32>()?.to_vec()),
        DatumType::U64 => TensorData::U64(view.as_slice::<u64>()?.to_vec()),
        DatumType::I8 => TensorData::I8(view.as_slice::<i8>()?.to_vec()),
        DatumType::I16 => TensorData::I16(view.as_slice::<i16>()?.to_vec()),
        DatumType::I32 => TensorData::I32(view.as_slice::<i32>()?.to_vec()),
        DatumType::I64 => TensorData::I64(view.as_slice::<i64>()?.to_vec()),
        DatumType::F16 => TensorData::F16(view.as_slice::<f16>()?.to_vec()),
        DatumType::F32 => TensorData::F32(view.as_slice::<f32>()?.to_vec()),
        DatumType::F64 => TensorData::F64(view.as_slice::<f64>()?.to_vec()),
        DatumType::String => TensorData::Bytes(
            view.as_slice::<String>()?
                .iter()
                .map(|s| bytes::Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        ),
        DatumType::TDim => TensorData::I64(
            view.as_slice::<TDim>()?
                .iter()
                .map(|d| d.to_i64().map_err(|e| TractError::msg(format!("{e:?}"))))
                .collect::<TractResult<Vec<i64>>>()?,
        ),
        other => {
            return Err(TractError::msg(format!(
                "output '{name}' has unsupported type {other:?}"
            )));
        }
    };
    Ok(WireTensor {
        name: name.to_string(),
        shape: t.shape().to_vec(),
        data,
    })
}

impl Backend for TractBackend {
    fn platform(&self) -> &'static str {
        "onnx"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn infer(&self, inputs: Vec<WireTensor>) -> Result<Vec<WireTensor>, BackendFailure> {
        self.run(&inputs)
            .map_err(|e| BackendFailure::Failed(format!("{e:#}")))
    }
}
