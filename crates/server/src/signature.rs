//! Matching a request to a model's signature: inputs checked and put in the model's order,
//! requested outputs selected, and the synthetic inputs of the warm-up inference.

use bytes::Bytes;

use crate::backend::{Signature, TensorSpec};
use crate::error::{Error, Result};
use crate::protocol::InferRequest;
use crate::tensor::{DataType, Tensor, TensorData};

/// Indices of the requested outputs in signature order of the request; `None` = all.
pub(crate) fn select_outputs(
    model: &str,
    signature: &Signature,
    request: &InferRequest,
) -> Result<Option<Vec<usize>>> {
    if request.outputs.is_empty() {
        return Ok(None);
    }
    request
        .outputs
        .iter()
        .map(|wanted| {
            signature
                .outputs
                .iter()
                .position(|o| o.name == wanted.name)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown output '{}': model '{model}' has outputs {}",
                        wanted.name,
                        names(&signature.outputs)
                    ))
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn names(specs: &[TensorSpec]) -> String {
    let quoted: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    quoted.join(", ")
}

/// Checks every input against the signature and returns them in signature order.
pub fn order_inputs(
    model: &str,
    signature: &Signature,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>> {
    let mut slots: Vec<Option<Tensor>> = vec![None; signature.inputs.len()];
    for input in inputs {
        let index = signature
            .inputs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown input '{}': model '{model}' takes {}",
                    input.name,
                    names(&signature.inputs)
                ))
            })?;
        let spec = &signature.inputs[index];
        if input.datatype() != spec.datatype {
            return Err(Error::invalid(format!(
                "input '{}': datatype {} does not match the model's {}",
                input.name,
                input.datatype().name(),
                spec.datatype.name()
            )));
        }
        let shape_ok = input.shape.len() == spec.shape.len()
            && input
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(got, want)| *want < 0 || *got as i64 == *want);
        if !shape_ok {
            return Err(Error::invalid(format!(
                "input '{}': shape {:?} does not match the model's {:?} (-1 = any size)",
                input.name, input.shape, spec.shape
            )));
        }
        if input.shape.contains(&0) {
            return Err(Error::invalid(format!(
                "input '{}': shape {:?} has no elements",
                input.name, input.shape
            )));
        }
        input.check_element_count()?;
        if slots[index].is_some() {
            return Err(Error::invalid(format!(
                "input '{}' is given more than once",
                input.name
            )));
        }
        slots[index] = Some(input);
    }
    slots
        .into_iter()
        .zip(&signature.inputs)
        .map(|(slot, spec)| {
            slot.ok_or_else(|| {
                Error::invalid(format!(
                    "missing input '{}' ({} {:?}) for model '{model}'",
                    spec.name,
                    spec.datatype.name(),
                    spec.shape
                ))
            })
        })
        .collect()
}

/// A synthetic input of batch 1 for each tensor of the signature.
pub fn synthetic_inputs(signature: &Signature) -> Vec<Tensor> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|d| if *d < 0 { 1 } else { *d as usize })
                .collect();
            let count = shape.iter().product::<usize>();
            let data = match spec.datatype {
                DataType::Bytes => TensorData::Bytes(vec![Bytes::from_static(b"warm up"); count]),
                dt => {
                    let zeros = vec![0u8; count * dt.element_size().unwrap_or(1)];
                    TensorData::from_raw(dt, &zeros, &spec.name)
                        .unwrap_or(TensorData::F32(vec![0.0; count]))
                }
            };
            Tensor {
                name: spec.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}
