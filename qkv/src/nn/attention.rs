//! Attention (§3.2): scaled dot-product attention and multi-head attention with separate Q, K, V and output
//! projections, for self-attention (keys from the queries' own sequence) and cross-attention (keys from the
//! encoder's memory).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::{
    dropout::Dropout,
    kv_cache::KvCache,
    linear::Linear,
    mask::AttentionMask,
    mode::Mode,
    params::WeightInit,
    position::{RelativePosition, RelativeTerms},
};
use crate::kernels::{self, softmax::masked_softmax};
use crate::{Error, Result};

/// How a query is scored against a key before the softmax. The one choice every attention path goes through;
/// experiments add others here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// q·k / √Dh, eq. (1).
    #[default]
    ScaledDot,
    /// q·k without the 1/√Dh factor (§3.2.1 explains why the factor is there; experiments drop it to see).
    Dot,
}

impl Score {
    /// The factor the dot product is multiplied by.
    fn scale(self, head_dim: usize) -> f64 {
        match self {
            Score::ScaledDot => 1.0 / (head_dim as f64).sqrt(),
            Score::Dot => 1.0,
        }
    }
}

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
}

impl ScaledDotProduct {
    /// `scaled = false` drops the 1/√Dh factor ([`Score::Dot`]).
    pub fn new(scaled: bool, dropout: f64) -> Result<Self> {
        Self::with_score(if scaled { Score::ScaledDot } else { Score::Dot }, dropout)
    }

    pub fn with_score(score: Score, dropout: f64) -> Result<Self> {
        Ok(Self { score, dropout: Dropout::new(dropout, "attention dropout")? })
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
        let dropout_active = mode.is_train() && self.dropout.p() > 0.0;
        // Every `Score` today is a scaled dot product the kernel computes; a score it cannot is composed here.
        if !need_weights && !relative && !dropout_active && kernels::fused(q) {
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
        let mut scores = q.matmul(&k.t()?)?; // (B, H, T, S)
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
    pub d_model: usize,
    pub num_heads: usize,
    /// Biases on the four projections (PyTorch and BERT: yes).
    pub bias: bool,
    /// Dropout on the attention probabilities.
    pub dropout: f64,
    /// The query-key score (the paper: scaled dot product).
    pub score: Score,
    /// Clipping distance k of Shaw et al.'s relative position representations; `None` for none.
    pub relative_max_distance: Option<usize>,
}

impl AttentionConfig {
    pub fn new(d_model: usize, num_heads: usize) -> Self {
        Self { d_model, num_heads, bias: true, dropout: 0.0, score: Score::ScaledDot, relative_max_distance: None }
    }

    /// Dh = C / H, or an error naming both numbers.
    pub fn head_dim(&self) -> Result<usize> {
        if self.num_heads == 0 || self.d_model % self.num_heads != 0 {
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
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    attention: ScaledDotProduct,
    relative: Option<RelativePosition>,
    num_heads: usize,
    head_dim: usize,
    d_model: usize,
}

impl MultiHeadAttention {
    /// Parameters `q_proj`, `k_proj`, `v_proj`, `out_proj` (each `weight` (C, C) and optionally `bias` (C)),
    /// and `relative.{keys,values}` when relative positions are on.
    pub fn new(config: &AttentionConfig, init: WeightInit, vb: VarBuilder) -> Result<Self> {
        let head_dim = config.head_dim()?;
        let c = config.d_model;
        let projection = |name: &str| Linear::new(vb.pp(name), c, c, config.bias, init);
        let relative = match config.relative_max_distance {
            Some(k) => Some(RelativePosition::new(vb.pp("relative"), k, head_dim, init)?),
            None => None,
        };
        Ok(Self {
            q_proj: projection("q_proj")?,
            k_proj: projection("k_proj")?,
            v_proj: projection("v_proj")?,
            out_proj: projection("out_proj")?,
            attention: ScaledDotProduct::with_score(config.score, config.dropout)?,
            relative,
            num_heads: config.num_heads,
            head_dim,
            d_model: c,
        })
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
        let q = self.q_proj.forward(query)?;
        let project =
            |x: &Tensor| -> Result<(Tensor, Tensor)> { Ok((self.k_proj.forward(x)?, self.v_proj.forward(x)?)) };
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

    pub fn num_heads(&self) -> usize {
        self.num_heads
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
