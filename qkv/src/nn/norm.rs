//! Layer normalisation (Ba, Kiros & Hinton, 2016), batch normalisation (Ioffe & Szegedy, 2015) over the
//! non-padding positions, and the residual wiring around each sub-layer.

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{dropout::Dropout, mode::Mode};
use crate::kernels::layer_norm::layer_norm;
use crate::{Error, Result};

/// y = (x − mean) / √(var + ε) · γ + β over the last dimension, with the biased variance as PyTorch uses.
///
/// Runs as [`crate::kernels::layer_norm`], whose backward pass reaches x, γ and β (candle's fused layer norm has
/// none).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Parameters `weight` (C) = 1 and `bias` (C) = 0.
    pub fn new(vb: VarBuilder, d_model: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = affine(&vb, d_model, eps)?;
        Ok(Self { weight, bias, eps })
    }

    /// (…, C) → (…, C)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        if x.dims().last() != Some(&c) {
            return Err(Error::shape("layer norm input", format!("(…, {c})"), x.dims()));
        }
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// A norm's checked eps and its affine parameters `weight` (C) = 1 and `bias` (C) = 0.
fn affine(vb: &VarBuilder, d_model: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::config("layer_norm_eps", eps, "a small positive number such as 1e-5"));
    }
    let weight = vb.get_with_hints(d_model, "weight", Init::Const(1.0))?;
    Ok((weight, vb.get_with_hints(d_model, "bias", Init::Const(0.0))?))
}

/// Which normalisation every residual sub-layer (and a stack's final norm) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Per position over the C features (the paper).
    #[default]
    LayerNorm,
    /// Per feature over the batch's non-padding positions, with running statistics for evaluation
    /// (`qkv study norms` compares it with LayerNorm).
    BatchNorm,
}

/// torch.nn.BatchNorm1d's default: running ← (1 − m)·running + m·batch.
const MOMENTUM: f64 = 0.1;

/// Batch normalisation over the feature dimension C of (B, T, C) activations, with statistics over the
/// positions a validity mask marks real, so that padding (whose share varies from batch to batch) never enters
/// them. Matches `torch.nn.BatchNorm1d(C, eps, momentum=0.1)` applied to the gathered real rows (N, C).
///
/// Training normalises with the batch's mean and biased variance and moves the running statistics towards the
/// batch's mean and unbiased variance; evaluation normalises with the running statistics alone, so each
/// position is then independent of the others (incremental decoding stays exact). The running statistics are
/// variables like the parameters, so checkpoints and `model.safetensors` carry them under torch's names
/// `running_mean` and `running_var`; no gradient ever reaches them, so the optimizer leaves them alone.
/// torch's `num_batches_tracked` is not kept: with a fixed momentum torch only counts it, never uses it.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    /// (C), updated in place by every training forward.
    running_mean: Tensor,
    /// (C), updated in place by every training forward.
    running_var: Tensor,
    eps: f64,
}

impl BatchNorm {
    /// Parameters `weight` (C) = 1 and `bias` (C) = 0; statistics `running_mean` (C) = 0 and `running_var`
    /// (C) = 1, torch's starting values.
    pub fn new(vb: VarBuilder, d_model: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = affine(&vb, d_model, eps)?;
        Ok(Self {
            weight,
            bias,
            running_mean: vb.get_with_hints(d_model, "running_mean", Init::Const(0.0))?,
            running_var: vb.get_with_hints(d_model, "running_var", Init::Const(1.0))?,
            eps,
        })
    }

