//! GPT-2 (Radford et al., 2019): the Transformer's decoder without cross-attention — token and learned
//! position embeddings, pre-LN blocks of causal self-attention and a GELU feed-forward, a final LayerNorm, and
//! an LM head tied to the token embedding. Matches Hugging Face's `GPT2LMHeadModel`; configuration names
//! follow its config.json.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::reduced::WeightDtype;
use crate::nn::{
    Activation, AttentionMask, Dropout, DropoutRates, DropoutScaling, Embedding, EncoderLayer, KvCache, LayerConfig,
    LayerNorm, LearnedPosition, Linear, Mode, NormPosition, WeightInit,
};
use crate::{limits, Error, Result};

/// Hugging Face's `GPT2Config`. Unknown keys of a config.json are kept in `extra` and written back on save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    /// V: rows of the token embedding table and width of the logits (GPT-2: 50257 byte-level BPE tokens).
    pub vocab_size: usize,
    /// Longest sequence: rows of the position table.
    pub n_positions: usize,
    /// Model width C: the size of every token's vector between blocks (GPT-2 small: 768).
    pub n_embd: usize,
    /// Number of transformer blocks (GPT-2 small: 12).
    pub n_layer: usize,
    /// H: attention heads per block; `n_embd` must divide by it (GPT-2 small: 12).
    pub n_head: usize,
    /// Feed-forward width; `None` means 4 · n_embd.
    pub n_inner: Option<usize>,
    /// The feed-forward activation (`gelu_new`, GELU's tanh approximation, in GPT-2).
    pub activation_function: Activation,
    /// Dropout on each block's attention and feed-forward output before the residual sum, in [0, 1).
    pub resid_pdrop: f64,
    /// Dropout on the sum of token and position embeddings, in [0, 1).
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities, in [0, 1).
    pub attn_pdrop: f64,
    /// ε added to the variance in every LayerNorm (GPT-2: 1e-5).
    pub layer_norm_epsilon: f64,
    /// Standard deviation σ of the N(0, σ²) weight initialisation (GPT-2: 0.02).
    pub initializer_range: f64,
    /// Whether the LM head is the token embedding matrix `wte` (GPT-2: true) or a separate `lm_head`.
    pub tie_word_embeddings: bool,
    /// Biases on the attention and feed-forward projections. Hugging Face's GPT-2 always has them; nanoGPT
    /// can drop them (`bias = False`).
    pub bias: bool,
    /// Id of the beginning-of-text token (GPT-2: 50256, `<|endoftext|>`, the same as `eos_token_id`).
    pub bos_token_id: u32,
    /// Id of the end-of-text token generation stops at (GPT-2: 50256); models trained without one carry an id
    /// past the vocabulary.
    pub eos_token_id: u32,
    /// The model family; "gpt2" for every config this loader reads.
    pub model_type: String,
    /// Hugging Face class names the checkpoint was saved as, e.g. `["GPT2LMHeadModel"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Keys of a config.json that qkv does not use, kept so that saving writes them back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for Gpt2Config {
    /// GPT-2 small (124M parameters).
    fn default() -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: Activation::GeluTanh,
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            tie_word_embeddings: true,
            bias: true,
            bos_token_id: 50256,
            eos_token_id: 50256,
            model_type: "gpt2".into(),
            architectures: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl Gpt2Config {
    /// The layer every block shares: pre-LN, causal self-attention, dropout after the attention probabilities
    /// and after each block's output projection (none inside the feed-forward network, as in GPT-2).
    pub fn layer(&self) -> LayerConfig {
        LayerConfig {
            activation: self.activation_function,
            norm_position: NormPosition::Pre,
            layer_norm_eps: self.layer_norm_epsilon,
            bias: self.bias,
            dropout: DropoutRates {
                embedding: self.embd_pdrop,
                attention: self.attn_pdrop,
                residual: self.resid_pdrop,
                activation: 0.0,
                scaling: DropoutScaling::Inverted,
            },
            init: WeightInit::Normal { std: self.initializer_range },
            ..LayerConfig::new(self.n_embd, self.n_head, self.n_inner.unwrap_or(4 * self.n_embd))
        }
    }

    /// Errors for sizes that cannot work or that exceed [`crate::limits`], then for a model too large for
    /// this machine's memory, each naming the field.
    pub fn validate(&self) -> Result<()> {
        limits::sizes(&[
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB),
            ("n_positions", self.n_positions, limits::MAX_POSITIONS),
            ("n_embd", self.n_embd, limits::MAX_WIDTH),
            ("n_inner", self.n_inner.unwrap_or(1), limits::MAX_WIDTH),
            ("n_layer", self.n_layer, limits::MAX_LAYERS),
        ])?;
        let [v, p, c, l] = [self.vocab_size, self.n_positions, self.n_embd, self.n_layer].map(|x| x as f64);
        let f = self.n_inner.map_or(4.0 * c, |f| f as f64);
        let head = if self.tie_word_embeddings { 0.0 } else { v * c };
        limits::check_parameters((v + p) * c + l * (4.0 * c * c + 2.0 * c * f) + head)?;
        self.layer().validate()
    }
}

