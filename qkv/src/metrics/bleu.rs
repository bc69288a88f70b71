//! Corpus BLEU (Papineni et al., 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation") as
//! sacreBLEU 2.x computes it (`sacrebleu/metrics/bleu.py`, Post, 2018, "A Call for Clarity in Reporting BLEU
//! Scores"):
//!
//! - each sentence is lowercased (optionally), stripped of trailing whitespace and tokenized (13a by default);
//! - n-grams of orders 1..4 are clipped by their largest count in any one reference of the sentence, and the
//!   reference length is the one closest to the hypothesis length (the shorter one on a tie);
//! - matches, totals and lengths are summed over the corpus before the precisions, the brevity penalty and the
//!   geometric mean are taken, so the corpus score is not an average of sentence scores.
//!
//! [`sentence_bleu`] scores one sentence as sacreBLEU's `sentence_bleu` does (effective order: orders without
//! hypothesis n-grams are left out of the mean), and [`bleu_by_length`] scores the sentences of each
//! reference-length bucket as a corpus of their own. [`sentence_stats`] gives the per-sentence statistics
//! that resampling tests ([`super::significance`]) add up.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::{check_streams, is_python_space, python_split};
use crate::{Error, Result};

/// The n-gram orders BLEU averages over, 1 to `MAX_ORDER`.
pub const MAX_ORDER: usize = 4;

/// How sentences are split into words before n-grams are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Tokenize {
    /// mteval-v13a.pl's tokenizer, sacreBLEU's default: punctuation and symbols become words of their own,
    /// except periods and commas inside numbers and hyphens between letters. See [`tokenize_13a`].
    #[default]
    #[serde(rename = "13a")]
    V13a,
    /// Whitespace only, for text that is already tokenized: the number multi-bleu.perl gives.
    #[serde(rename = "none")]
    None,
}

impl fmt::Display for Tokenize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tokenize::V13a => "13a",
            Tokenize::None => "none",
        })
    }
}

impl FromStr for Tokenize {
    type Err = Error;

    /// sacreBLEU's names: `13a` or `none`.
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "13a" => Ok(Tokenize::V13a),
            "none" => Ok(Tokenize::None),
            _ => Err(Error::config("tokenize", name, "13a or none")),
        }
    }
}

/// What a precision with no matching n-grams becomes (Chen and Cherry, 2014, "A Systematic Comparison of
/// Smoothing Techniques for Sentence-Level BLEU"). Without smoothing one order with no match makes BLEU 0.
/// [`Smoothing::from_name`] takes sacreBLEU's `smooth_method` / `smooth_value`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Smoothing {
    /// mteval-v13a's method 3, sacreBLEU's default: the k-th order without matches counts 1 / 2^k matches.
    #[default]
    Exp,
    /// Method 1: an order without matches counts this many matches (sacreBLEU's default is 0.1).
    Floor(f64),
    /// Method 2: adds k to the matches and totals of orders 2..4 (sacreBLEU's default is 1).
    AddK(f64),
    /// No smoothing.
    None,
}

impl Smoothing {
    /// sacreBLEU's method names, in the order its `BLEU.SMOOTH_DEFAULTS` lists them.
    pub const NAMES: [&'static str; 4] = ["none", "floor", "add-k", "exp"];

    /// sacreBLEU's `smooth_method` with its `smooth_value` (`None`: its default, 0.1 for floor and 1 for
    /// add-k). Errors: an unknown method (the message lists the known ones), a value for `none` or `exp`
    /// (which take none), or a value that is negative or not finite.
    pub fn from_name(method: &str, value: Option<f64>) -> Result<Self> {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::config("smooth_value", v, "a finite value ≥ 0"));
            }
        }
        match (method, value) {
            ("floor", v) => Ok(Smoothing::Floor(v.unwrap_or(0.1))),
            ("add-k", v) => Ok(Smoothing::AddK(v.unwrap_or(1.0))),
            ("none" | "exp", Some(v)) => {
                Err(Error::config("smooth_value", v, format!("no value: {method} smoothing takes none")))
            }
            ("none", None) => Ok(Smoothing::None),
            ("exp", None) => Ok(Smoothing::Exp),
            _ => Err(Error::config("smooth_method", method, format!("one of {}", Self::NAMES.join(", ")))),
        }
    }

    /// sacreBLEU's name of the method.
    pub fn name(&self) -> &'static str {
        match self {
            Smoothing::None => "none",
            Smoothing::Floor(_) => "floor",
            Smoothing::AddK(_) => "add-k",
            Smoothing::Exp => "exp",
        }
    }
}

