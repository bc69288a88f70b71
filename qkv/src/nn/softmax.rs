//! Softmax and log-softmax over the last dimension, composed from differentiable primitives.
//!
//! candle's fused `softmax_last_dim` has no backward pass, and `candle_nn::ops::softmax` back-propagates through
//! its max-subtraction. Subtracting a *detached* row maximum is exact (softmax is shift-invariant) and spares
//! the backward pass a gradient that is zero anyway.

use candle_core::{Tensor, D};

use crate::Result;

/// exp(xᵢ − m) / Σⱼ exp(xⱼ − m), with m the row maximum.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let exp = shifted.exp()?;
    Ok(exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?)
}

/// (xᵢ − m) − log Σⱼ exp(xⱼ − m).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn rows_sum_to_one_and_match_log_softmax() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [1000.0, 1000.0, -1000.0]], &Device::Cpu).unwrap();
        let p = softmax(&x).unwrap().to_vec2::<f32>().unwrap();
        for row in &p {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        assert!((p[1][0] - 0.5).abs() < 1e-6 && p[1][2] == 0.0);
        let lp = log_softmax(&x).unwrap().exp().unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in p.iter().flatten().zip(lp.iter().flatten()) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn gradient_matches_analytic_jacobian() {
        // d/dx Σ wᵢ pᵢ = p ⊙ (w − p·w)
        let x = Var::new(&[0.3f32, -1.2, 2.0, 0.5], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, -2.0, 0.5, 3.0], &Device::Cpu).unwrap();
        let p = softmax(x.as_tensor()).unwrap();
        let grads = (&p * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(&x).unwrap().to_vec1::<f32>().unwrap();
        let p = p.to_vec1::<f32>().unwrap();
        let w = w.to_vec1::<f32>().unwrap();
        let pw: f32 = p.iter().zip(&w).map(|(a, b)| a * b).sum();
        for i in 0..4 {
            assert!((g[i] - p[i] * (w[i] - pw)).abs() < 1e-6);
        }
    }
}
