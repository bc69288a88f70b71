//! Corpus chrF (Popović, 2015, "chrF: character n-gram F-score for automatic MT evaluation") and chrF++
//! (Popović, 2017, "chrF++: words helping character n-grams") as sacreBLEU 2.x computes them
//! (`sacrebleu/metrics/chrf.py`):
//!
//! - character n-grams of orders 1..=`char_order` over the sentence with its whitespace removed, and for chrF++
//!   word n-grams of orders 1..=`word_order` over words with one leading or trailing punctuation mark split off;
//! - with several references, each sentence keeps the statistics of the reference with the best sentence F-score;
//! - hypothesis, reference and matching n-gram counts are summed over the corpus per order, precision and recall
//!   are averaged over the orders that occur on both sides, and F-beta is taken of the two averages.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use serde::Serialize;

use super::{check_streams, is_python_space, python_split};
use crate::{Error, Result};

/// How chrF is computed. `Default` is sacreBLEU's chrF2: 6 character orders, no word n-grams, beta 2, case-
/// sensitive, whitespace ignored. [`ChrfOptions::chrf_plus_plus`] gives chrF++.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChrfOptions {
    /// Character n-gram orders 1..=char_order.
    pub char_order: usize,
    /// Word n-gram orders 1..=word_order (2 gives chrF++).
    pub word_order: usize,
    /// Weight of recall against precision in the F-score.
    pub beta: f64,
    /// Lowercase hypotheses and references first.
    pub lowercase: bool,
    /// Keep whitespace in the character n-grams.
    pub whitespace: bool,
    /// Average the per-order F-scores with a 1e-16 floor (chrF++.py, Moses, NLTK) instead of taking F of the
    /// average precision and recall over the orders that occur (sacreBLEU's default).
    pub eps_smoothing: bool,
}

impl Default for ChrfOptions {
    fn default() -> Self {
        ChrfOptions {
            char_order: 6,
            word_order: 0,
            beta: 2.0,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfOptions {
    /// chrF++: sacreBLEU's defaults with word unigrams and bigrams.
    pub fn chrf_plus_plus() -> Self {
        ChrfOptions { word_order: 2, ..ChrfOptions::default() }
    }

    fn check(&self) -> Result<()> {
        if self.char_order + self.word_order == 0 {
            return Err(Error::config("char_order + word_order", 0, "at least one n-gram order"));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::config("beta", self.beta, "a finite number >= 0"));
        }
        Ok(())
    }
}

/// A corpus chrF score. `Display` prints sacreBLEU's line, e.g. `chrF2 = 58.46` or `chrF2++ = 55.12`; a
/// precision (`{:.3}`) changes the digits, as sacreBLEU's `width` does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChrfScore {
    /// chrF in 0..=100.
    pub score: f64,
    /// Longest character n-gram counted (sacreBLEU: 6).
    pub char_order: usize,
    /// Longest word n-gram counted: 0 for chrF, 2 for chrF++.
    pub word_order: usize,
    /// β of the F-score: recall weighs β times as much as precision (sacreBLEU: 2).
    pub beta: f64,
}

impl ChrfScore {
    /// sacreBLEU's name of the metric: `chrF2`, with one `+` per word order (`chrF2++`).
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }
}

impl fmt::Display for ChrfScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = f.precision().unwrap_or(2);
        write!(f, "{} = {:.width$}", self.name(), self.score)
    }
}

/// Corpus chrF of `hypotheses` against one or more reference streams, each with one sentence per hypothesis
/// (sacreBLEU's `CHRF(...).corpus_score(hypotheses, references)`).
///
/// Errors: no hypotheses, no reference stream, a stream whose length differs from the hypotheses', no n-gram
/// order, or a negative or non-finite beta.
pub fn corpus_chrf<H, S, R>(hypotheses: &[H], references: &[S], options: &ChrfOptions) -> Result<ChrfScore>
where
    H: AsRef<str>,
    S: AsRef<[R]>,
    R: AsRef<str>,
{
    options.check()?;
    check_streams(hypotheses.len(), references)?;
    let mut corpus = vec![[0usize; 3]; options.char_order + options.word_order];
    for (index, hypothesis) in hypotheses.iter().enumerate() {
        let refs: Vec<&str> = references.iter().map(|stream| stream.as_ref()[index].as_ref()).collect();
        for (total, stats) in corpus.iter_mut().zip(segment_stats(hypothesis.as_ref(), &refs, options)) {
            for (t, s) in total.iter_mut().zip(stats) {
                *t += s;
            }
        }
    }
    Ok(ChrfScore {
        score: f_score(&corpus, options),
        char_order: options.char_order,
        word_order: options.word_order,
        beta: options.beta,
    })
}

