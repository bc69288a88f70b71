//! Attention masks: which keys each query may see.
//!
//! A mask is kept as a 0/1 "visible" tensor broadcastable to (B, H, T, S) and turned once into an additive
//! bias (0 where visible, [`MASKED`] where not; finite, see [`crate::kernels::softmax`]).

use candle_core::{DType, Device, Tensor};

pub use crate::kernels::{masked_value, MASKED};
use crate::{Error, Result};

/// Which keys each query may attend to, kept both as 0/1 visibility and as the additive bias on the scores.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    /// (B|1, 1, T|1, S) u8, 1 = may attend.
    visible: Tensor,
    /// (B|1, 1, T|1, S) f32, 0 or MASKED.
    bias: Tensor,
}

impl AttentionMask {
    /// From a tensor of shape (T, S), (B, T, S) or (B, 1, T, S) whose non-zero entries mark keys a query may
    /// attend to. Size-1 dimensions broadcast.
    pub fn from_visible(visible: &Tensor) -> Result<Self> {
        let visible = match visible.rank() {
            2 => visible.unsqueeze(0)?.unsqueeze(0)?,
            3 => visible.unsqueeze(1)?,
            4 if visible.dim(1)? == 1 => visible.clone(),
            _ => return Err(Error::shape("attention mask", "(T, S), (B, T, S) or (B, 1, T, S)", visible.dims())),
        };
        let visible = visible.ne(&visible.zeros_like()?)?; // u8
        let bias = visible.to_dtype(DType::F32)?.affine(-MASKED as f64, MASKED as f64)?;
        Ok(Self { visible, bias })
    }

    /// Causal mask for `t` queries that are the last `t` of `s` positions: query i sees keys 0 ..= i + (s − t).
    /// With t = s this is the decoder's "no peeking at later tokens" mask.
    pub fn causal(t: usize, s: usize, device: &Device) -> Result<Self> {
        if t > s {
            return Err(Error::config("causal mask", format!("{t} queries over {s} keys"), "queries ≤ keys"));
        }
        let offset = s - t;
        let visible: Vec<u8> = (0..t).flat_map(|i| (0..s).map(move |j| u8::from(j <= i + offset))).collect();
        Self::from_visible(&Tensor::from_vec(visible, (t, s), device)?)
    }

    /// Padding mask from `key_valid` (B, S), non-zero for real tokens: every query may see every real key.
    pub fn padding(key_valid: &Tensor) -> Result<Self> {
        if key_valid.rank() != 2 {
            return Err(Error::shape("key_valid", "(B, S)", key_valid.dims()));
        }
        Self::from_visible(&key_valid.unsqueeze(1)?) // (B, 1, S): one row shared by all queries
    }

    /// Keys visible under both masks.
    pub fn and(&self, other: &Self) -> Result<Self> {
        Self::from_visible(&self.visible.broadcast_mul(&other.visible)?)
    }

    /// Additive bias (B|1, 1, T|1, S): 0 or [`MASKED`].
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The bias in `dtype` for scores computed in it: 0 or [`masked_value`], finite in f16 and bf16 too.
    pub fn bias_as(&self, dtype: DType) -> Result<Tensor> {
        if dtype == DType::F32 {
            return Ok(self.bias.clone());
        }
        let masked = self.visible.to_dtype(DType::F32)?.affine(-masked_value(dtype), masked_value(dtype))?;
        Ok(masked.to_dtype(dtype)?)
    }

    /// (B|1, 1, T|1, S) u8, 1 where a query may attend.
    pub fn visible(&self) -> &Tensor {
        &self.visible
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_with_offset_sees_the_cached_prefix() {
        let m = AttentionMask::causal(2, 4, &Device::Cpu).unwrap();
        let v = m.visible().squeeze(0).unwrap().squeeze(0).unwrap().to_vec2::<u8>().unwrap();
        assert_eq!(v, vec![vec![1, 1, 1, 0], vec![1, 1, 1, 1]]);
        assert!(AttentionMask::causal(3, 2, &Device::Cpu).is_err());
    }

    #[test]
    fn padding_and_causal_combine() {
        let valid = Tensor::new(&[[1u8, 1, 0], [0, 1, 1]], &Device::Cpu).unwrap();
        let m =
            AttentionMask::padding(&valid).unwrap().and(&AttentionMask::causal(3, 3, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(m.visible().dims(), &[2, 1, 3, 3]);
        // Sequence 1, query 0 sees only key 0, which is padding: its row is empty.
        let visible = m.visible().flatten_all().unwrap().to_vec1::<u8>().unwrap();
        assert_eq!(&visible[9..12], &[0, 0, 0]);
        let bias = m.bias().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&bias[..3], &[0.0, MASKED, MASKED]);
    }

    /// f16 has no −1e9: its bias takes the most negative finite f16, so a fully masked row stays NaN-free.
    #[test]
    fn reduced_precision_biases_stay_finite() {
        let m = AttentionMask::causal(3, 3, &Device::Cpu).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let bias = m.bias_as(dtype).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let bias = bias.to_vec1::<f32>().unwrap();
            assert!(bias.iter().all(|b| b.is_finite()), "{dtype:?}: {bias:?}");
            assert_eq!((bias[0], bias[1] < -6e4), (0.0, true), "{dtype:?}: {bias:?}");
            // Without the dtype-aware value, f16 would hold −∞.
            let naive = m.bias().to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            let naive = naive.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(naive[1].is_infinite(), dtype == DType::F16);
        }
    }

    #[test]
    fn bad_rank_is_an_error() {
        let x = Tensor::ones(4, DType::U8, &Device::Cpu).unwrap();
        assert!(AttentionMask::from_visible(&x).is_err());
        assert!(AttentionMask::padding(&x).is_err());
    }
}