    /// x (B, T, C) with `valid` (B, T), non-zero at real positions (`None`: all are) → (B, T, C). Padding
    /// positions are normalised too, with the same statistics, but never enter them.
    pub fn forward(&self, x: &Tensor, valid: Option<&Tensor>, mode: &Mode) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        if x.rank() != 3 || x.dim(2)? != c {
            return Err(Error::shape("batch norm input", format!("(B, T, {c})"), x.dims()));
        }
        let (mean, var) = if mode.is_train() {
            let stats = masked_statistics(x, valid)?;
            self.track(&stats)?;
            (stats.mean, stats.var)
        } else {
            (self.running_mean.to_dtype(x.dtype())?, self.running_var.to_dtype(x.dtype())?)
        };
        let scale = (self.weight.to_dtype(x.dtype())? / (var + self.eps)?.sqrt()?)?; // (C)
        let centred = x.broadcast_sub(&mean)?; // (B, T, C)
        Ok(centred.broadcast_mul(&scale)?.broadcast_add(&self.bias.to_dtype(x.dtype())?)?)
    }

    /// Moves the running statistics a step towards this batch's, with the unbiased variance as torch does.
    fn track(&self, stats: &Statistics) -> Result<()> {
        let n = stats.count as f64;
        let blend = |running: &Tensor, batch: Tensor| -> Result<()> {
            let batch = batch.detach().to_dtype(running.dtype())?;
            let updated = ((running * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?.contiguous()?;
            Ok(running.slice_set(&updated, 0, 0)?)
        };
        blend(&self.running_mean, stats.mean.clone())?;
        blend(&self.running_var, (&stats.var * (n / (n - 1.0)))?)
    }

    /// The running mean and variance (C), for reports.
    pub fn running_statistics(&self) -> (&Tensor, &Tensor) {
        (&self.running_mean, &self.running_var)
    }
}

/// Whether a variable name is a BatchNorm's running statistic (state, not a parameter the optimizer trains).
pub fn is_running_statistic(name: &str) -> bool {
    matches!(name.rsplit('.').next(), Some("running_mean" | "running_var"))
}

/// A batch's per-feature statistics over its real positions.
struct Statistics {
    /// (C)
    mean: Tensor,
    /// (C), biased (divided by the count), what normalising uses.
    var: Tensor,
    /// Real positions they were taken over.
    count: usize,
}

/// Mean and biased variance per feature over the positions `valid` (B, T) marks, as composed ops so that
/// gradients flow through both into x. An error below two positions, where torch refuses too (the unbiased
/// variance the running statistics need is undefined).
fn masked_statistics(x: &Tensor, valid: Option<&Tensor>) -> Result<Statistics> {
    let (b, t, c) = x.dims3()?;
    let rows = x.reshape((b * t, c))?; // (B·T, C)
    let weights = match valid {
        Some(v) if v.dims() == [b, t] => v.ne(0u8)?.to_dtype(x.dtype())?.reshape((b * t, 1))?,
        Some(v) => return Err(Error::shape("batch norm validity mask", format!("(B, T) = ({b}, {t})"), v.dims())),
        None => Tensor::ones((b * t, 1), x.dtype(), x.device())?,
    }; // (B·T, 1), 1 at real positions
    let count = weights.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
    if count < 2 {
        let expected = "at least 2 real positions per training batch (the variance of fewer is undefined)";
        return Err(Error::config("normalization = batch_norm", format!("{count} real positions"), expected));
    }
    let n = count as f64;
    let mean = (rows.broadcast_mul(&weights)?.sum(0)? / n)?; // (C)
    let centred = rows.broadcast_sub(&mean)?.broadcast_mul(&weights)?; // (B·T, C), 0 at padding
    let var = (centred.sqr()?.sum(0)? / n)?; // (C)
    Ok(Statistics { mean, var, count })
}

/// A residual sub-layer's normalisation: LayerNorm or BatchNorm.
#[derive(Debug, Clone)]
pub enum Norm {
    /// LayerNorm over each position's C features (the paper).
    Layer(LayerNorm),
    /// BatchNorm over each feature across the batch's real positions, with running statistics for evaluation.
    Batch(BatchNorm),
}

impl Norm {
    /// The chosen normalisation of width `d_model`, parameters under `vb`.
    pub fn new(kind: Normalization, vb: VarBuilder, d_model: usize, eps: f64) -> Result<Self> {
        Ok(match kind {
            Normalization::LayerNorm => Norm::Layer(LayerNorm::new(vb, d_model, eps)?),
            Normalization::BatchNorm => Norm::Batch(BatchNorm::new(vb, d_model, eps)?),
        })
    }

    /// x (B, T, C) → (B, T, C); `valid` (B, T) marks the real positions BatchNorm takes its statistics over
    /// (LayerNorm, per position, needs neither it nor the mode).
    pub fn forward(&self, x: &Tensor, valid: Option<&Tensor>, mode: &Mode) -> Result<Tensor> {
        match self {
            Norm::Layer(norm) => norm.forward(x),
            Norm::Batch(norm) => norm.forward(x, valid, mode),
        }
    }
}

/// Where LayerNorm sits relative to the residual connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NormPosition {
    /// LayerNorm(x + Sublayer(x)): the paper and BERT.
    #[default]
    Post,
    /// x + Sublayer(LayerNorm(x)): GPT-2 and most later models; stable without warm-up, needs a final norm.
    Pre,
}