/// `[hypothesis n-grams, reference n-grams, matches]` per order, character orders first.
type OrderStats = [usize; 3];

/// The statistics of one hypothesis against the reference that gives it the best F-score (the first of equals).
fn segment_stats(hypothesis: &str, references: &[&str], options: &ChrfOptions) -> Vec<OrderStats> {
    let hyp = Segment::new(hypothesis, options);
    let hyp_ngrams = hyp.ngrams(options);
    let mut best: Option<(f64, Vec<OrderStats>)> = None;
    for reference in references {
        let reference = Segment::new(reference, options);
        let stats = hyp_ngrams.match_stats(&reference.ngrams(options));
        let f = f_score(&stats, options);
        if best.as_ref().is_none_or(|(best_f, _)| f > *best_f) {
            best = Some((f, stats));
        }
    }
    best.map(|(_, stats)| stats).unwrap_or_default()
}

/// A sentence as the n-grams are taken from it: its characters and its words.
struct Segment {
    chars: Vec<char>,
    text: String,
}

impl Segment {
    fn new(sentence: &str, options: &ChrfOptions) -> Self {
        let text = if options.lowercase { sentence.to_lowercase() } else { sentence.to_string() };
        let chars = text.chars().filter(|&c| options.whitespace || !is_python_space(c)).collect();
        Segment { chars, text }
    }

    fn ngrams(&self, options: &ChrfOptions) -> Ngrams<'_> {
        let words = if options.word_order > 0 { split_punctuation(&self.text) } else { Vec::new() };
        Ngrams {
            chars: (1..=options.char_order).map(|n| count(self.chars.windows(n))).collect(),
            words: (1..=options.word_order).map(|n| count(words.windows(n).map(|w| w.join(" ")))).collect(),
        }
    }
}

/// Counts per order. Word n-grams are owned (joined with spaces) because their words are borrowed from a
/// vector that does not outlive the call.
struct Ngrams<'a> {
    chars: Vec<HashMap<&'a [char], usize>>,
    words: Vec<HashMap<String, usize>>,
}

impl Ngrams<'_> {
    fn match_stats(&self, reference: &Ngrams<'_>) -> Vec<OrderStats> {
        let chars = self.chars.iter().zip(&reference.chars).map(|(h, r)| order_stats(h, r));
        let words = self.words.iter().zip(&reference.words).map(|(h, r)| order_stats(h, r));
        chars.chain(words).collect()
    }
}

fn count<K: Hash + Eq>(items: impl Iterator<Item = K>) -> HashMap<K, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}

/// One order's statistics. Hypothesis n-grams count only where the reference has n-grams of that order, as
/// in sacreBLEU (so an empty reference costs no precision).
fn order_stats<K: Hash + Eq>(hyp: &HashMap<K, usize>, reference: &HashMap<K, usize>) -> OrderStats {
    let hyp_count: usize = hyp.values().sum();
    let matches = hyp.iter().map(|(ngram, &c)| c.min(reference.get(ngram).copied().unwrap_or(0))).sum();
    let hyp_count = if reference.is_empty() { 0 } else { hyp_count };
    [hyp_count, reference.values().sum(), matches]
}

/// sacreBLEU's `_remove_punctuation`: whitespace-separated words, with a trailing ASCII punctuation mark split
/// off, or else a leading one (so "(hi)" gives "(hi" and ")").
fn split_punctuation(sentence: &str) -> Vec<&str> {
    let mut words = Vec::new();
    for word in python_split(sentence) {
        let mut chars = word.chars();
        let (first, last) = (chars.next(), chars.next_back());
        match (first, last) {
            (Some(_), Some(l)) if l.is_ascii_punctuation() => {
                words.extend([&word[..word.len() - 1], &word[word.len() - 1..]])
            }
            (Some(f), Some(_)) if f.is_ascii_punctuation() => words.extend([&word[..1], &word[1..]]),
            _ => words.push(word),
        }
    }
    words
}