/// How BLEU is computed. `Default` is sacreBLEU's default: 13a tokens, case-sensitive, exponential smoothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BleuOptions {
    /// How sentences are split into words: 13a (default) or whitespace only.
    pub tokenize: Tokenize,
    /// Lowercase hypotheses and references first (case-insensitive BLEU).
    pub lowercase: bool,
    /// How orders without matches are smoothed (default: exponential, sacreBLEU's `exp`).
    pub smooth: Smoothing,
}

/// A corpus BLEU score with the statistics it was computed from, as sacreBLEU's `BLEUScore` holds them.
///
/// `Display` prints sacreBLEU's line, e.g.
/// `BLEU = 78.64 94.6/87.9/79.3/72.0 (BP = 0.947 ratio = 0.949 hyp_len = 37 ref_len = 39)`; a precision
/// (`{:.3}`) changes the digits of the score alone, as sacreBLEU's `width` does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleuScore {
    /// BLEU in 0..=100.
    pub score: f64,
    /// Modified n-gram precisions of orders 1..4 in percent, after smoothing.
    pub precisions: [f64; MAX_ORDER],
    /// Brevity penalty, exp(1 − ref_len / hyp_len) when the hypotheses are shorter, else 1.
    pub bp: f64,
    /// hyp_len / ref_len (0 when there are no reference words).
    pub ratio: f64,
    /// Words in all hypotheses.
    pub hyp_len: usize,
    /// Words in the closest reference of each sentence, summed.
    pub ref_len: usize,
    /// Clipped n-gram matches of orders 1..4, before smoothing (sacreBLEU's add-k reports them with k added).
    pub counts: [usize; MAX_ORDER],
    /// Hypothesis n-grams of orders 1..4.
    pub totals: [usize; MAX_ORDER],
}

impl fmt::Display for BleuScore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = f.precision().unwrap_or(2);
        let precisions: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        write!(
            f,
            "BLEU = {:.width$} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            precisions.join("/"),
            self.bp,
            self.ratio,
            self.hyp_len,
            self.ref_len
        )
    }
}

/// Corpus BLEU of `hypotheses` against one or more reference streams, each with one sentence per hypothesis
/// (sacreBLEU's `BLEU(...).corpus_score(hypotheses, references)`).
///
/// Errors: no hypotheses, no reference stream, or a stream whose length differs from the hypotheses'.
pub fn corpus_bleu<H, S, R>(hypotheses: &[H], references: &[S], options: &BleuOptions) -> Result<BleuScore>
where
    H: AsRef<str>,
    S: AsRef<[R]>,
    R: AsRef<str>,
{
    let stats = sentence_stats(hypotheses, references, options)?;
    Ok(stats.iter().sum::<BleuStats>().score(options.smooth))
}

/// BLEU of one sentence against its references, as sacreBLEU's `sentence_bleu` (`BLEU(effective_order=True)
/// .sentence_score`) computes it: the geometric mean runs over the orders the hypothesis has n-grams of, so
/// a two-word hypothesis is not scored 0 for lacking trigrams. The smoothing still decides what an order
/// with n-grams but no match counts (with `none` such an order makes the score 0).
///
/// Errors: no reference.
pub fn sentence_bleu<R: AsRef<str>>(hypothesis: &str, references: &[R], options: &BleuOptions) -> Result<BleuScore> {
    if references.is_empty() {
        return Err(Error::config("references", "0 references", "at least one reference"));
    }
    let refs: Vec<String> = references.iter().map(|r| preprocess(r.as_ref(), options)).collect();
    let stats = segment_stats(&preprocess(hypothesis, options), &refs);
    Ok(stats.compute(options.smooth, Order::Effective, Arithmetic::Double))
}

