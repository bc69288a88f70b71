//! Softmax over the last dimension, composed and fused; the fused attention softmax also scales, adds the mask
//! bias, and zeroes rows whose every key is masked, in one pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::linear::sum_by_lanes;
use super::{as_f32, exp, fused, row_offset, row_width, storage_f32, vectorized, PARALLEL_MIN_ELEMENTS};
use crate::Result;

/// Added to the score of a masked key. exp(MASKED + s − max) underflows to exactly 0 in f32 for any score s
/// of realistic size, so masked keys receive exactly zero probability, as with PyTorch's −∞. A finite bias
/// rather than −∞ keeps a query whose keys are all masked away from NaN (−∞ − (−∞)); the attention softmax
/// recognises such rows by their bias and zeroes them.
pub const MASKED: f32 = -1e9;

/// [`MASKED`] as it must be written in `dtype` to stay finite: −1e9 overflows f16 (largest 65 504) to −∞, so f16
/// takes its most negative finite value, which still underflows exp to 0. bf16 has f32's range.
pub fn masked_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        _ => MASKED as f64,
    }
}

/// exp(xᵢ − m) / Σⱼ exp(xⱼ − m), m the row maximum — composed from differentiable primitives. The maximum is
/// detached: softmax is shift-invariant, so its gradient through m is zero anyway.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let exp = shifted.exp()?;
    Ok(exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?)
}

/// (xᵢ − m) − log Σⱼ exp(xⱼ − m), composed.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&log_sum)?)
}

/// softmax(scale·x + bias) over the last dimension of x (…, S); `bias` (0 or [`MASKED`]) broadcasts to x. A row
/// whose bias masks every entry comes out all zeros rather than uniform. The bias receives no gradient.
pub fn masked_softmax(x: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    if !fused(x) || bias.is_some_and(|b| !fused(b)) {
        return masked_softmax_composed(x, bias, scale);
    }
    let op = MaskedSoftmax { scale: scale as f32 };
    let x = x.contiguous()?;
    Ok(match bias {
        Some(bias) => x.apply_op2(&bias.broadcast_as(x.shape())?, op)?,
        None => x.apply_op1(op)?,
    })
}

/// The composed reference for [`masked_softmax`].
pub fn masked_softmax_composed(x: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let scores = if scale == 1.0 { x.clone() } else { (x * scale)? };
    let Some(bias) = bias else { return softmax(&scores) };
    let probs = softmax(&scores.broadcast_add(bias)?)?;
    // The masked value depends on the dtype (f16 cannot hold MASKED), so the threshold does too.
    let visible_rows = bias.max_keepdim(D::Minus1)?.gt(masked_value(bias.dtype()) / 2.0)?.to_dtype(probs.dtype())?;
    Ok(probs.broadcast_mul(&visible_rows)?)
}

#[derive(Clone, Copy)]
struct MaskedSoftmax {
    scale: f32,
}

const NAME: &str = "qkv-masked-softmax";

/// One row of scores z → softmax(scale·z + bias) in place, vectorised; returns the row's log-sum-exp. A row whose
/// bias masks every entry becomes zeros and returns +∞ (so exp(s − lse) recomputes it as zeros too).
pub(crate) fn softmax_row(z: &mut [f32], bias: Option<&[f32]>, scale: f32) -> f32 {
    vectorized(
        #[inline(always)]
        || {
            let n = z.len();
            // Whether a row is fully masked is read from the bias alone, so a NaN score is never mistaken for a
            // masked one: it propagates to the row's probabilities instead of turning them into zeros.
            let mut bias_max = f32::INFINITY;
            match bias {
                Some(b) => {
                    let b = &b[..n];
                    bias_max = f32::NEG_INFINITY;
                    for j in 0..n {
                        z[j] = z[j] * scale + b[j];
                        bias_max = bias_max.max(b[j]);
                    }
                }
                None => {
                    for v in z.iter_mut() {
                        *v *= scale;
                    }
                }
            }
            if bias_max <= MASKED / 2.0 {
                z.fill(0.0);
                return f32::INFINITY;
            }
            let mut max = f32::NEG_INFINITY;
            for &v in z.iter() {
                max = max.max(v);
            }
            for v in z.iter_mut() {
                *v = exp(*v - max);
            }
            let sum = sum_by_lanes(z, |v| v);
            let inv = 1.0 / sum;
            for v in z.iter_mut() {
                *v *= inv;
            }
            max + sum.ln()
        },
    )
}

