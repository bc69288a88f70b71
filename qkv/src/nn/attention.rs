//! Attention (§3.2): scaled dot-product attention and multi-head attention with separate Q, K, V and output
//! projections, for self-attention (keys from the queries' own sequence) and cross-attention (keys from the
//! encoder's memory).

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{
    dropout::{Dropout, DropoutScaling},
    kv_cache::KvCache,
    linear::Linear,
    mask::AttentionMask,
    mode::Mode,
    norm::LayerNorm,
    params::{scaled, WeightInit},
    position::{RelativePosition, RelativeTerms, RotaryPosition},
};
use crate::kernels::reduced::Packing;
use crate::kernels::{self, softmax::masked_softmax};
use crate::{Error, Result};

/// How a query is scored against a key before the softmax. The one choice every attention path goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// q·k / √Dh, eq. (1).
    #[default]
    ScaledDot,
    /// q·k without the 1/√Dh factor (§3.2.1 explains why the factor is there; experiments drop it to see).
    Dot,
    /// T5's choice (Raffel et al., 2020): q·k unscaled, with W_Q's initial values divided by √Dh instead, so
    /// that the scores start with the variance the factor would have given them.
    T5,
    /// LayerNorm over each head's Dh components of q and of k (one γ, β per stack position, shared by the
    /// heads), in place of the factor ("QK-norm").
    QkNorm,
    /// Additive attention (Bahdanau et al., 2015), as §3.2.1 compares it: vₕᵀ tanh(q + k) per head h, where q
    /// and k are already the linear maps W_Q x and W_K y of Bahdanau's score.
    Additive,
}

impl Score {
    /// The factor the score is multiplied by.
    fn scale(self, head_dim: usize) -> f64 {
        match self {
            Score::ScaledDot => 1.0 / (head_dim as f64).sqrt(),
            Score::Dot | Score::T5 | Score::QkNorm | Score::Additive => 1.0,
        }
    }

    /// Whether the score is a (scaled) dot product of q and k as they arrive, which the fused kernel computes.
    fn is_dot_product(self) -> bool {
        !matches!(self, Score::Additive)
    }
}

/// Which linear maps turn the inputs into queries, keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Projections {
    /// W_Q, W_K and W_V of their own (§3.2.2).
    #[default]
    Separate,
    /// One matrix for queries and keys (W_K = W_Q): in self-attention the score matrix is then symmetric.
    SharedQk,
    /// No W_Q, W_K, W_V at all: q = k = v = x, split into heads; only W_O remains.
    None,
}

/// ε of [`Score::QkNorm`]'s LayerNorms.
const QK_NORM_EPS: f64 = 1e-5;

/// Which computation a pass takes: decided in one place, [`ScaledDotProduct::path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// [`crate::kernels::attention`]: tiled, never materialises the weights, reads heads where they lie.
    Fused,
    /// Scores, masked softmax, dropout and the weighted sum as separate (differentiable) ops.
    Composed,
}

/// Attention(Q, K, V) = softmax(score(Q, K) + M)·V, eq. (1), with dropout on the probabilities (§5.4).
#[derive(Debug, Clone)]
pub struct ScaledDotProduct {
    score: Score,
    dropout: Dropout,
    /// vₕ of [`Score::Additive`], (H, Dh).
    additive: Option<Tensor>,
}

impl ScaledDotProduct {
    /// `scaled = false` drops the 1/√Dh factor ([`Score::Dot`]).
    pub fn new(scaled: bool, dropout: f64) -> Result<Self> {
        Self::with_score(if scaled { Score::ScaledDot } else { Score::Dot }, dropout)
    }

    /// A dot-product score ([`Score::Additive`] needs its vectors: [`Self::additive`]).
    pub fn with_score(score: Score, dropout: f64) -> Result<Self> {
        if !score.is_dot_product() {
            return Err(Error::config("score", format!("{score:?}"), "a dot-product score (additive needs its v)"));
        }
        Ok(Self { score, dropout: Dropout::new(dropout, "attention dropout")?, additive: None })
    }

    /// [`Score::Additive`] with one vector vₕ per head: `v` (H, Dh).
    pub fn additive(v: Tensor, dropout: f64) -> Result<Self> {
        if v.rank() != 2 {
            return Err(Error::shape("additive attention v", "(H, Dh)", v.dims()));
        }
        Ok(Self { score: Score::Additive, dropout: Dropout::new(dropout, "attention dropout")?, additive: Some(v) })
    }