/// The statistics of every sentence, in order: what corpus BLEU adds up, and what a resampling test draws
/// subsets of.
///
/// Errors: as [`corpus_bleu`].
pub fn sentence_stats<H, S, R>(hypotheses: &[H], references: &[S], options: &BleuOptions) -> Result<Vec<BleuStats>>
where
    H: AsRef<str>,
    S: AsRef<[R]>,
    R: AsRef<str>,
{
    check_streams(hypotheses.len(), references)?;
    Ok(hypotheses
        .iter()
        .enumerate()
        .map(|(index, hypothesis)| {
            let refs: Vec<String> =
                references.iter().map(|stream| preprocess(stream.as_ref()[index].as_ref(), options)).collect();
            segment_stats(&preprocess(hypothesis.as_ref(), options), &refs)
        })
        .collect())
}

/// The upper bounds of the reference-length buckets `qkv bleu --by-length` uses by default: 1–10, 11–20,
/// 21–30 and 31+ words.
pub const LENGTH_BOUNDS: [usize; 3] = [10, 20, 30];

/// Corpus BLEU of the sentences whose reference length lies in one range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LengthBucket {
    /// Shortest reference length of the range; the first bucket also holds empty references.
    pub min: usize,
    /// Longest, `None` for the last, open range.
    pub max: Option<usize>,
    /// Sentences in the bucket.
    pub sentences: usize,
    /// Their corpus BLEU, `None` for an empty bucket.
    pub bleu: Option<BleuScore>,
}

impl LengthBucket {
    /// `1-10`, or `31+` for the open range.
    pub fn label(&self) -> String {
        match self.max {
            Some(max) => format!("{}-{max}", self.min),
            None => format!("{}+", self.min),
        }
    }
}

/// Corpus BLEU by reference length: sentences are grouped by the length of their reference in the first
/// stream, in words after the BLEU tokenizer of `options` (13a, or whitespace for `Tokenize::None`), so
/// that every system is bucketed the same way; `bounds` are the buckets' inclusive upper ends, and one more
/// bucket takes the longer ones (`[10, 20, 30]`: 1–10, 11–20, 21–30, 31+). Each bucket is scored as a corpus
/// of its own, exactly as [`corpus_bleu`] scores those sentences.
///
/// Errors: as [`corpus_bleu`], and bounds that are not increasing or start at 0.
pub fn bleu_by_length<H, S, R>(
    hypotheses: &[H],
    references: &[S],
    options: &BleuOptions,
    bounds: &[usize],
) -> Result<Vec<LengthBucket>>
where
    H: AsRef<str>,
    S: AsRef<[R]>,
    R: AsRef<str>,
{
    if bounds.first() == Some(&0) || bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::config(
            "length buckets",
            format!("{bounds:?}"),
            "increasing upper bounds ≥ 1, e.g. 10,20,30",
        ));
    }
    let stats = sentence_stats(hypotheses, references, options)?;
    let mut buckets: Vec<(LengthBucket, BleuStats)> = (0..=bounds.len())
        .map(|i| {
            let min = if i == 0 { 1 } else { bounds[i - 1] + 1 };
            (LengthBucket { min, max: bounds.get(i).copied(), sentences: 0, bleu: None }, BleuStats::default())
        })
        .collect();
    for (reference, sentence) in references[0].as_ref().iter().zip(&stats) {
        let len = python_split(&preprocess(reference.as_ref(), options)).count();
        let (bucket, sum) = &mut buckets[bounds.partition_point(|&bound| bound < len)];
        bucket.sentences += 1;
        sum.add(sentence);
    }
    Ok(buckets
        .into_iter()
        .map(|(mut bucket, sum)| {
            bucket.bleu = (bucket.sentences > 0).then(|| sum.score(options.smooth));
            bucket
        })
        .collect())
}

/// Sufficient statistics of BLEU, of one sentence or a corpus: they add up over sentences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BleuStats {
    /// Hypothesis words.
    pub hyp_len: usize,
    /// Words of the reference closest in length to the hypothesis.
    pub ref_len: usize,
    /// Clipped n-gram matches of orders 1..4.
    pub counts: [usize; MAX_ORDER],
    /// Hypothesis n-grams of orders 1..4.
    pub totals: [usize; MAX_ORDER],
}

impl<'a> std::iter::Sum<&'a BleuStats> for BleuStats {
    fn sum<I: Iterator<Item = &'a BleuStats>>(iter: I) -> Self {
        let mut total = BleuStats::default();
        for stats in iter {
            total.add(stats);
        }
        total
    }
}

