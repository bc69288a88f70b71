//! Scores of system output against references. Pure functions over strings and numbers, no tensors.
//!
//! - [`bleu`]: corpus and sentence BLEU (Papineni et al., 2002) as sacreBLEU computes them, with its 13a
//!   tokenizer, and BLEU by reference-length bucket.
//! - [`chrf`]: corpus chrF (Popović, 2015) and chrF++ (Popović, 2017) as sacreBLEU computes them.
//! - [`classification`]: accuracy, F1 and the Matthews correlation, as scikit-learn computes them.
//! - [`significance`]: sacreBLEU's paired bootstrap resampling of BLEU.
//! - [`pcg64`]: numpy's default generator, for tests that must draw what sacreBLEU draws.
//! - [`correlation`]: Spearman's ρ and Pearson's r, as SciPy computes them (STS benchmarks).
//!
//! BLEU, chrF and the paired bootstrap follow sacreBLEU 2.x to the printed digit (tests/metrics.rs and
//! tests/bleu_tools.rs check them against its output), so scores can be compared with published ones.

pub mod bleu;
pub mod chrf;
pub mod classification;
pub mod correlation;
pub mod pcg64;
pub mod significance;
pub mod t_test;

pub use bleu::{
    bleu_by_length, corpus_bleu, sentence_bleu, sentence_stats, tokenize_13a, BleuOptions, BleuScore, BleuStats,
    LengthBucket, Smoothing, Tokenize, LENGTH_BOUNDS,
};
pub use chrf::{corpus_chrf, ChrfOptions, ChrfScore};
pub use significance::{paired_bootstrap, paired_bootstrap_bleu, BootstrapResult, PairedBootstrap};

use crate::{Error, Result};

/// Python's `str.isspace`, which sacreBLEU's `split()` and `rstrip()` use: Unicode White_Space plus the four
/// ASCII separators U+001C..U+001F, which Rust's `char::is_whitespace` leaves out.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.split()` with no argument: runs of whitespace separate, no empty pieces.
fn python_split(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_python_space).filter(|piece| !piece.is_empty())
}

/// Checks that there is at least one hypothesis and one reference stream, and that every stream has one
/// reference per hypothesis.
fn check_streams<S: AsRef<[R]>, R>(hypotheses: usize, references: &[S]) -> Result<()> {
    if hypotheses == 0 {
        return Err(Error::config("hypotheses", "0 sentences", "at least one sentence"));
    }
    if references.is_empty() {
        return Err(Error::config("references", "0 streams", "at least one reference stream"));
    }
    for (index, stream) in references.iter().enumerate() {
        let len = stream.as_ref().len();
        if len != hypotheses {
            return Err(Error::config(
                "references",
                format!("stream {} has {len} sentences", index + 1),
                format!("one reference per hypothesis ({hypotheses})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_knows_the_ascii_separators() {
        let pieces: Vec<&str> = python_split("  a\u{1f}b\u{a0}c\t\n d ").collect();
        assert_eq!(pieces, ["a", "b", "c", "d"]);
    }

    #[test]
    fn streams_of_the_wrong_length_are_refused() {
        assert!(check_streams(2, &[vec!["a", "b"]]).is_ok());
        let err = check_streams(2, &[vec!["a", "b"], vec!["a"]]).unwrap_err().to_string();
        assert!(err.contains("stream 2 has 1 sentences"), "{err}");
        assert!(check_streams::<Vec<&str>, &str>(2, &[]).is_err());
        assert!(check_streams(0, &[Vec::<&str>::new()]).is_err());
    }
}
