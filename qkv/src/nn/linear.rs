//! Affine map y = x·Wᵀ + b over the last dimension.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::params::WeightInit;
use crate::Result;

/// Weight stored (out, in) as in PyTorch. Leading dimensions are flattened so the product is one large
/// matrix multiplication rather than a batch of small ones ([`crate::kernels::linear`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Parameters `weight` (out, in) and, with `bias`, `bias` (out) initialised to zero.
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool, init: WeightInit) -> Result<Self> {
        Self::with_init(vb, in_dim, out_dim, bias, init.for_matrix(out_dim, in_dim))
    }

    /// As [`new`](Self::new), the weight drawn from candle's `init` as it is.
    pub fn with_init(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool, init: Init) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
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
        crate::kernels::linear::linear(x, &self.weight, self.bias.as_ref())
    }
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