/// Which n-gram orders the geometric mean runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// All of 1..=MAX_ORDER (corpus BLEU).
    Full,
    /// Those up to the last with hypothesis n-grams (sacreBLEU's `effective_order`, for sentence BLEU).
    Effective,
}

/// The floating-point width of sacreBLEU's precisions. Its bootstrap sums the statistics as float32 numpy
/// arrays, and numpy 2 keeps `100. * correct / total` in float32 then, so its resampled scores (and with
/// them means, intervals and p-values) carry float32-rounded precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arithmetic {
    Double,
    /// Every intermediate rounded to f32. An operation on f32 operands done in f64 and then rounded to f32 is
    /// the f32 operation itself (f64 has more than twice f32's precision), so this is exact.
    Single,
}

impl Arithmetic {
    fn round(self, x: f64) -> f64 {
        match self {
            Arithmetic::Double => x,
            Arithmetic::Single => x as f32 as f64,
        }
    }
}

impl BleuStats {
    /// Adds `other`'s lengths and n-gram counts to these: the statistics of both sets of sentences together.
    pub fn add(&mut self, other: &BleuStats) {
        self.hyp_len += other.hyp_len;
        self.ref_len += other.ref_len;
        for n in 0..MAX_ORDER {
            self.counts[n] += other.counts[n];
            self.totals[n] += other.totals[n];
        }
    }

    /// Corpus BLEU from these statistics (sacreBLEU's `compute_bleu` without effective order).
    pub fn score(&self, smooth: Smoothing) -> BleuScore {
        self.compute(smooth, Order::Full, Arithmetic::Double)
    }

    /// sacreBLEU's `compute_bleu`, operation for operation so that the printed digits agree.
    pub(super) fn compute(&self, smooth: Smoothing, order: Order, arithmetic: Arithmetic) -> BleuScore {
        let bp = brevity_penalty(self.hyp_len, self.ref_len);
        let ratio = if self.ref_len > 0 { self.hyp_len as f64 / self.ref_len as f64 } else { 0.0 };
        let nothing_matched = self.counts.iter().all(|&c| c == 0);
        let (precisions, effective) =
            if nothing_matched { ([0.0; MAX_ORDER], MAX_ORDER) } else { self.precisions(smooth, arithmetic) };
        let score = if nothing_matched {
            0.0
        } else {
            let orders = if order == Order::Effective { effective } else { MAX_ORDER };
            let log_sum: f64 = precisions[..orders].iter().map(|&p| floored_ln(p)).sum();
            bp * (log_sum / orders as f64).exp()
        };
        let BleuStats { hyp_len, ref_len, counts, totals } = *self;
        BleuScore { score, precisions, bp, ratio, hyp_len, ref_len, counts, totals }
    }

    /// Smoothed precisions in percent, and the effective order: the number of orders before the first with
    /// no hypothesis n-grams (after add-k's addition), whose precisions and all later ones stay 0.
    fn precisions(&self, smooth: Smoothing, arithmetic: Arithmetic) -> ([f64; MAX_ORDER], usize) {
        let r = |x: f64| arithmetic.round(x);
        let mut precisions = [0.0; MAX_ORDER];
        let mut effective = 0;
        let mut exp_denominator = 1.0;
        for (n, precision) in precisions.iter_mut().enumerate() {
            let (mut correct, mut total) = (self.counts[n] as f64, self.totals[n] as f64);
            if let Smoothing::AddK(k) = smooth {
                if n > 0 {
                    correct = r(correct + r(k));
                    total = r(total + r(k));
                }
            }
            if total == 0.0 {
                break;
            }
            effective = n + 1;
            *precision = match (correct == 0.0, smooth) {
                (false, _) => r(r(100.0 * correct) / total),
                (true, Smoothing::Exp) => {
                    exp_denominator *= 2.0;
                    r(100.0 / r(exp_denominator * total))
                }
                // sacreBLEU: `100. * smooth_value / total`, the product in Python floats.
                (true, Smoothing::Floor(value)) => r(r(100.0 * value) / total),
                (true, _) => 0.0,
            };
        }
        (precisions, effective)
    }
}

