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
        let y = times_transposed(&x.reshape((rows, in_dim))?, &self.weight)?; // (N, out)
        let y = match &self.bias {
            Some(b) => crate::kernels::bias::add_bias(&y, b)?,
            None => y,
        };
        let mut out_dims = dims[..dims.len() - 1].to_vec();
        out_dims.push(out_dim);
        Ok(y.reshape(out_dims)?)
    }
}

/// x (N, K) · wᵀ for w stored (M, K), as Linear weights and embedding tables are: (N, M). For a few rows
/// against many (one sentence, a prompt, a logits row) it computes (w · xᵀ)ᵀ, which reads w in its stored
/// order; x · wᵀ made gemm repack the whole of w on every call, which dominated such products.
pub(crate) fn times_transposed(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (rows, out_dim) = (x.dim(0)?, w.dim(0)?);
    Ok(if rows > 1 && rows * 16 < out_dim { w.matmul(&x.t()?)?.t()?.contiguous()? } else { x.matmul(&w.t()?)? })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarMap;

    use super::*;
    use crate::nn::params::{named_vars, seeded_var_builder};

    /// Few rows take the W · xᵀ route, many the x · Wᵀ route: both give x · Wᵀ + b and its gradients.
    #[test]
    fn both_product_orders_agree_with_the_definition() {
        let vars = VarMap::new();
        let vb = seeded_var_builder(&vars, 3, DType::F32, &Device::Cpu);
        let linear = Linear::new(vb.pp("l"), 24, 96, true, WeightInit::Normal { std: 0.5 }).unwrap();
        let params = named_vars(&vars);
        for rows in [2, 5, 7, 40] {
            let x = Tensor::randn(0f32, 1.0, (rows, 24), &Device::Cpu).unwrap();
            let y = linear.forward(&x).unwrap();
            let reference =
                x.matmul(&linear.weight.t().unwrap()).unwrap().broadcast_add(linear.bias.as_ref().unwrap()).unwrap();
            let diff = (&y - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-5, "rows {rows}: {diff}");
            let weights = Tensor::randn(0f32, 1.0, (rows, 96), &Device::Cpu).unwrap();
            let grads = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let expected = (reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in &params {
                let (g, e) = (grads.get(var).unwrap(), expected.get(var).unwrap());
                let diff = (g - e).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff <= 1e-4, "rows {rows} {name}: {diff}");
            }
        }
    }
}