    /// The same attention with `scaling` for its dropout.
    pub fn with_dropout_scaling(self, scaling: DropoutScaling) -> Self {
        Self { dropout: self.dropout.with_scaling(scaling), ..self }
    }

    /// q (B, H, T, Dh), k and v (B, H, S, Dh) — any layout whose last dimension is contiguous, such as a
    /// cache's views — → output (B, H, T, Dh) and, with `need_weights`, the attention weights (B, H, T, S)
    /// before dropout. A query whose keys are all masked gets zero weights and output.
    pub fn forward(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        mask: Option<&AttentionMask>,
        relative: Option<&RelativeTerms>,
        mode: &mut Mode,
        need_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let scale = self.score.scale(q.dim(3)?);
        let bias = mask.map(AttentionMask::bias);
        match self.path(q, mode, need_weights, relative.is_some()) {
            Path::Fused => Ok((kernels::attention::attention(q, k, v, bias, scale)?, None)),
            Path::Composed => self.composed((q, k, v), mask, relative, mode, need_weights),
        }
    }

    /// Heads as column blocks of the projections: q (B, T, H·Dh), k and v (B, S, H·Dh) → (B, T, H·Dh), and the
    /// weights (B, H, T, S) with `need_weights`. The fused path reads the heads in place (no splitting copies,
    /// no merge); the composed one splits them.
    pub fn forward_merged(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        num_heads: usize,
        mask: Option<&AttentionMask>,
        relative: Option<&RelativeTerms>,
        mode: &mut Mode,
        need_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let head_dim = q.dim(2)? / num_heads.max(1);
        let bias = mask.map(AttentionMask::bias);
        match self.path(q, mode, need_weights, relative.is_some()) {
            Path::Fused => {
                let scale = self.score.scale(head_dim);
                Ok((kernels::attention::attention_merged(q, k, v, num_heads, bias, scale)?, None))
            }
            Path::Composed => {
                let split = |x: &Tensor| split_heads(x, num_heads, head_dim);
                let (q, k, v) = (split(q)?, split(k)?, split(v)?);
                let (heads, weights) = self.composed((&q, &k, &v), mask, relative, mode, need_weights)?;
                Ok((merge_heads(&heads)?, weights))
            }
        }
    }

    /// The fused kernel computes the scaled dot product without weights, relative terms or dropout, on CPU
    /// f32 tensors; everything else is composed.
    fn path(&self, q: &Tensor, mode: &Mode, need_weights: bool, relative: bool) -> Path {
        let dropout_active = !self.dropout.is_identity(mode);
        // The kernel computes a scaled dot product of q and k as they arrive; any other score is composed.
        if self.score.is_dot_product() && !need_weights && !relative && !dropout_active && kernels::fused(q) {
            Path::Fused
        } else {
            Path::Composed
        }
    }

    fn composed(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        mask: Option<&AttentionMask>,
        relative: Option<&RelativeTerms>,
        mode: &mut Mode,
        need_weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (k, v) = (&k.contiguous()?, &v.contiguous()?); // cache views have spare rows between heads
        let mut scores = match &self.additive {
            Some(v) => additive_scores(q, k, v)?,
            None => q.matmul(&k.t()?)?, // (B, H, T, S)
        };
        if let Some(rel) = relative {
            scores = (scores + rel.key_scores(q)?)?;
        }
        let bias = match mask {
            Some(mask) => Some(mask.bias_as(scores.dtype())?),
            None => None,
        };
        let weights = masked_softmax(&scores, bias.as_ref(), self.score.scale(q.dim(3)?))?;
        let dropped = self.dropout.forward(&weights, mode)?;
        let mut output = dropped.matmul(v)?; // (B, H, T, Dh)
        if let Some(rel) = relative {
            output = (output + rel.weighted_values(&dropped)?)?;
        }
        Ok((output, need_weights.then_some(weights)))
    }
}

/// vₕᵀ tanh(q_t + k_s) for q (B, H, T, Dh), k (B, H, S, Dh), v (H, Dh) → (B, H, T, S). The sum holds
/// B·H·T·S·Dh numbers at once where a dot product needs B·H·T·S: the memory cost §3.2.1 alludes to.
fn additive_scores(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, t, dh) = q.dims4()?;
    let s = k.dim(2)?;
    let hidden = q.unsqueeze(3)?.broadcast_add(&k.unsqueeze(2)?)?.tanh()?; // (B, H, T, S, Dh)
    let v = v.reshape((1, h, dh, 1))?;
    let scores = hidden.reshape((b, h, t * s, dh))?.broadcast_matmul(&v)?; // (B, H, T·S, 1)
    Ok(scores.reshape((b, h, t, s))?)
}

