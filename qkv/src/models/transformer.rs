//! The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017), for sequence-to-
//! sequence tasks such as translation. Configuration names follow Hugging Face's encoder-decoder configs
//! (BART / Marian: `d_model`, `encoder_layers`, `encoder_attention_heads`, `encoder_ffn_dim`, ...).

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::reduced::{Packing, WeightDtype};
use crate::nn::{
    decoder::DecoderWeights, Activation, AttentionMask, ComplexEmbedding, Decoder, DecoderCache, Dropout, DropoutRates,
    DropoutScaling, Embedding, Encoder, LayerConfig, LearnedPosition, Linear, Mode, NormPosition, Normalization,
    Projections, Score, SinusoidalPosition, WeightInit,
};
use crate::{limits, Error, Result};

/// How the model knows where each token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PositionEncoding {
    /// Fixed sinusoids added to the embeddings (§3.5).
    #[default]
    Sinusoidal,
    /// A trained table per stack, up to `max_position_embeddings`.
    Learned,
    /// Shaw et al. (2018) relative representations inside self-attention; nothing added to embeddings.
    Relative,
    /// Rotary position embeddings (RoPE, Su et al., 2021): self-attention's queries and keys turned by their
    /// positions; nothing added to embeddings, no parameters.
    Rotary,
    /// Complex-valued word embeddings (Wang et al., 2020): each word an amplitude, frequency and phase per
    /// dimension, so the embedding itself depends on position. Needs an untied output projection.
    Complex,
    /// No position information at all: the encoder sees a bag of tokens (the decoder's causal mask still
    /// orders it).
    None,
}

/// The encoder-decoder's configuration, in the names of Hugging Face's BART / Marian configs; `default()` is
/// the paper's base model. Options the paper does not have exist for the `qkv study` experiments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransformerConfig {
    /// V: rows of each token embedding table and width of the logits (one joint source-target vocabulary).
    pub vocab_size: usize,
    /// Model width C: the size of every token's vector between sub-layers (the paper's base: 512).
    pub d_model: usize,
    /// Number of encoder layers N (the paper: 6).
    pub encoder_layers: usize,
    /// Number of decoder layers N (the paper: 6).
    pub decoder_layers: usize,
    /// H: attention heads in each encoder layer (the paper: 8).
    pub encoder_attention_heads: usize,
    /// H: attention heads in each decoder layer's self- and cross-attention (the paper: 8).
    pub decoder_attention_heads: usize,
    /// Inner width d_ff of each encoder layer's feed-forward network (the paper: 2048).
    pub encoder_ffn_dim: usize,
    /// Inner width d_ff of each decoder layer's feed-forward network (the paper: 2048).
    pub decoder_ffn_dim: usize,
    /// The feed-forward activation (the paper: `relu`).
    pub activation_function: Activation,
    /// Residual and embedding dropout (the paper's P_drop).
    pub dropout: f64,
    /// Dropout on the embeddings alone, when it should differ from `dropout`.
    pub embedding_dropout: Option<f64>,
    /// When dropout's 1 − p is made up for: `inverted` (in training; every framework's choice) or `classic`
    /// (at evaluation, as Srivastava et al.); `classic_unscaled` forgets it, to show what that does.
    pub dropout_scaling: DropoutScaling,
    /// Dropout on the attention probabilities, in [0, 1) (default 0.1).
    pub attention_dropout: f64,
    /// Dropout inside the feed-forward networks, after the activation, in [0, 1).
    pub activation_dropout: f64,
    /// ε added to the variance in every norm (default 1e-5).
    pub layer_norm_eps: f64,
    /// `post` (the paper: LayerNorm after each residual sum) or `pre` (before each sub-layer, plus a final norm).
    pub norm_position: NormPosition,
    /// `layer_norm` (the paper) or `batch_norm` (statistics over each batch's non-padding positions, running
    /// statistics in evaluation; `qkv study norms` compares them). Absent in configs written before it: LayerNorm.
    pub normalization: Normalization,
    /// How positions enter the model: `sinusoidal` (the paper), `learned`, `relative`, `rotary`, `complex` or `none`.
    pub position_encoding: PositionEncoding,
    /// Length of the learned position tables (only for `position_encoding = learned`).
    pub max_position_embeddings: usize,
    /// Clipping distance k (only for `position_encoding = relative`).
    pub relative_max_distance: usize,
    /// Multiply embeddings by √d_model (§3.4).
    pub scale_embedding: bool,
    /// How the word embedding tables are drawn; absent: N(0, 1/d_model) when `scale_embedding` (so scaled
    /// vectors start at unit variance), `init` otherwise. `qkv study embeddings` sets it to compare the two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_init: Option<WeightInit>,
    /// One embedding matrix for source and target over a joint vocabulary (§3.4).
    pub share_encoder_decoder_embeddings: bool,
    /// The pre-softmax projection is the target embedding matrix (§3.4, Press & Wolf 2017).
    pub tie_word_embeddings: bool,
    /// Id of the padding token: batches pad sources and targets with it, and BatchNorm statistics leave it out.
    pub pad_token_id: u32,
    /// Id of the beginning-of-sequence token the decoder's input starts with (targets shifted right behind it).
    pub bos_token_id: u32,
    /// Id of the end-of-sequence token appended to every source and target; decoding stops at it.
    pub eos_token_id: u32,
    /// How the attention and feed-forward matrices (and learned positions) are initialised (default: Xavier
    /// uniform, the usual choice for the original Transformer).
    pub init: WeightInit,
    /// The query-key score of every attention block (the paper: `scaled_dot`; `qkv study scaling` and
    /// `additive` compare the others).
    pub attention_score: Score,
    /// `separate` W_Q, W_K, W_V (the paper), `shared_qk` (W_K = W_Q) or `none` (q = k = v = x).
    pub attention_projections: Projections,
    /// Width of each attention head; absent for d_model / heads (the paper).
    pub head_dim: Option<usize>,
    /// Residual connections around every sub-layer (§3.1); `false` only for `qkv study residuals`.
    pub residual_connections: bool,
}

