//! Dropout (Srivastava et al., 2014) — inverted, as every framework does it, or the paper's original with its
//! rescaling at test time — and the four places the Transformer applies it.

use candle_core::Tensor;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::mode::Mode;
use crate::{Error, Result};

/// When dropout's factor 1 − p is made up for: during training or at evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DropoutScaling {
    /// Survivors ×1/(1 − p) while training; evaluation is the identity.
    #[default]
    Inverted,
    /// Srivastava et al.'s original: survivors unscaled while training, every output ×(1 − p) at evaluation,
    /// so that its expected value is the one training saw.
    Classic,
    /// Classic training with the evaluation-time ×(1 − p) forgotten: what goes wrong when it is.
    ClassicUnscaled,
}

/// Zeroes each element with probability p while training; by default ([`DropoutScaling::Inverted`]) scales the
/// survivors by 1/(1−p), so evaluation needs no rescaling and is the identity.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f64,
    scaling: DropoutScaling,
}

impl Dropout {
    /// `option` names the configuration field, so a bad rate is reported where the user set it.
    pub fn new(p: f64, option: &'static str) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config(option, p, "a dropout probability in [0, 1)"));
        }
        Ok(Self { p, scaling: DropoutScaling::Inverted })
    }

    /// The same rate with `scaling`.
    pub fn with_scaling(self, scaling: DropoutScaling) -> Self {
        Self { scaling, ..self }
    }

    /// The drop probability p, in [0, 1).
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Whether [`forward`](Self::forward) returns its input unchanged in `mode`.
    pub fn is_identity(&self, mode: &Mode) -> bool {
        self.p == 0.0 || (!mode.is_train() && self.scaling != DropoutScaling::Classic)
    }

    /// x → x with each element zeroed with probability p while training, scaled as [`DropoutScaling`] says; in
    /// evaluation the identity, or ×(1 − p) for [`DropoutScaling::Classic`].
    pub fn forward(&self, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        if self.is_identity(mode) {
            return Ok(x.clone());
        }
        let Mode::Train(rng) = mode else {
            return Ok((x * (1.0 - self.p))?); // classic dropout at evaluation
        };
        let keep = match self.scaling {
            DropoutScaling::Inverted => (1.0 / (1.0 - self.p)) as f32,
            DropoutScaling::Classic | DropoutScaling::ClassicUnscaled => 1.0,
        };
        let p = self.p as f32;
        if crate::kernels::fused(x) {
            return crate::kernels::dropout::fused(x, p, keep, rand::RngCore::next_u64(rng));
        }
        let mask: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }
}

/// Dropout rates for the places the paper (§5.4) and its reference code put dropout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DropoutRates {
    /// On the sum of embeddings and position encodings, in encoder and decoder.
    pub embedding: f64,
    /// On the attention probabilities.
    pub attention: f64,
    /// On each sub-layer's output, before it is added to the residual stream.
    pub residual: f64,
    /// Inside the feed-forward network, after the activation.
    pub activation: f64,
    /// When the factor 1 − p is made up for, at every place.
    pub scaling: DropoutScaling,
}

impl DropoutRates {
    /// The same rate everywhere (the paper's P_drop = 0.1 for the base model).
    pub fn uniform(p: f64) -> Self {
        Self { embedding: p, attention: p, residual: p, activation: p, scaling: DropoutScaling::Inverted }
    }
}

impl Default for DropoutRates {
    fn default() -> Self {
        Self::uniform(0.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rate_outside_unit_interval_is_a_config_error() {
        let err = Dropout::new(1.0, "dropout.attention").unwrap_err().to_string();
        assert!(err.contains("dropout.attention"), "{err}");
        assert!(Dropout::new(-0.1, "p").is_err());
    }

    #[test]
    fn evaluation_is_identity_and_training_is_seeded() {
        let x = Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let dropout = Dropout::new(0.5, "p").unwrap();
        let eval = dropout.forward(&x, &mut Mode::Eval).unwrap();
        assert_eq!(eval.to_vec2::<f32>().unwrap(), x.to_vec2::<f32>().unwrap());
        let a = dropout.forward(&x, &mut Mode::train(3)).unwrap();
        let b = dropout.forward(&x, &mut Mode::train(3)).unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }

    /// Inverted dropout scales survivors by 1/(1 − p) in training; classic keeps them and multiplies by 1 − p
    /// at evaluation, unless that is forgotten. Either way training's expected output equals evaluation's.
    #[test]
    fn each_scaling_makes_up_for_the_dropped_units_once() {
        let x = Tensor::ones((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (scaling, survivor, evaluation) in [
            (DropoutScaling::Inverted, 4.0, 1.0),
            (DropoutScaling::Classic, 1.0, 0.25),
            (DropoutScaling::ClassicUnscaled, 1.0, 1.0),
        ] {
            let dropout = Dropout::new(0.75, "p").unwrap().with_scaling(scaling);
            let trained = values(dropout.forward(&x, &mut Mode::train(1)).unwrap());
            assert!(trained.iter().all(|&v| v == 0.0 || v == survivor), "{scaling:?}: {trained:?}");
            let kept = trained.iter().filter(|&&v| v > 0.0).count();
            assert!((150..370).contains(&kept), "{scaling:?}: {kept} of 1024 kept at p = 0.75");
            assert!(values(dropout.forward(&x, &mut Mode::Eval).unwrap()).iter().all(|&v| v == evaluation));
        }
    }
}
