//! The output projection fused with cross-entropy: hidden states h (N, C) and the projection's weight W (V, C)
//! → the mean loss of softmax(h·Wᵀ), without the (N, V) logits ever being a tensor.
//!
//! Unfused, a translation step writes N × V logits (65 MB per shard at V = 8 000), reads them for the loss,
//! again for its gradient, writes that gradient, has candle zero and add a gradient buffer of the same size,
//! and reads it twice more for the projection's backward products. Here the rows go through in blocks that
//! stay in cache: a block's logits, their loss, their gradient in place, and its share of ∂h and ∂W. A
//! training pass computes the gradients during the forward pass (the loss is a sum over rows, so they are
//! final once each row has been seen) and the backward pass only scales them by the incoming gradient.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cross_entropy::{row_gradient, row_loss, row_statistics};
use super::matmul::{matmul, Mat};
use super::{as_f32, storage_f32, Saved};
use crate::Result;

const NAME: &str = "qkv-linear-cross-entropy";

/// Rows per block. At V = 8 000, C = 128 (2 threads, Intel): 64 rows 60 ms a 2 048-row pass with its gradients,
/// 128 rows 49 ms, 256 rows 56 ms; fewer rows repeat gemm's packing of W more often, more spill the cache.
const BLOCK: usize = 128;

/// Mean over kept rows of (1 − ε)·(−log p_target) + ε·(−mean_v log p_v), p = softmax(h·Wᵀ). hidden (N, C) and
/// weight (V, C) f32, targets (N) u32 already validated. With `gradients`, the forward pass also computes ∂h
/// and ∂W (a training step); without, a backward pass recomputes them.
pub fn fused(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
    label_smoothing: f64,
    gradients: bool,
) -> Result<Tensor> {
    let op = LinearCrossEntropyOp { ignore_index, smoothing: label_smoothing as f32, gradients, saved: Saved::empty() };
    Ok(hidden.contiguous()?.apply_op3(&weight.contiguous()?, &targets.contiguous()?, op)?)
}

struct LinearCrossEntropyOp {
    ignore_index: Option<u32>,
    smoothing: f32,
    gradients: bool,
    /// ∂h and ∂W of the loss itself (incoming gradient 1), from a forward pass with `gradients`.
    saved: Saved<(Vec<f32>, Vec<f32>)>,
}

/// The mean loss over kept rows, and its ∂h, ∂W.
struct Pass {
    loss: f32,
    gradients: Option<(Vec<f32>, Vec<f32>)>,
}

impl LinearCrossEntropyOp {
    fn kept(&self, target: u32) -> bool {
        self.ignore_index != Some(target)
    }

    /// The whole computation over h (N, C), W (V, C): rows split into one contiguous range per thread, each
    /// with its own ∂W, summed at the end.
    fn pass(&self, h: &[f32], w: &[f32], targets: &[u32], c: usize, gradients: bool) -> Pass {
        let n = targets.len();
        let count = targets.iter().filter(|&&t| self.kept(t)).count().max(1);
        let tasks = rayon::current_num_threads().min(n.div_ceil(BLOCK)).max(1);
        let rows_per_task = n.div_ceil(tasks).max(1);
        let parts: Vec<(f64, Vec<f32>, Vec<f32>)> = (0..n.div_ceil(rows_per_task))
            .into_par_iter()
            .map(|task| {
                let rows = task * rows_per_task..((task + 1) * rows_per_task).min(n);
                self.rows(h, w, targets, rows, c, gradients.then_some(1.0 / count as f32))
            })
            .collect();
        let loss = (parts.iter().map(|p| p.0).sum::<f64>() / count as f64) as f32;
        if !gradients {
            return Pass { loss, gradients: None };
        }
        let mut dh = Vec::with_capacity(n * c);
        let mut dw: Option<Vec<f32>> = None;
        for (_, dh_part, dw_part) in parts {
            dh.extend_from_slice(&dh_part);
            match &mut dw {
                None => dw = Some(dw_part),
                Some(sum) => sum.iter_mut().zip(&dw_part).for_each(|(s, d)| *s += d),
            }
        }
        Pass { loss, gradients: Some((dh, dw.unwrap_or_default())) }
    }