impl Default for TransformerConfig {
    /// The paper's base model over a 37 000-token joint vocabulary.
    fn default() -> Self {
        Self {
            vocab_size: 37_000,
            d_model: 512,
            encoder_layers: 6,
            decoder_layers: 6,
            encoder_attention_heads: 8,
            decoder_attention_heads: 8,
            encoder_ffn_dim: 2048,
            decoder_ffn_dim: 2048,
            activation_function: Activation::Relu,
            dropout: 0.1,
            embedding_dropout: None,
            dropout_scaling: DropoutScaling::Inverted,
            attention_dropout: 0.1,
            activation_dropout: 0.1,
            layer_norm_eps: 1e-5,
            norm_position: NormPosition::Post,
            normalization: Normalization::LayerNorm,
            position_encoding: PositionEncoding::Sinusoidal,
            max_position_embeddings: 512,
            relative_max_distance: 16,
            scale_embedding: true,
            embedding_init: None,
            share_encoder_decoder_embeddings: true,
            tie_word_embeddings: true,
            pad_token_id: 0,
            bos_token_id: 1,
            eos_token_id: 2,
            init: WeightInit::XavierUniform,
            attention_score: Score::ScaledDot,
            attention_projections: Projections::Separate,
            head_dim: None,
            residual_connections: true,
        }
    }
}

impl TransformerConfig {
    /// The paper's base model (6 layers, d_model 512, 8 heads, d_ff 2048, dropout 0.1), = `default()`.
    pub fn base() -> Self {
        Self::default()
    }

    /// A model sized for a 2-core CPU: 3 + 3 layers, d_model 256, 4 heads, d_ff 1024, dropout 0.1.
    pub fn small() -> Self {
        Self {
            d_model: 256,
            encoder_layers: 3,
            decoder_layers: 3,
            encoder_attention_heads: 4,
            decoder_attention_heads: 4,
            encoder_ffn_dim: 1024,
            decoder_ffn_dim: 1024,
            ..Self::default()
        }
    }

