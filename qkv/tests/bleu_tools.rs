//! Sentence BLEU, paired bootstrap resampling and BLEU by reference length against sacreBLEU 2.6, and the
//! generator behind the bootstrap against numpy, on the committed fixture from
//! tools/fixtures/make_bleu_tools_fixtures.py (qkv/tests/fixtures/bleu_tools.json).
//!
//! Tolerances: scores, means, intervals, precisions and brevity penalties within 1e-12 relative (they agree
//! to the bit or to 1 ulp, which serde_json's reading of the decimals can account for); the printed lines and table cells, the p-values' counts, the lengths, the
//! bucket counts and every random draw exactly.

use std::collections::HashMap;
use std::path::Path;

use qkv::metrics::pcg64::Pcg64;
use qkv::metrics::{bleu_by_length, paired_bootstrap_bleu, sentence_bleu, BleuOptions, PairedBootstrap, Smoothing};
use serde::Deserialize;

const REL_TOL: f64 = 1e-12;

#[derive(Deserialize)]
struct Fixture {
    generator: String,
    pcg64: Draws,
    sentence_bleu: Vec<SentenceCase>,
    references: Vec<String>,
    systems: HashMap<String, Vec<String>>,
    aliases: HashMap<String, String>,
    paired_bs: Vec<PairedRun>,
    by_length: Vec<ByLength>,
}

#[derive(Deserialize)]
struct Draws {
    seed: u64,
    next_uint64: Vec<u64>,
    next_uint32: Vec<u32>,
    choice_200_by_3x200: Vec<usize>,
    then_integers_below_1e12: Vec<u64>,
    choice_7_seed_0: Vec<usize>,
}

#[derive(Deserialize)]
struct SentenceCase {
    hypothesis: String,
    references: Vec<String>,
    scores: Vec<SentenceScore>,
}

#[derive(Deserialize)]
struct SentenceScore {
    smooth_method: String,
    smooth_value: Option<f64>,
    score: f64,
    precisions: [f64; 4],
    bp: f64,
    hyp_len: usize,
    ref_len: usize,
    line: String,
}

#[derive(Deserialize)]
struct PairedRun {
    samples: usize,
    seed: u64,
    systems: Vec<String>,
    sacrebleu: Vec<SacreBleuRow>,
    printed: Vec<String>,
}

#[derive(Deserialize)]
struct SacreBleuRow {
    #[serde(rename = "BLEU")]
    bleu: SacreBleuResult,
}

#[derive(Deserialize)]
struct SacreBleuResult {
    score: f64,
    mean: f64,
    ci: f64,
    p_value: Option<f64>,
}

#[derive(Deserialize)]
struct ByLength {
    system: String,
    bounds: Vec<usize>,
    buckets: Vec<Bucket>,
}

#[derive(Deserialize)]
struct Bucket {
    min: usize,
    max: Option<usize>,
    sentences: usize,
    score: Option<f64>,
    line: Option<String>,
}

fn load() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bleu_tools.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_rel(what: &str, ours: f64, theirs: f64) {
    let tol = REL_TOL * theirs.abs().max(1e-300);
    assert!((ours - theirs).abs() <= tol, "{what}: {ours}, sacreBLEU {theirs} (relative tolerance {REL_TOL})");
}

impl Fixture {
    fn system(&self, name: &str) -> &[String] {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        &self.systems[name]
    }
}

#[test]
fn pcg64_draws_match_numpy() {
    let draws = load().pcg64;
    let mut rng = Pcg64::new(draws.seed);
    let ours: Vec<u64> = (0..draws.next_uint64.len()).map(|_| rng.next_u64()).collect();
    assert_eq!(ours, draws.next_uint64, "bit_generator.random_raw()");
    let mut rng = Pcg64::new(draws.seed);
    let ours: Vec<u32> = (0..draws.next_uint32.len()).map(|_| rng.next_u32()).collect();
    assert_eq!(ours, draws.next_uint32, "integers(0, 2**32, dtype=np.uint64)");
    let mut rng = Pcg64::new(draws.seed);
    assert_eq!(rng.choice(200, 3 * 200), draws.choice_200_by_3x200, "choice(200, size=(3, 200))");
    let ours: Vec<u64> = (0..draws.then_integers_below_1e12.len()).map(|_| rng.below(1_000_000_000_000)).collect();
    assert_eq!(ours, draws.then_integers_below_1e12, "then integers(0, 10**12)");
    assert_eq!(Pcg64::new(0).choice(7, 20), draws.choice_7_seed_0, "default_rng(0).choice(7, size=20)");
}