/// exp(1 − r/c) for a hypothesis corpus of c words shorter than its r reference words, 1 otherwise, 0 for
/// an empty hypothesis corpus.
fn brevity_penalty(hyp_len: usize, ref_len: usize) -> f64 {
    if hyp_len >= ref_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    }
}

/// ln(p), with sacreBLEU's stand-in for ln(0) so that an unsmoothed zero precision gives a score of 0.
fn floored_ln(p: f64) -> f64 {
    if p == 0.0 {
        -9_999_999_999.0
    } else {
        p.ln()
    }
}

fn preprocess(sentence: &str, options: &BleuOptions) -> String {
    let lowered;
    let sentence = if options.lowercase {
        lowered = sentence.to_lowercase();
        &lowered
    } else {
        sentence
    };
    let sentence = sentence.trim_end_matches(is_python_space);
    match options.tokenize {
        Tokenize::V13a => tokenize_13a(sentence),
        Tokenize::None => sentence.to_string(),
    }
}

/// Matches, totals and lengths of one tokenized hypothesis against its tokenized references.
fn segment_stats(hypothesis: &str, references: &[String]) -> BleuStats {
    let hyp_words: Vec<&str> = python_split(hypothesis).collect();
    let ref_words: Vec<Vec<&str>> = references.iter().map(|r| python_split(r).collect()).collect();
    let mut clip: HashMap<&[&str], usize> = HashMap::new();
    for words in &ref_words {
        for (ngram, count) in count_ngrams(words) {
            let best = clip.entry(ngram).or_insert(0);
            *best = (*best).max(count);
        }
    }
    let mut stats = BleuStats {
        hyp_len: hyp_words.len(),
        ref_len: closest_ref_len(hyp_words.len(), ref_words.iter().map(Vec::len)),
        ..BleuStats::default()
    };
    for (ngram, count) in count_ngrams(&hyp_words) {
        let n = ngram.len() - 1;
        stats.totals[n] += count;
        stats.counts[n] += count.min(clip.get(ngram).copied().unwrap_or(0));
    }
    stats
}

/// Counts of every n-gram of orders 1..=MAX_ORDER.
fn count_ngrams<'a>(words: &'a [&'a str]) -> HashMap<&'a [&'a str], usize> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER {
        for ngram in words.windows(n) {
            *counts.entry(ngram).or_insert(0) += 1;
        }
    }
    counts
}

/// The reference length closest to the hypothesis length; of two equally close, the shorter.
fn closest_ref_len(hyp_len: usize, ref_lens: impl Iterator<Item = usize>) -> usize {
    ref_lens.min_by_key(|&len| (len.abs_diff(hyp_len), len)).unwrap_or(0)
}

/// sacreBLEU's `13a` tokenizer (mteval-v13a.pl's, used by WMT): drops `<skipped>`, joins lines, unescapes
/// `&quot; &amp; &lt; &gt;`, then splits off symbols and punctuation, keeping `.` and `,` inside numbers
/// ("3.5", "1,000") and `-` after letters ("well-known"), and joins the words with single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // The padding gives a leading or trailing `.`/`,` a non-digit neighbour, as in sacreBLEU.
    let mut chars = Vec::with_capacity(line.len() + 2);
    chars.push(' ');
    for c in line.chars() {
        if is_13a_symbol(c) {
            chars.extend([' ', c, ' ']);
        } else {
            chars.push(c);
        }
    }
    chars.push(' ');
    // The three rewrites of sacreBLEU's regular expressions, each one pass over the previous one's output.
    let is_mark = |c: char| c == '.' || c == ',';
    let chars = substitute_pairs(&chars, |a, b| !a.is_ascii_digit() && is_mark(b), |a, b| [a, ' ', b, ' ']);
    let chars = substitute_pairs(&chars, |a, b| is_mark(a) && !b.is_ascii_digit(), |a, b| [' ', a, ' ', b]);
    let chars = substitute_pairs(&chars, |a, b| a.is_ascii_digit() && b == '-', |a, b| [a, ' ', b, ' ']);
    let spaced: String = chars.into_iter().collect();
    python_split(&spaced).collect::<Vec<_>>().join(" ")
}

