//! Parity of qkv's BLEU and chrF with sacreBLEU, on the committed fixture from
//! tools/fixtures/make_metric_fixtures.py (qkv/tests/fixtures/metrics.json).
//!
//! Tolerances: BLEU and chrF scores within 0.01 (the last printed digit), precisions, brevity penalty and ratio
//! within 1e-9; lengths, n-gram counts and the printed lines exactly.

use std::path::Path;

use qkv::metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions, Smoothing, Tokenize};
use serde::Deserialize;

const SCORE_TOL: f64 = 0.01;
const STAT_TOL: f64 = 1e-9;

#[derive(Deserialize)]
struct Fixture {
    generator: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    hypotheses: Vec<String>,
    references: Vec<Vec<String>>,
    options: Options,
    expected: Expected,
}

#[derive(Deserialize)]
struct Options {
    bleu: SacreBleuOptions,
    chrf: SacreChrfOptions,
}

/// The arguments of sacreBLEU's `BLEU(...)`.
#[derive(Deserialize)]
struct SacreBleuOptions {
    tokenize: String,
    lowercase: bool,
    smooth_method: String,
    smooth_value: Option<f64>,
}

/// The arguments of sacreBLEU's `CHRF(...)`.
#[derive(Deserialize)]
struct SacreChrfOptions {
    char_order: usize,
    word_order: usize,
    beta: f64,
    lowercase: bool,
    whitespace: bool,
    eps_smoothing: bool,
}

#[derive(Deserialize)]
struct Expected {
    bleu: ExpectedBleu,
    chrf: ExpectedChrf,
}

#[derive(Deserialize)]
struct ExpectedBleu {
    score: f64,
    precisions: [f64; 4],
    bp: f64,
    ratio: f64,
    hyp_len: usize,
    ref_len: usize,
    counts: [f64; 4],
    totals: [f64; 4],
    line: String,
}

#[derive(Deserialize)]
struct ExpectedChrf {
    score: f64,
    line: String,
}

impl SacreBleuOptions {
    fn to_qkv(&self) -> BleuOptions {
        let smooth = match (self.smooth_method.as_str(), self.smooth_value) {
            ("exp", _) => Smoothing::Exp,
            ("none", _) => Smoothing::None,
            ("floor", value) => Smoothing::Floor(value.unwrap_or(0.1)),
            ("add-k", value) => Smoothing::AddK(value.unwrap_or(1.0)),
            (other, _) => panic!("unknown smooth_method {other}"),
        };
        let tokenize: Tokenize = self.tokenize.parse().unwrap();
        BleuOptions { tokenize, lowercase: self.lowercase, smooth }
    }

    /// sacreBLEU's add-k adds k to the reported counts and totals of orders 2..4; qkv reports them unsmoothed.
    fn reported_offset(&self, order: usize) -> f64 {
        match self.smooth_method.as_str() {
            "add-k" if order > 0 => self.smooth_value.unwrap_or(1.0),
            _ => 0.0,
        }
    }
}

impl SacreChrfOptions {
    fn to_qkv(&self) -> ChrfOptions {
        ChrfOptions {
            char_order: self.char_order,
            word_order: self.word_order,
            beta: self.beta,
            lowercase: self.lowercase,
            whitespace: self.whitespace,
            eps_smoothing: self.eps_smoothing,
        }
    }
}

fn load() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_close(case: &str, what: &str, ours: f64, theirs: f64, tol: f64) {
    assert!((ours - theirs).abs() <= tol, "{case}: {what} = {ours}, sacreBLEU {theirs} (tolerance {tol})");
}

#[test]
fn bleu_matches_sacrebleu() {
    let fixture = load();
    for case in &fixture.cases {
        let name = case.name.as_str();
        let (expected, options) = (&case.expected.bleu, &case.options.bleu);
        let ours = corpus_bleu(&case.hypotheses, &case.references, &options.to_qkv()).unwrap();
        assert_close(name, "score", ours.score, expected.score, SCORE_TOL);
        for n in 0..4 {
            assert_close(name, &format!("precision {}", n + 1), ours.precisions[n], expected.precisions[n], STAT_TOL);
            let offset = options.reported_offset(n);
            assert_eq!(ours.counts[n] as f64 + offset, expected.counts[n], "{name}: counts");
            assert_eq!(ours.totals[n] as f64 + offset, expected.totals[n], "{name}: totals");
        }
        assert_close(name, "bp", ours.bp, expected.bp, STAT_TOL);
        assert_close(name, "ratio", ours.ratio, expected.ratio, STAT_TOL);
        assert_eq!((ours.hyp_len, ours.ref_len), (expected.hyp_len, expected.ref_len), "{name}: lengths");
        assert_eq!(ours.to_string(), expected.line, "{name}: printed line ({})", fixture.generator);
    }
}

#[test]
fn chrf_matches_sacrebleu() {
    let fixture = load();
    for case in &fixture.cases {
        let expected = &case.expected.chrf;
        let ours = corpus_chrf(&case.hypotheses, &case.references, &case.options.chrf.to_qkv()).unwrap();
        assert_close(&case.name, "chrF", ours.score, expected.score, SCORE_TOL);
        assert_eq!(ours.to_string(), expected.line, "{}: printed line ({})", case.name, fixture.generator);
    }
}

#[test]
fn fixture_covers_the_required_cases() {
    let fixture = load();
    let has = |f: &dyn Fn(&Case) -> bool| fixture.cases.iter().any(f);
    assert!(has(&|c| c.hypotheses.iter().any(String::is_empty)), "an empty hypothesis line");
    assert!(has(&|c| c.references.len() == 2), "two reference streams");
    assert!(has(&|c| c.options.bleu.tokenize == "none"), "tokenize none");
    assert!(has(&|c| c.options.bleu.lowercase), "lowercase");
    assert!(has(&|c| c.options.chrf.word_order == 2), "chrF++");
    assert!(has(&|c| c.expected.bleu.bp < 1.0 && c.expected.bleu.counts[0] > 0.0), "a brevity penalty");
    assert!(has(&|c| c.hypotheses == c.references[0]), "a perfect match");
    assert!(has(&|c| c.expected.bleu.counts[3] == 0.0 && c.expected.bleu.counts[2] > 0.0), "no matching 4-grams");
    assert!(fixture.cases.iter().map(|c| c.hypotheses.len()).max() >= Some(30), "a realistic corpus");
}

#[test]
fn mismatched_streams_are_errors_not_panics() {
    let hyps = ["a b c", "d e f"];
    let short = [vec!["a b c"]];
    let err = corpus_bleu(&hyps, &short, &BleuOptions::default()).unwrap_err().to_string();
    assert!(err.contains("references") && err.contains("stream 1 has 1 sentences"), "{err}");
    assert!(corpus_chrf(&hyps, &short, &ChrfOptions::default()).is_err());
    let no_streams: [Vec<&str>; 0] = [];
    assert!(corpus_bleu(&hyps, &no_streams, &BleuOptions::default()).is_err());
    let no_hyps: [&str; 0] = [];
    assert!(corpus_bleu(&no_hyps, &[Vec::<&str>::new()], &BleuOptions::default()).is_err());
}
