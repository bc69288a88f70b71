//! Scaled dot-product attention fused into one op: per (batch, head), tiles of query rows compute scores,
//! the masked softmax and the weighted values without ever holding the (B, H, T, S) score tensor. The forward
//! pass keeps only each query row's log-sum-exp; the backward pass recomputes the probabilities tile by tile
//! (the approach of FlashAttention, Dao et al. 2022, on a CPU's caches instead of a GPU's shared memory).
//! Working memory is bounded by tile × S per thread whatever the sequence length.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{matmul, Mat};
use super::softmax::{masked_softmax_composed, softmax_row};
use super::{as_f32, exp, row_offset, storage_f32, vectorized, Saved};
use crate::Result;

/// Query rows per tile: 128 rows × S keys of scores stay in L2 for S up to a few thousand.
const TILE: usize = 128;

/// softmax(scale·q·kᵀ + bias)·v for q (B, H, T, Dh), k and v (B, H, S, Dh); `bias` (0 or [`MASKED`]) broadcasts
/// to (B, H, T, S). Rows whose keys are all masked give zeros. Gradients flow to q, k and v.
///
/// k and v may be views with spare rows between heads (a [`crate::nn::KvCache`]'s first S of its capacity): they
/// are read in place rather than copied.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, h, t, _) = q.dims4()?;
    let s = k.dim(2)?;
    let bias = match bias {
        Some(bias) => Some(bias.broadcast_as((b, h, t, s))?),
        None => None,
    };
    let op = FusedAttention { scale: scale as f32, bias, lse: Saved::empty() };
    Ok(q.contiguous()?.apply_op3(&rows_per_head(k)?, &rows_per_head(v)?, op)?)
}

/// `x` itself when each head's rows are contiguous and heads are evenly spaced, else a contiguous copy.
fn rows_per_head(x: &Tensor) -> Result<Tensor> {
    Ok(match head_spacing(x.layout()) {
        Some(_) => x.clone(),
        None => x.contiguous()?,
    })
}

/// For a (B, H, S, Dh) layout whose (S, Dh) blocks are contiguous and evenly spaced: the distance between
/// consecutive heads' first elements.
fn head_spacing(layout: &Layout) -> Option<usize> {
    let (dims, stride) = (layout.dims(), layout.stride());
    let [b, h, s, dh] = *dims else { return None };
    let rows_contiguous = (stride[3] == 1 || dh == 1) && (stride[2] == dh || s == 1);
    let spacing = if h > 1 { stride[1] } else { stride[0] };
    let heads_even = (h == 1 || b == 1 || stride[0] == h * stride[1]) && (b * h == 1 || spacing >= s * dh);
    (rows_contiguous && heads_even).then_some(if b * h == 1 { s * dh } else { spacing })
}

/// The values of a (B, H, S, Dh) tensor laid out as [`head_spacing`] accepts, from its first element, and the
/// spacing between heads.
fn heads_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{NAME}: expected f32 storage") };
    match head_spacing(layout) {
        Some(spacing) => Ok((&values[layout.start_offset()..], spacing)),
        None => candle_core::bail!("{NAME}: keys/values with strides {:?} are not rows per head", layout.stride()),
    }
}

/// The composed reference: matmul, masked softmax, matmul.
pub fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let weights = masked_softmax_composed(&q.matmul(&k.t()?)?, bias, scale)?;
    Ok(weights.matmul(v)?)
}

struct FusedAttention {
    scale: f32,
    /// Broadcast to (B, H, T, S).
    bias: Option<Tensor>,
    /// log Σ exp of each query row's scaled, masked scores; +∞ for a fully masked row.
    lse: Saved<Vec<f32>>,
}

const NAME: &str = "qkv-attention";

#[derive(Clone, Copy)]
struct Dims {
    heads: usize, // B·H
    t: usize,
    s: usize,
    dh: usize,
}