    /// A named preset: `base` or `small`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "base" => Ok(Self::base()),
            "small" => Ok(Self::small()),
            other => Err(Error::config("preset", other, "one of: base, small")),
        }
    }

    fn layer(&self, heads: usize, ffn_dim: usize) -> LayerConfig {
        LayerConfig {
            d_model: self.d_model,
            num_heads: heads,
            d_ff: ffn_dim,
            activation: self.activation_function,
            norm_position: self.norm_position,
            normalization: self.normalization,
            layer_norm_eps: self.layer_norm_eps,
            bias: true,
            dropout: DropoutRates {
                embedding: self.embedding_dropout.unwrap_or(self.dropout),
                attention: self.attention_dropout,
                residual: self.dropout,
                activation: self.activation_dropout,
                scaling: self.dropout_scaling,
            },
            score: self.attention_score,
            projections: self.attention_projections,
            head_dim: self.head_dim,
            relative_max_distance: match self.position_encoding {
                PositionEncoding::Relative => Some(self.relative_max_distance),
                _ => None,
            },
            rotary: self.position_encoding == PositionEncoding::Rotary,
            residual: self.residual_connections,
            init: self.init,
        }
    }

    /// About how many parameters the model has (embeddings, attention and feed-forward matrices), as f64 so
    /// that absurd configs do not overflow.
    pub fn parameter_count(&self) -> f64 {
        let [v, c, p] = [self.vocab_size, self.d_model, self.max_position_embeddings].map(|x| x as f64);
        let [le, ld, fe, fd] =
            [self.encoder_layers, self.decoder_layers, self.encoder_ffn_dim, self.decoder_ffn_dim].map(|x| x as f64);
        // A complex embedding has three tables of C/2 columns: 1.5 token tables.
        let per_table = if self.position_encoding == PositionEncoding::Complex { 1.5 } else { 1.0 };
        let tables = per_table * if self.share_encoder_decoder_embeddings { 1.0 } else { 2.0 }
            + if self.tie_word_embeddings { 0.0 } else { 1.0 };
        let positions = if self.position_encoding == PositionEncoding::Learned { 2.0 * p * c } else { 0.0 };
        let attention = |heads: usize| {
            let inner = heads as f64 * self.head_dim.map_or(c / heads.max(1) as f64, |d| d as f64);
            let inputs = match self.attention_projections {
                Projections::Separate => 3.0,
                Projections::SharedQk => 2.0,
                Projections::None => 0.0,
            };
            (inputs + 1.0) * c * inner
        };
        let (ae, ad) = (attention(self.encoder_attention_heads), attention(self.decoder_attention_heads));
        tables * v * c + positions + le * (ae + 2.0 * c * fe) + ld * (2.0 * ad + 2.0 * c * fd)
    }

    /// How the word embedding tables are drawn: `embedding_init`, or by default N(0, 1/C) when scaled by √C,
    /// `init` when not.
    pub fn embedding_weight_init(&self) -> WeightInit {
        self.embedding_init.unwrap_or(if self.scale_embedding {
            WeightInit::Normal { std: (self.d_model as f64).powf(-0.5) }
        } else {
            self.init
        })
    }

    /// The configuration of every encoder layer.
    pub fn encoder_layer(&self) -> LayerConfig {
        self.layer(self.encoder_attention_heads, self.encoder_ffn_dim)
    }

    /// The configuration of every decoder layer.
    pub fn decoder_layer(&self) -> LayerConfig {
        self.layer(self.decoder_attention_heads, self.decoder_ffn_dim)
    }

    /// Errors for sizes that cannot work or that exceed [`crate::limits`], then for a model too large for
    /// this machine's memory, each naming the field.
    pub fn validate(&self) -> Result<()> {
        limits::sizes(&[
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB),
            ("d_model", self.d_model, limits::MAX_WIDTH),
            ("encoder_ffn_dim", self.encoder_ffn_dim, limits::MAX_WIDTH),
            ("decoder_ffn_dim", self.decoder_ffn_dim, limits::MAX_WIDTH),
            ("encoder_layers", self.encoder_layers, limits::MAX_LAYERS),
            ("decoder_layers", self.decoder_layers, limits::MAX_LAYERS),
            ("max_position_embeddings", self.max_position_embeddings, limits::MAX_POSITIONS),
        ])?;
        limits::check_parameters(self.parameter_count())?;
        if self.position_encoding == PositionEncoding::Complex && self.tie_word_embeddings {
            let expected = "false with position_encoding = complex (a position-dependent embedding has no one table to tie the output projection to)";
            return Err(Error::config("tie_word_embeddings", true, expected));
        }
        if self.normalization == Normalization::BatchNorm && self.pad_token_id == self.bos_token_id {
            let expected = format!(
                "layer_norm while pad_token_id = bos_token_id = {} (BatchNorm tells real target positions from padding by the pad id)",
                self.pad_token_id
            );
            return Err(Error::config("normalization", "batch_norm", expected));
        }
        for (option, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(Error::config(option, id, format!("< vocab_size = {}", self.vocab_size)));
            }
        }
        self.encoder_layer().validate()?;
        self.decoder_layer().validate()
    }
}

