//! Beam search: keep the `beam` most probable partial outputs per source, extend each by every token, and keep
//! the best again; finished hypotheses are compared with the GNMT length penalty (Wu et al., 2016, §7).

use std::cmp::Ordering;

use candle_core::Tensor;

use super::greedy::source_lengths;
use super::incremental::{log_softmax, Incremental};
use super::DecodeOptions;
use crate::models::Transformer;
use crate::Result;

/// Refuses a search whose key/value caches and logits would not fit in memory: for each of B · k rows, every
/// decoder layer keeps keys and values for up to T generated and S source positions (C floats each), and each
/// step's logits, log-probabilities and candidates take about 3 · V floats.
fn check_memory(model: &Transformer, source: &[usize], k: usize, max_len: usize) -> Result<()> {
    let config = model.config();
    let (b, s) = (source.first().copied().unwrap_or(1) as f64, source.get(1).copied().unwrap_or(1) as f64);
    let (t, l, c, v) = (max_len as f64, config.decoder_layers as f64, config.d_model as f64, config.vocab_size as f64);
    let bytes = 4.0 * b * k as f64 * (l * 2.0 * (t + s) * c + 3.0 * v);
    crate::limits::check_memory(&format!("a beam search of {k} hypotheses × {b} sentences up to {t} tokens"), bytes)
}

/// A finished output.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated ids without BOS and EOS.
    pub tokens: Vec<u32>,
    /// log p(tokens, EOS | source); EOS is left out when the length limit ended the hypothesis.
    pub log_prob: f64,
    /// `log_prob` divided by the length penalty: what hypotheses are ranked by.
    pub score: f64,
}

/// One live partial output of a source.
#[derive(Debug, Clone, Copy)]
struct Beam {
    row: usize,
    log_prob: f64,
}

/// An extension of a beam by one token.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    log_prob: f64,
    row: usize,
    token: u32,
}

/// The best hypothesis for each source of `src` (B, S) with `src_valid` (B, S). With `beam = 1` this is
/// greedy decoding, token for token.
pub fn beam_search(
    model: &Transformer,
    src: &Tensor,
    src_valid: &Tensor,
    options: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    options.validate()?;
    let (k, eos) = (options.beam, model.config().eos_token_id);
    let limits: Vec<usize> = source_lengths(src_valid)?.into_iter().map(|n| options.max_len(n)).collect();
    check_memory(model, src.dims(), k, limits.iter().copied().max().unwrap_or(1))?;
    let mut state = Incremental::new(model, src, src_valid, options.use_cache)?;
    // Every source starts with one beam (BOS); the first step fans it out into k.
    let mut live: Vec<(usize, Vec<Beam>)> =
        (0..limits.len()).map(|source| (source, vec![Beam { row: source, log_prob: 0.0 }])).collect();
    let mut finished: Vec<Vec<Hypothesis>> = vec![Vec::new(); limits.len()];
    while !live.is_empty() {
        let logits = state.logits()?;
        let (mut parents, mut tokens, mut next_live) = (Vec::new(), Vec::new(), Vec::new());
        for (source, beams) in &live {
            let candidates = best_extensions(beams, &logits, 2 * k);
            let mut kept = Vec::with_capacity(k);
            for (rank, c) in candidates.iter().enumerate() {
                let prefix = &state.prefixes()[c.row][1..];
                if c.token == eos {
                    // As in fairseq: EOS counts only among the k best extensions.
                    if rank < k {
                        finished[*source].push(hypothesis(prefix.to_vec(), c.log_prob, true, options));
                    }
                } else if kept.len() < k {
                    kept.push(*c);
                }
                if kept.len() == k {
                    break;
                }
            }
            let generated = state.prefixes()[beams[0].row].len(); // tokens after this step, BOS excluded
            if kept.is_empty() {
                continue;
            }
            if generated >= limits[*source] {
                for c in &kept {
                    let mut tokens = state.prefixes()[c.row][1..].to_vec();
                    tokens.push(c.token);
                    finished[*source].push(hypothesis(tokens, c.log_prob, false, options));
                }
                continue;
            }
            if cannot_improve(&finished[*source], &kept, generated, options) {
                continue;
            }
            let mut beams = Vec::with_capacity(kept.len());
            for c in kept {
                beams.push(Beam { row: parents.len(), log_prob: c.log_prob });
                parents.push(c.row);
                tokens.push(c.token);
            }
            next_live.push((*source, beams));
        }
        if next_live.is_empty() {
            break;
        }
        state.advance(&parents, &tokens)?;
        live = next_live;
    }
    Ok(finished.into_iter().map(best).collect())
}

/// Whether a source is done: it has `beam` finished hypotheses and the best live one, scored at its current
/// length, does not beat the `beam`-th best of them (Hugging Face's default stopping rule). Stopping at the first
/// `beam` finished hypotheses instead (fairseq's rule) can end on poor ones while a confident beam is still
/// running: when every candidate but one is unlikely, EOS fills the spare ranks.
fn cannot_improve(finished: &[Hypothesis], kept: &[Candidate], generated: usize, options: &DecodeOptions) -> bool {
    if finished.len() < options.beam {
        return false;
    }
    let mut scores: Vec<f64> = finished.iter().map(|h| h.score).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    let threshold = scores[options.beam - 1];
    let penalty = ((5.0 + generated as f64) / 6.0).powf(options.length_penalty);
    kept.iter().all(|c| c.log_prob / penalty <= threshold)
}

/// The `n` best one-token extensions of a source's beams, best first; ties go to the lower row, then the lower
/// token id, so the order is deterministic and agrees with greedy decoding's argmax.
fn best_extensions(beams: &[Beam], logits: &[Vec<f32>], n: usize) -> Vec<Candidate> {
    let mut all = Vec::with_capacity(beams.len() * n);
    for beam in beams {
        let log_probs = log_softmax(&logits[beam.row]);
        let mut ids: Vec<usize> = (0..log_probs.len()).collect();
        let by_score = |a: &usize, b: &usize| log_probs[*b].total_cmp(&log_probs[*a]).then(a.cmp(b));
        if ids.len() > n {
            ids.select_nth_unstable_by(n - 1, by_score);
            ids.truncate(n);
        }
        all.extend(ids.into_iter().map(|id| Candidate {
            log_prob: beam.log_prob + log_probs[id],
            row: beam.row,
            token: id as u32,
        }));
    }
    all.sort_by(|a, b| b.log_prob.total_cmp(&a.log_prob).then(a.row.cmp(&b.row)).then(a.token.cmp(&b.token)));
    all.truncate(n);
    all
}

fn hypothesis(tokens: Vec<u32>, log_prob: f64, ended_by_eos: bool, options: &DecodeOptions) -> Hypothesis {
    let length = tokens.len() + usize::from(ended_by_eos);
    let penalty = ((5.0 + length as f64) / 6.0).powf(options.length_penalty);
    Hypothesis { tokens, log_prob, score: log_prob / penalty }
}

/// The highest-scoring hypothesis, the earliest found on ties; an empty one if none finished.
fn best(hypotheses: Vec<Hypothesis>) -> Hypothesis {
    hypotheses
        .into_iter()
        .reduce(|best, h| if h.score.total_cmp(&best.score) == Ordering::Greater { h } else { best })
        .unwrap_or(Hypothesis { tokens: Vec::new(), log_prob: f64::NEG_INFINITY, score: f64::NEG_INFINITY })
}