    /// Rows `rows` of h: their summed loss and, with `scale` (1 / kept rows), their ∂h rows and ∂W share.
    fn rows(
        &self,
        h: &[f32],
        w: &[f32],
        targets: &[u32],
        rows: std::ops::Range<usize>,
        c: usize,
        scale: Option<f32>,
    ) -> (f64, Vec<f32>, Vec<f32>) {
        let v = w.len() / c;
        let weight = Mat::new(w, v, c);
        let mut logits = vec![0f32; BLOCK.min(rows.len()) * v];
        let (mut dh, mut dw) = match scale {
            Some(_) => (vec![0f32; rows.len() * c], vec![0f32; v * c]),
            None => (Vec::new(), Vec::new()),
        };
        let mut total = 0f64;
        for start in rows.clone().step_by(BLOCK) {
            let m = BLOCK.min(rows.end - start);
            let hb = Mat::new(&h[start * c..(start + m) * c], m, c);
            let block = &mut logits[..m * v];
            matmul(block, hb, weight.t(), false);
            for (row, &t) in block.chunks_mut(v).zip(&targets[start..start + m]) {
                if !self.kept(t) {
                    row.fill(0.0);
                    continue;
                }
                let statistics = row_statistics(row);
                total += row_loss(row, t, statistics, self.smoothing) as f64;
                if let Some(scale) = scale {
                    row_gradient(row, t, statistics.0, self.smoothing, scale);
                }
            }
            if scale.is_some() {
                let block = Mat::new(block, m, v);
                let offset = (start - rows.start) * c;
                matmul(&mut dh[offset..offset + m * c], block, weight, false);
                matmul(&mut dw, block.t(), hb, true);
            }
        }
        (total, dh, dw)
    }
}

impl CustomOp3 for LinearCrossEntropyOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (h, w) = (as_f32(hs, hl, NAME)?, as_f32(ws, wl, NAME)?);
        let CpuStorage::U32(targets) = ts else { candle_core::bail!("{NAME}: targets must be u32") };
        let Some((start, end)) = tl.contiguous_offsets() else { candle_core::bail!("{NAME}: strided targets") };
        let targets = &targets[start..end];
        let (n, c) = hl.shape().dims2()?;
        if n != targets.len() || wl.shape().dims2()?.1 != c {
            candle_core::bail!("{NAME}: hidden {:?}, weight {:?}, targets {:?}", hl.dims(), wl.dims(), tl.dims());
        }
        let pass = self.pass(h, w, targets, c, self.gradients);
        if let Some(gradients) = pass.gradients {
            self.saved.put(NAME, gradients)?;
        }
        Ok((CpuStorage::F32(vec![pass.loss]), Shape::from(())))
    }

    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_scalar::<f32>()?;
        let (dh, dw) = match self.saved.take() {
            Some(gradients) => gradients,
            None => {
                let (hidden, weight) = (hidden.contiguous()?, weight.contiguous()?);
                let (hs, hl) = hidden.storage_and_layout();
                let (ws, wl) = weight.storage_and_layout();
                let (h, w) = (storage_f32(&hs, hl, NAME)?, storage_f32(&ws, wl, NAME)?);
                let pass = self.pass(h, w, &targets.to_vec1::<u32>()?, hl.dims()[1], true);
                pass.gradients.expect("a pass asked for gradients returns them")
            }
        };
        let scaled = |mut d: Vec<f32>, like: &Tensor| {
            if g != 1.0 {
                d.iter_mut().for_each(|x| *x *= g);
            }
            Tensor::from_vec(d, like.shape(), like.device())
        };
        Ok((Some(scaled(dh, hidden)?), Some(scaled(dw, weight)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cross_entropy::{self, tests::test_targets};
    use crate::kernels::twin::{randn, relative_error};

    /// Kernel and composed twin (linear, then the composed cross-entropy) agree on the loss and on ∂h and ∂W
    /// ≤ 1e-5 relative: several blocks per thread with a partial last one, ignored rows, smoothing on and off,
    /// gradients from the forward pass and recomputed in the backward pass.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (n, c, v, ignore, eps, gradients) in
            [(10, 8, 7, Some(0u32), 0.1, true), (300, 24, 1000, None, 0.0, true), (197, 16, 50, Some(3), 0.2, false)]
        {
            let (h, w) = (randn(&[n, c], 5, 1.0), randn(&[v, c], 6, 1.0));
            let (targets, safe, keep) = test_targets(n, v, ignore);
            let a = pool.install(|| fused(&h, &w, &targets, ignore, eps, gradients)).unwrap();
            let logits = h.matmul(&w.t().unwrap()).unwrap();
            let b = cross_entropy::composed(&logits, &safe, &keep, eps).unwrap();
            let (ga, gb) =
                (pool.install(|| (&a * 3.0).unwrap().backward()).unwrap(), (&b * 3.0).unwrap().backward().unwrap());
            let loss_err = relative_error(&a, &b);
            assert!(loss_err <= 1e-5, "({n}, {c}, {v}): loss {loss_err:e}");
            for (name, x) in [("h", &h), ("W", &w)] {
                let err = relative_error(ga.get(x).unwrap(), gb.get(x).unwrap());
                assert!(err <= 1e-5, "({n}, {c}, {v}), gradients in forward {gradients}: ∂{name} {err:e}");
            }
        }
    }
}