/// Positions added to the embeddings, if any.
#[derive(Debug, Clone)]
enum AddedPositions {
    Sinusoidal(SinusoidalPosition),
    Learned {
        encoder: LearnedPosition,
        decoder: LearnedPosition,
    },
    /// Relative and rotary positions live inside attention, complex ones in the embedding; or there are none.
    None,
}

/// How token ids become vectors.
#[derive(Debug, Clone)]
enum Words {
    /// Lookup tables (§3.4); positions, if any, are added after.
    Tables { source: Embedding, target: Embedding },
    /// Complex embeddings, which carry the position themselves.
    Complex { source: Box<ComplexEmbedding>, target: Box<ComplexEmbedding> },
}

/// The encoder-decoder Transformer: source ids (B, S) are encoded to a memory (B, S, C) that the decoder
/// attends to while it predicts target logits (B, T, V).
#[derive(Debug, Clone)]
pub struct Transformer {
    config: TransformerConfig,
    words: Words,
    positions: AddedPositions,
    embedding_dropout: Dropout,
    encoder: Encoder,
    decoder: Decoder,
    /// `None` when tied to the target embedding.
    lm_head: Option<Linear>,
}

impl Transformer {
    /// Parameters: `shared.weight` (or `encoder.embed_tokens.weight` and `decoder.embed_tokens.weight`; for
    /// complex embeddings `amplitude.weight`, `frequency.weight` and `phase.weight` under those names),
    /// `encoder.embed_positions.weight` / `decoder.embed_positions.weight` for learned positions,
    /// `encoder.*`, `decoder.*` and, untied, `lm_head.weight`.
    pub fn new(config: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = config.d_model;
        // Scaled by √C, token vectors start at unit variance only if the table is N(0, 1/C) — tensor2tensor's and
        // fairseq's initialisation. Xavier's far smaller values (V ≫ C) leave positions dominating the input
        // and the tied output near zero: on Multi30k that trained several times slower.
        let embedding_init = config.embedding_weight_init();
        // With shared embeddings the second lookup of "shared" returns the same tensors.
        let names = if config.share_encoder_decoder_embeddings {
            ["shared", "shared"]
        } else {
            ["encoder.embed_tokens", "decoder.embed_tokens"]
        };
        let (v, scaled) = (config.vocab_size, config.scale_embedding);
        let words = if config.position_encoding == PositionEncoding::Complex {
            let complex = |name: &str| -> Result<Box<ComplexEmbedding>> {
                Ok(Box::new(ComplexEmbedding::new(vb.pp(name), v, c, scaled, embedding_init)?))
            };
            Words::Complex { source: complex(names[0])?, target: complex(names[1])? }
        } else {
            let token = |name: &str| Embedding::token(vb.pp(name), v, c, scaled, embedding_init);
            Words::Tables { source: token(names[0])?, target: token(names[1])? }
        };
        let positions = match config.position_encoding {
            PositionEncoding::Sinusoidal => AddedPositions::Sinusoidal(SinusoidalPosition::new(c)?),
            PositionEncoding::Learned => {
                let table =
                    |name: &str| LearnedPosition::new(vb.pp(name), config.max_position_embeddings, c, config.init);
                AddedPositions::Learned {
                    encoder: table("encoder.embed_positions")?,
                    decoder: table("decoder.embed_positions")?,
                }
            }
            PositionEncoding::Relative
            | PositionEncoding::Rotary
            | PositionEncoding::Complex
            | PositionEncoding::None => AddedPositions::None,
        };
        let final_norm = Encoder::default_final_norm(config.norm_position);
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(vb.pp("lm_head"), c, config.vocab_size, false, config.init)?)
        };
        Ok(Self {
            config: config.clone(),
            words,
            positions,
            embedding_dropout: Dropout::new(config.embedding_dropout.unwrap_or(config.dropout), "embedding_dropout")?
                .with_scaling(config.dropout_scaling),
            encoder: Encoder::new(&config.encoder_layer(), config.encoder_layers, final_norm, vb.pp("encoder"))?,
            decoder: Decoder::new(&config.decoder_layer(), config.decoder_layers, final_norm, vb.pp("decoder"))?,
            lm_head,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// Stores the encoder's and decoder's matrices in `dtype` for inference (see [`crate::kernels::reduced`]):
    /// in int8 the encoder quantizes its activations per token too (many rows a sentence), while the decoder,
    /// one row a step, keeps them f32.
    /// The embeddings (shared with the output projection when tied) and the LayerNorms stay f32: the
    /// translation models qkv trains have small vocabularies, and the embeddings carry the most error per byte.
    /// f32 weights stay as trained, the encoder's too: a loaded model then computes the training run's logits
    /// bit for bit, and the encoder is a small share of a beam search's time.
    pub fn pack_weights(&mut self, dtype: WeightDtype) -> Result<()> {
        let encoder = if dtype == WeightDtype::F32 { Packing::weights_only(dtype) } else { Packing::encoder(dtype) };
        self.encoder.pack_weights(encoder, "encoder")?;
        self.decoder.pack_weights(Packing::weights_only(dtype), "decoder")
    }

    /// Mask over source keys from `src_valid` (B, S), 1 for real tokens.
    pub fn source_mask(src_valid: &Tensor) -> Result<AttentionMask> {
        AttentionMask::padding(src_valid)
    }

    /// Causal mask for `t` target positions.
    pub fn target_mask(t: usize, device: &Device) -> Result<AttentionMask> {
        AttentionMask::causal(t, t, device)
    }

    /// Source ids (B, S) → memory (B, S, C).
    pub fn encode(&self, src: &Tensor, src_mask: &AttentionMask, mode: &mut Mode) -> Result<Tensor> {
        let x = self.embed(src, Stack::Encoder, 0, mode)?;
        let valid = self.real_positions(src, mode)?;
        self.encoder.forward(&x, Some(src_mask), valid.as_ref(), mode)
    }

    /// (B, L) u8, 1 where `ids` are not padding: the positions a BatchNorm takes its training statistics over.
    /// `None` where nothing needs them (LayerNorm, or evaluation's running statistics). Padding is told by
    /// `pad_token_id`, with which every batch qkv builds pads both sides; [`TransformerConfig::validate`]
    /// refuses a BatchNorm model whose BOS is the pad id.
    fn real_positions(&self, ids: &Tensor, mode: &Mode) -> Result<Option<Tensor>> {
        if self.config.normalization != Normalization::BatchNorm || !mode.is_train() {
            return Ok(None);
        }
        Ok(Some(ids.ne(self.config.pad_token_id)?))
    }

    /// Target ids (B, T), shifted right behind BOS, attend causally to themselves and to memory (B, S, C)
    /// → decoder states (B, T, C).
    pub fn decode(&self, tgt: &Tensor, memory: &Tensor, src_mask: &AttentionMask, mode: &mut Mode) -> Result<Tensor> {
        let x = self.embed(tgt, Stack::Decoder, 0, mode)?;
        let causal = Self::target_mask(tgt.dim(1)?, tgt.device())?;
        let valid = self.real_positions(tgt, mode)?;
        self.decoder.forward(&x, memory, (Some(&causal), Some(src_mask)), valid.as_ref(), mode)
    }

    /// As [`decode`](Self::decode), for target inputs given as vectors in the target embedding's space
    /// (B, T, C) rather than ids: rows of [`target_embedding`](Self::target_embedding)'s table or mixtures of
    /// them (scheduled sampling's softmax-weighted inputs). They are scaled by √C where the model scales,
    /// position-encoded at positions 0 .. T and dropped out exactly as looked-up ids are, so the rows of ids give
    /// [`decode`](Self::decode)'s result bit for bit. Vectors carry no pad id: a BatchNorm in training takes its
    /// statistics over all T positions here.
    pub fn decode_embedded(
        &self,
        token_vectors: &Tensor,
        memory: &Tensor,
        src_mask: &AttentionMask,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        if token_vectors.rank() != 3 || token_vectors.dim(2)? != self.config.d_model {
            let expected = format!("(B, T, {}) target token vectors", self.config.d_model);
            return Err(Error::shape("target token vectors", expected, token_vectors.dims()));
        }
        let x = self.target_embedding()?.scaled(token_vectors)?;
        let x = self.add_positions(x, Stack::Decoder, 0, mode)?;
        let causal = Self::target_mask(token_vectors.dim(1)?, token_vectors.device())?;
        self.decoder.forward(&x, memory, (Some(&causal), Some(src_mask)), None, mode)
    }

    /// The target token embedding (the output projection too, when tied); an error for complex embeddings,
    /// which are no single table.
    pub fn target_embedding(&self) -> Result<&Embedding> {
        match &self.words {
            Words::Tables { target, .. } => Ok(target),
            Words::Complex { .. } => Err(Error::config(
                "position_encoding",
                "complex",
                "a lookup table of target embeddings (inputs given as vectors mix rows of one)",
            )),
        }
    }

    /// An empty cache for [`decode_step`](Self::decode_step).
    pub fn new_cache(&self) -> DecoderCache {
        DecoderCache::new(self.config.decoder_layers)
    }

    /// Incremental decoding (inference): `tgt` (B, t) holds the target positions after those already in `cache`
    /// (the whole prefix behind BOS at the first step, one token after) → decoder states (B, t, C) for them,
    /// equal to the matching rows of [`decode`](Self::decode) over the whole prefix.
    pub fn decode_step(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        src_mask: &AttentionMask,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        let (offset, t) = (cache.len(), tgt.dim(1)?);
        let x = self.embed(tgt, Stack::Decoder, offset, &mut Mode::Eval)?;
        // One new query sees every cached key; several must not see each other's future.
        let causal = if t > 1 { Some(AttentionMask::causal(t, offset + t, tgt.device())?) } else { None };
        self.decoder.forward_step(&x, memory, (causal.as_ref(), Some(src_mask)), cache, &mut Mode::Eval)
    }

    /// Teacher-forced pass in eval mode returning every decoder layer's self- and cross-attention weights
    /// (B, H, T, T) and (B, H, T, S), for visualisation.
    pub fn attention_maps(&self, src: &Tensor, src_valid: &Tensor, tgt: &Tensor) -> Result<Vec<DecoderWeights>> {
        Ok(self.all_attention_maps(src, src_valid, tgt)?.decoder)
    }

    /// Teacher-forced pass in eval mode returning every attention map of both stacks.
    pub fn all_attention_maps(&self, src: &Tensor, src_valid: &Tensor, tgt: &Tensor) -> Result<AttentionMaps> {
        let mode = &mut Mode::Eval;
        let src_mask = Self::source_mask(src_valid)?;
        let x = self.embed(src, Stack::Encoder, 0, mode)?;
        let (memory, encoder) = self.encoder.forward_with_weights(&x, Some(&src_mask), None, mode)?;
        let x = self.embed(tgt, Stack::Decoder, 0, mode)?;
        let causal = Self::target_mask(tgt.dim(1)?, tgt.device())?;
        let decoder = self.decoder.forward_with_weights(&x, &memory, (Some(&causal), Some(&src_mask)), None, mode)?.1;
        Ok(AttentionMaps { encoder, decoder })
    }

    /// Decoder states (B, T, C) → logits (B, T, V).
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => self.target_embedding()?.unembed(hidden, None),
        }
    }

    /// The output projection's (V, C) weight when [`project`](Self::project) is a plain f32 product with it and no
    /// bias — the tied target table, or an untied `lm_head` — so that a loss can fuse the two
    /// ([`crate::train::projected_cross_entropy`]). `None` once packed for inference.
    pub fn output_weight(&self) -> Option<&Tensor> {
        match &self.lm_head {
            Some(head) => head.weight().filter(|_| head.bias().is_none()),
            None => self.target_embedding().ok()?.unpacked_table(),
        }
    }

    /// Teacher forcing: src (B, S) with `src_valid` (B, S), target input (B, T) → logits (B, T, V).
    pub fn forward(&self, src: &Tensor, src_valid: &Tensor, tgt: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        self.project(&self.decoder_states(src, src_valid, tgt, mode)?)
    }

    /// [`forward`](Self::forward) up to the output projection: decoder states (B, T, C).
    pub fn decoder_states(&self, src: &Tensor, src_valid: &Tensor, tgt: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let src_mask = Self::source_mask(src_valid)?;
        let memory = self.encode(src, &src_mask, mode)?;
        self.decode(tgt, &memory, &src_mask, mode)
    }

    /// Token embeddings of `ids` (B, L) at positions offset .. offset + L, plus added positions and embedding
    /// dropout → (B, L, C).
    fn embed(&self, ids: &Tensor, stack: Stack, offset: usize, mode: &mut Mode) -> Result<Tensor> {
        if ids.rank() != 2 {
            return Err(Error::shape(stack.ids_name(), "(B, L) token ids", ids.dims()));
        }
        let x = match (&self.words, stack) {
            (Words::Tables { source, .. }, Stack::Encoder) => source.forward(ids)?, // (B, L, C)
            (Words::Tables { target, .. }, Stack::Decoder) => target.forward(ids)?,
            (Words::Complex { source, .. }, Stack::Encoder) => source.forward(ids, offset)?,
            (Words::Complex { target, .. }, Stack::Decoder) => target.forward(ids, offset)?,
        };
        self.add_positions(x, stack, offset, mode)
    }

    /// Embedded inputs x (B, L, C) at positions offset .. offset + L, plus added positions, then embedding
    /// dropout → (B, L, C).
    fn add_positions(&self, x: Tensor, stack: Stack, offset: usize, mode: &mut Mode) -> Result<Tensor> {
        let len = x.dim(1)?;
        let x = match (&self.positions, stack) {
            (AddedPositions::Sinusoidal(pe), _) => x.broadcast_add(&pe.forward(len, offset, x.device())?)?,
            (AddedPositions::Learned { encoder, .. }, Stack::Encoder) => {
                x.broadcast_add(&encoder.forward(len, offset)?)?
            }
            (AddedPositions::Learned { decoder, .. }, Stack::Decoder) => {
                x.broadcast_add(&decoder.forward(len, offset)?)?
            }
            (AddedPositions::None, _) => x,
        };
        self.embedding_dropout.forward(&x, mode)
    }
}