/// (B, L, H·Dh) → (B, H, L, Dh)
fn split_heads(x: &Tensor, num_heads: usize, head_dim: usize) -> Result<Tensor> {
    let (b, l, _) = x.dims3()?;
    Ok(x.reshape((b, l, num_heads, head_dim))?.transpose(1, 2)?.contiguous()?)
}

/// (B, H, L, Dh) → (B, L, H·Dh)
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, dh) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, l, h * dh))?)
}

/// What an attention block reuses from earlier decoding steps.
pub(crate) enum StepCache<'a> {
    /// Self-attention: this step's keys and values are appended to those of earlier positions.
    Grow(&'a mut KvCache),
    /// Cross-attention: the memory's keys and values, projected at the first step and reused after.
    Memory(&'a mut Option<(Tensor, Tensor)>),
}

/// The weights a `need_weights = true` pass returns; the composed path always produces them.
pub(crate) fn requested<T>(weights: Option<T>) -> Result<T> {
    weights.ok_or_else(|| Error::config("need_weights", true, "attention weights from the composed path"))
}

/// Shape of a multi-head attention block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionConfig {
    /// Model width C: the size of the query, key and value inputs and of the output.
    pub d_model: usize,
    /// H: heads the attention is split into; C must divide by H unless `head_dim` is set.
    pub num_heads: usize,
    /// Biases on the four projections (PyTorch and BERT: yes).
    pub bias: bool,
    /// Dropout on the attention probabilities.
    pub dropout: f64,
    /// When that dropout's 1 − p is made up for.
    #[serde(default)]
    pub dropout_scaling: DropoutScaling,
    /// The query-key score (the paper: scaled dot product).
    pub score: Score,
    /// W_Q, W_K, W_V each (the paper), W_Q shared by keys, or none.
    #[serde(default)]
    pub projections: Projections,
    /// Width of each head; `None` for d_model / num_heads (the paper). Wider heads make the projections
    /// (C, H·Dh) and W_O (H·Dh, C).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Clipping distance k of Shaw et al.'s relative position representations; `None` for none.
    pub relative_max_distance: Option<usize>,
    /// Rotary position embeddings (RoPE) of queries and keys, for self-attention.
    #[serde(default)]
    pub rotary: bool,
}

impl AttentionConfig {
    /// The paper's block of width `d_model` with `num_heads` heads: biased separate W_Q, W_K, W_V, scaled
    /// dot-product scores, no dropout and no relative or rotary positions.
    pub fn new(d_model: usize, num_heads: usize) -> Self {
        Self {
            d_model,
            num_heads,
            bias: true,
            dropout: 0.0,
            dropout_scaling: DropoutScaling::Inverted,
            score: Score::ScaledDot,
            projections: Projections::Separate,
            head_dim: None,
            relative_max_distance: None,
            rotary: false,
        }
    }

    /// Dh: `head_dim`, else C / H, or an error naming the numbers.
    pub fn head_dim(&self) -> Result<usize> {
        if self.num_heads == 0 {
            return Err(Error::config("num_heads", 0, "at least 1"));
        }
        if let Some(dh) = self.head_dim {
            if dh == 0 {
                return Err(Error::config("head_dim", 0, "a positive width"));
            }
            crate::limits::at_most("head_dim", dh, crate::limits::MAX_WIDTH)?;
            crate::limits::at_most(
                "num_heads × head_dim",
                dh.saturating_mul(self.num_heads),
                crate::limits::MAX_WIDTH,
            )?;
            if self.projections == Projections::None && dh * self.num_heads != self.d_model {
                let expected = format!(
                    "d_model / num_heads = {} without projections (q = k = v = x)",
                    self.d_model / self.num_heads
                );
                return Err(Error::config("head_dim", dh, expected));
            }
            return Ok(dh);
        }
        if !self.d_model.is_multiple_of(self.num_heads) {
            return Err(Error::config(
                "num_heads",
                self.num_heads,
                format!("a divisor of d_model = {} (each head has width d_model / num_heads)", self.d_model),
            ));
        }
        Ok(self.d_model / self.num_heads)
    }
}

