//! Scaled dot-product attention fused into one op: per (batch, head), tiles of query rows compute scores,
//! the masked softmax and the weighted values without ever holding the (B, H, T, S) score tensor. The forward
//! pass keeps only each query row's log-sum-exp; the backward pass recomputes the probabilities tile by tile
//! (the approach of FlashAttention, Dao et al. 2022, on a CPU's caches instead of a GPU's shared memory).
//! Working memory is bounded by tile × S per thread whatever the sequence length.
//!
//! Heads are read where they lie: in (B, H, L, Dh) tensors, in key/value caches with spare rows, or as column
//! blocks of the projections' (B, L, H·Dh) outputs ([`attention_merged`]), which then need no head-splitting
//! copies and no merge afterwards.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{matmul, matmul_into, Mat};
use super::softmax::{masked_softmax_composed, softmax_row};
use super::{exp, row_offset, vectorized, Saved};
use crate::Result;

/// Query rows per tile: 128 rows × S keys of scores stay in L2 for S up to a few thousand.
const TILE: usize = 128;

/// softmax(scale·q·kᵀ + bias)·v for q (B, H, T, Dh), k and v (B, H, S, Dh); `bias` (0 or [`MASKED`]) broadcasts
/// to (B, H, T, S). Rows whose keys are all masked give zeros. Gradients flow to q, k and v.
///
/// Any layout whose last dimension is contiguous is read in place (a key/value cache's first S rows of
/// its capacity, a transposed view); others are copied first.
///
/// [`MASKED`]: super::MASKED
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (b, h, t, _) = q.dims4()?;
    let s = k.dim(2)?;
    let op = FusedAttention {
        scale: scale as f32,
        bias: broadcast_bias(bias, (b, h, t, s))?,
        heads: None,
        lse: Saved::empty(),
    };
    Ok(rows_in_place(q)?.apply_op3(&rows_in_place(k)?, &rows_in_place(v)?, op)?)
}

/// [`attention`] over the heads' column blocks: q (B, T, H·Dh), k and v (B, S, H·Dh) → (B, T, H·Dh), head i
/// being columns i·Dh..(i+1)·Dh — the layout of the Q/K/V projections' outputs and of the output projection's
/// input.
pub fn attention_merged(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    let s = k.dim(1)?;
    let bias = broadcast_bias(bias, (b, heads, t, s))?;
    let op = FusedAttention { scale: scale as f32, bias, heads: Some(heads), lse: Saved::empty() };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The composed reference for [`attention_merged`]: split the heads, attend, merge.
pub fn attention_merged_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let split = |x: &Tensor| -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        Ok(x.reshape((b, l, heads, c / heads))?.transpose(1, 2)?.contiguous()?)
    };
    let out = attention_composed(&split(q)?, &split(k)?, &split(v)?, bias, scale)?;
    let (b, _, t, _) = out.dims4()?;
    Ok(out.transpose(1, 2)?.reshape((b, t, q.dim(2)?))?)
}

fn broadcast_bias(bias: Option<&Tensor>, shape: (usize, usize, usize, usize)) -> Result<Option<Tensor>> {
    Ok(match bias {
        Some(bias) => Some(bias.broadcast_as(shape)?),
        None => None,
    })
}

/// `x` itself when its last dimension is contiguous, else a contiguous copy.
fn rows_in_place(x: &Tensor) -> Result<Tensor> {
    Ok(if x.stride().last() == Some(&1) || x.dims().last() == Some(&1) { x.clone() } else { x.contiguous()? })
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
    /// `Some(H)`: the arguments are (B, L, H·Dh) column blocks ([`attention_merged`]); `None`: (B, H, L, Dh).
    heads: Option<usize>,
    /// log Σ exp of each query row's scaled, masked scores; +∞ for a fully masked row.
    lse: Saved<Vec<f32>>,
}

const NAME: &str = "qkv-attention";

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    t: usize,
    s: usize,
    dh: usize,
}

