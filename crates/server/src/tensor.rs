//! Tensors as the protocol sees them: an OIP datatype, a shape and a typed, flat buffer.
//!
//! Everything that crosses the wire (JSON `data`, the binary extension, gRPC typed contents and
//! `raw_*_contents`) is turned into a [`Tensor`] here, and back. Raw buffers are little-endian, as
//! the protocol says; BYTES elements in raw form carry a 4-byte little-endian length prefix each.

use bytes::Bytes;
use half::f16;

use crate::error::{Error, Result};

/// The OIP v2 tensor datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl DataType {
    /// Parses the protocol name (`"FP32"`, `"INT64"`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => Self::Bool,
            "UINT8" => Self::U8,
            "UINT16" => Self::U16,
            "UINT32" => Self::U32,
            "UINT64" => Self::U64,
            "INT8" => Self::I8,
            "INT16" => Self::I16,
            "INT32" => Self::I32,
            "INT64" => Self::I64,
            "FP16" => Self::F16,
            "FP32" => Self::F32,
            "FP64" => Self::F64,
            "BYTES" => Self::Bytes,
            _ => return None,
        })
    }

    /// The protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bytes => "BYTES",
        }
    }

    /// Size of one element in raw form; `None` for BYTES (length-prefixed, variable).
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Bytes => return None,
        })
    }
}

/// A flat, typed element buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

