//! Lookup tables from ids to vectors: token embeddings (§3.4, multiplied by √C in the paper) and segment
//! (token-type) embeddings (BERT).

use std::sync::Arc;

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use super::params::WeightInit;
use crate::kernels::reduced::{PackedLinear, PackedMatrix, WeightDtype};
use crate::{Error, Result};

/// An id → vector lookup table (V, C), for tokens or segments, optionally scaled by √C and optionally
/// packed in reduced precision for inference.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
    /// The table in reduced precision, for inference: lookups dequantise their rows and the tied output
    /// projection multiplies by it. `table` is then an empty placeholder (on the same device).
    packed: Option<Arc<PackedLinear>>,
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

    /// An unscaled table of token-id rows, parameter `weight` (V, C), drawn from any candle initialiser (the
    /// complex embedding's frequencies and phases are uniform over their ranges).
    pub fn token_table(vb: VarBuilder, vocab_size: usize, width: usize, init: Init) -> Result<Self> {
        Self::with_init(vb, (vocab_size, width), 1.0, init, ("token id", "input_ids"))
    }

    fn new(
        vb: VarBuilder,
        (rows, d_model): (usize, usize),
        scale: f64,
        init: WeightInit,
        names: (&'static str, &'static str),
    ) -> Result<Self> {
        Self::with_init(vb, (rows, d_model), scale, init.for_matrix(rows, d_model), names)
    }

    fn with_init(
        vb: VarBuilder,
        (rows, d_model): (usize, usize),
        scale: f64,
        init: Init,
        (what, tensor): (&'static str, &'static str),
    ) -> Result<Self> {
        if rows == 0 || d_model == 0 {
            return Err(Error::config("embedding size", format!("({rows}, {d_model})"), "a non-empty table"));
        }
        let table = vb.get_with_hints((rows, d_model), "weight", init)?;
        Ok(Self { table, packed: None, scale, what, tensor })
    }

    /// The (V, C) table, shared as-is when weights are tied (an empty placeholder once packed).
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// The (V, C) table while it is f32; `None` once [`pack`](Self::pack)ed.
    pub fn unpacked_table(&self) -> Option<&Tensor> {
        self.packed.is_none().then_some(&self.table)
    }

    /// Stores the table in `dtype` for inference (f32 leaves it as it is); `name` is the parameter's.
    pub fn pack(&mut self, dtype: WeightDtype, name: &str) -> Result<()> {
        if dtype == WeightDtype::F32 || self.packed.is_some() {
            return Ok(());
        }
        let matrix = PackedMatrix::pack_tensor(&self.table, dtype.into(), name)?;
        self.packed = Some(Arc::new(PackedLinear::new(matrix, None)?));
        self.table = Tensor::zeros(0, DType::F32, self.table.device())?;
        Ok(())
    }

    /// (V, C)
    fn dims(&self) -> Result<(usize, usize)> {
        match &self.packed {
            Some(p) => Ok(p.weight().dims()),
            None => Ok(self.table.dims2()?),
        }
    }

    /// The tied output projection (Press & Wolf, 2017): hidden states (…, C) → logits (…, V) = h·Eᵀ (+ bias),
    /// using this table itself, so input embedding and pre-softmax projection stay one tensor.
    pub fn unembed(&self, hidden: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let c = self.dims()?.1;
        if hidden.dims().last() != Some(&c) {
            return Err(Error::shape("hidden states", format!("(…, {c})"), hidden.dims()));
        }
        if let Some(packed) = &self.packed {
            let logits = packed.forward(hidden)?;
            return Ok(match bias {
                Some(b) => logits.broadcast_add(b)?,
                None => logits,
            });
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
        let (rows, c) = self.dims()?;
        let wide = flat.to_dtype(DType::I64)?;
        if flat.elem_count() > 0 {
            let (min, max) = (wide.min(0)?.to_scalar::<i64>()?, wide.max(0)?.to_scalar::<i64>()?);
            if min < 0 || max >= rows as i64 {
                return Err(Error::OutOfRange {
                    what: self.what,
                    found: if min < 0 { min } else { max },
                    expected: format!("< {rows} (rows of the embedding table)"),
                });
            }
        }
        if let Some(packed) = &self.packed {
            // Ids were checked against the table above.
            let flat_ids: Vec<usize> = wide.to_vec1::<i64>()?.into_iter().map(|i| i as usize).collect();
            let vectors = packed.weight().rows_of(&flat_ids);
            let mut dims = ids.dims().to_vec();
            dims.push(c);
            return Ok(Tensor::from_vec(vectors, dims, self.table.device())?);
        }
        crate::kernels::embedding::lookup(&self.table, ids)
    }
}
