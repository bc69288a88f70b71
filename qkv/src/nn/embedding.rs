//! Lookup tables from ids to vectors: token embeddings (§3.4, multiplied by √C in the paper) and segment
//! (token-type) embeddings (BERT).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::params::WeightInit;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
    scale: f64,
    /// What an id means and which input tensor holds them, for error messages.
    what: &'static str,
    tensor: &'static str,
}

impl Embedding {
    /// Token embedding, parameter `weight` (V, C). With `scaled`, outputs are multiplied by √C as in §3.4, which
    /// keeps them on the scale of the position encodings when the table is shared with the output projection.
    pub fn token(vb: VarBuilder, vocab_size: usize, d_model: usize, scaled: bool, init: WeightInit) -> Result<Self> {
        let scale = if scaled { (d_model as f64).sqrt() } else { 1.0 };
        Self::new(vb, (vocab_size, d_model), scale, init, ("token id", "input_ids"))
    }

    /// Segment (token-type) embedding, parameter `weight` (types, C): which sentence of a pair a token is in.
    pub fn segment(vb: VarBuilder, num_types: usize, d_model: usize, init: WeightInit) -> Result<Self> {
        Self::new(vb, (num_types, d_model), 1.0, init, ("token type id", "token_type_ids"))
    }

    fn new(
        vb: VarBuilder,
        (rows, d_model): (usize, usize),
        scale: f64,
        init: WeightInit,
        (what, tensor): (&'static str, &'static str),
    ) -> Result<Self> {
        if rows == 0 || d_model == 0 {
            return Err(Error::config("embedding size", format!("({rows}, {d_model})"), "a non-empty table"));
        }
        let table = vb.get_with_hints((rows, d_model), "weight", init.for_matrix(rows, d_model))?;
        Ok(Self { table, scale, what, tensor })
    }

    /// The (V, C) table, shared as-is when weights are tied.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// The tied output projection (Press & Wolf, 2017): hidden states (…, C) → logits (…, V) = h·Eᵀ (+ bias),
    /// using this table itself, so input embedding and pre-softmax projection stay one tensor.
    pub fn unembed(&self, hidden: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let c = self.table.dim(1)?;
        if hidden.dims().last() != Some(&c) {
            return Err(Error::shape("hidden states", format!("(…, {c})"), hidden.dims()));
        }
        crate::kernels::linear::linear(hidden, &self.table, bias)
    }

    /// ids of any shape (integer dtype) → (…, C): [`rows`](Self::rows) times the scale. An id past the table is
    /// an error naming it.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.scaled(&self.rows(ids)?)
    }

    /// Vectors in the table's space (…, C) — rows, or mixtures of rows such as a softmax-weighted average —
    /// multiplied by the scale [`forward`](Self::forward) applies, so that mixed inputs enter a model exactly as
    /// looked-up ones do.
    pub fn scaled(&self, vectors: &Tensor) -> Result<Tensor> {
        if self.scale == 1.0 {
            Ok(vectors.clone())
        } else {
            Ok((vectors * self.scale)?)
        }
    }

    /// The unscaled rows of `ids` (any shape, integer dtype) → (…, C). An id past the table is an error naming it.
    pub fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        if !matches!(ids.dtype(), DType::U8 | DType::U32 | DType::I64) {
            return Err(Error::shape(self.tensor, "integer ids (u8, u32 or i64)", ids.dims()));
        }
        let flat = ids.flatten_all()?;
        let rows = self.table.dim(0)?;
        if flat.elem_count() > 0 {
            let wide = flat.to_dtype(DType::I64)?;
            let (min, max) = (wide.min(0)?.to_scalar::<i64>()?, wide.max(0)?.to_scalar::<i64>()?);
            if min < 0 || max >= rows as i64 {
                return Err(Error::OutOfRange {
                    what: self.what,
                    found: if min < 0 { min } else { max },
                    expected: format!("< {rows} (rows of the embedding table)"),
                });
            }
        }
        crate::kernels::embedding::lookup(&self.table, ids)
    }
}