/// The characters 13a always splits off: ASCII symbols and punctuation except `'`, `,`, `-`, `.` (and the
/// space, which it pads too).
fn is_13a_symbol(c: char) -> bool {
    matches!(c, ' '..='&' | '('..='+' | ':'..='@' | '['..='`' | '{'..='~' | '/')
}

/// One `re.sub` of a two-character pattern `(a)(b)`: scanning left to right, a match is replaced and consumed
/// whole, so its second character cannot begin the next match.
fn substitute_pairs(
    chars: &[char],
    is_match: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char) -> [char; 4],
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + chars.len() / 4);
    let mut i = 0;
    while i < chars.len() {
        match chars.get(i + 1) {
            Some(&next) if is_match(chars[i], next) => {
                out.extend(replace(chars[i], next));
                i += 2;
            }
            _ => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outputs are sacreBLEU 2.6.0's `Tokenizer13a()(line)`; the unescaped "&quot;" stays text.
    #[test]
    fn tokenize_13a_matches_sacrebleu() {
        let cases = [
            ("Hello, world!", "Hello , world !"),
            ("It costs $3.50, or 1,000 yen.", "It costs $ 3.50 , or 1,000 yen ."),
            ("a well-known 3-4 range", "a well-known 3 - 4 range"),
            ("&quot;Tom &amp; Jerry&quot; &lt;b&gt;", "\" Tom & Jerry \" < b >"),
            ("&amp;lt; &amp;quot;", "< & quot ;"),
            ("don't stop... .5 5. x.y", "don't stop . . . . 5 5 . x . y"),
            ("a,.b 1.,2", "a , . b 1 . , 2"),
            ("<skipped> line-\nbreak\nhere", "linebreak here"),
            ("Grüße aus Köln: «Straße» – 20 °C", "Grüße aus Köln : «Straße» – 20 °C"),
            ("(hi) [x] {y} a/b ~`^_|\\", "( hi ) [ x ] { y } a / b ~ ` ^ _ | \\"),
            ("  spaced\tout\u{a0}words ", "spaced out words"),
            ("", ""),
        ];
        for (line, expected) in cases {
            assert_eq!(tokenize_13a(line), expected, "{line:?}");
        }
    }

    #[test]
    fn ngrams_of_all_orders_are_counted() {
        let words = ["a", "b", "a", "b"];
        let counts = count_ngrams(&words);
        assert_eq!(counts[&["a", "b"][..]], 2);
        assert_eq!(counts[&["b", "a"][..]], 1);
        assert_eq!(counts[&["a"][..]], 2);
        assert_eq!(counts[&words[..]], 1);
        assert_eq!(counts.values().sum::<usize>(), 4 + 3 + 2 + 1);
    }

    #[test]
    fn hypothesis_ngrams_are_clipped_by_the_largest_reference_count() {
        let refs = ["the cat".to_string(), "the the dog".to_string()];
        let stats = segment_stats("the the the cat", &refs);
        assert_eq!(stats.totals, [4, 3, 2, 1]);
        // "the" ×2 (second reference), "cat" ×1; "the the" ×1, "the cat" ×1.
        assert_eq!(stats.counts, [3, 2, 0, 0]);
        assert_eq!((stats.hyp_len, stats.ref_len), (4, 3));
    }

    #[test]
    fn closest_reference_length_prefers_the_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, [3, 7, 9].into_iter()), 3);
        assert_eq!(closest_ref_len(5, [9, 6, 4].into_iter()), 4);
        assert_eq!(closest_ref_len(5, [8, 5].into_iter()), 5);
    }

    #[test]
    fn brevity_penalty_only_punishes_short_output() {
        assert_eq!(brevity_penalty(10, 10), 1.0);
        assert_eq!(brevity_penalty(12, 10), 1.0);
        assert_eq!(brevity_penalty(0, 10), 0.0);
        assert!((brevity_penalty(8, 10) - (-0.25f64).exp()).abs() < 1e-15);
    }

    /// Expected values are sacreBLEU's `BLEU.compute_bleu` on the same statistics.
    #[test]
    fn exp_smoothing_halves_each_further_empty_order() {
        let stats = BleuStats { hyp_len: 4, ref_len: 4, counts: [2, 0, 0, 0], totals: [4, 3, 2, 1] };
        let p = |smooth| stats.precisions(smooth, Arithmetic::Double);
        assert_eq!(p(Smoothing::Exp), ([50.0, 16.666666666666668, 12.5, 12.5], 4));
        assert_eq!(p(Smoothing::None), ([50.0, 0.0, 0.0, 0.0], 4));
        assert_eq!(stats.score(Smoothing::None).score, 0.0);
        assert_eq!(p(Smoothing::Floor(0.1)), ([50.0, 3.3333333333333335, 5.0, 10.0], 4));
        assert_eq!(p(Smoothing::AddK(1.0)), ([50.0, 25.0, 33.333333333333336, 50.0], 4));
        assert_eq!(stats.score(Smoothing::Exp).score, 18.99589214128981);
        assert_eq!(stats.score(Smoothing::Floor(0.1)).score, 9.55442792204367);
        assert_eq!(stats.score(Smoothing::AddK(1.0)).score, 37.99178428257963);
    }

    /// `compute_bleu(effective_order=True)` against `False` on a three-word hypothesis (no 4-grams), from
    /// sacreBLEU: the full order puts ln 0 into the mean, the effective one leaves the empty order out; add-k
    /// gives every order n-grams, so its effective order is always 4.
    #[test]
    fn effective_order_leaves_out_orders_without_ngrams() {
        let stats = BleuStats { hyp_len: 3, ref_len: 3, counts: [1, 1, 0, 0], totals: [3, 2, 1, 0] };
        let score = |smooth, order| stats.compute(smooth, order, Arithmetic::Double).score;
        assert_eq!(stats.precisions(Smoothing::Exp, Arithmetic::Double).1, 3);
        assert_eq!(score(Smoothing::Exp, Order::Effective), 43.67902323681494);
        assert_eq!(score(Smoothing::Exp, Order::Full), 0.0);
        assert_eq!(score(Smoothing::Floor(0.1), Order::Effective), 25.54364774645176);
        assert_eq!(score(Smoothing::AddK(1.0), Order::Effective), 57.73502691896257);
        assert_eq!(score(Smoothing::AddK(1.0), Order::Full), 57.73502691896257);
        assert_eq!(score(Smoothing::None, Order::Effective), 0.0);
    }

    /// sacreBLEU's `_compute_score_from_stats` on a float32 numpy array, as its bootstrap calls it: the
    /// precisions are float32 and the score differs from the double one in the 7th digit.
    #[test]
    fn single_arithmetic_is_sacrebleus_float32_path() {
        let stats = BleuStats { hyp_len: 37, ref_len: 39, counts: [35, 29, 23, 18], totals: [37, 33, 29, 25] };
        let single = |smooth| stats.compute(smooth, Order::Full, Arithmetic::Single);
        assert_eq!(single(Smoothing::Exp).score, 78.63715699993762);
        assert_eq!(stats.score(Smoothing::Exp).score, 78.63715644309458);
        assert_eq!(single(Smoothing::Exp).precisions, [94.59459686279297, 87.8787841796875, 79.31034851074219, 72.0]);
        assert_eq!(single(Smoothing::AddK(1.0)).score, 79.18070058474012);
        let zeros = BleuStats { counts: [35, 29, 0, 0], ..stats };
        let single = |smooth| zeros.compute(smooth, Order::Full, Arithmetic::Single).score;
        assert_eq!(single(Smoothing::Exp), 10.365857040091022);
        assert_eq!(single(Smoothing::Floor(0.1)), 5.512869564646412);
        assert_eq!(single(Smoothing::AddK(1.0)), 17.134764067553093);
    }

    #[test]
    fn smoothing_names_are_sacrebleus() {
        assert_eq!(Smoothing::from_name("exp", None).unwrap(), Smoothing::Exp);
        assert_eq!(Smoothing::from_name("none", None).unwrap(), Smoothing::None);
        assert_eq!(Smoothing::from_name("floor", None).unwrap(), Smoothing::Floor(0.1));
        assert_eq!(Smoothing::from_name("floor", Some(0.05)).unwrap(), Smoothing::Floor(0.05));
        assert_eq!(Smoothing::from_name("add-k", None).unwrap(), Smoothing::AddK(1.0));
        for name in Smoothing::NAMES {
            assert_eq!(Smoothing::from_name(name, None).unwrap().name(), name);
        }
        let err = Smoothing::from_name("laplace", None).unwrap_err().to_string();
        assert!(err.contains("laplace") && err.contains("none, floor, add-k, exp"), "{err}");
        assert!(Smoothing::from_name("exp", Some(0.1)).unwrap_err().to_string().contains("takes none"));
        assert!(Smoothing::from_name("floor", Some(-1.0)).is_err());
        assert!(Smoothing::from_name("add-k", Some(f64::NAN)).is_err());
    }

    #[test]
    fn sentence_bleu_scores_short_sentences_and_needs_a_reference() {
        let options = BleuOptions::default();
        // exp(ln 100) is 100.00000000000004, in sacreBLEU too.
        assert!((sentence_bleu("yes", &["yes"], &options).unwrap().score - 100.0).abs() < 1e-12);
        assert_eq!(sentence_bleu("", &["yes"], &options).unwrap().score, 0.0);
        assert!(sentence_bleu("yes", &[] as &[&str], &options).is_err());
    }

    #[test]
    fn length_buckets_partition_the_sentences() {
        let refs = [vec!["a", "a b c", "", "a b c d e f", "a b c d"]];
        let hyps = ["a", "a b c", "x", "a b c d e f", "a b x d"];
        let buckets = bleu_by_length(&hyps, &refs, &BleuOptions::default(), &[1, 3, 5]).unwrap();
        let summary: Vec<(String, usize)> = buckets.iter().map(|b| (b.label(), b.sentences)).collect();
        assert_eq!(summary, [("1-1".into(), 2), ("2-3".into(), 1), ("4-5".into(), 1), ("6+".into(), 1)]);
        assert!((buckets[3].bleu.as_ref().unwrap().score - 100.0).abs() < 1e-12);
        // Corpus BLEU, as sacreBLEU scores a subset: three words have no 4-gram, so no smoothing helps.
        assert_eq!(buckets[1].bleu.as_ref().unwrap().score, 0.0);
        let hyp_lens: usize = buckets.iter().map(|b| b.bleu.as_ref().unwrap().hyp_len).sum();
        assert_eq!(hyp_lens, 1 + 3 + 1 + 6 + 4);
        let empty = bleu_by_length(&hyps, &refs, &BleuOptions::default(), &[20]).unwrap();
        assert_eq!((empty[0].sentences, empty[1].sentences, empty[1].bleu.is_none()), (5, 0, true));
        for bad in [&[0, 5][..], &[10, 10], &[20, 10]] {
            assert!(bleu_by_length(&hyps, &refs, &BleuOptions::default(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_is_sacrebleus_line() {
        let stats = BleuStats { hyp_len: 37, ref_len: 39, counts: [35, 29, 23, 18], totals: [37, 33, 29, 25] };
        let score = stats.score(Smoothing::Exp);
        assert_eq!(
            score.to_string(),
            "BLEU = 78.64 94.6/87.9/79.3/72.0 (BP = 0.947 ratio = 0.949 hyp_len = 37 ref_len = 39)"
        );
        assert!(format!("{score:.4}").starts_with("BLEU = 78.6"));
    }

    #[test]
    fn tokenize_names_round_trip() {
        for t in [Tokenize::V13a, Tokenize::None] {
            assert_eq!(t.to_string().parse::<Tokenize>().unwrap(), t);
        }
        assert!("intl".parse::<Tokenize>().unwrap_err().to_string().contains("tokenize"));
    }

    /// Add-one smoothing by hand: precisions 3/4, (2+1)/(3+1), (1+1)/(2+1), (0+1)/(1+1), no brevity penalty.
    #[test]
    fn add_one_sentence_bleu_by_hand() {
        let options = BleuOptions { tokenize: Tokenize::None, lowercase: false, smooth: Smoothing::AddK(1.0) };
        let score = |h: &str, r: &str| sentence_bleu(h, &[r], &options).unwrap().score;
        let expected = 100.0 * (0.75f64 * 0.75 * (2.0 / 3.0) * 0.5).powf(0.25);
        assert!((score("a b c d", "a b c e") - expected).abs() < 1e-9);
        assert_eq!(score("x y", "a b c"), 0.0, "no unigram matches");
        assert!((score("a b c d", "a b c d") - 100.0).abs() < 1e-9);
    }
}
