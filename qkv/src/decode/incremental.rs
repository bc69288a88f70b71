//! The decoder run one target position at a time for a set of rows (hypotheses), with or without the key/value
//! cache. Greedy decoding and beam search drive it; rows can be dropped or duplicated between steps.

use candle_core::{DType, Tensor};

use crate::device::on_workers;
use crate::models::Transformer;
use crate::nn::{AttentionMask, DecoderCache, Mode};
use crate::Result;

/// The decoder's state for rows of partial target sequences over an encoded source batch.
pub(crate) struct Incremental<'a> {
    model: &'a Transformer,
    /// (R, S, C) encoder output, one row per hypothesis.
    memory: Tensor,
    /// (R, S) 1 for real source tokens.
    src_valid: Tensor,
    src_mask: AttentionMask,
    /// Each row's tokens so far, starting with BOS.
    prefixes: Vec<Vec<u32>>,
    /// `None` recomputes the whole prefix every step (the reference the cache is tested against).
    cache: Option<DecoderCache>,
}

impl<'a> Incremental<'a> {
    /// Encodes `src` (B, S) once; every row starts as BOS.
    pub fn new(model: &'a Transformer, src: &Tensor, src_valid: &Tensor, use_cache: bool) -> Result<Self> {
        let src_mask = Transformer::source_mask(src_valid)?;
        let memory = on_workers(|| model.encode(src, &src_mask, &mut Mode::Eval))?;
        let rows = src.dim(0)?;
        Ok(Self {
            model,
            memory,
            src_valid: src_valid.clone(),
            src_mask,
            prefixes: vec![vec![model.config().bos_token_id]; rows],
            cache: use_cache.then(|| model.new_cache()),
        })
    }

    pub fn prefixes(&self) -> &[Vec<u32>] {
        &self.prefixes
    }

    /// Next-token logits (R, V) for every row given its prefix so far.
    pub fn logits(&mut self) -> Result<Vec<Vec<f32>>> {
        let device = self.memory.device().clone();
        let hidden = match &mut self.cache {
            Some(cache) => {
                // The cache holds every position but each row's last token, which this step feeds in.
                let fresh: Vec<u32> = self.prefixes.iter().flat_map(|p| p[cache.len()..].iter().copied()).collect();
                let t = fresh.len() / self.prefixes.len().max(1);
                let tgt = Tensor::from_vec(fresh, (self.prefixes.len(), t), &device)?;
                let (model, memory, src_mask) = (self.model, &self.memory, &self.src_mask);
                let hidden = on_workers(|| model.decode_step(&tgt, memory, src_mask, cache))?;
                hidden.narrow(1, t - 1, 1)?
            }
            None => {
                let len = self.prefixes[0].len();
                let flat: Vec<u32> = self.prefixes.iter().flatten().copied().collect();
                let tgt = Tensor::from_vec(flat, (self.prefixes.len(), len), &device)?;
                let hidden = self.model.decode(&tgt, &self.memory, &self.src_mask, &mut Mode::Eval)?;
                hidden.narrow(1, len - 1, 1)?
            }
        };
        let model = self.model;
        Ok(on_workers(|| model.project(&hidden))?.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Row i continues row `parents[i]` with `tokens[i]`; rows not named are dropped.
    pub fn advance(&mut self, parents: &[usize], tokens: &[u32]) -> Result<()> {
        let identity = parents.len() == self.prefixes.len() && parents.iter().enumerate().all(|(i, &p)| i == p);
        if !identity {
            let index = Tensor::from_vec(
                parents.iter().map(|&p| p as u32).collect::<Vec<_>>(),
                parents.len(),
                self.memory.device(),
            )?;
            self.memory = self.memory.index_select(&index, 0)?;
            self.src_valid = self.src_valid.index_select(&index, 0)?;
            self.src_mask = Transformer::source_mask(&self.src_valid)?;
            if let Some(cache) = &mut self.cache {
                cache.reorder(&index)?;
            }
            self.prefixes = parents.iter().map(|&p| self.prefixes[p].clone()).collect();
        }
        for (prefix, &token) in self.prefixes.iter_mut().zip(tokens) {
            prefix.push(token);
        }
        Ok(())
    }
}

/// Index of the largest value; the first one on ties, so every search breaks ties the same way.
pub(crate) fn argmax<T: PartialOrd + Copy>(row: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// log softmax of one row of logits, in f64 so that scores summed over many steps keep their precision.
pub(crate) fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let log_sum = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&x| x as f64 - log_sum).collect()
}
