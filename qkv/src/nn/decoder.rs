//! The decoder (§3.1): N identical layers of masked self-attention, cross-attention over the encoder's memory
//! and a feed-forward network, each wrapped in a residual connection with LayerNorm.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::{
    attention::{requested, MultiHeadAttention, StepCache},
    feed_forward::FeedForward,
    kv_cache::{DecoderCache, DecoderLayerCache},
    layer::LayerConfig,
    mask::AttentionMask,
    mode::Mode,
    norm::{Norm, Residual},
};
use crate::kernels::reduced::Packing;
use crate::Result;

/// Attention weights of one decoder layer, for visualisation.
#[derive(Debug, Clone)]
pub struct DecoderWeights {
    /// (B, H, T, T)
    pub self_attn: Tensor,
    /// (B, H, T, S)
    pub cross_attn: Tensor,
}

/// One decoder layer: masked self-attention, cross-attention over the encoder memory and a feed-forward
/// network, each a residual sub-layer with its norm.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    self_attn: MultiHeadAttention,
    self_attn_residual: Residual,
    cross_attn: MultiHeadAttention,
    cross_attn_residual: Residual,
    feed_forward: FeedForward,
    feed_forward_residual: Residual,
}

impl DecoderLayer {
    /// Parameters `self_attn.*`, `self_attn_norm.*`, `cross_attn.*`, `cross_attn_norm.*`,
    /// `feed_forward.{fc1,fc2}.*`, `feed_forward_norm.*`.
    pub fn new(config: &LayerConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            self_attn: MultiHeadAttention::new(&config.self_attention(), config.init, vb.pp("self_attn"))?,
            self_attn_residual: config.residual(vb.pp("self_attn_norm"))?,
            cross_attn: MultiHeadAttention::new(&config.cross_attention(), config.init, vb.pp("cross_attn"))?,
            cross_attn_residual: config.residual(vb.pp("cross_attn_norm"))?,
            feed_forward: config.feed_forward(vb.pp("feed_forward"))?,
            feed_forward_residual: config.residual(vb.pp("feed_forward_norm"))?,
        })
    }

    /// Stores the attention and feed-forward matrices in `dtype` for inference; LayerNorms stay f32.
    pub fn pack_weights(&mut self, packing: Packing, prefix: &str) -> Result<()> {
        self.self_attn.pack_weights(packing, &format!("{prefix}.self_attn"))?;
        self.cross_attn.pack_weights(packing, &format!("{prefix}.cross_attn"))?;
        self.feed_forward.pack_weights(packing, &format!("{prefix}.feed_forward"))
    }

    /// x (B, T, C) attends to itself under `self_mask` (causal, usually) and to memory (B, S, C) under
    /// `memory_mask` (source padding); `target_valid` (B, T) marks x's real positions, over which a BatchNorm
    /// takes its statistics (`None`: all; LayerNorm ignores it) → (B, T, C).
    pub fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        (self_mask, memory_mask): (Option<&AttentionMask>, Option<&AttentionMask>),
        target_valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        Ok(self.run(x, memory, (self_mask, memory_mask), target_valid, mode, false, None)?.0)
    }

    /// As [`forward`](Self::forward), also returning both attention maps.
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        memory: &Tensor,
        (self_mask, memory_mask): (Option<&AttentionMask>, Option<&AttentionMask>),
        target_valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<(Tensor, DecoderWeights)> {
        let (x, weights) = self.run(x, memory, (self_mask, memory_mask), target_valid, mode, true, None)?;
        Ok((x, requested(weights)?))
    }

    #[allow(clippy::too_many_arguments)] // the layer's inputs, masks and switches, each used once
    fn run(
        &self,
        x: &Tensor,
        memory: &Tensor,
        (self_mask, memory_mask): (Option<&AttentionMask>, Option<&AttentionMask>),
        valid: Option<&Tensor>,
        mode: &mut Mode,
        need_weights: bool,
        cache: Option<&mut DecoderLayerCache>,
    ) -> Result<(Tensor, Option<DecoderWeights>)> {
        let (self_cache, cross_cache) = match cache {
            Some(c) => (Some(StepCache::Grow(&mut c.self_attn)), Some(StepCache::Memory(&mut c.cross_attn))),
            None => (None, None),
        };
        let (x, self_attn) = self.self_attn_residual.forward_with(x, valid, mode, |h, mode| {
            self.self_attn.attend(h, h, self_mask, mode, need_weights, self_cache)
        })?;
        let (x, cross_attn) = self.cross_attn_residual.forward_with(&x, valid, mode, |h, mode| {
            self.cross_attn.attend(h, memory, memory_mask, mode, need_weights, cross_cache)
        })?;
        let x = self.feed_forward_residual.forward(&x, valid, mode, |h, mode| self.feed_forward.forward(h, mode))?;
        let weights = match (self_attn, cross_attn) {
            (Some(self_attn), Some(cross_attn)) => Some(DecoderWeights { self_attn, cross_attn }),
            _ => None,
        };
        Ok((x, weights))
    }
}

