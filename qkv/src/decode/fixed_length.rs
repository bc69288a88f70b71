//! Beam search whose outputs have a length given in advance: EOS is forbidden before it and forced at it. The
//! sentence-level oracle of Zhang et al. (ACL 2019, §3.2) decodes this way, at the length of the reference, so
//! that its candidates line up position by position with the gold sentence they stand in for; with
//! [`GumbelNoise`] on the scores the beams differ from one draw to the next.

use candle_core::Tensor;

use super::beam_search::Hypothesis;
use super::gumbel::GumbelNoise;
use super::incremental::{log_softmax, Incremental};
use crate::models::Transformer;
use crate::{Error, Result};

/// One live partial output: its row in the decoder state, its log-probability and its ranking score.
#[derive(Debug, Clone, Copy)]
struct Beam {
    row: usize,
    log_prob: f64,
    score: f64,
}

/// An extension of a beam by one token.
#[derive(Debug, Clone, Copy)]
struct Extension {
    row: usize,
    token: u32,
    log_prob: f64,
    score: f64,
}

/// For each source of `src` (B, S) with `src_valid` (B, S), up to `beam` hypotheses of exactly `lengths[b]`
/// tokens (EOS excluded), best first. Each hypothesis's `log_prob` is log p(tokens, EOS | source) under the
/// model; its `score`, what beams are ranked by, is the same sum without noise, or with `noise` the sum of
/// log softmax(logits / τ) + Gumbel draws over the chosen tokens and the closing EOS. Decodes in eval mode with
/// the key/value cache. Ties go to the lower row, then the lower token id.
pub fn fixed_length_beam_search(
    model: &Transformer,
    src: &Tensor,
    src_valid: &Tensor,
    lengths: &[usize],
    beam: usize,
    mut noise: Option<GumbelNoise>,
) -> Result<Vec<Vec<Hypothesis>>> {
    if beam == 0 {
        return Err(Error::config("beam", 0, "at least 1"));
    }
    if lengths.len() != src.dim(0)? {
        return Err(Error::shape("source ids", format!("({}, S): one row per length", lengths.len()), src.dims()));
    }
    let eos = model.config().eos_token_id;
    let mut state = Incremental::new(model, src, src_valid, true)?;
    let mut live: Vec<(usize, Vec<Beam>)> =
        (0..lengths.len()).map(|b| (b, vec![Beam { row: b, log_prob: 0.0, score: 0.0 }])).collect();
    let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); lengths.len()];
    while !live.is_empty() {
        let logits = state.logits()?;
        let (mut parents, mut tokens, mut next_live) = (Vec::new(), Vec::new(), Vec::new());
        for (source, beams) in live {
            let generated = state.prefixes()[beams[0].row].len() - 1; // BOS excluded
            if generated == lengths[source] {
                finished[source] = close_with_eos(&beams, &logits, eos, &mut noise, state.prefixes());
                continue;
            }
            let kept = best_extensions(&beams, &logits, eos, beam, &mut noise);
            let mut next = Vec::with_capacity(kept.len());
            for e in kept {
                next.push(Beam { row: parents.len(), log_prob: e.log_prob, score: e.score });
                parents.push(e.row);
                tokens.push(e.token);
            }
            next_live.push((source, next));
        }
        if next_live.is_empty() {
            break;
        }
        state.advance(&parents, &tokens)?;
        live = next_live;
    }
    Ok(finished)
}

/// Each beam ended by EOS, which the length forces here: its hypotheses, best score first.
fn close_with_eos(
    beams: &[Beam],
    logits: &[Vec<f32>],
    eos: u32,
    noise: &mut Option<GumbelNoise>,
    prefixes: &[Vec<u32>],
) -> Vec<Hypothesis> {
    let mut done: Vec<Hypothesis> = beams
        .iter()
        .map(|b| {
            let (log_prob, score) = token_scores(&logits[b.row], noise);
            Hypothesis {
                tokens: prefixes[b.row][1..].to_vec(),
                log_prob: b.log_prob + log_prob[eos as usize],
                score: b.score + score[eos as usize],
            }
        })
        .collect();
    // Stable: equal scores keep the beams' order.
    done.sort_by(|a, b| b.score.total_cmp(&a.score));
    done
}

/// The `beam` best extensions of a source's beams by any token but EOS, best score first.
fn best_extensions(
    beams: &[Beam],
    logits: &[Vec<f32>],
    eos: u32,
    beam: usize,
    noise: &mut Option<GumbelNoise>,
) -> Vec<Extension> {
    let mut all = Vec::new();
    for b in beams {
        let (log_prob, score) = token_scores(&logits[b.row], noise);
        let mut ids: Vec<usize> = (0..score.len()).filter(|&id| id != eos as usize).collect();
        let by_score = |x: &usize, y: &usize| score[*y].total_cmp(&score[*x]).then(x.cmp(y));
        if ids.len() > beam {
            ids.select_nth_unstable_by(beam - 1, by_score);
            ids.truncate(beam);
        }
        all.extend(ids.into_iter().map(|id| Extension {
            row: b.row,
            token: id as u32,
            log_prob: b.log_prob + log_prob[id],
            score: b.score + score[id],
        }));
    }
    all.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.row.cmp(&y.row)).then(x.token.cmp(&y.token)));
    all.truncate(beam);
    all
}

