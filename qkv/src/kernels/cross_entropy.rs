//! Cross-entropy fused with log-softmax over the vocabulary: one pass per row forward (saving the row's
//! log-sum-exp), one pass backward, instead of materialising log-probabilities for every class.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::linear::{sum_by_lanes, LANES};
use super::softmax::log_softmax;
use super::{as_f32, exp, row_width, storage_f32, vectorized, Saved, PARALLEL_MIN_ELEMENTS};
use crate::Result;

/// Mean over kept rows of (1 − ε)·(−log p_target) + ε·(−mean_v log p_v). logits (N, V) f32, targets (N) u32
/// already validated (in range wherever not `ignore_index`).
pub fn fused(logits: &Tensor, targets: &Tensor, ignore_index: Option<u32>, label_smoothing: f64) -> Result<Tensor> {
    let op = CrossEntropyOp { ignore_index, smoothing: label_smoothing as f32, saved: Saved::empty() };
    Ok(logits.contiguous()?.apply_op2(&targets.contiguous()?, op)?)
}

/// The composed reference for [`fused`]; `safe_targets` has ignored rows pointed at class 0, `keep` (N) u8.
pub fn composed(logits: &Tensor, safe_targets: &Tensor, keep: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let log_probs = log_softmax(logits)?; // (N, V)
    let nll = log_probs.gather(&safe_targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?; // (N)
    let per_token = if label_smoothing > 0.0 {
        let smooth = log_probs.mean(D::Minus1)?.neg()?;
        ((nll * (1.0 - label_smoothing))? + (smooth * label_smoothing)?)?
    } else {
        nll
    };
    let weight = keep.to_dtype(DType::F32)?;
    let count = weight.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((per_token * weight)?.sum_all()? / count as f64)?)
}

struct CrossEntropyOp {
    ignore_index: Option<u32>,
    smoothing: f32,
    /// Per-row log-sum-exp and the number of kept rows, from the forward pass.
    saved: Saved<(Vec<f32>, f32)>,
}

const NAME: &str = "qkv-cross-entropy";

impl CrossEntropyOp {
    fn kept(&self, target: u32) -> bool {
        self.ignore_index != Some(target)
    }
}

/// log Σ exp(x), max-shifted, and Σ x (the label-smoothing term), vectorised: in lanes, because one running
/// f32 sum or max is a chain the compiler may not reorder.
pub(super) fn row_statistics(row: &[f32]) -> (f32, f32) {
    vectorized(
        #[inline(always)]
        || {
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let chunks = row.chunks_exact(LANES);
            let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for chunk in chunks {
                for l in 0..LANES {
                    lanes[l] = lanes[l].max(chunk[l]);
                }
            }
            for lane in lanes {
                max = max.max(lane);
            }
            let lse = max + sum_by_lanes(row, |v| exp(v - max)).ln();
            (lse, sum_by_lanes(row, |v| v))
        },
    )
}

/// One row's loss (1 − ε)·(lse − x_t) + ε·(lse − mean x) from [`row_statistics`].
pub(super) fn row_loss(row: &[f32], target: u32, (lse, sum): (f32, f32), eps: f32) -> f32 {
    (1.0 - eps) * (lse - row[target as usize]) + eps * (lse - sum / row.len() as f32)
}

