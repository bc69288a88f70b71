//! Greedy decoding: at each step take the most probable next token.

use candle_core::{DType, Tensor, D};

use crate::models::Transformer;
use crate::nn::Mode;
use crate::Result;

/// Decodes each source sequence of `src` (B, S) with `src_valid` (B, S) for at most `max_len` tokens, stopping a
/// sequence at EOS. Returns the generated ids without BOS and EOS.
///
/// Recomputes the decoder over the whole prefix each step; incremental decoding with a key/value cache comes
/// with beam search.
pub fn greedy(model: &Transformer, src: &Tensor, src_valid: &Tensor, max_len: usize) -> Result<Vec<Vec<u32>>> {
    let config = model.config();
    let batch = src.dim(0)?;
    let src_mask = Transformer::source_mask(src_valid)?;
    let memory = model.encode(src, &src_mask, &mut Mode::Eval)?;
    let mut tokens = vec![vec![config.bos_token_id]; batch];
    let mut finished = vec![false; batch];
    for _ in 0..max_len {
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let tgt = Tensor::from_vec(flat, (batch, tokens[0].len()), src.device())?;
        let hidden = model.decode(&tgt, &memory, &src_mask, &mut Mode::Eval)?;
        let last = hidden.narrow(1, tgt.dim(1)? - 1, 1)?;
        let next = model.project(&last)?.argmax(D::Minus1)?.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        for (i, &token) in next.iter().enumerate() {
            // Finished sequences keep emitting padding so every row has the same length.
            tokens[i].push(if finished[i] { config.pad_token_id } else { token });
            finished[i] |= token == config.eos_token_id;
        }
        if finished.iter().all(|&f| f) {
            break;
        }
    }
    Ok(tokens
        .into_iter()
        .map(|seq| {
            seq.into_iter().skip(1).take_while(|&t| t != config.eos_token_id && t != config.pad_token_id).collect()
        })
        .collect())
}