/// MultiHead(Q, K, V) = Concat(head₁ … head_h)·W^O with headᵢ = Attention(Q·W^Q_i, K·W^K_i, V·W^V_i), §3.2.2.
/// The h per-head projections are stored as one (C, C) matrix each for Q, K and V.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    /// W_Q, absent without projections.
    q_proj: Option<Linear>,
    /// W_K, absent when shared with W_Q or without projections.
    k_proj: Option<Linear>,
    /// W_V, absent without projections.
    v_proj: Option<Linear>,
    out_proj: Linear,
    projections: Projections,
    /// [`Score::QkNorm`]'s LayerNorms over Dh for queries and keys.
    qk_norm: Option<(LayerNorm, LayerNorm)>,
    attention: ScaledDotProduct,
    relative: Option<RelativePosition>,
    rotary: Option<RotaryPosition>,
    num_heads: usize,
    head_dim: usize,
    d_model: usize,
}

impl MultiHeadAttention {
    /// Parameters `q_proj`, `k_proj`, `v_proj` (each `weight` (H·Dh, C) and optionally `bias` (H·Dh); only
    /// those [`Projections`] keeps), `out_proj` (`weight` (C, H·Dh)), `q_norm`/`k_norm` for [`Score::QkNorm`],
    /// `additive.weight` (H, Dh) for [`Score::Additive`], and `relative.{keys,values}` when relative positions
    /// are on (rotary positions have no parameters).
    pub fn new(config: &AttentionConfig, init: WeightInit, vb: VarBuilder) -> Result<Self> {
        let head_dim = config.head_dim()?;
        let (c, inner) = (config.d_model, config.num_heads * head_dim);
        let projection = |name: &str, init: Init| Linear::with_init(vb.pp(name), c, inner, config.bias, init);
        let plain = init.for_matrix(inner, c);
        // T5 folds 1/√Dh into W_Q's initial values instead of multiplying every score by it.
        let query_init = match config.score {
            Score::T5 => scaled(plain, 1.0 / (head_dim as f64).sqrt()),
            _ => plain,
        };
        let (q_proj, k_proj, v_proj) = match config.projections {
            Projections::Separate => (
                Some(projection("q_proj", query_init)?),
                Some(projection("k_proj", plain)?),
                Some(projection("v_proj", plain)?),
            ),
            Projections::SharedQk => {
                (Some(projection("q_proj", query_init)?), None, Some(projection("v_proj", plain)?))
            }
            Projections::None => (None, None, None),
        };
        let qk_norm = match config.score {
            Score::QkNorm => Some((
                LayerNorm::new(vb.pp("q_norm"), head_dim, QK_NORM_EPS)?,
                LayerNorm::new(vb.pp("k_norm"), head_dim, QK_NORM_EPS)?,
            )),
            _ => None,
        };
        let attention = match config.score {
            Score::Additive => {
                let v = vb.get_with_hints(
                    (config.num_heads, head_dim),
                    "additive.weight",
                    init.for_matrix(config.num_heads, head_dim),
                )?;
                ScaledDotProduct::additive(v, config.dropout)?
            }
            score => ScaledDotProduct::with_score(score, config.dropout)?,
        }
        .with_dropout_scaling(config.dropout_scaling);
        let relative = match config.relative_max_distance {
            Some(k) => Some(RelativePosition::new(vb.pp("relative"), k, head_dim, init)?),
            None => None,
        };
        let rotary = if config.rotary { Some(RotaryPosition::new(head_dim)?) } else { None };
        Ok(Self {
            q_proj,
            k_proj,
            v_proj,
            out_proj: Linear::new(vb.pp("out_proj"), inner, c, config.bias, init)?,
            projections: config.projections,
            qk_norm,
            attention,
            relative,
            rotary,
            num_heads: config.num_heads,
            head_dim,
            d_model: c,
        })
    }

    /// Stores the projections in `dtype` for inference (parameters named under `prefix`).
    pub fn pack_weights(&mut self, packing: Packing, prefix: &str) -> Result<()> {
        let projections = [("q_proj", &mut self.q_proj), ("k_proj", &mut self.k_proj), ("v_proj", &mut self.v_proj)];
        for (name, projection) in projections {
            if let Some(linear) = projection {
                linear.pack(packing, &format!("{prefix}.{name}.weight"))?;
            }
        }
        self.out_proj.pack(packing, &format!("{prefix}.out_proj.weight"))
    }

