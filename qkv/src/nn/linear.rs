//! Affine map y = x·Wᵀ + b over the last dimension.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::params::WeightInit;
use crate::{Error, Result};

/// Weight stored (out, in) as in PyTorch. Leading dimensions are flattened so the product is one large
/// matrix multiplication rather than a batch of small ones.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Parameters `weight` (out, in) and, with `bias`, `bias` (out) initialised to zero.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool, init: WeightInit) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init.for_matrix(out_dim, in_dim))?;
        let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias })
    }

    /// (out, in)
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// (…, in) → (…, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let dims = x.dims();
        if dims.last() != Some(&in_dim) {
            return Err(Error::shape("linear input", format!("(…, {in_dim})"), dims));
        }
        let rows = x.elem_count() / in_dim;
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?; // (N, out)
        let y = match &self.bias {
            Some(b) => crate::kernels::bias::add_bias(&y, b)?,
            None => y,
        };
        let mut out_dims = dims[..dims.len() - 1].to_vec();
        out_dims.push(out_dim);
        Ok(y.reshape(out_dims)?)
    }
}