fn dims(ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<Dims> {
    let (q, k, v) = (ql.dims(), kl.dims(), vl.dims());
    if q.len() != 4 || k.len() != 4 || v != k || q[..2] != k[..2] || q[3] != k[3] {
        candle_core::bail!("{NAME}: q {q:?}, k {k:?}, v {v:?}; expected (B, H, T, Dh), (B, H, S, Dh), (B, H, S, Dh)")
    }
    Ok(Dims { heads: q[0] * q[1], t: q[2], s: k[2], dh: q[3] })
}

impl FusedAttention {
    /// Runs `f` with the bias values and layout, if there is a bias.
    fn with_bias<R>(
        &self,
        f: impl FnOnce(Option<(&[f32], &Layout)>) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        match &self.bias {
            None => f(None),
            Some(bias) => {
                let (storage, layout) = bias.storage_and_layout();
                let candle_core::Storage::Cpu(CpuStorage::F32(values)) = &*storage else {
                    candle_core::bail!("{NAME}: the bias must be an f32 CPU tensor")
                };
                f(Some((values, layout)))
            }
        }
    }

    /// Probabilities of a row from its scores and the saved log-sum-exp, in place.
    fn recompute_row(&self, z: &mut [f32], bias: Option<&[f32]>, lse: f32) {
        let scale = self.scale;
        vectorized(
            #[inline(always)]
            || match bias {
                Some(b) => {
                    let b = &b[..z.len()];
                    for j in 0..z.len() {
                        z[j] = exp(z[j] * scale + b[j] - lse);
                    }
                }
                None => {
                    for v in z.iter_mut() {
                        *v = exp(*v * scale - lse);
                    }
                }
            },
        )
    }
}

/// The bias row for global query row `row`, if any.
fn bias_row<'a>(bias: Option<(&'a [f32], &Layout)>, row: usize, s: usize) -> Option<&'a [f32]> {
    bias.map(|(values, layout)| {
        let start = row_offset(layout, row);
        &values[start..start + s]
    })
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = dims(ql, kl, vl)?;
        let q = as_f32(qs, ql, NAME)?;
        let ((k, k_spacing), (v, v_spacing)) = (heads_f32(ks, kl)?, heads_f32(vs, vl)?);
        let mut out = vec![0f32; d.heads * d.t * d.dh];
        let mut lse = vec![0f32; d.heads * d.t];
        self.with_bias(|bias| {
            out.par_chunks_mut(d.t * d.dh).zip(lse.par_chunks_mut(d.t)).enumerate().for_each(|(bh, (out, lse))| {
                let (q, k, v) = (&q[bh * d.t * d.dh..], &k[bh * k_spacing..], &v[bh * v_spacing..]);
                let mut scores = vec![0f32; TILE.min(d.t) * d.s];
                for t0 in (0..d.t).step_by(TILE) {
                    let rows = TILE.min(d.t - t0);
                    let p = &mut scores[..rows * d.s];
                    matmul(p, Mat::new(&q[t0 * d.dh..], rows, d.dh), Mat::new(k, d.s, d.dh).t(), false);
                    for (i, z) in p.chunks_mut(d.s).enumerate() {
                        lse[t0 + i] = softmax_row(z, bias_row(bias, bh * d.t + t0 + i, d.s), self.scale);
                    }
                    matmul(
                        &mut out[t0 * d.dh..(t0 + rows) * d.dh],
                        Mat::new(p, rows, d.s),
                        Mat::new(v, d.s, d.dh),
                        false,
                    );
                }
            });
            Ok(())
        })?;
        self.lse.put(NAME, lse)?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    /// With P the probabilities and O the output, per tile of query rows:
    /// dV += Pᵀ·dO;  dP = dO·Vᵀ;  dS = scale · P ⊙ (dP − rowsum(dO ⊙ O));  dQ = dS·K;  dK += dSᵀ·Q.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.lse.with(NAME, |lse| self.backward(q, k, v, out, grad, lse))
    }
}

