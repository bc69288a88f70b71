//! Batches of sentence pairs: grouped by token count with length bucketing, then padded into tensors.
//!
//! "Each training batch contained a set of sentence pairs containing approximately 25000 source tokens and
//! 25000 target tokens" (Vaswani et al., 2017, §5.1): a batch is bounded by its padded size, and examples of
//! similar length go together so that little of it is padding.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

use super::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A tokenized sentence pair, ids without special tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The source sentence's subword ids.
    pub source: Vec<u32>,
    /// The target sentence's subword ids.
    pub target: Vec<u32>,
}

/// Groups example indices into batches whose padded size, examples × max(longest source + 1, longest
/// target + 1), is at most `max_tokens` (the + 1 is the `</s>` or `<s>` that [`Batch::new`] adds).
///
/// `lengths[i]` is (source, target) length of example i without specials. Examples are sorted by (target,
/// source) length so each batch holds similar lengths; with `shuffle`, ties are broken at random and the
/// batch order is shuffled, reproducibly for a given generator state. Every index appears in exactly one
/// batch. An example too long for `max_tokens` on its own is an error naming it.
pub fn token_batches<R: Rng + ?Sized>(
    lengths: &[(usize, usize)],
    max_tokens: usize,
    mut shuffle: Option<&mut R>,
) -> Result<Vec<Vec<usize>>> {
    check_fits(lengths, max_tokens)?;
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if let Some(rng) = shuffle.as_deref_mut() {
        order.shuffle(rng);
    }
    // Stable, so the shuffle above decides the order within equal lengths.
    order.sort_by_key(|&i| (lengths[i].1, lengths[i].0));
    let mut batches = fill(&order, lengths, max_tokens);
    if let Some(rng) = shuffle {
        batches.shuffle(rng);
    }
    Ok(batches)
}

/// Padded size of one example: its longer side plus the special token each side gets.
fn own_cost((source, target): (usize, usize)) -> usize {
    source.max(target) + 1
}

fn check_fits(lengths: &[(usize, usize)], max_tokens: usize) -> Result<()> {
    for (index, &(source, target)) in lengths.iter().enumerate() {
        let cost = own_cost((source, target));
        if cost > max_tokens {
            let expected = format!(
                "at least {cost}: example {index} has {source} source and {target} target tokens \
                 (filter out over-long pairs or raise max_tokens)"
            );
            return Err(Error::config("max_tokens", max_tokens, expected));
        }
    }
    Ok(())
}