/// A row's log-probabilities and ranking scores: the same without noise, perturbed ones with it.
fn token_scores(row: &[f32], noise: &mut Option<GumbelNoise>) -> (Vec<f64>, Vec<f64>) {
    let log_prob = log_softmax(row);
    let score = match noise {
        Some(noise) => noise.perturbed_log_probs(row),
        None => log_prob.clone(),
    };
    (log_prob, score)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use rand::SeedableRng;

    use super::*;
    use crate::decode::{beam_search, DecodeOptions};
    use crate::models::TransformerConfig;
    use crate::nn::seeded_var_builder;
    use crate::rng::Rng;

    fn model(seed: u64) -> Transformer {
        let config = TransformerConfig {
            vocab_size: 12,
            d_model: 16,
            encoder_layers: 1,
            decoder_layers: 1,
            encoder_attention_heads: 2,
            decoder_attention_heads: 2,
            encoder_ffn_dim: 32,
            decoder_ffn_dim: 32,
            ..TransformerConfig::default()
        };
        let varmap = VarMap::new();
        Transformer::new(&config, seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu)).unwrap()
    }

    fn sources() -> (Tensor, Tensor) {
        let src = Tensor::new(&[[5u32, 6, 7, 2], [8, 9, 2, 0], [3, 2, 0, 0], [4, 4, 4, 2]], &Device::Cpu).unwrap();
        let valid = Tensor::new(&[[1u8, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], &Device::Cpu).unwrap();
        (src, valid)
    }

    /// Whatever the model prefers, with or without noise and for any beam, every hypothesis has exactly the
    /// length asked for and no EOS inside it; its log-probability is a log-probability.
    #[test]
    fn every_hypothesis_has_the_length_asked_for() {
        let (src, valid) = sources();
        let lengths = [3, 0, 7, 1];
        let eos = 2;
        let mut rng = Rng::seed_from_u64(5);
        for seed in [1, 2, 3] {
            let model = model(seed);
            for beam in [1, 3, 20] {
                for noisy in [false, true] {
                    let noise = noisy.then_some(GumbelNoise { rng: &mut rng, tau: 0.8 });
                    let found = fixed_length_beam_search(&model, &src, &valid, &lengths, beam, noise).unwrap();
                    for (hypotheses, &length) in found.iter().zip(&lengths) {
                        // At most the beam, and at most the outputs there are (11 tokens besides EOS).
                        let possible = 11usize.pow(length as u32);
                        assert_eq!(hypotheses.len(), beam.min(possible), "beam {beam}, length {length}");
                        for h in hypotheses {
                            assert_eq!(h.tokens.len(), length, "model {seed}, beam {beam}, noise {noisy}");
                            assert!(!h.tokens.contains(&eos));
                            assert!(h.log_prob <= 0.0 && h.log_prob.is_finite());
                        }
                        assert!(hypotheses.windows(2).all(|w| w[0].score >= w[1].score), "best first");
                    }
                }
            }
        }
    }

    /// Without noise, where greedy decoding happens to stop at length L on its own, a beam of one constrained to
    /// L finds the same tokens.
    #[test]
    fn a_beam_of_one_at_greedys_own_length_is_greedy() {
        let (src, valid) = sources();
        let model = model(4);
        let options = DecodeOptions { max_len_b: 6, max_len_a: 0.0, ..DecodeOptions::greedy() };
        let greedy = beam_search(&model, &src, &valid, &options).unwrap();
        let lengths: Vec<usize> = greedy.iter().map(|h| h.tokens.len()).collect();
        let found = fixed_length_beam_search(&model, &src, &valid, &lengths, 1, None).unwrap();
        for (g, f) in greedy.iter().zip(&found) {
            if g.tokens.len() < 6 {
                // Ended by EOS: the log-probabilities agree too.
                assert_eq!(f[0].tokens, g.tokens);
                assert!((f[0].log_prob - g.log_prob).abs() < 1e-9, "{} vs {}", f[0].log_prob, g.log_prob);
            } else {
                assert_eq!(f[0].tokens, g.tokens, "the same tokens up to the length limit");
            }
        }
    }

    #[test]
    fn lengths_must_match_the_sources() {
        let (src, valid) = sources();
        let err = fixed_length_beam_search(&model(1), &src, &valid, &[1, 2], 2, None).unwrap_err().to_string();
        assert!(err.contains("one row per length"), "{err}");
        let err = fixed_length_beam_search(&model(1), &src, &valid, &[1; 4], 0, None).unwrap_err().to_string();
        assert!(err.contains("beam"), "{err}");
    }
}
