//! The sentence-level oracle of Zhang et al. (ACL 2019, "Bridging the Gap between Training and Inference for
//! Neural Machine Translation", §3.2): for a sentence chosen with probability 1 − p, the current model decodes
//! its source by beam search at the reference's length (EOS forbidden before it, forced at it) with Gumbel
//! noise on the log-probabilities, and the candidate with the highest smoothed sentence BLEU against the
//! reference becomes the whole decoder input in place of the gold prefix. Equal length keeps slot j of the
//! oracle aligned with label j, which stays gold.
//!
//! The search runs in eval mode (no dropout) on a fresh encoding and leaves no gradient; it is by far the
//! dearest part of a step, and the method is meant for fine-tuning a trained model.

use candle_core::Tensor;
use rand::Rng as _;

use crate::decode::beam_search::Hypothesis;
use crate::decode::{fixed_length_beam_search, GumbelNoise};
use crate::metrics::bleu::{sentence_bleu, BleuOptions, Smoothing, Tokenize};
use crate::models::Transformer;
use crate::rng::Rng;
use crate::text::batch::Batch;
use crate::Result;

/// The decoder input (B, T) u32 for `batch`: row b is the gold `<s> + reference` with probability p (one
/// uniform draw per row, in order), otherwise `<s>` + the oracle of `references[b]` (a `beam`-wide search with
/// Gumbel noise at temperature `tau`); padding stays padding.
pub fn decoder_input(
    model: &Transformer,
    (beam, tau): (usize, f64),
    batch: &Batch,
    references: &[&[u32]],
    p: f64,
    rng: &mut Rng,
) -> Result<Tensor> {
    let (b, t) = batch.decoder_input.dims2()?;
    let chosen: Vec<usize> = (0..b).filter(|_| rng.random::<f64>() >= p).collect();
    if chosen.is_empty() {
        return Ok(batch.decoder_input.clone());
    }
    let index = Tensor::from_vec(chosen.iter().map(|&r| r as u32).collect(), chosen.len(), batch.source.device())?;
    let (src, src_valid) = (batch.source.index_select(&index, 0)?, batch.source_valid.index_select(&index, 0)?);
    let lengths: Vec<usize> = chosen.iter().map(|&r| references[r].len()).collect();
    let noise = GumbelNoise { rng, tau };
    let found = fixed_length_beam_search(model, &src, &src_valid, &lengths, beam, Some(noise))?;
    let mut ids = batch.decoder_input.flatten_all()?.to_vec1::<u32>()?;
    for (&row, hypotheses) in chosen.iter().zip(&found) {
        if let Some(oracle) = closest_to_reference(hypotheses, references[row]) {
            ids[row * t + 1..row * t + 1 + oracle.len()].copy_from_slice(oracle);
        }
    }
    Ok(Tensor::from_vec(ids, (b, t), batch.decoder_input.device())?)
}

/// Sentence BLEU over whitespace-separated ids with add-one smoothing of orders 2..4 (Chen and Cherry's method
/// 2, sacreBLEU's `add-k` with k = 1), as Zhang et al. (ACL 2019) rank their sentence-oracle candidates.
const ADD_ONE: BleuOptions = BleuOptions { tokenize: Tokenize::None, lowercase: false, smooth: Smoothing::AddK(1.0) };

/// The tokens of the hypothesis with the highest add-one-smoothed sentence BLEU against `reference`, both
/// compared as subword ids; on a tie the earlier (better-scored) one, so the top beam when BLEU cannot tell.
/// `None` when there is no hypothesis.
pub fn closest_to_reference<'a>(hypotheses: &'a [Hypothesis], reference: &[u32]) -> Option<&'a [u32]> {
    let words = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let reference = words(reference);
    let mut best: Option<(&[u32], f64)> = None;
    for h in hypotheses {
        let bleu =
            sentence_bleu(&words(&h.tokens), std::slice::from_ref(&reference), &ADD_ONE).map_or(0.0, |s| s.score);
        if best.is_none_or(|(_, b)| bleu > b) {
            best = Some((&h.tokens, bleu));
        }
    }
    best.map(|(tokens, _)| tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hypothesis(tokens: &[u32], score: f64) -> Hypothesis {
        Hypothesis { tokens: tokens.to_vec(), log_prob: score, score }
    }

    #[test]
    fn the_candidate_closest_in_bleu_wins_and_ties_keep_the_top_beam() {
        let reference = [5, 6, 7, 8, 9];
        let beams = [
            hypothesis(&[5, 6, 3, 3, 3], -1.0),
            hypothesis(&[5, 6, 7, 8, 3], -2.0),
            hypothesis(&[4, 4, 4, 4, 4], -3.0),
        ];
        assert_eq!(closest_to_reference(&beams, &reference), Some(&[5u32, 6, 7, 8, 3][..]));
        let unrelated = [hypothesis(&[1, 1, 1, 1, 1], -1.0), hypothesis(&[2, 2, 2, 2, 2], -2.0)];
        assert_eq!(closest_to_reference(&unrelated, &reference), Some(&[1u32, 1, 1, 1, 1][..]));
        assert_eq!(closest_to_reference(&[], &reference), None);
    }
}
