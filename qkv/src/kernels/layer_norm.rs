//! LayerNorm as one kernel: the forward pass saves each row's mean and reciprocal standard deviation, and the
//! backward pass produces dx, dγ and dβ in one sweep over the rows.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::linear::sum_by_lanes;
use super::{as_f32, fused, storage_f32, Saved, PARALLEL_MIN_ELEMENTS};
use crate::Result;

/// y = (x − mean) / √(var + ε) · γ + β over the last dimension of x (…, C), with γ and β of shape (C).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) && fused(weight) && fused(bias) {
        let op = LayerNormOp { eps: eps as f32, saved: Saved::empty() };
        Ok(x.contiguous()?.apply_op3(weight, bias, op)?)
    } else {
        layer_norm_composed(x, weight, bias, eps)
    }
}

/// The same function from primitive ops; the reference the kernel is tested against.
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normalized = centered.broadcast_div(&(variance + eps)?.sqrt()?)?;
    Ok(normalized.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// Per-row statistics kept from the forward pass for the backward pass.
struct Statistics {
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

struct LayerNormOp {
    eps: f32,
    saved: Saved<Statistics>,
}

const NAME: &str = "qkv-layer-norm";

/// Mean and 1/√(var + ε) of one row, two-pass so a large common offset does not cost precision.
/// Each sum in 16 lanes ([`sum_by_lanes`]): the serial sum made LayerNorm 9% of MiniLM's int8 encoding time.
#[inline(always)]
fn statistics(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum_by_lanes(row, |v| v) / n;
    let var = sum_by_lanes(row, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (as_f32(xs, xl, NAME)?, as_f32(ws, wl, NAME)?, as_f32(bs, bl, NAME)?);
        let c = w.len();
        if xl.dims().last() != Some(&c) || b.len() != c {
            candle_core::bail!("{NAME}: input {:?} with weight ({c}) and bias ({})", xl.dims(), b.len())
        }
        let rows = x.len() / c;
        let mut y = vec![0f32; x.len()];
        let mut stats = vec![(0f32, 0f32); rows];
        let eps = self.eps;
        let norm_row = |(xr, yr): (&[f32], &mut [f32]), stat: &mut (f32, f32)| {
            super::vectorized(
                #[inline(always)]
                || {
                    let (mean, rstd) = statistics(xr, eps);
                    for j in 0..c {
                        yr[j] = (xr[j] - mean) * rstd * w[j] + b[j];
                    }
                    *stat = (mean, rstd);
                },
            )
        };
        if x.len() >= PARALLEL_MIN_ELEMENTS {
            x.par_chunks(c).zip(y.par_chunks_mut(c)).zip(stats.par_iter_mut()).for_each(|(rows, s)| norm_row(rows, s));
        } else {
            x.chunks(c).zip(y.chunks_mut(c)).zip(stats.iter_mut()).for_each(|(rows, s)| norm_row(rows, s));
        }
        let (mean, rstd) = stats.into_iter().unzip();
        self.saved.put(NAME, Statistics { mean, rstd })?;
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    /// With x̂ = (x − mean)·rstd and g = dy·γ:  dx = rstd · (g − mean(g) − x̂ · mean(g·x̂)),
    /// dγ = Σ_rows dy·x̂,  dβ = Σ_rows dy.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = weight.elem_count();
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let ((xs, xl), (ws, wl), (gs, gl)) =
            (x.storage_and_layout(), weight.storage_and_layout(), grad.storage_and_layout());
        let (xv, wv, dy) = (storage_f32(&xs, xl, NAME)?, storage_f32(&ws, wl, NAME)?, storage_f32(&gs, gl, NAME)?);
        let (dx, dw, db) = self.saved.with(NAME, |saved| Ok(backward(xv, wv, dy, c, &saved.mean, &saved.rstd)))?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, c, device)?),
            Some(Tensor::from_vec(db, c, device)?),
        ))
    }
}

type Grads = (Vec<f32>, Vec<f32>, Vec<f32>);

fn backward(x: &[f32], w: &[f32], dy: &[f32], c: usize, mean: &[f32], rstd: &[f32]) -> Grads {
    let mut dx = vec![0f32; x.len()];
    // Each row writes its dx and adds into (dγ, dβ) partial sums; parallel chunks keep their own partials.
    let row = |r: usize, xr: &[f32], dyr: &[f32], dxr: &mut [f32], dw: &mut [f32], db: &mut [f32]| {
        let (m, s) = (mean[r], rstd[r]);
        let (mut sum_g, mut sum_gx) = (0f32, 0f32);
        for j in 0..c {
            let xhat = (xr[j] - m) * s;
            let g = dyr[j] * w[j];
            sum_g += g;
            sum_gx += g * xhat;
            dw[j] += dyr[j] * xhat;
            db[j] += dyr[j];
        }
        let (mean_g, mean_gx) = (sum_g / c as f32, sum_gx / c as f32);
        for j in 0..c {
            let xhat = (xr[j] - m) * s;
            dxr[j] = s * (dyr[j] * w[j] - mean_g - xhat * mean_gx);
        }
    };
    // Partial (dγ, dβ) per chunk of rows, summed below: eight chunks in parallel, or one on this thread.
    let rows = x.len() / c;
    let chunk_rows = if x.len() >= PARALLEL_MIN_ELEMENTS { rows.div_ceil(8) } else { rows }.max(1);
    let chunk = |(k, dx_chunk): (usize, &mut [f32])| {
        let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
        for (i, dxr) in dx_chunk.chunks_mut(c).enumerate() {
            let r = k * chunk_rows + i;
            row(r, &x[r * c..(r + 1) * c], &dy[r * c..(r + 1) * c], dxr, &mut dw, &mut db);
        }
        (dw, db)
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = if chunk_rows < rows {
        dx.par_chunks_mut(chunk_rows * c).enumerate().map(chunk).collect()
    } else {
        vec![chunk((0, &mut dx))]
    };
    let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};

    /// Kernel and composed twin agree on the output and on all three gradients, ≤ 1e-5 relative.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        for (shape, offset) in [(vec![3, 5, 16], 0.0), (vec![4, 64, 128], 50.0), (vec![1, 7], -3.0)] {
            let c = *shape.last().unwrap();
            let x = randn(&shape, 1, 2.0);
            let x = candle_core::Var::from_tensor(&(x.as_tensor() + offset).unwrap()).unwrap();
            let w = randn(&[c], 2, 1.0);
            let b = randn(&[c], 3, 1.0);
            let r = randn(&shape, 4, 1.0);
            let run = |f: fn(&Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>| {
                let y = f(&x, &w, &b, 1e-5).unwrap();
                let grads = (&y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |v: &candle_core::Var| grads.get(v).unwrap().clone();
                (y, g(&x), g(&w), g(&b))
            };
            let fused = run(layer_norm);
            let composed = run(layer_norm_composed);
            for (name, a, b) in [
                ("output", &fused.0, &composed.0),
                ("dx", &fused.1, &composed.1),
                ("dγ", &fused.2, &composed.2),
                ("dβ", &fused.3, &composed.3),
            ] {
                let err = relative_error(a, b);
                assert!(err <= 1e-5, "{shape:?} {name}: relative error {err:e}");
            }
        }
    }
}