/// sacreBLEU's `_compute_f_score`, operation for operation so that the printed digits agree.
fn f_score(stats: &[OrderStats], options: &ChrfOptions) -> f64 {
    const EPS: f64 = 1e-16;
    let factor = options.beta * options.beta;
    let (mut eps_score, mut avg_prec, mut avg_rec, mut effective_order) = (0.0, 0.0, 0.0, 0usize);
    for &[n_hyp, n_ref, n_match] in stats {
        let prec = if n_hyp > 0 { n_match as f64 / n_hyp as f64 } else { EPS };
        let rec = if n_ref > 0 { n_match as f64 / n_ref as f64 } else { EPS };
        let denom = factor * prec + rec;
        eps_score += if denom > 0.0 { (1.0 + factor) * prec * rec / denom } else { EPS };
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += prec;
            avg_rec += rec;
            effective_order += 1;
        }
    }
    if options.eps_smoothing {
        return 100.0 * eps_score / stats.len() as f64;
    }
    if effective_order == 0 {
        return 0.0;
    }
    avg_prec /= effective_order as f64;
    avg_rec /= effective_order as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * ((1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values in these tests are sacreBLEU 2.6.0's on the same input.
    #[test]
    fn one_punctuation_mark_is_split_off_each_word() {
        let words = split_punctuation("(hi) \"quoted\", a . x! ,lead ok");
        assert_eq!(words, ["(hi", ")", "\"quoted\"", ",", "a", ".", "x", "!", ",", "lead", "ok"]);
    }

    #[test]
    fn character_ngrams_skip_whitespace_unless_asked() {
        let options = ChrfOptions::default();
        let segment = Segment::new("ab c", &options);
        assert_eq!(segment.chars, ['a', 'b', 'c']);
        let ngrams = segment.ngrams(&options);
        assert_eq!(ngrams.chars.len(), 6);
        assert_eq!(ngrams.chars[1].len(), 2);
        assert!(ngrams.chars[3].is_empty());
        let spaced = Segment::new("ab c", &ChrfOptions { whitespace: true, ..options });
        assert_eq!(spaced.chars.len(), 4);
    }

    #[test]
    fn empty_reference_order_does_not_count_hypothesis_ngrams() {
        let hyp = count(["a", "b", "a"].into_iter());
        let reference = count(["a", "c"].into_iter());
        assert_eq!(order_stats(&hyp, &reference), [3, 2, 1]);
        assert_eq!(order_stats(&hyp, &HashMap::new()), [0, 0, 0]);
    }

    #[test]
    fn f_score_averages_precision_and_recall_over_occurring_orders() {
        let options = ChrfOptions { char_order: 3, ..ChrfOptions::default() };
        assert_eq!(f_score(&[[3, 4, 2], [0, 0, 0], [2, 5, 1]], &options), 38.043478260869556);
        let eps = ChrfOptions { char_order: 2, eps_smoothing: true, ..ChrfOptions::default() };
        assert_eq!(f_score(&[[3, 4, 2], [0, 3, 0]], &eps), 26.31578947368421);
        assert_eq!(f_score(&[[0, 0, 0]; 3], &options), 0.0);
    }

    #[test]
    fn display_names_the_variant() {
        let hyp = ["the cat sat"];
        let refs = [["the cat sat on the mat"]];
        let score = |options: ChrfOptions| corpus_chrf(&hyp, &refs, &options).unwrap().to_string();
        assert_eq!(score(ChrfOptions::default()), "chrF2 = 49.59");
        assert_eq!(score(ChrfOptions::chrf_plus_plus()), "chrF2++ = 49.84");
        assert_eq!(score(ChrfOptions { beta: 1.0, ..ChrfOptions::default() }), "chrF1 = 61.15");
    }

    #[test]
    fn impossible_options_are_refused() {
        let no_order = ChrfOptions { char_order: 0, ..ChrfOptions::default() };
        assert!(corpus_chrf(&["a"], &[["a"]], &no_order).is_err());
        let nan_beta = ChrfOptions { beta: f64::NAN, ..ChrfOptions::default() };
        assert!(corpus_chrf(&["a"], &[["a"]], &nan_beta).unwrap_err().to_string().contains("beta"));
    }
}