/// Cuts the sorted `order` greedily into consecutive batches within `max_tokens`.
fn fill(order: &[usize], lengths: &[(usize, usize)], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut batch: Vec<usize> = Vec::new();
    let (mut longest_source, mut longest_target) = (0, 0);
    for &index in order {
        let (source, target) = lengths[index];
        let grown = (longest_source.max(source), longest_target.max(target));
        if !batch.is_empty() && (batch.len() + 1) * own_cost(grown) > max_tokens {
            batches.push(std::mem::take(&mut batch));
            (longest_source, longest_target) = (source, target);
        } else {
            (longest_source, longest_target) = grown;
        }
        batch.push(index);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// A padded batch, ready for [`crate::models::Transformer::forward`] and the loss.
///
/// The source is `ids + </s>` (no `<s>`: the encoder needs no start symbol, and `</s>` tells it where the
/// sentence ends); the decoder reads `<s> + target` and is trained to predict `target + </s>`. Every row is
/// padded on the right with the pad id, which the loss ignores.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (B, S) u32: source ids + `</s>`, padded.
    pub source: Tensor,
    /// (B, S) u8: 1 for real source tokens (the `</s>` included), 0 for padding.
    pub source_valid: Tensor,
    /// (B, T) u32: `<s>` + target ids, padded.
    pub decoder_input: Tensor,
    /// (B, T) u32: target ids + `</s>`, padded with the pad id.
    pub labels: Tensor,
    /// Real source tokens, the `</s>` included.
    pub source_tokens: usize,
    /// Real label tokens, the `</s>` included: the number of predictions the loss averages over.
    pub target_tokens: usize,
}

impl Batch {
    /// Pads `examples` into tensors on `device`; S = longest source + 1, T = longest target + 1.
    pub fn new(examples: &[&Example], pad: u32, bos: u32, eos: u32, device: &Device) -> Result<Batch> {
        if examples.is_empty() {
            return Err(Error::config("batch", "no examples", "at least one example"));
        }
        let b = examples.len();
        let s = examples.iter().map(|e| e.source.len()).max().unwrap_or(0) + 1;
        let t = examples.iter().map(|e| e.target.len()).max().unwrap_or(0) + 1;
        let (mut source, mut valid) = (Vec::with_capacity(b * s), Vec::with_capacity(b * s));
        let (mut decoder_input, mut labels) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for example in examples {
            push_padded(&mut source, example.source.iter().copied().chain([eos]), s, pad);
            push_padded(&mut valid, std::iter::repeat_n(1u8, example.source.len() + 1), s, 0);
            push_padded(&mut decoder_input, std::iter::once(bos).chain(example.target.iter().copied()), t, pad);
            push_padded(&mut labels, example.target.iter().copied().chain([eos]), t, pad);
        }
        Ok(Batch {
            source: Tensor::from_vec(source, (b, s), device)?,
            source_valid: Tensor::from_vec(valid, (b, s), device)?,
            decoder_input: Tensor::from_vec(decoder_input, (b, t), device)?,
            labels: Tensor::from_vec(labels, (b, t), device)?,
            source_tokens: examples.iter().map(|e| e.source.len() + 1).sum(),
            target_tokens: examples.iter().map(|e| e.target.len() + 1).sum(),
        })
    }
}

/// Appends `row` and then `fill` up to `width` values.
fn push_padded<V: Copy>(out: &mut Vec<V>, row: impl Iterator<Item = V>, width: usize, fill: V) {
    let start = out.len();
    out.extend(row);
    out.resize(start + width, fill);
}

/// The padded batch of `examples[indices]`, with the tokenizer's special ids.
pub fn batch_of(tokenizer: &Tokenizer, examples: &[Example], indices: &[usize], device: &Device) -> Result<Batch> {
    let chosen: Vec<&Example> = indices.iter().map(|&i| &examples[i]).collect();
    Batch::new(&chosen, tokenizer.pad_id(), tokenizer.bos_id(), tokenizer.eos_id(), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::mode::Rng as Xoshiro;
    use rand::SeedableRng;

    /// Sentence lengths of a realistic mix: mostly 5–40 tokens, a few long ones, targets about 1.1 × sources.
    fn realistic_lengths(n: usize, seed: u64) -> Vec<(usize, usize)> {
        let mut rng = Xoshiro::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let source = if rng.random_bool(0.05) { rng.random_range(40..120) } else { rng.random_range(5..40) };
                let target = (source as f64 * rng.random_range(0.9..1.3)).round() as usize;
                (source, target.max(1))
            })
            .collect()
    }

    fn batches(lengths: &[(usize, usize)], max_tokens: usize, seed: u64) -> Vec<Vec<usize>> {
        token_batches(lengths, max_tokens, Some(&mut Xoshiro::seed_from_u64(seed))).unwrap()
    }

    fn cost(batch: &[usize], lengths: &[(usize, usize)]) -> usize {
        let source = batch.iter().map(|&i| lengths[i].0).max().unwrap();
        let target = batch.iter().map(|&i| lengths[i].1).max().unwrap();
        batch.len() * (source.max(target) + 1)
    }

    #[test]
    fn every_index_once_and_no_batch_over_budget() {
        let lengths = realistic_lengths(3000, 1);
        for shuffled in [true, false] {
            let result = if shuffled {
                batches(&lengths, 1000, 7)
            } else {
                token_batches(&lengths, 1000, None::<&mut Xoshiro>).unwrap()
            };
            let mut seen: Vec<usize> = result.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            assert!(result.iter().all(|b| !b.is_empty() && cost(b, &lengths) <= 1000));
        }
    }

    #[test]
    fn same_seed_same_batches_different_seed_different() {
        let lengths = realistic_lengths(2000, 2);
        assert_eq!(batches(&lengths, 800, 3), batches(&lengths, 800, 3));
        assert_ne!(batches(&lengths, 800, 3), batches(&lengths, 800, 4));
        let unshuffled = token_batches(&lengths, 800, None::<&mut Xoshiro>).unwrap();
        assert_eq!(unshuffled, token_batches(&lengths, 800, None::<&mut Xoshiro>).unwrap());
    }

    #[test]
    fn bucketing_keeps_padding_small() {
        let lengths = realistic_lengths(5000, 5);
        let real: usize = lengths.iter().map(|&(s, t)| s + t + 2).sum();
        let padded = |batches: &[Vec<usize>]| -> usize {
            let side =
                |b: &Vec<usize>, f: fn(&(usize, usize)) -> usize| b.iter().map(|&i| f(&lengths[i]) + 1).max().unwrap();
            batches.iter().map(|b| b.len() * (side(b, |l| l.0) + side(b, |l| l.1))).sum()
        };
        let share = 1.0 - real as f64 / padded(&batches(&lengths, 2000, 9)) as f64;
        assert!(share < 0.12, "padding share {share:.3}");
        // Without sorting, consecutive examples of random length waste far more.
        let naive: Vec<Vec<usize>> = (0..lengths.len()).collect::<Vec<_>>().chunks(40).map(|c| c.to_vec()).collect();
        let naive_share = 1.0 - real as f64 / padded(&naive) as f64;
        assert!(naive_share > 2.0 * share, "naive {naive_share:.3} vs bucketed {share:.3}");
    }

    #[test]
    fn an_example_too_long_for_the_budget_is_named() {
        let err = token_batches(&[(3, 4), (50, 20)], 40, None::<&mut Xoshiro>).unwrap_err().to_string();
        assert!(err.contains("max_tokens = 40") && err.contains("example 1 has 50 source and 20 target"), "{err}");
        assert!(token_batches(&[], 40, None::<&mut Xoshiro>).unwrap().is_empty());
    }

    #[test]
    fn batch_tensors_are_padded_and_shifted() {
        let (pad, bos, eos) = (0, 1, 2);
        let long = Example { source: vec![10, 11, 12], target: vec![20, 21] };
        let short = Example { source: vec![13], target: vec![22, 23, 24] };
        let batch = Batch::new(&[&long, &short], pad, bos, eos, &Device::Cpu).unwrap();
        let rows = |t: &Tensor| t.to_vec2::<u32>().unwrap();
        assert_eq!(rows(&batch.source), [[10, 11, 12, 2], [13, 2, 0, 0]]);
        assert_eq!(batch.source_valid.to_vec2::<u8>().unwrap(), [[1, 1, 1, 1], [1, 1, 0, 0]]);
        assert_eq!(rows(&batch.decoder_input), [[1, 20, 21, 0], [1, 22, 23, 24]]);
        assert_eq!(rows(&batch.labels), [[20, 21, 2, 0], [22, 23, 24, 2]]);
        assert_eq!((batch.source_tokens, batch.target_tokens), (6, 7));
        assert!(Batch::new(&[], pad, bos, eos, &Device::Cpu).is_err());
    }
}
