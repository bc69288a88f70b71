//! Turning a trained model into output sequences: greedy decoding and beam search, both incremental (a key/value
//! cache per decoder layer) unless told otherwise; continuous batching for serving many generations at once; beam search at a given output length, and the Gumbel noise
//! that turns a search into a draw (both for the sentence-level oracle of scheduled-sampling training).

pub mod beam_search;
pub mod continuous;
pub mod fixed_length;
pub mod generate;
pub mod greedy;
pub mod gumbel;
mod incremental;

use serde::{Deserialize, Serialize};

pub use beam_search::beam_search;
pub use fixed_length::fixed_length_beam_search;
pub use greedy::greedy;
pub use gumbel::GumbelNoise;

use crate::{limits, Error, Result};

/// How long outputs may grow and how beams are compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecodeOptions {
    /// Hypotheses kept per source; 1 is greedy decoding.
    pub beam: usize,
    /// GNMT length penalty α (Wu et al., 2016): finished hypotheses are ranked by log p / ((5 + |y|) / 6)^α.
    /// 0 ranks by log-probability alone, which favours short outputs.
    pub length_penalty: f64,
    /// At most `max_len_a · |source| + max_len_b` tokens per output (EOS not counted), and never more than
    /// [`crate::limits::MAX_OUTPUT_TOKENS`].
    pub max_len_a: f64,
    /// The constant term of that length limit, in tokens (default 10).
    pub max_len_b: usize,
    /// Reuse earlier steps' keys and values (the default). Off recomputes the whole prefix at every step: the
    /// reference the cache is tested against.
    pub use_cache: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { beam: 4, length_penalty: 0.6, max_len_a: 1.5, max_len_b: 10, use_cache: true }
    }
}

impl DecodeOptions {
    /// Greedy decoding with the default length limit.
    pub fn greedy() -> Self {
        Self { beam: 1, ..Self::default() }
    }

    /// Most output tokens for a source of `source_len` real tokens: a model that never emits EOS stops at
    /// the hard cap whatever the length options say.
    pub fn max_len(&self, source_len: usize) -> usize {
        let asked = (self.max_len_a * source_len as f64 + self.max_len_b as f64).floor().max(1.0);
        asked.min(limits::MAX_OUTPUT_TOKENS as f64) as usize
    }

    /// Errors naming the option for a zero or too large beam, a negative or infinite `max_len_a`, or an infinite
    /// length penalty.
    pub fn validate(&self) -> Result<()> {
        if self.beam == 0 {
            return Err(Error::config("beam", 0, "at least 1"));
        }
        limits::at_most("beam", self.beam, limits::MAX_BEAM)?;
        if !(self.max_len_a >= 0.0 && self.max_len_a.is_finite()) {
            return Err(Error::config("max_len_a", self.max_len_a, "a finite number ≥ 0"));
        }
        if !self.length_penalty.is_finite() {
            return Err(Error::config("length_penalty", self.length_penalty, "a finite number"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_has_a_hard_cap_and_beams_a_bound() {
        let options = DecodeOptions { max_len_a: 1e9, ..DecodeOptions::default() };
        assert_eq!(options.max_len(10), limits::MAX_OUTPUT_TOKENS);
        assert_eq!(DecodeOptions::default().max_len(10), 25);
        let message = DecodeOptions { beam: 1_000_000, ..DecodeOptions::default() }.validate().unwrap_err();
        assert!(message.to_string().contains("beam = 1000000: at most 1024"), "{message}");
    }
}
