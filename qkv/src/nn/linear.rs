//! Affine map y = x·Wᵀ + b over the last dimension.

use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::params::WeightInit;
use crate::kernels::reduced::{PackedLinear, PackedMatrix, Packing, RowActivation};
use crate::Result;

/// Weight stored (out, in) as in PyTorch. Leading dimensions are flattened so the product is one large
/// matrix multiplication rather than a batch of small ones ([`crate::kernels::linear`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight and bias in reduced precision, for inference; `weight` is then an empty placeholder, so the f32
    /// copy's memory is freed.
    packed: Option<Arc<PackedLinear>>,
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
        Ok(Self { weight, bias, packed: None })
    }

    /// (out, in); `None` once [`pack`](Self::pack)ed.
    pub fn weight(&self) -> Option<&Tensor> {
        self.packed.is_none().then_some(&self.weight)
    }

    /// Stores the weight as `packing` says for inference (f32 for decoding leaves it as it is, see
    /// [`Packing::keeps_f32`]); `name` is the parameter's, for errors. No gradient flows through a packed layer.
    pub fn pack(&mut self, packing: impl Into<Packing>, name: &str) -> Result<()> {
        let packing = packing.into();
        if packing.keeps_f32() || self.packed.is_some() {
            return Ok(());
        }
        let matrix = PackedMatrix::pack_tensor(&self.weight, packing, name)?;
        let bias = self.bias.take().map(|b| b.to_vec1::<f32>()).transpose()?;
        self.packed = Some(Arc::new(PackedLinear::new(matrix, bias)?));
        self.weight = Tensor::zeros(0, candle_core::DType::F32, self.weight.device())?;
        Ok(())
    }

    /// The bias (out), if the layer has one; `None` too once [`pack`](Self::pack) has moved it into the packed layer.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// A packed layer's (…, in) → (…, out) with `after` applied to the output in place inside the product;
    /// `None` for an unpacked layer (which takes [`forward`](Self::forward) and the activation as an op, so
    /// that gradients flow).
    pub fn forward_then(&self, x: &Tensor, after: RowActivation) -> Result<Option<Tensor>> {
        self.packed.as_ref().map(|packed| packed.forward_then(x, Some(after))).transpose()
    }

    /// (…, in) → (…, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(packed) = &self.packed {
            return packed.forward(x);
        }
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