impl FusedAttention {
    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
        lse: &[f32],
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let device = q.device().clone();
        let (k, v, grad) = (k.contiguous()?, v.contiguous()?, grad.contiguous()?);
        let (qg, kg, vg, og, gg) = (
            q.storage_and_layout(),
            k.storage_and_layout(),
            v.storage_and_layout(),
            out.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let d = dims(qg.1, kg.1, vg.1)?;
        let q = storage_f32(&qg.0, qg.1, NAME)?;
        let k = storage_f32(&kg.0, kg.1, NAME)?;
        let v = storage_f32(&vg.0, vg.1, NAME)?;
        let o = storage_f32(&og.0, og.1, NAME)?;
        let go = storage_f32(&gg.0, gg.1, NAME)?;
        let mut dq = vec![0f32; q.len()];
        let mut dk = vec![0f32; k.len()];
        let mut dv = vec![0f32; v.len()];
        let (td, sd) = (d.t * d.dh, d.s * d.dh);
        self.with_bias(|bias| {
            dq.par_chunks_mut(td).zip(dk.par_chunks_mut(sd).zip(dv.par_chunks_mut(sd))).enumerate().for_each(
                |(bh, (dq, (dk, dv)))| {
                    let (q, o, go) =
                        (&q[bh * td..(bh + 1) * td], &o[bh * td..(bh + 1) * td], &go[bh * td..(bh + 1) * td]);
                    let (k, v) = (&k[bh * sd..(bh + 1) * sd], &v[bh * sd..(bh + 1) * sd]);
                    let rows_max = TILE.min(d.t);
                    let (mut p, mut dp) = (vec![0f32; rows_max * d.s], vec![0f32; rows_max * d.s]);
                    for t0 in (0..d.t).step_by(TILE) {
                        let rows = TILE.min(d.t - t0);
                        let (p, dp) = (&mut p[..rows * d.s], &mut dp[..rows * d.s]);
                        let (q_tile, o_tile, go_tile) = (&q[t0 * d.dh..], &o[t0 * d.dh..], &go[t0 * d.dh..]);
                        matmul(p, Mat::new(q_tile, rows, d.dh), Mat::new(k, d.s, d.dh).t(), false);
                        for (i, z) in p.chunks_mut(d.s).enumerate() {
                            let row = bh * d.t + t0 + i;
                            self.recompute_row(z, bias_row(bias, row, d.s), lse[row]);
                        }
                        matmul(dv, Mat::new(p, rows, d.s).t(), Mat::new(go_tile, rows, d.dh), true);
                        matmul(dp, Mat::new(go_tile, rows, d.dh), Mat::new(v, d.s, d.dh).t(), false);
                        for i in 0..rows {
                            let (gr, or) = (&go_tile[i * d.dh..(i + 1) * d.dh], &o_tile[i * d.dh..(i + 1) * d.dh]);
                            let delta: f32 = gr.iter().zip(or).map(|(g, o)| g * o).sum();
                            let (pr, dpr) = (&p[i * d.s..(i + 1) * d.s], &mut dp[i * d.s..(i + 1) * d.s]);
                            let scale = self.scale;
                            vectorized(
                                #[inline(always)]
                                || {
                                    for j in 0..dpr.len() {
                                        dpr[j] = scale * pr[j] * (dpr[j] - delta);
                                    }
                                },
                            );
                        }
                        matmul(
                            &mut dq[t0 * d.dh..(t0 + rows) * d.dh],
                            Mat::new(dp, rows, d.s),
                            Mat::new(k, d.s, d.dh),
                            false,
                        );
                        matmul(dk, Mat::new(dp, rows, d.s).t(), Mat::new(q_tile, rows, d.dh), true);
                    }
                },
            );
            Ok(())
        })?;
        let (qs, ks) = (qg.1.shape().clone(), kg.1.shape().clone());
        Ok((
            Some(Tensor::from_vec(dq, qs, &device)?),
            Some(Tensor::from_vec(dk, ks.clone(), &device)?),
            Some(Tensor::from_vec(dv, ks, &device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};
    use crate::nn::AttentionMask;
    use candle_core::Device;

    /// Kernel and composed twin agree on the output and the gradients of q, k and v (≤ 1e-5 relative): masks
    /// with fully masked rows, cross-attention shapes, and sequences longer than one tile.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let valid = Tensor::new(&[[1u8, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
        let padding = AttentionMask::padding(&valid).unwrap();
        let causal_300 = AttentionMask::causal(300, 300, &Device::Cpu).unwrap();
        let cases = [
            ((2, 3, 5, 7, 4), Some(padding.bias().clone())),
            (
                (2, 2, 7, 7, 8),
                Some(padding.and(&AttentionMask::causal(7, 7, &Device::Cpu).unwrap()).unwrap().bias().clone()),
            ),
            ((1, 2, 300, 300, 16), Some(causal_300.bias().clone())),
            ((3, 1, 130, 20, 8), None),
        ];
        for ((b, h, t, s, dh), bias) in cases {
            let (q, k, v) =
                (randn(&[b, h, t, dh], 1, 1.0), randn(&[b, h, s, dh], 2, 1.0), randn(&[b, h, s, dh], 3, 1.0));
            let r = randn(&[b, h, t, dh], 4, 1.0);
            let scale = 1.0 / (dh as f64).sqrt();
            let run = |f: fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, f64) -> Result<Tensor>| {
                let y = f(&q, &k, &v, bias.as_ref(), scale).unwrap();
                let grads = (&y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
                [y, grads.get(&q).unwrap().clone(), grads.get(&k).unwrap().clone(), grads.get(&v).unwrap().clone()]
            };
            let (fused, composed) = (run(attention), run(attention_composed));
            for (name, a, b) in
                ["output", "dq", "dk", "dv"].iter().zip(&fused).zip(&composed).map(|((n, a), b)| (n, a, b))
            {
                let err = relative_error(a, b);
                assert!(err <= 1e-5, "{:?} {name}: relative error {err:e}", (b.dims(), t, s));
            }
        }
    }
}