/// Where head (b, h)'s (L, Dh) block lies in a buffer: from offset start + b·batch + h·head, rows `row` apart,
/// columns adjacent.
#[derive(Clone, Copy)]
struct Heads {
    start: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl Heads {
    /// A contiguous (B, H, L, Dh) buffer, or (B, L, H·Dh) with `merged`.
    fn contiguous(d: Dims, l: usize, merged: bool) -> Self {
        if merged {
            Heads { start: 0, batch: l * d.h * d.dh, head: d.dh, row: d.h * d.dh }
        } else {
            Heads { start: 0, batch: d.h * l * d.dh, head: l * d.dh, row: d.dh }
        }
    }

    /// The layout of an argument as candle hands it over.
    fn of(layout: &Layout, d: Dims, merged: bool) -> candle_core::Result<Self> {
        let stride = layout.stride();
        match (merged, stride) {
            (true, &[batch, row, 1]) => Ok(Heads { start: layout.start_offset(), batch, head: d.dh, row }),
            (false, &[batch, head, row, col]) if col == 1 || d.dh == 1 => {
                Ok(Heads { start: layout.start_offset(), batch, head, row })
            }
            _ => candle_core::bail!("{NAME}: strides {stride:?} do not keep a head's rows contiguous"),
        }
    }

    fn offset(&self, bh: usize, d: Dims) -> usize {
        self.start + (bh / d.h) * self.batch + (bh % d.h) * self.head
    }

    /// Head `bh`'s (rows, Dh) block in `data`.
    fn block<'a>(&self, data: &'a [f32], bh: usize, rows: usize, d: Dims) -> Mat<'a> {
        Mat::strided(&data[self.offset(bh, d)..], rows, d.dh, self.row)
    }

    /// Rows t0..t0+rows of head `bh`'s block in `data`.
    fn tile<'a>(&self, data: &'a [f32], bh: usize, t0: usize, rows: usize, d: Dims) -> Mat<'a> {
        Mat::strided(&data[self.offset(bh, d) + t0 * self.row..], rows, d.dh, self.row)
    }

    /// Row i of head `bh` in `data`.
    fn row<'a>(&self, data: &'a [f32], bh: usize, i: usize, d: Dims) -> &'a [f32] {
        let start = self.offset(bh, d) + i * self.row;
        &data[start..start + d.dh]
    }
}