impl MaskedSoftmax {
    fn forward(&self, x: &[f32], width: usize, bias: Option<(&[f32], &Layout)>) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        let row = |r: usize, xr: &[f32], yr: &mut [f32]| {
            let b = bias.map(|(values, layout)| {
                let start = row_offset(layout, r);
                &values[start..start + width]
            });
            yr.copy_from_slice(xr);
            softmax_row(yr, b, self.scale);
        };
        if x.len() >= PARALLEL_MIN_ELEMENTS {
            y.par_chunks_mut(width).zip(x.par_chunks(width)).enumerate().for_each(|(r, (yr, xr))| row(r, xr, yr));
        } else {
            y.chunks_mut(width).zip(x.chunks(width)).enumerate().for_each(|(r, (yr, xr))| row(r, xr, yr));
        }
        y
    }

    /// dx = scale · y ⊙ (g − Σ g⊙y), row by row.
    fn backward(&self, y: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let (y, grad) = (y.contiguous()?, grad.contiguous()?);
        let ((ys, yl), (gs, gl)) = (y.storage_and_layout(), grad.storage_and_layout());
        let (yv, gv) = (storage_f32(&ys, yl, NAME)?, storage_f32(&gs, gl, NAME)?);
        let width = row_width(yl);
        let mut dx = vec![0f32; yv.len()];
        let scale = self.scale;
        let row = |(dxr, (yr, gr)): (&mut [f32], (&[f32], &[f32]))| {
            let dot: f32 = yr.iter().zip(gr).map(|(y, g)| y * g).sum();
            dxr.iter_mut().zip(yr.iter().zip(gr)).for_each(|(d, (y, g))| *d = scale * y * (g - dot));
        };
        if yv.len() >= PARALLEL_MIN_ELEMENTS {
            dx.par_chunks_mut(width).zip(yv.par_chunks(width).zip(gv.par_chunks(width))).for_each(row);
        } else {
            dx.chunks_mut(width).zip(yv.chunks(width).zip(gv.chunks(width))).for_each(row);
        }
        Tensor::from_vec(dx, yl.shape(), y.device())
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.forward(as_f32(s, l, NAME)?, row_width(l), None);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.backward(res, grad)?))
    }
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(bias) = bs else { candle_core::bail!("{NAME}: the bias must be f32") };
        if bl.dims() != xl.dims() || bl.stride().last() != Some(&1) {
            candle_core::bail!("{NAME}: bias layout {:?}/{:?} for scores {:?}", bl.dims(), bl.stride(), xl.dims())
        }
        let y = self.forward(as_f32(xs, xl, NAME)?, row_width(xl), Some((bias, bl)));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.backward(res, grad)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{self, randn, relative_error};
    use candle_core::Device;

    #[test]
    fn composed_rows_sum_to_one_and_match_log_softmax() {
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [1000.0, 1000.0, -1000.0]], &Device::Cpu).unwrap();
        let p = softmax(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!((p[1][0] - 0.5).abs() < 1e-6 && p[1][2] == 0.0);
        let lp = log_softmax(&x).unwrap().exp().unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in p.iter().flatten().zip(lp.iter().flatten()) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    /// Kernel and composed twin agree, output and gradient ≤ 1e-5 relative, with and without a broadcast mask,
    /// including rows that are fully masked.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let valid = Tensor::new(&[[1u8, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], &Device::Cpu).unwrap();
        let padding = twin::padding_bias(&valid);
        let both = twin::both(&padding, &twin::causal_bias(5, 5));
        for (shape, bias, scale) in [
            (vec![3, 2, 5, 5], Some(both), 0.5),
            (vec![3, 4, 5, 5], Some(padding), 1.0),
            (vec![8, 300], None, 0.125),
            (vec![2, 4, 64, 64], None, 1.0),
        ] {
            let x = randn(&shape, 5, 3.0);
            let r = randn(&shape, 6, 1.0);
            let run = |f: fn(&Tensor, Option<&Tensor>, f64) -> Result<Tensor>| {
                let y = f(&x, bias.as_ref(), scale).unwrap();
                let grads = (&y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                (y, grads.get(&x).unwrap().clone())
            };
            let (fused, composed) = (run(masked_softmax), run(masked_softmax_composed));
            let (out_err, grad_err) = (relative_error(&fused.0, &composed.0), relative_error(&fused.1, &composed.1));
            assert!(out_err <= 1e-5 && grad_err <= 1e-5, "{shape:?}: output {out_err:e}, gradient {grad_err:e}");
        }
    }

    /// A NaN score is not a masked key: the row comes out NaN, whatever the mask, so NaN never hides.
    #[test]
    fn nan_scores_propagate() {
        let x = Tensor::new(&[[f32::NAN, 1.0], [f32::NAN, 0.5]], &Device::Cpu).unwrap();
        let bias = Tensor::new(&[[0f32, MASKED], [0.0, 0.0]], &Device::Cpu).unwrap();
        let y = masked_softmax(&x, Some(&bias), 1.0).unwrap().to_vec2::<f32>().unwrap();
        assert!(y.iter().flatten().all(|p| p.is_nan()), "{y:?}");
    }

    #[test]
    fn fully_masked_rows_are_zero() {
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let bias = Tensor::new(&[[0f32, MASKED], [MASKED, MASKED]], &Device::Cpu).unwrap();
        let y = masked_softmax(&x, Some(&bias), 1.0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![1.0, 0.0], vec![0.0, 0.0]]);
    }
}
