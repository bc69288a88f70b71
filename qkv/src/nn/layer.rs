//! The shape shared by encoder and decoder layers.

use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{
    attention::{AttentionConfig, Projections, Score},
    dropout::{Dropout, DropoutRates},
    feed_forward::{Activation, FeedForward},
    norm::{Norm, NormPosition, Normalization, Residual},
    params::WeightInit,
};
use crate::{Error, Result};

/// One Transformer layer: width, heads, feed-forward size, activation, norm placement, dropout and the
/// attention variant. The paper's base model is `LayerConfig::new(512, 8, 2048)` with ReLU, post-LN and
/// dropout 0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerConfig {
    /// Model width C: the size of every token's vector between sub-layers (the paper's base model: 512).
    pub d_model: usize,
    /// H: attention heads per layer; C must divide by H unless `head_dim` is set.
    pub num_heads: usize,
    /// Inner width of the position-wise feed-forward network (the paper: 2048, four times C).
    pub d_ff: usize,
    /// The feed-forward network's non-linearity (the paper: ReLU; BERT and GPT-2: GELU).
    pub activation: Activation,
    /// Whether each norm follows the residual sum (post-LN, the paper) or precedes the sub-layer (pre-LN).
    pub norm_position: NormPosition,
    /// LayerNorm (the paper) or BatchNorm in every residual sub-layer and the final norm.
    #[serde(default)]
    pub normalization: Normalization,
    /// ε added to the variance inside every norm, for numerical stability (the paper's defaults: 1e-5; BERT: 1e-12).
    pub layer_norm_eps: f64,
    /// Biases on the attention and feed-forward projections.
    pub bias: bool,
    /// Dropout rates at the embeddings, attention probabilities, sub-layer outputs and feed-forward activation.
    pub dropout: DropoutRates,
    /// The query-key score (the paper: q·k / √Dh).
    pub score: Score,
    /// Which of W_Q, W_K, W_V exist (the paper: all three).
    pub projections: Projections,
    /// Width of each head; `None` for d_model / num_heads.
    pub head_dim: Option<usize>,
    /// Shaw et al.'s clipping distance for relative positions in self-attention; `None` for none.
    pub relative_max_distance: Option<usize>,
    /// Rotary position embeddings of queries and keys in self-attention (RoPE).
    #[serde(default)]
    pub rotary: bool,
    /// Residual connections around every sub-layer (§3.1); `false` only to see what they are for.
    #[serde(default = "yes")]
    pub residual: bool,
    /// How weight matrices are initialised (the paper's defaults: Xavier uniform; BERT and GPT-2: normal, std 0.02).
    pub init: WeightInit,
}

impl LayerConfig {
    /// The paper's defaults for a given size: ReLU, post-LN, ε = 1e-5, biases, dropout 0.1, scaled attention,
    /// Xavier-uniform weights.
    pub fn new(d_model: usize, num_heads: usize, d_ff: usize) -> Self {
        Self {
            d_model,
            num_heads,
            d_ff,
            activation: Activation::Relu,
            norm_position: NormPosition::Post,
            normalization: Normalization::LayerNorm,
            layer_norm_eps: 1e-5,
            bias: true,
            dropout: DropoutRates::default(),
            score: Score::ScaledDot,
            projections: Projections::Separate,
            head_dim: None,
            relative_max_distance: None,
            rotary: false,
            residual: true,
            init: WeightInit::XavierUniform,
        }
    }

    /// Errors for sizes that cannot work, naming the option.
    pub fn validate(&self) -> Result<()> {
        if self.d_model == 0 {
            return Err(Error::config("d_model", 0, "a positive width"));
        }
        if self.d_ff == 0 {
            return Err(Error::config("d_ff", 0, "a positive feed-forward width"));
        }
        crate::limits::at_most("d_model", self.d_model, crate::limits::MAX_WIDTH)?;
        crate::limits::at_most("d_ff", self.d_ff, crate::limits::MAX_WIDTH)?;
        self.self_attention().head_dim()?;
        Ok(())
    }

    /// The self-attention block this layer configures: its width, heads, biases, attention dropout, score,
    /// projections and relative or rotary positions.
    pub fn self_attention(&self) -> AttentionConfig {
        AttentionConfig {
            d_model: self.d_model,
            num_heads: self.num_heads,
            bias: self.bias,
            dropout: self.dropout.attention,
            dropout_scaling: self.dropout.scaling,
            score: self.score,
            projections: self.projections,
            head_dim: self.head_dim,
            relative_max_distance: self.relative_max_distance,
            rotary: self.rotary,
        }
    }

    /// Cross-attention relates target to source positions, which have no common origin, so it never uses
    /// relative or rotary positions.
    pub fn cross_attention(&self) -> AttentionConfig {
        AttentionConfig { relative_max_distance: None, rotary: false, ..self.self_attention() }
    }

    /// A residual connection around one sub-layer, its norm's parameters under `vb`.
    pub fn residual(&self, vb: VarBuilder) -> Result<Residual> {
        let norm = self.norm(vb)?;
        let dropout = Dropout::new(self.dropout.residual, "dropout.residual")?.with_scaling(self.dropout.scaling);
        let residual = Residual::new(norm, dropout, self.norm_position);
        Ok(if self.residual { residual } else { residual.without_skip() })
    }

    /// The position-wise feed-forward network, parameters under `vb`.
    pub fn feed_forward(&self, vb: VarBuilder) -> Result<FeedForward> {
        let dropout = Dropout::new(self.dropout.activation, "dropout.activation")?.with_scaling(self.dropout.scaling);
        FeedForward::new(vb, self.d_model, self.d_ff, self.activation, dropout, self.bias, self.init)
    }

    /// The norm closing a stack, parameters `norm.*` under `vb`, if `enabled`.
    pub fn final_norm(&self, enabled: bool, vb: VarBuilder) -> Result<Option<Norm>> {
        if !enabled {
            return Ok(None);
        }
        Ok(Some(self.norm(vb.pp("norm"))?))
    }

    /// The configured normalisation over C, parameters under `vb`.
    fn norm(&self, vb: VarBuilder) -> Result<Norm> {
        Norm::new(self.normalization, vb, self.d_model, self.layer_norm_eps)
    }
}

fn yes() -> bool {
    true
}