    /// query (B, T, C) attends over memory (B, S, C) — the same tensor for self-attention → (B, T, C).
    pub fn forward(
        &self,
        query: &Tensor,
        memory: &Tensor,
        mask: Option<&AttentionMask>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        Ok(self.attend(query, memory, mask, mode, false, None)?.0)
    }

    /// As [`forward`](Self::forward), also returning the attention weights (B, H, T, S) for visualisation.
    pub fn forward_with_weights(
        &self,
        query: &Tensor,
        memory: &Tensor,
        mask: Option<&AttentionMask>,
        mode: &mut Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (output, weights) = self.attend(query, memory, mask, mode, true, None)?;
        Ok((output, requested(weights)?))
    }

    /// The one forward pass behind every entry point. With a cache, `query` holds only this step's positions
    /// and keys/values come from the cache as described by [`StepCache`].
    pub(crate) fn attend(
        &self,
        query: &Tensor,
        memory: &Tensor,
        mask: Option<&AttentionMask>,
        mode: &mut Mode,
        need_weights: bool,
        cache: Option<StepCache>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.check_inputs(query, memory)?;
        // The queries, and the keys this call projects, are the positions after those already cached.
        let offset = match &cache {
            Some(StepCache::Grow(cache)) => cache.len(),
            _ => 0,
        };
        let q = self.rotated(self.queries(query)?, offset)?;
        let project = |x: &Tensor| -> Result<(Tensor, Tensor)> {
            let (k, v) = self.keys_values(x)?;
            Ok((self.rotated(k, offset)?, v))
        };
        let Some(cache) = cache else {
            let (k, v) = project(memory)?;
            let relative = match &self.relative {
                Some(rel) => Some(rel.terms(query.dim(1)?, memory.dim(1)?)?),
                None => None,
            };
            let (output, weights) = self.attention.forward_merged(
                (&q, &k, &v),
                self.num_heads,
                mask,
                relative.as_ref(),
                mode,
                need_weights,
            )?;
            return Ok((self.out_proj.forward(&output)?, weights));
        };
        let q = self.split_heads(&q)?;
        let project_heads = |x: &Tensor| -> Result<(Tensor, Tensor)> {
            let (k, v) = project(x)?;
            Ok((self.split_heads(&k)?, self.split_heads(&v)?))
        };
        let (k, v) = match cache {
            StepCache::Grow(cache) => {
                let (k, v) = project_heads(memory)?;
                cache.append(&k, &v)?
            }
            // The memory's keys and values are projected at the first step only.
            StepCache::Memory(slot) => match slot {
                Some(kv) => kv.clone(),
                None => slot.insert(project_heads(memory)?).clone(),
            },
        };
        let relative = match &self.relative {
            Some(rel) => Some(rel.terms(q.dim(2)?, k.dim(2)?)?),
            None => None,
        };
        let (heads, weights) = self.attention.forward((&q, &k, &v), mask, relative.as_ref(), mode, need_weights)?;
        let output = self.out_proj.forward(&merge_heads(&heads)?)?;
        Ok((output, weights))
    }

    /// H, the number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Queries or keys (B, L, H·Dh) at positions offset .. offset + L, rotated when rotary positions are on.
    fn rotated(&self, x: Tensor, offset: usize) -> Result<Tensor> {
        match &self.rotary {
            Some(rope) => rope.rotate(&x, offset),
            None => Ok(x),
        }
    }

    /// Queries (B, T, H·Dh) of `x` (B, T, C).
    fn queries(&self, x: &Tensor) -> Result<Tensor> {
        let q = match &self.q_proj {
            Some(w) => w.forward(x)?,
            None => x.clone(),
        };
        match &self.qk_norm {
            Some((norm, _)) => self.normalize_heads(&q, norm),
            None => Ok(q),
        }
    }

