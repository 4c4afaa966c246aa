//! Tensor payloads: raw little-endian bytes with a dtype and a shape, checked on arrival.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// Element type of a tensor payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// bfloat16 (upper half of an f32).
    BF16,
    /// 32-bit unsigned integer.
    U32,
    /// 16-bit unsigned integer (positions within a chunk).
    U16,
    /// Raw bytes (packed codes, e.g. 2-bit values).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::U16 => 2,
            DType::U8 => 1,
        }
    }
}

/// A tensor on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorPayload {
    /// Element type.
    pub dtype: DType,
    /// Shape (row-major).
    #[serde(deserialize_with = "crate::bounded::shape")]
    pub shape: Vec<u64>,
    /// Little-endian element bytes.
    #[serde(
        serialize_with = "serde_bytes::serialize",
        deserialize_with = "crate::bounded::bytes"
    )]
    pub data: Vec<u8>,
}

impl TensorPayload {
    /// An f32 tensor.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Self {
        TensorPayload {
            dtype: DType::F32,
            shape: shape.iter().map(|&s| s as u64).collect(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A u32 tensor.
    pub fn from_u32(shape: &[usize], values: &[u32]) -> Self {
        TensorPayload {
            dtype: DType::U32,
            shape: shape.iter().map(|&s| s as u64).collect(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A u16 tensor.
    pub fn from_u16(shape: &[usize], values: &[u16]) -> Self {
        TensorPayload {
            dtype: DType::U16,
            shape: shape.iter().map(|&s| s as u64).collect(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A raw byte tensor.
    pub fn from_u8(shape: &[usize], values: Vec<u8>) -> Self {
        TensorPayload {
            dtype: DType::U8,
            shape: shape.iter().map(|&s| s as u64).collect(),
            data: values,
        }
    }

    /// A bf16 tensor from f32 values (round to nearest even).
    pub fn from_f32_as_bf16(shape: &[usize], values: &[f32]) -> Self {
        let data = values
            .iter()
            .flat_map(|v| {
                let b = v.to_bits();
                let rounded = if v.is_nan() {
                    (b >> 16) | 0x40
                } else {
                    (b + 0x7fff + ((b >> 16) & 1)) >> 16
                };
                (rounded as u16).to_le_bytes()
            })
            .collect();
        TensorPayload {
            dtype: DType::BF16,
            shape: shape.iter().map(|&s| s as u64).collect(),
            data,
        }
    }

    /// Number of elements the shape says, or an error on overflow.
    pub fn elements(&self) -> Result<usize, ProtocolError> {
        self.shape.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| acc.checked_mul(d))
                .ok_or_else(|| {
                    ProtocolError::BadTensor(format!("shape {:?} overflows", self.shape))
                })
        })
    }

    /// Checks that the bytes match dtype and shape.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let n = self.elements()?;
        let want = n
            .checked_mul(self.dtype.size())
            .ok_or_else(|| ProtocolError::BadTensor("size overflows".into()))?;
        if self.data.len() != want {
            return Err(ProtocolError::BadTensor(format!(
                "{:?} {:?} needs {want} bytes, got {}",
                self.dtype,
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// Checks the shape against what the receiver expects.
    pub fn expect_shape(&self, shape: &[usize]) -> Result<(), ProtocolError> {
        if self.shape.len() != shape.len()
            || self.shape.iter().zip(shape).any(|(&a, &b)| a != b as u64)
        {
            return Err(ProtocolError::BadTensor(format!(
                "shape {:?}, expected {shape:?}",
                self.shape
            )));
        }
        Ok(())
    }

    /// Decodes to f32 (from f32 or bf16), refusing NaN and infinity.
    pub fn to_f32(&self) -> Result<Vec<f32>, ProtocolError> {
        self.validate()?;
        let v: Vec<f32> = match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(ProtocolError::BadTensor(format!(
                    "{other:?} is not a float type"
                )))
            }
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(ProtocolError::BadTensor(format!("element {i} is {}", v[i])));
        }
        Ok(v)
    }

    /// Decodes to u16.
    pub fn to_u16(&self) -> Result<Vec<u16>, ProtocolError> {
        self.validate()?;
        if self.dtype != DType::U16 {
            return Err(ProtocolError::BadTensor(format!(
                "{:?} is not u16",
                self.dtype
            )));
        }
        Ok(self
            .data
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect())
    }

    /// The raw bytes of a u8 tensor.
    pub fn to_u8(&self) -> Result<&[u8], ProtocolError> {
        self.validate()?;
        if self.dtype != DType::U8 {
            return Err(ProtocolError::BadTensor(format!(
                "{:?} is not u8",
                self.dtype
            )));
        }
        Ok(&self.data)
    }

    /// Decodes to u32.
    pub fn to_u32(&self) -> Result<Vec<u32>, ProtocolError> {
        self.validate()?;
        if self.dtype != DType::U32 {
            return Err(ProtocolError::BadTensor(format!(
                "{:?} is not u32",
                self.dtype
            )));
        }
        Ok(self
            .data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}