/// One residual sub-layer connection (§3.1, §5.4): its LayerNorm and the dropout applied to the sub-layer's
/// output before the residual add.
#[derive(Debug, Clone)]
pub struct Residual {
    norm: Norm,
    dropout: Dropout,
    position: NormPosition,
    /// Whether x is added back at all; without it the block is LayerNorm(sublayer(x)) or sublayer(LayerNorm(x)):
    /// what `qkv study residuals` compares.
    skip: bool,
}

impl Residual {
    /// The sub-layer's normalisation and dropout in the given arrangement, with the identity path.
    pub fn new(norm: Norm, dropout: Dropout, position: NormPosition) -> Self {
        Self { norm, dropout, position, skip: true }
    }

    /// The same sub-layer without the identity path (x is not added back).
    pub fn without_skip(self) -> Self {
        Self { skip: false, ..self }
    }

    /// x + y, or y alone without the identity path.
    fn add(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        Ok(if self.skip { (x + y)? } else { y })
    }

    /// Applies `sublayer` with the residual connection and normalisation in the configured arrangement; `valid`
    /// (B, T) marks the real positions of x (B, T, C), over which a BatchNorm takes its statistics.
    pub fn forward(
        &self,
        x: &Tensor,
        valid: Option<&Tensor>,
        mode: &mut Mode,
        sublayer: impl FnOnce(&Tensor, &mut Mode) -> Result<Tensor>,
    ) -> Result<Tensor> {
        Ok(self.forward_with(x, valid, mode, |h, mode| Ok((sublayer(h, mode)?, ())))?.0)
    }