/// GPT-2 with its LM head (`GPT2LMHeadModel`): token ids (B, T) → next-token logits (B, T, V), with a
/// key/value cache for incremental generation.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Embedding,
    wpe: LearnedPosition,
    dropout: Dropout,
    /// A GPT block is an encoder layer (self-attention + feed-forward) run with a causal mask.
    blocks: Vec<EncoderLayer>,
    ln_f: LayerNorm,
    /// `None` when tied to `wte`.
    lm_head: Option<Linear>,
}

impl Gpt2 {
    /// The device the weights are on (inputs must be there too).
    pub fn device(&self) -> &candle_core::Device {
        self.wte.table().device()
    }

    /// Parameters `wte.weight` (V, C), `wpe.weight` (n_positions, C), `blocks.{i}.*`, `ln_f.*` and, untied,
    /// `lm_head.weight`.
    pub fn new(config: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let layer = config.layer();
        let init = layer.init;
        let blocks = (0..config.n_layer)
            .map(|i| EncoderLayer::new(&layer, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(vb.pp("lm_head"), config.n_embd, config.vocab_size, false, init)?)
        };
        Ok(Self {
            config: config.clone(),
            wte: Embedding::token(vb.pp("wte"), config.vocab_size, config.n_embd, false, init)?,
            wpe: LearnedPosition::new(vb.pp("wpe"), config.n_positions, config.n_embd, init)?,
            dropout: Dropout::new(config.embd_pdrop, "embd_pdrop")?,
            blocks,
            ln_f: LayerNorm::new(vb.pp("ln_f"), config.n_embd, config.layer_norm_epsilon)?,
            lm_head,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Stores the blocks' matrices and the token embedding — which is also the tied LM head, the largest
    /// matrix a decoding step reads — in `dtype` for inference (see [`crate::kernels::reduced`]). The position
    /// table and the LayerNorms stay f32: they are small and read once a step.
    pub fn pack_weights(&mut self, dtype: WeightDtype) -> Result<()> {
        for (i, block) in self.blocks.iter_mut().enumerate() {
            block.pack_weights(dtype.into(), &format!("h.{i}"))?;
        }
        if let Some(head) = &mut self.lm_head {
            head.pack(dtype, "lm_head.weight")?;
        }
        self.wte.pack(dtype, "wte.weight")
    }

    /// input_ids (B, T) → final hidden states (B, T, C), each position seeing only itself and earlier ones.
    pub fn hidden(&self, input_ids: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.hidden_masked(input_ids, None, mode)
    }

    /// As [`hidden`](Self::hidden), with `attention_mask` (B, T) marking real tokens (1) and padding (0):
    /// padding is never attended to. Positions count from 0 at the first column, as in transformers when no
    /// position_ids are given (so pad on the right).
    pub fn hidden_masked(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (mut x, mask) = self.embed(input_ids, attention_mask, mode)?;
        for block in &self.blocks {
            x = block.forward(&x, Some(&mask), None, mode)?;
        }
        self.ln_f.forward(&x)
    }

    /// Every block's causal self-attention weights (B, H, T, T) in eval mode, with `attention_mask` as in
    /// [`hidden_masked`](Self::hidden_masked): transformers' `output_attentions`.
    pub fn attention_weights(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Vec<Tensor>> {
        let mode = &mut Mode::Eval;
        let (mut x, mask) = self.embed(input_ids, attention_mask, mode)?;
        let mut weights = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, w) = block.forward_with_weights(&x, Some(&mask), None, mode)?;
            x = y;
            weights.push(w);
        }
        Ok(weights)
    }

    /// Token plus position embeddings after dropout (B, T, C), and the causal mask with any padding.
    fn embed(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<(Tensor, AttentionMask)> {
        if input_ids.rank() != 2 || input_ids.dims().contains(&0) {
            return Err(Error::shape("input_ids", "(B, T), both at least 1", input_ids.dims()));
        }
        let t = input_ids.dim(1)?;
        let x = self.wte.forward(input_ids)?.broadcast_add(&self.wpe.forward(t, 0)?)?;
        let x = self.dropout.forward(&x, mode)?;
        let mut mask = AttentionMask::causal(t, t, input_ids.device())?;
        if let Some(valid) = attention_mask {
            if valid.dims() != input_ids.dims() {
                return Err(Error::shape(
                    "attention_mask",
                    format!("{:?} like input_ids", input_ids.dims()),
                    valid.dims(),
                ));
            }
            mask = mask.and(&AttentionMask::padding(valid)?)?;
        }
        Ok((x, mask))
    }

    /// An empty key/value cache, one per block, for [`forward_step`](Self::forward_step).
    pub fn new_cache(&self) -> Vec<KvCache> {
        (0..self.blocks.len()).map(|_| KvCache::new()).collect()
    }

    /// Incremental decoding: `input_ids` (B, T) are the next T tokens after the `cache`d ones, which sit at
    /// positions 0 … cached − 1; returns their logits (B, T, V) and appends their keys and values to the cache.
    /// Going past `n_positions` is an error naming the limit.
    pub fn forward_step(&self, input_ids: &Tensor, cache: &mut [KvCache], mode: &mut Mode) -> Result<Tensor> {
        self.logits(&self.step(input_ids, None, cache, mode)?)
    }

    /// [`forward_step`](Self::forward_step) for rows padded on the left (batched generation): `positions`
    /// (B, T) u32 are each new token's position within its own row, and `key_valid` (B, cached + T) marks
    /// the real tokens among all keys, cached and new; padding is never attended to.
    pub fn forward_step_padded(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        cache: &mut [KvCache],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        self.logits(&self.hidden_step_padded(input_ids, positions, key_valid, cache, mode)?)
    }

    /// [`forward_step_padded`](Self::forward_step_padded) up to the final LayerNorm: hidden states (B, T, C).
    /// Generation needs the logits of the last position only, and the LM head over every position would cost
    /// T products with the whole (V, C) table.
    pub fn hidden_step_padded(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_valid: &Tensor,
        cache: &mut [KvCache],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        self.step(input_ids, Some((positions, key_valid)), cache, mode)
    }

    /// The blocks over the new tokens, appending to the cache: final hidden states (B, T, C).
    fn step(
        &self,
        input_ids: &Tensor,
        padding: Option<(&Tensor, &Tensor)>,
        cache: &mut [KvCache],
        mode: &mut Mode,
    ) -> Result<Tensor> {
        if cache.len() != self.blocks.len() {
            return Err(Error::config(
                "GPT-2 cache",
                cache.len(),
                format!("{} layers, like the model", self.blocks.len()),
            ));
        }
        let (t, offset) = (input_ids.dim(1)?, cache[0].len());
        if offset + t > self.config.n_positions {
            return Err(Error::config(
                "sequence length",
                offset + t,
                format!("at most n_positions = {} (the learned position table)", self.config.n_positions),
            ));
        }
        let tokens = self.wte.forward(input_ids)?;
        let mut mask = AttentionMask::causal(t, offset + t, input_ids.device())?;
        let x = match padding {
            None => tokens.broadcast_add(&self.wpe.forward(t, offset)?)?,
            Some((positions, key_valid)) => {
                let (b, s) = (input_ids.dim(0)?, offset + t);
                if positions.dims() != input_ids.dims() || key_valid.dims() != [b, s] {
                    let expected = format!("positions {:?} and key_valid [{b}, {s}]", input_ids.dims());
                    return Err(Error::shape("positions / key_valid", expected, key_valid.dims()));
                }
                mask = mask.and(&AttentionMask::padding(key_valid)?)?;
                (tokens + self.wpe.at(positions)?)?
            }
        };
        let mut x = self.dropout.forward(&x, mode)?;
        for (block, layer_cache) in self.blocks.iter().zip(cache.iter_mut()) {
            x = block.forward_step(&x, Some(&mask), layer_cache, mode)?;
        }
        self.ln_f.forward(&x)
    }

    /// Hidden states (B, T, C) → logits (B, T, V).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.wte.unembed(hidden, None),
        }
    }

    /// input_ids (B, T) → next-token logits (B, T, V).
    pub fn forward(&self, input_ids: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.logits(&self.hidden(input_ids, mode)?)
    }
}
