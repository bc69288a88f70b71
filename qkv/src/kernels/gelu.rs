//! GELU (Hendrycks & Gimpel, 2016) as element-wise kernels with their derivatives, using an erf and exp that
//! vectorise (candle's `gelu_erf` calls scalar libm `erff` per element).

use candle_core::Tensor;

use super::{exp, fused, Elementwise};
use crate::Result;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f32 = 0.398_942_3;
/// √(2/π)
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const TANH_CUBIC: f32 = 0.044_715;

/// erf(x) by Abramowitz & Stegun 7.1.26: |error| ≤ 1.5e-7.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// x·Φ(x) = ½x(1 + erf(x/√2))
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// Φ(x) + x·φ(x)
#[inline(always)]
fn gelu_erf_grad(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * FRAC_1_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

/// tanh(u) = 1 − 2/(e^{2u} + 1), saturating cleanly at ±1.
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

/// ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x)))
}

#[inline(always)]
fn gelu_tanh_grad(x: f32) -> f32 {
    let t = tanh(SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x));
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_CUBIC * x * x)
}

/// GELU with the exact normal CDF (BERT's `gelu`).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    apply(x, false)
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh_approx(x: &Tensor) -> Result<Tensor> {
    apply(x, true)
}

/// GELU (exact) over `y` in place, vectorised: what [`gelu`] computes, bit for bit, for a product's epilogue.
pub fn gelu_in_place(y: &mut [f32]) {
    in_place(y, gelu_erf)
}

/// GELU (tanh approximation) over `y` in place: what [`gelu_tanh_approx`] computes, bit for bit.
pub fn gelu_tanh_in_place(y: &mut [f32]) {
    in_place(y, gelu_tanh)
}

fn in_place(y: &mut [f32], f: impl Fn(f32) -> f32) {
    super::vectorized(
        #[inline(always)]
        || {
            for v in y.iter_mut() {
                *v = f(*v);
            }
        },
    )
}

fn apply(x: &Tensor, tanh: bool) -> Result<Tensor> {
    if !fused(x) {
        return gelu_composed(x, tanh);
    }
    let x = x.contiguous()?;
    Ok(match tanh {
        false => x.apply_op1(Elementwise { name: NAME, f: gelu_erf, df: gelu_erf_grad })?,
        true => x.apply_op1(Elementwise { name: NAME, f: gelu_tanh, df: gelu_tanh_grad })?,
    })
}

/// candle's own ops, the reference for the kernels.
pub fn gelu_composed(x: &Tensor, tanh: bool) -> Result<Tensor> {
    Ok(if tanh { x.gelu()? } else { x.gelu_erf()? })
}

const NAME: &str = "qkv-gelu";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};

    #[test]
    fn erf_is_within_abramowitz_stegun_bound() {
        for (x, want) in [(0.0f32, 0.0f32), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (-2.0, -0.995_322_3), (4.0, 1.0)] {
            assert!((erf(x) - want).abs() <= 2e-7, "erf({x}) = {}", erf(x));
        }
    }

    /// Kernels and candle's ops agree, output and gradient ≤ 1e-5 relative.
    #[test]
    fn kernels_match_composed_forward_and_backward() {
        for tanh in [false, true] {
            for shape in [vec![7, 33], vec![12, 64, 512]] {
                let x = randn(&shape, 7, 3.0);
                let r = randn(&shape, 8, 1.0);
                let fused = if tanh { gelu_tanh_approx(&x) } else { gelu(&x) }.unwrap();
                let composed = gelu_composed(&x, tanh).unwrap();
                let grad = |y: &Tensor| {
                    (y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone()
                };
                let (out_err, grad_err) =
                    (relative_error(&fused, &composed), relative_error(&grad(&fused), &grad(&composed)));
                assert!(out_err <= 1e-5 && grad_err <= 1e-5, "tanh={tanh} {shape:?}: {out_err:e}, {grad_err:e}");
            }
        }
    }
}
