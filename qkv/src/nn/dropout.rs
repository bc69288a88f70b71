//! Inverted dropout (Srivastava et al., 2014), and the four places the paper applies it.

use candle_core::Tensor;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use super::mode::Mode;
use crate::{Error, Result};

/// Zeroes each element with probability p while training and scales the survivors by 1/(1−p), so evaluation
/// needs no rescaling and is the identity.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// `option` names the configuration field, so a bad rate is reported where the user set it.
    pub fn new(p: f64, option: &'static str) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::config(option, p, "a dropout probability in [0, 1)"));
        }
        Ok(Self { p })
    }

    pub fn p(&self) -> f64 {
        self.p
    }

    pub fn forward(&self, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let rng = match mode {
            Mode::Train(rng) if self.p > 0.0 => rng,
            _ => return Ok(x.clone()),
        };
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let p = self.p as f32;
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
}

impl DropoutRates {
    /// The same rate everywhere (the paper's P_drop = 0.1 for the base model).
    pub fn uniform(p: f64) -> Self {
        Self { embedding: p, attention: p, residual: p, activation: p }
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
}