    /// As [`forward`](Self::forward) for a sub-layer that also returns something beside its output (the
    /// attention weights).
    pub fn forward_with<A>(
        &self,
        x: &Tensor,
        valid: Option<&Tensor>,
        mode: &mut Mode,
        sublayer: impl FnOnce(&Tensor, &mut Mode) -> Result<(Tensor, A)>,
    ) -> Result<(Tensor, A)> {
        match self.position {
            NormPosition::Post => {
                let (y, extra) = sublayer(x, mode)?;
                let y = self.dropout.forward(&y, mode)?;
                Ok((self.norm.forward(&self.add(x, y)?, valid, mode)?, extra))
            }
            NormPosition::Pre => {
                let (y, extra) = sublayer(&self.norm.forward(x, valid, mode)?, mode)?;
                Ok((self.add(x, self.dropout.forward(&y, mode)?)?, extra))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp};
    use candle_nn::VarMap;

    use super::*;
    use crate::nn::seeded_var_builder;

    fn batch_norm(c: usize) -> BatchNorm {
        let vars = VarMap::new();
        BatchNorm::new(seeded_var_builder(&vars, 1, DType::F32, &Device::Cpu), c, 1e-5).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
    }

    /// (2, 4, 3) activations of which 3 + 2 positions are real; `pad` fills the other three.
    fn padded(pad: f32) -> (Tensor, Tensor) {
        let real = [[0.5f32, -1.0, 3.0], [1.5, 2.0, 2.5], [-0.5, 0.0, 4.0], [2.0, 1.0, 3.5], [0.0, -2.0, 5.0]];
        let p = [pad, -pad, 2.0 * pad];
        let rows = [real[0], real[1], real[2], p, real[3], real[4], p, p];
        let x = Tensor::new(&rows, &Device::Cpu).unwrap().reshape((2, 4, 3)).unwrap();
        let valid = Tensor::new(&[[1u8, 1, 1, 0], [1, 1, 0, 0]], &Device::Cpu).unwrap();
        (x, valid)
    }

    /// What sits at padding positions changes neither the real positions' outputs nor the running statistics,
    /// and both equal BatchNorm over the real rows alone, without a mask.
    #[test]
    fn padding_changes_neither_the_outputs_nor_the_running_statistics() {
        let real_rows = |y: &Tensor| [y.i((0, 0..3)).unwrap(), y.i((1, 0..2)).unwrap()];
        let mut seen = Vec::new();
        for pad in [0.0, 100.0, -7.0] {
            let norm = batch_norm(3);
            let (x, valid) = padded(pad);
            let y = norm.forward(&x, Some(&valid), &Mode::train(0)).unwrap();
            let real: Vec<f32> = real_rows(&y).iter().flat_map(values).collect();
            let (mean, var) = norm.running_statistics();
            seen.push((real, values(mean), values(var)));
        }
        let alone = batch_norm(3);
        let (x, _) = padded(0.0);
        let gathered = Tensor::cat(&real_rows(&x), 0).unwrap().unsqueeze(0).unwrap(); // (1, 5, 3)
        let y = alone.forward(&gathered, None, &Mode::train(0)).unwrap();
        let (mean, var) = alone.running_statistics();
        let reference = (values(&y), values(mean), values(var));
        for (real, mean, var) in &seen {
            assert!(close(real, &reference.0), "{real:?} vs {:?}", reference.0);
            assert!(close(mean, &reference.1) && close(var, &reference.2), "{mean:?} {var:?} vs {reference:?}");
        }
        // The running mean moved a tenth of the way from 0 to the real rows' mean of feature 0 (0.7).
        assert!((reference.1[0] - 0.07).abs() < 1e-6, "{:?}", reference.1);
    }

    /// Evaluation uses the running statistics alone: a position's output does not depend on its batch.
    #[test]
    fn evaluation_normalises_each_position_on_its_own() {
        let norm = batch_norm(3);
        let (x, valid) = padded(1.0);
        norm.forward(&x, Some(&valid), &Mode::train(0)).unwrap();
        let whole = norm.forward(&x, None, &Mode::Eval).unwrap();
        let one = norm.forward(&x.i((1..2, 1..2)).unwrap(), None, &Mode::Eval).unwrap();
        assert_eq!(values(&one), values(&whole.i((1..2, 1..2)).unwrap()));
    }

    /// Fewer than two real positions have no unbiased variance: an error naming the option, not a NaN.
    #[test]
    fn a_training_batch_needs_two_real_positions() {
        let norm = batch_norm(3);
        let (x, _) = padded(0.0);
        let valid = Tensor::new(&[[1u8, 0, 0, 0], [0, 0, 0, 0]], &Device::Cpu).unwrap();
        let err = norm.forward(&x, Some(&valid), &Mode::train(0)).unwrap_err().to_string();
        assert!(err.contains("batch_norm") && err.contains("1 real positions"), "{err}");
        let err = norm.forward(&x, Some(&valid.i((.., 0..3)).unwrap()), &Mode::train(0)).unwrap_err().to_string();
        assert!(err.contains("validity mask"), "{err}");
    }
}
