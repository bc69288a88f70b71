//! Token-level cross-entropy with label smoothing (Szegedy et al., 2016; the paper's ε_ls = 0.1, §5.4).

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Mean over non-ignored targets of (1 − ε)·(−log p_target) + ε·(−mean_v log p_v), which is PyTorch's
/// `cross_entropy(logits, targets, ignore_index, label_smoothing = ε)`: the smoothing mass is spread over all
/// V classes, the target included.
///
/// logits (N, V), targets (N) u32. Returns a scalar; 0 when every target is ignored.
pub fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
    label_smoothing: f64,
) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let checked = checked_targets(targets, n, v, ignore_index, label_smoothing)?;
    logits_loss(logits, targets, &checked, ignore_index, label_smoothing)
}

/// [`cross_entropy`] of the logits h·Wᵀ, for hidden states h (N, C) and an output projection's weight W (V, C)
/// without bias. On the CPU in f32 the logits are never materialised
/// ([`crate::kernels::linear_cross_entropy`]): a translation step at V = 8 000 spends a fifth of its time on
/// them otherwise. `training` says a backward pass will follow, so the kernel computes the gradients while it
/// has each block of logits at hand.
pub fn projected_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
    label_smoothing: f64,
    training: bool,
) -> Result<Tensor> {
    let (n, c) = hidden.dims2()?;
    let (v, weight_c) = weight.dims2()?;
    if weight_c != c {
        return Err(Error::shape("output projection weight", format!("(V, {c})"), weight.dims()));
    }
    let checked = checked_targets(targets, n, v, ignore_index, label_smoothing)?;
    if crate::kernels::fused(hidden) && crate::kernels::fused(weight) {
        crate::kernels::linear_cross_entropy::fused(hidden, weight, targets, ignore_index, label_smoothing, training)
    } else {
        logits_loss(&hidden.matmul(&weight.t()?)?, targets, &checked, ignore_index, label_smoothing)
    }
}

/// [`cross_entropy`] of logits whose targets [`checked_targets`] has checked (`checked`: its result).
fn logits_loss(
    logits: &Tensor,
    targets: &Tensor,
    (safe_targets, keep): &(Tensor, Tensor),
    ignore_index: Option<u32>,
    label_smoothing: f64,
) -> Result<Tensor> {
    if crate::kernels::fused(logits) {
        crate::kernels::cross_entropy::fused(logits, targets, ignore_index, label_smoothing)
    } else {
        crate::kernels::cross_entropy::composed(logits, safe_targets, keep, label_smoothing)
    }
}

/// Checks targets (N) u32 against V classes and ε; returns them with ignored rows pointed at class 0 (so a
/// gather stays in range) and the (N) u8 mask of kept rows.
fn checked_targets(
    targets: &Tensor,
    n: usize,
    v: usize,
    ignore_index: Option<u32>,
    label_smoothing: f64,
) -> Result<(Tensor, Tensor)> {
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        return Err(Error::shape("targets", format!("({n}) u32 class ids"), targets.dims()));
    }
    if !(0.0..1.0).contains(&label_smoothing) {
        return Err(Error::config("label_smoothing", label_smoothing, "a value in [0, 1)"));
    }
    let keep = match ignore_index {
        Some(ignore) => targets.ne(ignore)?, // (N) u8
        None => targets.ones_like()?.to_dtype(DType::U8)?,
    };
    let safe_targets = (targets * keep.to_dtype(DType::U32)?)?;
    let max_id = safe_targets.max(0)?.to_scalar::<u32>()?;
    if max_id as usize >= v {
        return Err(Error::OutOfRange {
            what: "target id",
            found: max_id as i64,
            expected: format!("< {v} (the number of logits)"),
        });
    }
    Ok((safe_targets, keep))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn uniform_logits_give_log_v() {
        let logits = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1u32, 4, 0], &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits, &targets, None, 0.1).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - 5f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn ignored_targets_do_not_count() {
        let logits = Tensor::new(&[[2f32, 0.0], [0.0, 9.0]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0u32, 0], &Device::Cpu).unwrap();
        let all =
            cross_entropy(&logits.narrow(0, 0, 1).unwrap(), &targets.narrow(0, 0, 1).unwrap(), None, 0.0).unwrap();
        let targets = Tensor::new(&[0u32, 7], &Device::Cpu).unwrap(); // 7 is out of range but ignored
        let masked = cross_entropy(&logits, &targets, Some(7), 0.0).unwrap();
        assert_eq!(all.to_scalar::<f32>().unwrap(), masked.to_scalar::<f32>().unwrap());
        let none = cross_entropy(&logits, &Tensor::new(&[7u32, 7], &Device::Cpu).unwrap(), Some(7), 0.0).unwrap();
        assert_eq!(none.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn out_of_range_target_is_an_error() {
        let logits = Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &Tensor::new(&[3u32], &Device::Cpu).unwrap(), None, 0.0).unwrap_err();
        assert!(err.to_string().contains("target id: 3"), "{err}");
    }
}