    /// Keys and values (B, S, H·Dh) of `x` (B, S, C).
    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = match (self.projections, &self.k_proj, &self.q_proj) {
            (Projections::Separate, Some(w), _) | (Projections::SharedQk, _, Some(w)) => w.forward(x)?,
            _ => x.clone(),
        };
        let k = match &self.qk_norm {
            Some((_, norm)) => self.normalize_heads(&k, norm)?,
            None => k,
        };
        let v = match &self.v_proj {
            Some(w) => w.forward(x)?,
            None => x.clone(),
        };
        Ok((k, v))
    }

    /// LayerNorm over each head's Dh components of x (B, L, H·Dh).
    fn normalize_heads(&self, x: &Tensor, norm: &LayerNorm) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let heads = x.reshape((b, l, self.num_heads, self.head_dim))?;
        Ok(norm.forward(&heads)?.reshape((b, l, self.num_heads * self.head_dim))?)
    }

    fn check_inputs(&self, query: &Tensor, memory: &Tensor) -> Result<()> {
        let expected = format!("(B, L, {})", self.d_model);
        if query.rank() != 3 || query.dim(2)? != self.d_model {
            return Err(Error::shape("attention query", expected, query.dims()));
        }
        if memory.rank() != 3 || memory.dim(2)? != self.d_model || memory.dim(0)? != query.dim(0)? {
            let expected = format!("({}, S, {})", query.dim(0)?, self.d_model);
            return Err(Error::shape("attention memory", expected, memory.dims()));
        }
        Ok(())
    }

    /// (B, L, C) → (B, H, L, Dh)
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        split_heads(x, self.num_heads, self.head_dim)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarMap;

    use super::*;
    use crate::nn::params::{named_vars, seeded_var_builder};

    const C: usize = 16;

    fn block(config: &AttentionConfig) -> (MultiHeadAttention, Vec<String>) {
        let vars = VarMap::new();
        let mha = MultiHeadAttention::new(
            config,
            WeightInit::XavierUniform,
            seeded_var_builder(&vars, 5, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let mut names: Vec<String> = named_vars(&vars).into_iter().map(|(n, _)| n).collect();
        names.sort();
        (mha, names)
    }

    fn input(b: usize, l: usize) -> Tensor {
        Tensor::randn(0f32, 1.0, (b, l, C), &Device::Cpu).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Q = K keeps one matrix, used for queries and keys alike, so self-attention scores are symmetric.
    #[test]
    fn shared_qk_is_one_tensor_and_makes_scores_symmetric() {
        let config = AttentionConfig { projections: Projections::SharedQk, ..AttentionConfig::new(C, 2) };
        let (mha, names) = block(&config);
        assert!(
            names.iter().any(|n| n.starts_with("q_proj")) && !names.iter().any(|n| n.starts_with("k_proj")),
            "{names:?}"
        );
        let x = input(2, 5);
        let (q, (k, _)) = (mha.queries(&x).unwrap(), mha.keys_values(&x).unwrap());
        assert_eq!(max_abs(&(&q - &k).unwrap()), 0.0);
        let q = mha.split_heads(&q).unwrap();
        let scores = q.matmul(&q.t().unwrap()).unwrap();
        assert!(max_abs(&(&scores - scores.t().unwrap()).unwrap()) < 1e-5);
    }

    /// Without projections q = k = v = x and only W_O has parameters; its head width must be C / H.
    #[test]
    fn no_projections_attend_over_the_inputs_themselves() {
        let config = AttentionConfig { projections: Projections::None, ..AttentionConfig::new(C, 4) };
        let (mha, names) = block(&config);
        assert!(names.iter().all(|n| n.starts_with("out_proj")), "{names:?}");
        let x = input(1, 3);
        let (k, v) = mha.keys_values(&x).unwrap();
        assert_eq!(max_abs(&(&mha.queries(&x).unwrap() - &x).unwrap()), 0.0);
        assert_eq!(max_abs(&(&k - &x).unwrap()) + max_abs(&(&v - &x).unwrap()), 0.0);
        let wide = AttentionConfig { head_dim: Some(C), ..config };
        let err =
            MultiHeadAttention::new(&wide, WeightInit::XavierUniform, VarBuilder::zeros(DType::F32, &Device::Cpu))
                .unwrap_err();
        assert!(err.to_string().contains("head_dim"), "{err}");
    }

    /// Heads of a chosen width: projections (C → H·Dh), W_O (H·Dh → C), and the output keeps width C.
    #[test]
    fn wide_heads_change_the_projection_shapes_only() {
        let config = AttentionConfig { head_dim: Some(C), ..AttentionConfig::new(C, 4) };
        let (mha, _) = block(&config);
        assert_eq!(mha.q_proj.as_ref().unwrap().weight().unwrap().dims(), &[4 * C, C]);
        assert_eq!(mha.out_proj.weight().unwrap().dims(), &[C, 4 * C]);
        let x = input(2, 3);
        assert_eq!(mha.forward(&x, &x, None, &mut Mode::Eval).unwrap().dims(), &[2, 3, C]);
    }

    /// The additive score vₕᵀ tanh(q + k) against a float64 loop over its definition (tolerance 1e-5).
    #[test]
    fn additive_scores_match_a_float64_reference() {
        let (b, h, t, s, dh) = (2, 3, 4, 5, 6);
        let dev = &Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (b, h, t, dh), dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, h, s, dh), dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (h, dh), dev).unwrap();
        let got = additive_scores(&q, &k, &v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let [qv, kv, vv] = [&q, &k, &v].map(|x| x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let mut max_error = 0f64;
        for bi in 0..b {
            for hi in 0..h {
                for ti in 0..t {
                    for si in 0..s {
                        let expected: f64 = (0..dh)
                            .map(|d| {
                                let qd = f64::from(qv[((bi * h + hi) * t + ti) * dh + d]);
                                let kd = f64::from(kv[((bi * h + hi) * s + si) * dh + d]);
                                f64::from(vv[hi * dh + d]) * (qd + kd).tanh()
                            })
                            .sum();
                        let got = f64::from(got[((bi * h + hi) * t + ti) * s + si]);
                        max_error = max_error.max((got - expected).abs());
                    }
                }
            }
        }
        assert!(max_error < 1e-5, "{max_error}");
    }

    /// T5's W_Q starts 1/√Dh smaller than the plain initialisation (Xavier-uniform: the bound itself, so the
    /// largest entry is below bound/√Dh and above half of it for 1024 draws).
    #[test]
    fn t5_scales_the_initial_query_projection() {
        let config = AttentionConfig { score: Score::T5, ..AttentionConfig::new(64, 4) };
        let (mha, _) = block(&config);
        let bound = (6.0f64 / 128.0).sqrt();
        let scaled = bound / 16f64.sqrt();
        let q_max = f64::from(max_abs(mha.q_proj.as_ref().unwrap().weight().unwrap()));
        let k_max = f64::from(max_abs(mha.k_proj.as_ref().unwrap().weight().unwrap()));
        assert!(q_max <= scaled && q_max > scaled / 2.0, "{q_max} vs {scaled}");
        assert!(k_max <= bound && k_max > scaled, "{k_max}");
        assert_eq!(Score::T5.scale(16), 1.0);
    }

    /// QK-norm normalises each head's q and k (mean 0, variance 1 with γ = 1, β = 0) and drops the factor.
    #[test]
    fn qk_norm_normalises_every_head() {
        let config = AttentionConfig { score: Score::QkNorm, ..AttentionConfig::new(C, 2) };
        let (mha, names) = block(&config);
        assert!(names.iter().any(|n| n.starts_with("q_norm")) && names.iter().any(|n| n.starts_with("k_norm")));
        let q = mha.split_heads(&mha.queries(&input(1, 3)).unwrap()).unwrap(); // (1, 2, 3, 8)
        let mean = q.mean_keepdim(3).unwrap();
        let var = q.broadcast_sub(&mean).unwrap().sqr().unwrap().mean_keepdim(3).unwrap();
        assert!(max_abs(&mean) < 1e-5);
        assert!(max_abs(&(var - 1.0).unwrap()) < 1e-3);
        assert_eq!(Score::QkNorm.scale(8), 1.0);
    }

    /// Every score trains: gradients reach each parameter (additive's v, QK-norm's γ and β included).
    #[test]
    fn every_score_passes_gradients_to_its_parameters() {
        for score in [Score::ScaledDot, Score::Dot, Score::T5, Score::QkNorm, Score::Additive] {
            let vars = VarMap::new();
            let config = AttentionConfig { score, ..AttentionConfig::new(C, 2) };
            let vb = seeded_var_builder(&vars, 5, DType::F32, &Device::Cpu);
            let mha = MultiHeadAttention::new(&config, WeightInit::XavierUniform, vb).unwrap();
            let x = input(2, 4);
            let y = mha.forward(&x, &x, None, &mut Mode::Eval).unwrap();
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in named_vars(&vars) {
                let g = grads.get(&var).unwrap_or_else(|| panic!("{score:?}: no gradient for {name}"));
                assert!(max_abs(g).is_finite(), "{score:?} {name}");
            }
        }
    }
}