#[test]
fn sentence_bleu_matches_sacrebleu() {
    let fixture = load();
    for case in &fixture.sentence_bleu {
        for expected in &case.scores {
            let what = format!("{:?} / {} {:?}", case.hypothesis, expected.smooth_method, expected.smooth_value);
            let smooth = Smoothing::from_name(&expected.smooth_method, expected.smooth_value).unwrap();
            let options = BleuOptions { smooth, ..BleuOptions::default() };
            let ours = sentence_bleu(&case.hypothesis, &case.references, &options).unwrap();
            assert_rel(&format!("{what}: score"), ours.score, expected.score);
            for n in 0..4 {
                assert_rel(&format!("{what}: precision {}", n + 1), ours.precisions[n], expected.precisions[n]);
            }
            assert_rel(&format!("{what}: bp"), ours.bp, expected.bp);
            assert_eq!((ours.hyp_len, ours.ref_len), (expected.hyp_len, expected.ref_len), "{what}: lengths");
            assert_eq!(ours.to_string(), expected.line, "{what}: printed line ({})", fixture.generator);
        }
    }
}

#[test]
fn paired_bootstrap_matches_sacrebleu() {
    let fixture = load();
    for run in &fixture.paired_bs {
        let systems: Vec<&[String]> = run.systems.iter().map(|name| fixture.system(name)).collect();
        let test = PairedBootstrap { samples: run.samples, seed: run.seed };
        let ours = paired_bootstrap_bleu(&systems, &[&fixture.references], &BleuOptions::default(), &test).unwrap();
        assert_eq!(ours.len(), run.sacrebleu.len());
        for ((name, ours), (theirs, printed)) in
            run.systems.iter().zip(&ours).zip(run.sacrebleu.iter().zip(&run.printed))
        {
            let what = format!("{name} ({} samples, seed {})", run.samples, run.seed);
            assert_eq!(ours.to_string(), *printed, "{what}: the printed cell ({})", fixture.generator);
            // p = (count + 1) / (samples + 1): the same count (serde_json may read the decimal 1 ulp off).
            let count = |p: Option<f64>| p.map(|p| (p * (run.samples + 1) as f64).round() as usize);
            assert_eq!(count(ours.p_value), count(theirs.bleu.p_value), "{what}: p-value");
            assert_rel(&format!("{what}: score"), ours.bleu.score, theirs.bleu.score);
            assert_rel(&format!("{what}: mean"), ours.mean, theirs.bleu.mean);
            assert_rel(&format!("{what}: ci"), ours.ci, theirs.bleu.ci);
        }
    }
}

#[test]
fn bleu_by_length_matches_sacrebleu_on_each_bucket() {
    let fixture = load();
    for expected in &fixture.by_length {
        let hyps = fixture.system(&expected.system);
        let ours = bleu_by_length(hyps, &[&fixture.references], &BleuOptions::default(), &expected.bounds).unwrap();
        assert_eq!(ours.len(), expected.buckets.len(), "{}", expected.system);
        for (ours, theirs) in ours.iter().zip(&expected.buckets) {
            let what = format!("{} bucket {}", expected.system, ours.label());
            assert_eq!((ours.min, ours.max, ours.sentences), (theirs.min, theirs.max, theirs.sentences), "{what}");
            match (&ours.bleu, theirs.score) {
                (Some(bleu), Some(score)) => {
                    assert_rel(&format!("{what}: score"), bleu.score, score);
                    assert_eq!(Some(bleu.to_string()).as_ref(), theirs.line.as_ref(), "{what}: printed line");
                }
                (None, None) => {}
                (ours, theirs) => panic!("{what}: ours {ours:?}, sacreBLEU {theirs:?}"),
            }
        }
        assert_eq!(ours.iter().map(|b| b.sentences).sum::<usize>(), hyps.len());
    }
}

#[test]
fn fixture_covers_the_required_cases() {
    let fixture = load();
    let cases = &fixture.sentence_bleu;
    assert!(cases.len() >= 50, "about 50 sentence pairs");
    assert!(cases.iter().any(|c| c.hypothesis.is_empty()), "an empty hypothesis");
    assert!(cases.iter().any(|c| c.references.iter().any(String::is_empty)), "an empty reference");
    assert!(cases.iter().any(|c| c.references.len() >= 2), "several references");
    assert!(cases.iter().any(|c| !c.hypothesis.is_empty() && c.scores.iter().all(|s| s.score == 0.0)), "no match");
    assert!(cases.iter().any(|c| c.hypothesis.split_whitespace().count() == 1), "a one-word hypothesis");
    let methods: Vec<&str> = cases[0].scores.iter().map(|s| s.smooth_method.as_str()).collect();
    for name in Smoothing::NAMES {
        assert!(methods.contains(&name), "smoothing {name}");
    }
    assert!(fixture.references.len() >= 200, "a realistic test set");
    let main = &fixture.paired_bs[0];
    assert_eq!((main.samples, main.seed, main.systems.len()), (1000, 12345, 3), "sacreBLEU's defaults, 2 systems");
    let p: Vec<f64> =
        fixture.paired_bs.iter().flat_map(|r| r.sacrebleu.iter().filter_map(|x| x.bleu.p_value)).collect();
    assert!(p.iter().any(|&p| p > 0.05) && p.iter().any(|&p| p <= 0.05), "significant and not: {p:?}");
    let copies =
        fixture.paired_bs.iter().any(|r| r.systems.iter().any(|s| fixture.aliases.get(s) == Some(&r.systems[0])));
    assert!(copies, "a system identical to its baseline");
}
