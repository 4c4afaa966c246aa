//! Activations and activation gradients on the wire: f32, bf16, or 8-bit with one scale per
//! tensor. fp16 is not offered: its range loses small gradients.

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::tensor::{DType, TensorPayload};

/// How activations travel between stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActEncoding {
    /// Exact f32.
    #[default]
    F32,
    /// bfloat16, round to nearest even: 2 bytes per value.
    Bf16,
    /// Signed 8-bit with one f32 scale per tensor (`x ≈ q * scale`, `scale = max|x| / 127`):
    /// 1 byte per value.
    Int8,
}

impl ActEncoding {
    /// Bytes per value on the wire.
    pub fn bytes(self) -> usize {
        match self {
            ActEncoding::F32 => 4,
            ActEncoding::Bf16 => 2,
            ActEncoding::Int8 => 1,
        }
    }

    /// Parses `f32`, `bf16` or `int8`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(ActEncoding::F32),
            "bf16" => Ok(ActEncoding::Bf16),
            "int8" => Ok(ActEncoding::Int8),
            other => Err(format!(
                "unknown activation encoding {other:?}: use f32, bf16 or int8"
            )),
        }
    }
}

/// An activation tensor `[rows, width]` in some encoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// Encoding of `tensor`.
    pub encoding: ActEncoding,
    /// Per-tensor scale (int8 only; 1 otherwise).
    pub scale: f32,
    /// The values: f32, bf16 or u8 (two's-complement i8) payload.
    pub tensor: TensorPayload,
}

impl Activation {
    /// Encodes finite f32 values of shape `shape`.
    pub fn encode(shape: &[usize], values: &[f32], encoding: ActEncoding) -> Self {
        match encoding {
            ActEncoding::F32 => Activation {
                encoding,
                scale: 1.0,
                tensor: TensorPayload::from_f32(shape, values),
            },
            ActEncoding::Bf16 => Activation {
                encoding,
                scale: 1.0,
                tensor: TensorPayload::from_f32_as_bf16(shape, values),
            },
            ActEncoding::Int8 => {
                let max = values.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                let q = values
                    .iter()
                    .map(|x| ((x / scale).round().clamp(-127.0, 127.0) as i8) as u8)
                    .collect();
                Activation {
                    encoding,
                    scale,
                    tensor: TensorPayload::from_u8(shape, q),
                }
            }
        }
    }

    /// Decodes to f32, checking the payload matches the encoding, the scale is a positive finite
    /// number and every value is finite.
    pub fn decode(&self) -> Result<Vec<f32>, ProtocolError> {
        let want = match self.encoding {
            ActEncoding::F32 => DType::F32,
            ActEncoding::Bf16 => DType::BF16,
            ActEncoding::Int8 => DType::U8,
        };
        if self.tensor.dtype != want {
            return Err(ProtocolError::BadTensor(format!(
                "{:?} activation carried as {:?}",
                self.encoding, self.tensor.dtype
            )));
        }
        match self.encoding {
            ActEncoding::F32 | ActEncoding::Bf16 => self.tensor.to_f32(),
            ActEncoding::Int8 => {
                if !(self.scale.is_finite() && self.scale > 0.0) {
                    return Err(ProtocolError::BadTensor(format!(
                        "int8 scale {} is not a positive finite number",
                        self.scale
                    )));
                }
                Ok(self
                    .tensor
                    .to_u8()?
                    .iter()
                    .map(|&b| b as i8 as f32 * self.scale)
                    .collect())
            }
        }
    }

    /// Decodes and checks the shape is exactly `shape`.
    pub fn decode_shaped(&self, shape: &[usize]) -> Result<Vec<f32>, ProtocolError> {
        self.tensor.expect_shape(shape)?;
        self.decode()
    }

    /// Bytes of the payload on the wire.
    pub fn wire_bytes(&self) -> usize {
        self.tensor.data.len() + 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Vec<f32> {
        (0..64).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect()
    }

    #[test]
    fn f32_is_exact() {
        let v = values();
        let a = Activation::encode(&[8, 8], &v, ActEncoding::F32);
        assert_eq!(a.decode().unwrap(), v);
    }

    #[test]
    fn bf16_and_int8_stay_within_their_precision() {
        let v = values();
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let b = Activation::encode(&[8, 8], &v, ActEncoding::Bf16)
            .decode()
            .unwrap();
        for (x, y) in v.iter().zip(&b) {
            assert!((x - y).abs() <= x.abs() / 128.0, "{x} vs {y}");
        }
        let q = Activation::encode(&[8, 8], &v, ActEncoding::Int8);
        assert_eq!(q.tensor.data.len(), 64);
        let q = q.decode().unwrap();
        for (x, y) in v.iter().zip(&q) {
            assert!((x - y).abs() <= max / 254.0 + 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn mismatched_or_bad_payloads_are_refused() {
        let v = values();
        let mut a = Activation::encode(&[8, 8], &v, ActEncoding::Int8);
        a.scale = f32::NAN;
        assert!(a.decode().is_err());
        let mut b = Activation::encode(&[8, 8], &v, ActEncoding::Bf16);
        b.encoding = ActEncoding::F32;
        assert!(b.decode().is_err());
        let c = Activation::encode(&[8, 8], &v, ActEncoding::F32);
        assert!(c.decode_shaped(&[4, 8]).is_err());
        let zeros = Activation::encode(&[2], &[0.0, 0.0], ActEncoding::Int8);
        assert_eq!(zeros.decode().unwrap(), vec![0.0, 0.0]);
    }
}
