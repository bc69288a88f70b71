//! ReLU as an element-wise kernel with its derivative: one pass each way. candle's backward pass builds the
//! derivative from a comparison against a zeros tensor, a dtype conversion and a product, four passes over
//! the feed-forward layer's widest activations.

use candle_core::Tensor;

use super::{fused, Elementwise};
use crate::Result;

const NAME: &str = "qkv-relu";

/// max(x, 0), with NaN kept NaN (f32::max would turn it into 0 and hide it).
#[inline(always)]
pub(crate) fn relu_value(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// max(x, 0) element-wise; the gradient is 1 where x > 0 and 0 elsewhere (PyTorch's choice at 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return Ok(x.relu()?);
    }
    let op = Elementwise { name: NAME, f: relu_value, df: |x: f32| if x > 0.0 { 1.0 } else { 0.0 } };
    Ok(x.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};

    /// Kernel and candle's relu agree exactly, output and gradient (tolerance 0: no arithmetic but selection),
    /// and a NaN input stays NaN.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        for shape in [vec![7, 33], vec![12, 64, 512]] {
            let (x, r) = (randn(&shape, 7, 3.0), randn(&shape, 8, 1.0));
            let (fused, composed) = (relu(&x).unwrap(), x.relu().unwrap());
            let grad = |y: &Tensor| {
                (y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone()
            };
            assert_eq!(relative_error(&fused, &composed), 0.0, "{shape:?}");
            assert_eq!(relative_error(&grad(&fused), &grad(&composed)), 0.0, "{shape:?}");
        }
        let nan = relu(&Tensor::new(&[f32::NAN, -1.0, 2.0], &candle_core::Device::Cpu).unwrap()).unwrap();
        let nan = nan.to_vec1::<f32>().unwrap();
        assert!(nan[0].is_nan() && nan[1..] == [0.0, 2.0], "{nan:?}");
    }
}