/// Every attention map of a teacher-forced pass.
pub struct AttentionMaps {
    /// Each encoder layer's self-attention, (B, H, S, S).
    pub encoder: Vec<Tensor>,
    /// Each decoder layer's self- and cross-attention.
    pub decoder: Vec<DecoderWeights>,
}

#[derive(Debug, Clone, Copy)]
enum Stack {
    Encoder,
    Decoder,
}

impl Stack {
    fn ids_name(self) -> &'static str {
        match self {
            Stack::Encoder => "source ids",
            Stack::Decoder => "target ids",
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;
    use candle_nn::VarMap;

    use super::*;
    use crate::nn::seeded_var_builder;

    /// The rows of ids fed as vectors give the id path's decoder states bit for bit, dropout included (the same
    /// dropout seed draws the same masks), for every kind of added position.
    #[test]
    fn decoding_embedded_rows_equals_decoding_their_ids() {
        for position_encoding in [
            PositionEncoding::Sinusoidal,
            PositionEncoding::Learned,
            PositionEncoding::Relative,
            PositionEncoding::Rotary,
            PositionEncoding::None,
        ] {
            let config = TransformerConfig {
                vocab_size: 20,
                d_model: 16,
                encoder_layers: 1,
                decoder_layers: 2,
                encoder_attention_heads: 2,
                decoder_attention_heads: 2,
                encoder_ffn_dim: 32,
                decoder_ffn_dim: 32,
                max_position_embeddings: 16,
                position_encoding,
                ..TransformerConfig::default()
            };
            let varmap = VarMap::new();
            let model = Transformer::new(&config, seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu)).unwrap();
            let src = Tensor::new(&[[5u32, 6, 7, 2], [8, 9, 2, 0]], &Device::Cpu).unwrap();
            let valid = Tensor::new(&[[1u8, 1, 1, 1], [1, 1, 1, 0]], &Device::Cpu).unwrap();
            let tgt = Tensor::new(&[[1u32, 8, 9, 4, 3], [1, 11, 12, 0, 0]], &Device::Cpu).unwrap();
            let src_mask = Transformer::source_mask(&valid).unwrap();
            let memory = model.encode(&src, &src_mask, &mut Mode::Eval).unwrap();
            let rows = model.target_embedding().unwrap().rows(&tgt).unwrap();
            for seed in [None, Some(11)] {
                let mode = || seed.map_or(Mode::Eval, Mode::train);
                let by_ids = model.decode(&tgt, &memory, &src_mask, &mut mode()).unwrap();
                let by_rows = model.decode_embedded(&rows, &memory, &src_mask, &mut mode()).unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(flat(&by_ids), flat(&by_rows), "{position_encoding:?}, dropout seed {seed:?}");
            }
            let wrong = Tensor::zeros((2, 5, 8), DType::F32, &Device::Cpu).unwrap();
            let err = model.decode_embedded(&wrong, &memory, &src_mask, &mut Mode::Eval).unwrap_err().to_string();
            assert!(err.contains("target token vectors") && err.contains("(B, T, 16)"), "{err}");
        }
    }

