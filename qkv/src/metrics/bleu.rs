//! Corpus BLEU (Papineni et al., 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation") as
//! sacreBLEU 2.x computes it (`sacrebleu/metrics/bleu.py`, Post, 2018, "A Call for Clarity in Reporting BLEU
//! Scores"):
//!
//! - each sentence is lowercased (optionally), stripped of trailing whitespace and tokenized (13a by default);
//! - n-grams of orders 1..4 are clipped by their largest count in any one reference of the sentence, and the
//!   reference length is the one closest to the hypothesis length (the shorter one on a tie);
//! - matches, totals and lengths are summed over the corpus before the precisions, the brevity penalty and the
//!   geometric mean are taken, so the corpus score is not an average of sentence scores.

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

/// How BLEU is computed. `Default` is sacreBLEU's default: 13a tokens, case-sensitive, exponential smoothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BleuOptions {
    pub tokenize: Tokenize,
    /// Lowercase hypotheses and references first (case-insensitive BLEU).
    pub lowercase: bool,
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
    check_streams(hypotheses.len(), references)?;
    let mut corpus = Stats::default();
    for (index, hypothesis) in hypotheses.iter().enumerate() {
        let hypothesis = preprocess(hypothesis.as_ref(), options);
        let refs: Vec<String> =
            references.iter().map(|stream| preprocess(stream.as_ref()[index].as_ref(), options)).collect();
        corpus.add(&segment_stats(&hypothesis, &refs));
    }
    Ok(corpus.score(options.smooth))
}

/// Sufficient statistics of BLEU: they add up over sentences.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Stats {
    hyp_len: usize,
    ref_len: usize,
    counts: [usize; MAX_ORDER],
    totals: [usize; MAX_ORDER],
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.hyp_len += other.hyp_len;
        self.ref_len += other.ref_len;
        for n in 0..MAX_ORDER {
            self.counts[n] += other.counts[n];
            self.totals[n] += other.totals[n];
        }
    }

    /// sacreBLEU's `compute_bleu`, operation for operation so that the printed digits agree.
    fn score(&self, smooth: Smoothing) -> BleuScore {
        let bp = brevity_penalty(self.hyp_len, self.ref_len);
        let ratio = if self.ref_len > 0 { self.hyp_len as f64 / self.ref_len as f64 } else { 0.0 };
        let nothing_matched = self.counts.iter().all(|&c| c == 0);
        let precisions = if nothing_matched { [0.0; MAX_ORDER] } else { self.precisions(smooth) };
        let score = if nothing_matched {
            0.0
        } else {
            let log_sum: f64 = precisions.iter().map(|&p| floored_ln(p)).sum();
            bp * (log_sum / MAX_ORDER as f64).exp()
        };
        let Stats { hyp_len, ref_len, counts, totals } = *self;
        BleuScore { score, precisions, bp, ratio, hyp_len, ref_len, counts, totals }
    }

    /// Smoothed precisions in percent. Orders after the first with no hypothesis n-grams stay 0.
    fn precisions(&self, smooth: Smoothing) -> [f64; MAX_ORDER] {
        let mut precisions = [0.0; MAX_ORDER];
        let mut exp_denominator = 1.0;
        for (n, precision) in precisions.iter_mut().enumerate() {
            let (mut correct, mut total) = (self.counts[n] as f64, self.totals[n] as f64);
            if let Smoothing::AddK(k) = smooth {
                if n > 0 {
                    correct += k;
                    total += k;
                }
            }
            if total == 0.0 {
                break;
            }
            *precision = match (correct == 0.0, smooth) {
                (false, _) => 100.0 * correct / total,
                (true, Smoothing::Exp) => {
                    exp_denominator *= 2.0;
                    100.0 / (exp_denominator * total)
                }
                (true, Smoothing::Floor(value)) => 100.0 * value / total,
                (true, _) => 0.0,
            };
        }
        precisions
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
fn segment_stats(hypothesis: &str, references: &[String]) -> Stats {
    let hyp_words: Vec<&str> = python_split(hypothesis).collect();
    let ref_words: Vec<Vec<&str>> = references.iter().map(|r| python_split(r).collect()).collect();
    let mut clip: HashMap<&[&str], usize> = HashMap::new();
    for words in &ref_words {
        for (ngram, count) in count_ngrams(words) {
            let best = clip.entry(ngram).or_insert(0);
            *best = (*best).max(count);
        }
    }
    let mut stats = Stats {
        hyp_len: hyp_words.len(),
        ref_len: closest_ref_len(hyp_words.len(), ref_words.iter().map(Vec::len)),
        ..Stats::default()
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

// MERGE NOTE (scheduled-sampling branch): a private stand-in for the sentence BLEU the bleu-tools branch adds
// (sacreBLEU's `sentence_bleu` with its smoothing methods). When that lands, call it with add-k = 1 smoothing
// instead and delete this function.
/// Sentence BLEU in 0..=100 of one hypothesis against one reference, both already split into words by
/// whitespace (subword ids written as numbers, say), with add-one smoothing of orders 2..4 (Chen and Cherry's
/// method 2, sacreBLEU's `add-k` with k = 1), as Zhang et al. (ACL 2019) rank their sentence-oracle candidates.
pub(crate) fn sentence_bleu_add_one(hypothesis: &str, reference: &str) -> f64 {
    segment_stats(hypothesis, &[reference.to_string()]).score(Smoothing::AddK(1.0)).score
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
        let stats = Stats { hyp_len: 4, ref_len: 4, counts: [2, 0, 0, 0], totals: [4, 3, 2, 1] };
        let p = stats.precisions(Smoothing::Exp);
        assert_eq!(p, [50.0, 16.666666666666668, 12.5, 12.5]);
        assert_eq!(stats.precisions(Smoothing::None), [50.0, 0.0, 0.0, 0.0]);
        assert_eq!(stats.score(Smoothing::None).score, 0.0);
        assert_eq!(stats.precisions(Smoothing::Floor(0.1)), [50.0, 3.3333333333333335, 5.0, 10.0]);
        assert_eq!(stats.precisions(Smoothing::AddK(1.0)), [50.0, 25.0, 33.333333333333336, 50.0]);
    }

    #[test]
    fn display_is_sacrebleus_line() {
        let stats = Stats { hyp_len: 37, ref_len: 39, counts: [35, 29, 23, 18], totals: [37, 33, 29, 25] };
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
    fn sentence_bleu_add_one_smooths_the_higher_orders() {
        let expected = 100.0 * (0.75f64 * 0.75 * (2.0 / 3.0) * 0.5).powf(0.25);
        assert!((sentence_bleu_add_one("a b c d", "a b c e") - expected).abs() < 1e-9);
        assert_eq!(sentence_bleu_add_one("x y", "a b c"), 0.0, "no unigram matches");
        assert!((sentence_bleu_add_one("a b c d", "a b c d") - 100.0).abs() < 1e-9);
    }
}
