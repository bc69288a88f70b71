//! The encoder (§3.1): N identical layers of self-attention and a feed-forward network, each wrapped in a
//! residual connection with LayerNorm.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{
    attention::{requested, MultiHeadAttention, StepCache},
    feed_forward::FeedForward,
    kv_cache::KvCache,
    layer::LayerConfig,
    mask::AttentionMask,
    mode::Mode,
    norm::{Norm, NormPosition, Residual},
};
use crate::kernels::reduced::Packing;
use crate::Result;

/// One encoder layer: self-attention and a feed-forward network, each a residual sub-layer with its norm.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_residual: Residual,
    feed_forward: FeedForward,
    feed_forward_residual: Residual,
}

impl EncoderLayer {
    /// Parameters `self_attn.*`, `self_attn_norm.*`, `feed_forward.{fc1,fc2}.*`, `feed_forward_norm.*`.
    pub fn new(config: &LayerConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            self_attn: MultiHeadAttention::new(&config.self_attention(), config.init, vb.pp("self_attn"))?,
            self_attn_residual: config.residual(vb.pp("self_attn_norm"))?,
            feed_forward: config.feed_forward(vb.pp("feed_forward"))?,
            feed_forward_residual: config.residual(vb.pp("feed_forward_norm"))?,
        })
    }

    /// Stores the attention and feed-forward matrices in `dtype` for inference; LayerNorms stay f32.
    pub fn pack_weights(&mut self, packing: Packing, prefix: &str) -> Result<()> {
        self.self_attn.pack_weights(packing, &format!("{prefix}.self_attn"))?;
        self.feed_forward.pack_weights(packing, &format!("{prefix}.feed_forward"))
    }

    /// x (B, S, C) with a mask over its keys (usually padding) and `valid` (B, S), the real positions a
    /// BatchNorm takes its statistics over (`None`: all; LayerNorm ignores it) → (B, S, C).
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&AttentionMask>,
        valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        Ok(self.run(x, (mask, valid), mode, false, None)?.0)
    }

    /// Incremental decoding with this layer as a decoder-only block (GPT-2): `x` (B, T, C) holds the newest T
    /// positions, `cache` the keys and values of the earlier ones, to which this step's are appended; `mask`
    /// covers (T, cached + T) keys.
    pub fn forward_step(
        &self,
        x: &Tensor,
        mask: Option<&AttentionMask>,
        cache: &mut KvCache,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        // One position at a time: a BatchNorm here would need evaluation mode's running statistics anyway.
        Ok(self.run(x, (mask, None), mode, false, Some(cache))?.0)
    }

    /// As [`forward`](Self::forward), also returning the self-attention weights (B, H, S, S).
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        mask: Option<&AttentionMask>,
        valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (x, weights) = self.run(x, (mask, valid), mode, true, None)?;
        Ok((x, requested(weights)?))
    }

    fn run(
        &self,
        x: &Tensor,
        (mask, valid): (Option<&AttentionMask>, Option<&Tensor>),
        mode: &mut Mode,
        need_weights: bool,
        cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let step = cache.map(StepCache::Grow);
        let (x, weights) = self
            .self_attn_residual
            .forward_with(x, valid, mode, |h, mode| self.self_attn.attend(h, h, mask, mode, need_weights, step))?;
        let x = self.feed_forward_residual.forward(&x, valid, mode, |h, mode| self.feed_forward.forward(h, mode))?;
        Ok((x, weights))
    }
}

/// N encoder layers, with a final norm when asked for (required after pre-LN layers, whose output is
/// otherwise un-normalised; `torch.nn.Transformer` also adds one after post-LN layers).
#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
    norm: Option<Norm>,
}

impl Encoder {
    /// Parameters `layers.{i}.*` and, with `final_norm`, `norm.*`.
    pub fn new(config: &LayerConfig, num_layers: usize, final_norm: bool, vb: VarBuilder) -> Result<Self> {
        let layers =
            (0..num_layers).map(|i| EncoderLayer::new(config, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self { layers, norm: config.final_norm(final_norm, vb)? })
    }

    /// Stores every layer's matrices in `dtype` for inference.
    pub fn pack_weights(&mut self, packing: Packing, prefix: &str) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.pack_weights(packing, &format!("{prefix}.layers.{i}"))?;
        }
        Ok(())
    }

    /// Whether a final norm belongs after layers of this arrangement by default.
    pub fn default_final_norm(position: NormPosition) -> bool {
        position == NormPosition::Pre
    }

    /// x (B, S, C) with `valid` (B, S), its real positions (see [`EncoderLayer::forward`]) → memory (B, S, C)
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&AttentionMask>,
        valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask, valid, mode)?;
        }
        self.final_norm(x, valid, mode)
    }

    /// As [`forward`](Self::forward), also returning every layer's self-attention weights (B, H, S, S).
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        mask: Option<&AttentionMask>,
        valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut weights = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (y, w) = layer.forward_with_weights(&x, mask, valid, mode)?;
            x = y;
            weights.push(w);
        }
        Ok((self.final_norm(x, valid, mode)?, weights))
    }

    /// The closing norm, where the stack has one.
    fn final_norm(&self, x: Tensor, valid: Option<&Tensor>, mode: &Mode) -> Result<Tensor> {
        match &self.norm {
            Some(norm) => norm.forward(&x, valid, mode),
            None => Ok(x),
        }
    }

    /// The N layers, in order from the embeddings up.
    pub fn layers(&self) -> &[EncoderLayer] {
        &self.layers
    }
}