    /// A config.json written before `normalization` existed reads as LayerNorm; the field round-trips under its
    /// snake_case names, and an unknown name is an error that lists the known ones.
    #[test]
    fn normalization_reads_old_configs_as_layer_norm_and_round_trips() {
        let old: TransformerConfig = serde_json::from_str(r#"{"d_model": 64, "norm_position": "pre"}"#).unwrap();
        assert_eq!(old.normalization, Normalization::LayerNorm);
        let batch = TransformerConfig { normalization: Normalization::BatchNorm, ..TransformerConfig::small() };
        let json = serde_json::to_string(&batch).unwrap();
        assert!(json.contains(r#""normalization":"batch_norm""#), "{json}");
        assert_eq!(serde_json::from_str::<TransformerConfig>(&json).unwrap(), batch);
        let err = serde_json::from_str::<TransformerConfig>(r#"{"normalization": "group_norm"}"#).unwrap_err();
        assert!(err.to_string().contains("batch_norm"), "{err}");
    }

    /// A complex embedding has no table whose rows inputs could mix: asking for one is an error that says so,
    /// and so is tying the output projection to it.
    #[test]
    fn complex_embeddings_have_no_table_to_tie_or_mix() {
        let config = TransformerConfig {
            vocab_size: 20,
            d_model: 16,
            encoder_layers: 1,
            decoder_layers: 1,
            encoder_attention_heads: 2,
            decoder_attention_heads: 2,
            encoder_ffn_dim: 32,
            decoder_ffn_dim: 32,
            position_encoding: PositionEncoding::Complex,
            ..TransformerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("tie_word_embeddings") && err.contains("complex"), "{err}");
        let config = TransformerConfig { tie_word_embeddings: false, ..config };
        let varmap = VarMap::new();
        let model = Transformer::new(&config, seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu)).unwrap();
        let err = model.target_embedding().unwrap_err().to_string();
        assert!(err.contains("position_encoding") && err.contains("complex"), "{err}");
    }
}