/// A buffer that parallel tasks write disjoint blocks of.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: tasks only write the blocks of their own heads (see the `matmul_into` calls).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl FusedAttention {
    fn dims(&self, ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<Dims> {
        let (q, k, v) = (ql.dims(), kl.dims(), vl.dims());
        match self.heads {
            Some(h) => {
                if q.len() != 3 || k != v || k.len() != 3 || q[0] != k[0] || q[2] != k[2] || h == 0 || q[2] % h != 0 {
                    candle_core::bail!(
                        "{NAME}: q {q:?}, k {k:?}, v {v:?}; expected (B, T, C), (B, S, C), (B, S, C) with {h} heads"
                    )
                }
                Ok(Dims { b: q[0], h, t: q[1], s: k[1], dh: q[2] / h })
            }
            None => {
                if q.len() != 4 || k.len() != 4 || v != k || q[..2] != k[..2] || q[3] != k[3] {
                    candle_core::bail!(
                        "{NAME}: q {q:?}, k {k:?}, v {v:?}; expected (B, H, T, Dh), (B, H, S, Dh), (B, H, S, Dh)"
                    )
                }
                Ok(Dims { b: q[0], h: q[1], t: q[2], s: k[2], dh: q[3] })
            }
        }
    }

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

/// All the f32 values of a storage; the `Heads` layouts say where each head lies.
fn f32_values(storage: &CpuStorage) -> candle_core::Result<&[f32]> {
    match storage {
        CpuStorage::F32(values) => Ok(values),
        _ => candle_core::bail!("{NAME}: expected f32 storage"),
    }
}

/// [`f32_values`] of a tensor's storage.
fn tensor_values(storage: &candle_core::Storage) -> candle_core::Result<&[f32]> {
    match storage {
        candle_core::Storage::Cpu(cpu) => f32_values(cpu),
        _ => candle_core::bail!("{NAME}: expected a CPU tensor"),
    }
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
        let d = self.dims(ql, kl, vl)?;
        let merged = self.heads.is_some();
        let (qh, kh, vh) = (Heads::of(ql, d, merged)?, Heads::of(kl, d, merged)?, Heads::of(vl, d, merged)?);
        let (q, k, v) = (f32_values(qs)?, f32_values(ks)?, f32_values(vs)?);
        let oh = Heads::contiguous(d, d.t, merged);
        let mut out = vec![0f32; d.b * d.h * d.t * d.dh];
        let mut lse = vec![0f32; d.b * d.h * d.t];
        let out_ptr = Shared(out.as_mut_ptr());
        self.with_bias(|bias| {
            lse.par_chunks_mut(d.t.max(1)).enumerate().for_each(|(bh, lse)| {
                let (kb, vb) = (kh.block(k, bh, d.s, d), vh.block(v, bh, d.s, d));
                let mut scores = vec![0f32; TILE.min(d.t) * d.s];
                for t0 in (0..d.t).step_by(TILE) {
                    let rows = TILE.min(d.t - t0);
                    let p = &mut scores[..rows * d.s];
                    let q_tile = qh.tile(q, bh, t0, rows, d);
                    matmul(p, q_tile, kb.t(), false);
                    for (i, z) in p.chunks_mut(d.s).enumerate() {
                        lse[t0 + i] = softmax_row(z, bias_row(bias, bh * d.t + t0 + i, d.s), self.scale);
                    }
                    let dst = out_ptr;
                    // SAFETY: rows t0..t0+rows of head bh's block, written by this task alone, inside `out`.
                    unsafe {
                        matmul_into(
                            dst.0.add(oh.offset(bh, d) + t0 * oh.row),
                            oh.row,
                            Mat::new(p, rows, d.s),
                            vb,
                            false,
                        )
                    };
                }
            });
            Ok(())
        })?;
        self.lse.put(NAME, lse)?;
        let shape = match self.heads {
            Some(_) => Shape::from((d.b, d.t, d.h * d.dh)),
            None => Shape::from((d.b, d.h, d.t, d.dh)),
        };
        Ok((CpuStorage::F32(out), shape))
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
        let grad = grad.contiguous()?;
        let (qg, kg, vg, og, gg) = (
            q.storage_and_layout(),
            k.storage_and_layout(),
            v.storage_and_layout(),
            out.storage_and_layout(),
            grad.storage_and_layout(),
        );
        let d = self.dims(qg.1, kg.1, vg.1)?;
        let merged = self.heads.is_some();
        let (qh, kh, vh) = (Heads::of(qg.1, d, merged)?, Heads::of(kg.1, d, merged)?, Heads::of(vg.1, d, merged)?);
        let (oh, gh) = (Heads::of(og.1, d, merged)?, Heads::of(gg.1, d, merged)?);
        let (q, k, v) = (tensor_values(&qg.0)?, tensor_values(&kg.0)?, tensor_values(&vg.0)?);
        let (o, go) = (tensor_values(&og.0)?, tensor_values(&gg.0)?);
        // Gradients come out contiguous in the arguments' shapes.
        let (dqh, dkh) = (Heads::contiguous(d, d.t, merged), Heads::contiguous(d, d.s, merged));
        let mut dq = vec![0f32; d.b * d.h * d.t * d.dh];
        let mut dk = vec![0f32; d.b * d.h * d.s * d.dh];
        let mut dv = vec![0f32; dk.len()];
        let (dq_ptr, dk_ptr, dv_ptr) = (Shared(dq.as_mut_ptr()), Shared(dk.as_mut_ptr()), Shared(dv.as_mut_ptr()));
        self.with_bias(|bias| {
            (0..d.b * d.h).into_par_iter().for_each(|bh| {
                let (kb, vb) = (kh.block(k, bh, d.s, d), vh.block(v, bh, d.s, d));
                let rows_max = TILE.min(d.t);
                let (mut p, mut dp) = (vec![0f32; rows_max * d.s], vec![0f32; rows_max * d.s]);
                let (dq_ptr, dk_ptr, dv_ptr) = (dq_ptr, dk_ptr, dv_ptr);
                for t0 in (0..d.t).step_by(TILE) {
                    let rows = TILE.min(d.t - t0);
                    let (p, dp) = (&mut p[..rows * d.s], &mut dp[..rows * d.s]);
                    let (q_tile, go_tile) = (qh.tile(q, bh, t0, rows, d), gh.tile(go, bh, t0, rows, d));
                    matmul(p, q_tile, kb.t(), false);
                    for (i, z) in p.chunks_mut(d.s).enumerate() {
                        let row = bh * d.t + t0 + i;
                        self.recompute_row(z, bias_row(bias, row, d.s), lse[row]);
                    }
                    // SAFETY (all three `matmul_into`): head bh's blocks of dq, dk and dv, written by this task
                    // alone, inside their buffers.
                    unsafe {
                        let dv_head = dv_ptr.0.add(dkh.offset(bh, d));
                        matmul_into(dv_head, dkh.row, Mat::new(p, rows, d.s).t(), go_tile, true);
                    }
                    matmul(dp, go_tile, vb.t(), false);
                    for i in 0..rows {
                        let (gr, or) = (gh.row(go, bh, t0 + i, d), oh.row(o, bh, t0 + i, d));
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
                    unsafe {
                        let dq_tile = dq_ptr.0.add(dqh.offset(bh, d) + t0 * dqh.row);
                        matmul_into(dq_tile, dqh.row, Mat::new(dp, rows, d.s), kb, false);
                        let dk_head = dk_ptr.0.add(dkh.offset(bh, d));
                        matmul_into(dk_head, dkh.row, Mat::new(dp, rows, d.s).t(), q_tile, true);
                    }
                }
            });
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
    use crate::kernels::twin::{both, causal_bias, padding_bias, randn, relative_error};
    use candle_core::{DType, Device, Var};

    /// Kernel and composed twin agree on the output and the gradients of q, k and v (≤ 1e-5 relative): masks
    /// with fully masked rows, cross-attention shapes, and sequences longer than one tile.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let valid = Tensor::new(&[[1u8, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]], &Device::Cpu).unwrap();
        let padding = padding_bias(&valid);
        let cases = [
            ((2, 3, 5, 7, 4), Some(padding.clone())),
            ((2, 2, 7, 7, 8), Some(both(&padding, &causal_bias(7, 7)))),
            ((1, 2, 300, 300, 16), Some(causal_bias(300, 300))),
            ((3, 1, 130, 20, 8), None),
        ];
        for ((b, h, t, s, dh), bias) in cases {
            let (q, k, v) =
                (randn(&[b, h, t, dh], 1, 1.0), randn(&[b, h, s, dh], 2, 1.0), randn(&[b, h, s, dh], 3, 1.0));
            let r = randn(&[b, h, t, dh], 4, 1.0);
            let scale = 1.0 / (dh as f64).sqrt();
            let run = |f: fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, f64) -> Result<Tensor>| {
                f(&q, &k, &v, bias.as_ref(), scale).unwrap()
            };
            assert_twins_agree((&q, &k, &v), &r, run(attention), run(attention_composed), (t, s));
        }
    }

    /// A NaN in a key reaches every query row that attends to it, masked rows or not, so a corrupted parameter
    /// shows in the loss instead of being read as a fully masked row's zeros.
    #[test]
    fn nan_keys_propagate() {
        let q = Tensor::ones((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let v = Tensor::ones((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let mut keys = vec![0.5f32; 12];
        keys[0] = f32::NAN;
        let k = Tensor::from_vec(keys, (1, 1, 3, 4), &Device::Cpu).unwrap();
        let causal = causal_bias(3, 3);
        for bias in [None, Some(&causal)] {
            let y = attention(&q, &k, &v, bias, 0.5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(y.iter().all(|x| x.is_nan()), "{y:?}");
        }
    }

    /// Output and the gradients of q, k and v from a fused and a composed pass agree (≤ 1e-5 relative).
    fn assert_twins_agree(
        (q, k, v): (&Var, &Var, &Var),
        r: &Var,
        fused: Tensor,
        composed: Tensor,
        (t, s): (usize, usize),
    ) {
        let outputs = |y: Tensor| {
            let grads = (&y * r.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
            [y, grads.get(q).unwrap().clone(), grads.get(k).unwrap().clone(), grads.get(v).unwrap().clone()]
        };
        let (fused, composed) = (outputs(fused), outputs(composed));
        for (name, a, b) in ["output", "dq", "dk", "dv"].iter().zip(&fused).zip(&composed).map(|((n, a), b)| (n, a, b))
        {
            let err = relative_error(a, b);
            assert!(err <= 1e-5, "{:?} {name}: relative error {err:e}", (b.dims(), t, s));
        }
    }

    /// The column-block layout agrees with splitting the heads, attending and merging: output and gradients.
    #[test]
    fn merged_heads_match_composed_forward_and_backward() {
        let valid = Tensor::new(&[[1u8, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
        let padded_causal = both(&padding_bias(&valid), &causal_bias(7, 7));
        let cases = [((2, 3, 7, 7, 4), Some(padded_causal)), ((2, 2, 5, 7, 8), None)];
        for ((b, h, t, s, dh), bias) in cases {
            let (q, k, v) =
                (randn(&[b, t, h * dh], 5, 1.0), randn(&[b, s, h * dh], 6, 1.0), randn(&[b, s, h * dh], 7, 1.0));
            let r = randn(&[b, t, h * dh], 8, 1.0);
            let scale = 1.0 / (dh as f64).sqrt();
            type Merged = fn(&Tensor, &Tensor, &Tensor, usize, Option<&Tensor>, f64) -> Result<Tensor>;
            let run = |f: Merged| f(&q, &k, &v, h, bias.as_ref(), scale).unwrap();
            assert_twins_agree((&q, &k, &v), &r, run(attention_merged), run(attention_merged_composed), (t, s));
        }
    }

    /// Heads given as a transposed view (B, H, L, Dh) of (B, L, H, Dh) are read in place, with the same result.
    #[test]
    fn strided_heads_are_read_in_place() {
        let (b, h, t, dh) = (2, 3, 6, 4);
        let x = randn(&[b, t, h, dh], 9, 1.0);
        let view = x.transpose(1, 2).unwrap();
        let bias = causal_bias(t, t);
        let fused = attention(&view, &view, &view, Some(&bias), 0.5).unwrap();
        let copy = view.contiguous().unwrap();
        let composed = attention_composed(&copy, &copy, &copy, Some(&bias), 0.5).unwrap();
        assert!(relative_error(&fused, &composed) <= 1e-5);
    }
}
