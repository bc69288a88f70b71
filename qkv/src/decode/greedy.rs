//! Greedy decoding: at each step take the most probable next token.

use candle_core::Tensor;

use super::incremental::{argmax, Incremental};
use super::DecodeOptions;
use crate::models::Transformer;
use crate::Result;

/// Decodes each source sequence of `src` (B, S) with `src_valid` (B, S), stopping a sequence at EOS or at
/// `options.max_len` of its source length. Returns the generated ids without BOS and EOS. Finished sequences
/// leave the batch, so the remaining ones run on fewer rows.
pub fn greedy(model: &Transformer, src: &Tensor, src_valid: &Tensor, options: &DecodeOptions) -> Result<Vec<Vec<u32>>> {
    options.validate()?;
    let eos = model.config().eos_token_id;
    let limits = source_lengths(src_valid)?.into_iter().map(|len| options.max_len(len)).collect::<Vec<_>>();
    let mut state = Incremental::new(model, src, src_valid, options.use_cache)?;
    // `rows[i]` is the source behind row i of the state.
    let mut rows: Vec<usize> = (0..limits.len()).collect();
    let mut outputs = vec![Vec::new(); limits.len()];
    while !rows.is_empty() {
        let logits = state.logits()?;
        let (mut parents, mut tokens, mut next_rows) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &source) in rows.iter().enumerate() {
            let token = argmax(&logits[row]) as u32;
            if token == eos {
                continue;
            }
            outputs[source].push(token);
            if outputs[source].len() < limits[source] {
                parents.push(row);
                tokens.push(token);
                next_rows.push(source);
            }
        }
        if next_rows.is_empty() {
            break;
        }
        state.advance(&parents, &tokens)?;
        rows = next_rows;
    }
    Ok(outputs)
}

/// Real tokens per row of `src_valid` (B, S).
pub(crate) fn source_lengths(src_valid: &Tensor) -> Result<Vec<usize>> {
    let valid = src_valid.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    Ok(valid.iter().map(|row| row.iter().filter(|&&v| v != 0.0).count()).collect())
}