/// N decoder layers, with a final norm when asked for (see [`super::Encoder`]).
#[derive(Debug, Clone)]
pub struct Decoder {
    layers: Vec<DecoderLayer>,
    norm: Option<Norm>,
}

impl Decoder {
    /// Parameters `layers.{i}.*` and, with `final_norm`, `norm.*`.
    pub fn new(config: &LayerConfig, num_layers: usize, final_norm: bool, vb: VarBuilder) -> Result<Self> {
        let layers =
            (0..num_layers).map(|i| DecoderLayer::new(config, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self { layers, norm: config.final_norm(final_norm, vb)? })
    }

    /// Stores every layer's matrices in `dtype` for inference.
    pub fn pack_weights(&mut self, packing: Packing, prefix: &str) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.pack_weights(packing, &format!("{prefix}.layers.{i}"))?;
        }
        Ok(())
    }

    /// x (B, T, C), memory (B, S, C), `target_valid` (B, T) as in [`DecoderLayer::forward`] → (B, T, C)
    pub fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        masks: (Option<&AttentionMask>, Option<&AttentionMask>),
        target_valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        Ok(self.run(x, memory, masks, target_valid, mode, false, None)?.0)
    }

    /// Incremental decoding: x (B, t, C) holds only the positions after those in `cache`; `self_mask` covers
    /// (t, cached + t) keys (none is needed for t = 1). Appends this step to the cache → (B, t, C). A BatchNorm
    /// sees every position as real: in evaluation it uses its running statistics, per position.
    pub fn forward_step(
        &self,
        x: &Tensor,
        memory: &Tensor,
        (self_mask, memory_mask): (Option<&AttentionMask>, Option<&AttentionMask>),
        cache: &mut DecoderCache,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        Ok(self.run(x, memory, (self_mask, memory_mask), None, mode, false, Some(cache))?.0)
    }

    /// As [`forward`](Self::forward), also returning every layer's attention maps.
    pub fn forward_with_weights(
        &self,
        x: &Tensor,
        memory: &Tensor,
        masks: (Option<&AttentionMask>, Option<&AttentionMask>),
        target_valid: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<(Tensor, Vec<DecoderWeights>)> {
        let (x, weights) = self.run(x, memory, masks, target_valid, mode, true, None)?;
        Ok((x, weights.into_iter().map(requested).collect::<Result<_>>()?))
    }

    #[allow(clippy::too_many_arguments)] // the stack's inputs, masks and switches, each passed to every layer
    fn run(
        &self,
        x: &Tensor,
        memory: &Tensor,
        masks: (Option<&AttentionMask>, Option<&AttentionMask>),
        valid: Option<&Tensor>,
        mode: &mut Mode,
        need_weights: bool,
        mut cache: Option<&mut DecoderCache>,
    ) -> Result<(Tensor, Vec<Option<DecoderWeights>>)> {
        if let Some(cache) = &cache {
            if cache.layers_len() != self.layers.len() {
                let expected = format!("{} layers, like the decoder", self.layers.len());
                return Err(crate::Error::config("decoder cache", cache.layers_len(), expected));
            }
        }
        let mut x = x.clone();
        let mut weights = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers_mut()[i]);
            let (y, w) = layer.run(&x, memory, masks, valid, mode, need_weights, layer_cache)?;
            x = y;
            weights.push(w);
        }
        let x = match &self.norm {
            Some(norm) => norm.forward(&x, valid, mode)?,
            None => x,
        };
        Ok((x, weights))
    }

    /// The N layers, in order from the embeddings up.
    pub fn layers(&self) -> &[DecoderLayer] {
        &self.layers
    }
}