/// A row's logits x → the loss's gradient `scale`·(softmax(x) − (1 − ε)·[j = t] − ε/V), in place.
pub(super) fn row_gradient(row: &mut [f32], target: u32, lse: f32, eps: f32, scale: f32) {
    let uniform = eps / row.len() as f32;
    vectorized(
        #[inline(always)]
        || {
            for x in row.iter_mut() {
                *x = scale * (exp(*x - lse) - uniform);
            }
        },
    );
    row[target as usize] -= scale * (1.0 - eps);
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let logits = as_f32(ls, ll, NAME)?;
        let CpuStorage::U32(targets) = ts else { candle_core::bail!("{NAME}: targets must be u32") };
        let Some((start, end)) = tl.contiguous_offsets() else { candle_core::bail!("{NAME}: strided targets") };
        let targets = &targets[start..end];
        let v = row_width(ll);
        let eps = self.smoothing;
        // (loss of the row if kept else 0, lse)
        let row = |(x, &t): (&[f32], &u32)| {
            let statistics = row_statistics(x);
            let loss = if self.kept(t) { row_loss(x, t, statistics, eps) } else { 0.0 };
            (loss, statistics.0)
        };
        let rows: Vec<(f32, f32)> = if logits.len() >= PARALLEL_MIN_ELEMENTS {
            logits.par_chunks(v).zip(targets.par_iter()).map(row).collect()
        } else {
            logits.chunks(v).zip(targets.iter()).map(row).collect()
        };
        let count = targets.iter().filter(|&&t| self.kept(t)).count().max(1) as f32;
        let total: f64 = rows.iter().map(|&(l, _)| l as f64).sum();
        let lse = rows.into_iter().map(|(_, lse)| lse).collect();
        self.saved.put(NAME, (lse, count))?;
        Ok((CpuStorage::F32(vec![(total / count as f64) as f32]), Shape::from(())))
    }

    /// d loss / d xᵢⱼ = g · keepᵢ / count · (softmax(xᵢ)ⱼ − (1 − ε)·[j = tᵢ] − ε/V)
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let targets = targets.to_vec1::<u32>()?;
        let logits = logits.contiguous()?;
        let (ls, ll) = logits.storage_and_layout();
        let x = storage_f32(&ls, ll, NAME)?;
        let v = row_width(ll);
        let eps = self.smoothing;
        let mut dx = vec![0f32; x.len()];
        self.saved.with(NAME, |(lse, count)| {
            let g = grad.to_scalar::<f32>()? / count;
            let row = |(r, (dxr, xr)): (usize, (&mut [f32], &[f32]))| {
                let t = targets[r];
                if !self.kept(t) {
                    return; // stays zero
                }
                dxr.copy_from_slice(xr);
                row_gradient(dxr, t, lse[r], eps, g);
            };
            if x.len() >= PARALLEL_MIN_ELEMENTS {
                dx.par_chunks_mut(v).zip(x.par_chunks(v)).enumerate().for_each(row);
            } else {
                dx.chunks_mut(v).zip(x.chunks(v)).enumerate().for_each(row);
            }
            Ok(())
        })?;
        Ok((Some(Tensor::from_vec(dx, ll.shape(), logits.device())?), None))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::kernels::twin::{randn, relative_error};
    use candle_core::Device;

    /// n targets spread over v classes, the same with ignored rows pointed at class 0, and the (n) u8 mask of
    /// kept rows: the inputs of [`fused`] and [`composed`].
    pub(in crate::kernels) fn test_targets(n: usize, v: usize, ignore: Option<u32>) -> (Tensor, Tensor, Tensor) {
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let targets = Tensor::from_vec(targets, n, &Device::Cpu).unwrap();
        let keep = match ignore {
            Some(i) => targets.ne(i).unwrap(),
            None => targets.ones_like().unwrap().to_dtype(DType::U8).unwrap(),
        };
        let safe = (&targets * keep.to_dtype(DType::U32).unwrap()).unwrap();
        (targets, safe, keep)
    }

    /// Kernel and composed twin agree on the loss and the logits' gradient ≤ 1e-5 relative.
    #[test]
    fn kernel_matches_composed_forward_and_backward() {
        for (n, v, ignore, eps) in [(10, 7, Some(0u32), 0.1), (96, 1000, None, 0.0), (64, 50, Some(3), 0.2)] {
            let logits = randn(&[n, v], 9, 4.0);
            let (targets, safe, keep) = test_targets(n, v, ignore);
            let a = fused(&logits, &targets, ignore, eps).unwrap();
            let b = composed(&logits, &safe, &keep, eps).unwrap();
            let grad = |y: &Tensor| y.backward().unwrap().get(&logits).unwrap().clone();
            let (loss_err, grad_err) = (relative_error(&a, &b), relative_error(&grad(&a), &grad(&b)));
            assert!(loss_err <= 1e-5 && grad_err <= 1e-5, "({n}, {v}): loss {loss_err:e}, gradient {grad_err:e}");
        }
    }
}
