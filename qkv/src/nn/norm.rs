//! Layer normalisation (Ba, Kiros & Hinton, 2016) and the residual wiring around each sub-layer.

use candle_core::Tensor;
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
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::config("layer_norm_eps", eps, "a small positive number such as 1e-5"));
        }
        Ok(Self {
            weight: vb.get_with_hints(d_model, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(d_model, "bias", Init::Const(0.0))?,
            eps,
        })
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
    norm: LayerNorm,
    dropout: Dropout,
    position: NormPosition,
    /// Whether x is added back at all; without it the block is LayerNorm(sublayer(x)) or sublayer(LayerNorm(x)):
    /// what `qkv study residuals` compares.
    skip: bool,
}

impl Residual {
    pub fn new(norm: LayerNorm, dropout: Dropout, position: NormPosition) -> Self {
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

    /// Applies `sublayer` with the residual connection and normalisation in the configured arrangement.
    pub fn forward(
        &self,
        x: &Tensor,
        mode: &mut Mode,
        sublayer: impl FnOnce(&Tensor, &mut Mode) -> Result<Tensor>,
    ) -> Result<Tensor> {
        Ok(self.forward_with(x, mode, |h, mode| Ok((sublayer(h, mode)?, ())))?.0)
    }

    /// As [`forward`](Self::forward) for a sub-layer that also returns something beside its output (the
    /// attention weights).
    pub fn forward_with<A>(
        &self,
        x: &Tensor,
        mode: &mut Mode,
        sublayer: impl FnOnce(&Tensor, &mut Mode) -> Result<(Tensor, A)>,
    ) -> Result<(Tensor, A)> {
        match self.position {
            NormPosition::Post => {
                let (y, extra) = sublayer(x, mode)?;
                let y = self.dropout.forward(&y, mode)?;
                Ok((self.norm.forward(&self.add(x, y)?)?, extra))
            }
            NormPosition::Pre => {
                let (y, extra) = sublayer(&self.norm.forward(x)?, mode)?;
                Ok((self.add(x, self.dropout.forward(&y, mode)?)?, extra))
            }
        }
    }
}