/// Applies `$body` to the vector inside any variant.
macro_rules! each_variant {
    ($value:expr, $v:ident => $body:expr) => {
        match $value {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F16($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}
pub(crate) use each_variant;

impl TensorData {
    /// An empty buffer of `datatype` with room for `capacity` elements.
    pub fn with_capacity(datatype: DataType, capacity: usize) -> Self {
        match datatype {
            DataType::Bool => Self::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => Self::U8(Vec::with_capacity(capacity)),
            DataType::U16 => Self::U16(Vec::with_capacity(capacity)),
            DataType::U32 => Self::U32(Vec::with_capacity(capacity)),
            DataType::U64 => Self::U64(Vec::with_capacity(capacity)),
            DataType::I8 => Self::I8(Vec::with_capacity(capacity)),
            DataType::I16 => Self::I16(Vec::with_capacity(capacity)),
            DataType::I32 => Self::I32(Vec::with_capacity(capacity)),
            DataType::I64 => Self::I64(Vec::with_capacity(capacity)),
            DataType::F16 => Self::F16(Vec::with_capacity(capacity)),
            DataType::F32 => Self::F32(Vec::with_capacity(capacity)),
            DataType::F64 => Self::F64(Vec::with_capacity(capacity)),
            DataType::Bytes => Self::Bytes(Vec::with_capacity(capacity)),
        }
    }

    pub fn datatype(&self) -> DataType {
        match self {
            Self::Bool(_) => DataType::Bool,
            Self::U8(_) => DataType::U8,
            Self::U16(_) => DataType::U16,
            Self::U32(_) => DataType::U32,
            Self::U64(_) => DataType::U64,
            Self::I8(_) => DataType::I8,
            Self::I16(_) => DataType::I16,
            Self::I32(_) => DataType::I32,
            Self::I64(_) => DataType::I64,
            Self::F16(_) => DataType::F16,
            Self::F32(_) => DataType::F32,
            Self::F64(_) => DataType::F64,
            Self::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        each_variant!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends all elements of `other` (same datatype) to `self`.
    pub fn extend_from(&mut self, other: &TensorData) -> bool {
        match (self, other) {
            (Self::Bool(a), Self::Bool(b)) => a.extend_from_slice(b),
            (Self::U8(a), Self::U8(b)) => a.extend_from_slice(b),
            (Self::U16(a), Self::U16(b)) => a.extend_from_slice(b),
            (Self::U32(a), Self::U32(b)) => a.extend_from_slice(b),
            (Self::U64(a), Self::U64(b)) => a.extend_from_slice(b),
            (Self::I8(a), Self::I8(b)) => a.extend_from_slice(b),
            (Self::I16(a), Self::I16(b)) => a.extend_from_slice(b),
            (Self::I32(a), Self::I32(b)) => a.extend_from_slice(b),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(b),
            (Self::F16(a), Self::F16(b)) => a.extend_from_slice(b),
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(b),
            (Self::F64(a), Self::F64(b)) => a.extend_from_slice(b),
            (Self::Bytes(a), Self::Bytes(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    /// Elements `[start, end)` as a new buffer.
    pub fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            Self::Bool(v) => Self::Bool(v[start..end].to_vec()),
            Self::U8(v) => Self::U8(v[start..end].to_vec()),
            Self::U16(v) => Self::U16(v[start..end].to_vec()),
            Self::U32(v) => Self::U32(v[start..end].to_vec()),
            Self::U64(v) => Self::U64(v[start..end].to_vec()),
            Self::I8(v) => Self::I8(v[start..end].to_vec()),
            Self::I16(v) => Self::I16(v[start..end].to_vec()),
            Self::I32(v) => Self::I32(v[start..end].to_vec()),
            Self::I64(v) => Self::I64(v[start..end].to_vec()),
            Self::F16(v) => Self::F16(v[start..end].to_vec()),
            Self::F32(v) => Self::F32(v[start..end].to_vec()),
            Self::F64(v) => Self::F64(v[start..end].to_vec()),
            Self::Bytes(v) => Self::Bytes(v[start..end].to_vec()),
        }
    }

    /// Decodes a little-endian raw buffer (binary extension, gRPC raw contents).
    pub fn from_raw(datatype: DataType, raw: &[u8], tensor: &str) -> Result<Self> {
        fn chunks<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            raw.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
                .collect()
        }
        if let Some(size) = datatype.element_size()
            && !raw.len().is_multiple_of(size)
        {
            return Err(Error::invalid(format!(
                "input '{tensor}': raw data of {} bytes is not a whole number of {} elements ({size} bytes each)",
                raw.len(),
                datatype.name()
            )));
        }
        Ok(match datatype {
            DataType::Bool => Self::Bool(raw.iter().map(|b| *b != 0).collect()),
            DataType::U8 => Self::U8(raw.to_vec()),
            DataType::I8 => Self::I8(raw.iter().map(|b| *b as i8).collect()),
            DataType::U16 => Self::U16(chunks(raw, u16::from_le_bytes)),
            DataType::I16 => Self::I16(chunks(raw, i16::from_le_bytes)),
            DataType::F16 => Self::F16(chunks(raw, f16::from_le_bytes)),
            DataType::U32 => Self::U32(chunks(raw, u32::from_le_bytes)),
            DataType::I32 => Self::I32(chunks(raw, i32::from_le_bytes)),
            DataType::F32 => Self::F32(chunks(raw, f32::from_le_bytes)),
            DataType::U64 => Self::U64(chunks(raw, u64::from_le_bytes)),
            DataType::I64 => Self::I64(chunks(raw, i64::from_le_bytes)),
            DataType::F64 => Self::F64(chunks(raw, f64::from_le_bytes)),
            DataType::Bytes => {
                let mut out = Vec::new();
                let mut rest = raw;
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err(Error::invalid(format!(
                            "input '{tensor}': BYTES raw data ends inside a 4-byte length prefix"
                        )));
                    }
                    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    if rest.len() - 4 < len {
                        return Err(Error::invalid(format!(
                            "input '{tensor}': BYTES element declares {len} bytes but only {} remain",
                            rest.len() - 4
                        )));
                    }
                    out.push(Bytes::copy_from_slice(&rest[4..4 + len]));
                    rest = &rest[4 + len..];
                }
                Self::Bytes(out)
            }
        })
    }

    /// Appends the little-endian raw form to `out`.
    pub fn write_raw(&self, out: &mut Vec<u8>) {
        fn put<const N: usize, T: Copy>(out: &mut Vec<u8>, v: &[T], f: impl Fn(T) -> [u8; N]) {
            out.reserve(v.len() * N);
            for x in v {
                out.extend_from_slice(&f(*x));
            }
        }
        match self {
            Self::Bool(v) => out.extend(v.iter().map(|b| *b as u8)),
            Self::U8(v) => out.extend_from_slice(v),
            Self::I8(v) => out.extend(v.iter().map(|b| *b as u8)),
            Self::U16(v) => put(out, v, u16::to_le_bytes),
            Self::I16(v) => put(out, v, i16::to_le_bytes),
            Self::F16(v) => put(out, v, f16::to_le_bytes),
            Self::U32(v) => put(out, v, u32::to_le_bytes),
            Self::I32(v) => put(out, v, i32::to_le_bytes),
            Self::F32(v) => put(out, v, f32::to_le_bytes),
            Self::U64(v) => put(out, v, u64::to_le_bytes),
            Self::I64(v) => put(out, v, i64::to_le_bytes),
            Self::F64(v) => put(out, v, f64::to_le_bytes),
            Self::Bytes(v) => {
                for b in v {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    /// The raw form as a new buffer.
    pub fn to_raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_raw(&mut out);
        out
    }
}

/// A named tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Fails unless the element count matches the shape.
    pub fn check_element_count(&self) -> Result<()> {
        let expected = element_count(&self.shape).ok_or_else(|| {
            Error::invalid(format!(
                "input '{}': shape {:?} is too large",
                self.name, self.shape
            ))
        })?;
        if expected != self.data.len() {
            return Err(Error::invalid(format!(
                "input '{}': shape {:?} needs {expected} elements but {} were given",
                self.name,
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// Product of the dimensions, `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))
}

/// Converts a wire shape (signed) to dimensions, naming the tensor on a negative one.
pub fn shape_from_wire(shape: &[i64], tensor: &str) -> Result<Vec<usize>> {
    shape
        .iter()
        .map(|d| {
            usize::try_from(*d).map_err(|_| {
                Error::invalid(format!(
                    "input '{tensor}': shape {shape:?} has a negative dimension"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_every_datatype() {
        let cases = vec![
            TensorData::Bool(vec![true, false]),
            TensorData::U8(vec![0, 255]),
            TensorData::U16(vec![1, 65535]),
            TensorData::U32(vec![7, u32::MAX]),
            TensorData::U64(vec![9, u64::MAX]),
            TensorData::I8(vec![-128, 127]),
            TensorData::I16(vec![-3, 3]),
            TensorData::I32(vec![i32::MIN, 5]),
            TensorData::I64(vec![i64::MIN, 5]),
            TensorData::F16(vec![f16::from_f32(1.5), f16::from_f32(-2.0)]),
            TensorData::F32(vec![1.25, -0.5]),
            TensorData::F64(vec![1e300, -0.0]),
            TensorData::Bytes(vec![Bytes::from_static(b"hi"), Bytes::new()]),
        ];
        for data in cases {
            let raw = data.to_raw();
            let back = TensorData::from_raw(data.datatype(), &raw, "x").unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn raw_rejects_partial_elements_and_truncated_bytes() {
        let err = TensorData::from_raw(DataType::F32, &[0, 0, 0], "x").unwrap_err();
        assert!(err.to_string().contains("input 'x'"), "{err}");
        let err = TensorData::from_raw(DataType::Bytes, &[5, 0, 0, 0, b'a'], "y").unwrap_err();
        assert!(err.to_string().contains("declares 5 bytes"), "{err}");
    }

    #[test]
    fn element_count_checks_shape() {
        let t = Tensor {
            name: "in".into(),
            shape: vec![2, 2],
            data: TensorData::F32(vec![1.0; 3]),
        };
        let err = t.check_element_count().unwrap_err().to_string();
        assert!(err.contains("needs 4 elements but 3"), "{err}");
        assert_eq!(element_count(&[usize::MAX, 2]), None);
    }
}
