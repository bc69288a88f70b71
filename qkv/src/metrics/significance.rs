//! Paired bootstrap resampling (Koehn, 2004, "Statistical Significance Tests for Machine Translation
//! Evaluation") of corpus BLEU, as sacreBLEU 2.x's `--paired-bs` runs it (`sacrebleu/significance.py`,
//! `_paired_bs_test` and `estimate_ci`), which replicates Moses' bootstrap-hypothesis-difference-significance.pl:
//!
//! - one matrix of `samples × n` sentence indices is drawn with replacement from numpy's
//!   `default_rng(seed).choice` ([`Pcg64`]); the baseline and every system are rescored on the same samples;
//! - a system's mean and 95% interval are the mean of its sample scores and half the distance between the
//!   sorted scores at `samples / 40` and `samples − samples / 40 − 1`;
//! - the p-value counts the samples whose |system − baseline| difference, minus the mean of those
//!   differences, exceeds the observed difference: p = (count + 1) / (samples + 1).
//!
//! The centring makes this a test of whether the observed difference could come from resampling noise around
//! zero. One consequence, sacreBLEU's too: a system identical to the baseline has all differences 0, no
//! sample exceeds 0, and p = 1 / (samples + 1) rather than 1.

use serde::Serialize;

use super::bleu::{sentence_stats, Arithmetic, BleuOptions, BleuScore, BleuStats, Order, Smoothing};
use super::pcg64::Pcg64;
use crate::{Error, Result};

/// How many resamples, from which seed. `Default` is sacreBLEU's: 1000 samples, `SACREBLEU_SEED=12345`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PairedBootstrap {
    /// Resamples of the test set (sacreBLEU: 1000).
    pub samples: usize,
    /// Seed of the resampling generator (sacreBLEU's `SACREBLEU_SEED`: 12345).
    pub seed: u64,
}

impl Default for PairedBootstrap {
    fn default() -> Self {
        PairedBootstrap { samples: 1000, seed: 12345 }
    }
}

/// One system's line of sacreBLEU's paired-bootstrap table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootstrapResult {
    /// BLEU of the whole test set.
    pub bleu: BleuScore,
    /// Mean BLEU over the resamples (sacreBLEU's μ).
    pub mean: f64,
    /// Half-width of the 95% interval of the resampled BLEU.
    pub ci: f64,
    /// `None` for the baseline.
    pub p_value: Option<f64>,
}

/// sacreBLEU's `μ ± 95% CI` cell: `42.12 (42.14 ± 3.08)` and, for a system, ` (p = 0.0390)*`, the star
/// marking p ≤ 0.05; `{:.3}` sets the digits of the scores (sacreBLEU's `--width`, 2 by default).
impl std::fmt::Display for BootstrapResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = f.precision().unwrap_or(2);
        write!(f, "{:.width$} ({:.width$} ± {:.width$})", self.bleu.score, self.mean, self.ci)?;
        match self.p_value {
            Some(p) => write!(f, " (p = {p:.4}){}", if p > 0.05 { "" } else { "*" }),
            None => Ok(()),
        }
    }
}

/// Paired bootstrap resampling of corpus BLEU: `systems[0]` is the baseline, every other system is compared
/// with it; each is a list of hypotheses line-aligned with every reference stream. Returns one result per
/// system, in order, the baseline's without a p-value.
///
/// Errors: fewer than two systems, no samples, or a system or stream whose length differs from the others'.
pub fn paired_bootstrap_bleu<S, H, T, R>(
    systems: &[S],
    references: &[T],
    options: &BleuOptions,
    test: &PairedBootstrap,
) -> Result<Vec<BootstrapResult>>
where
    S: AsRef<[H]>,
    H: AsRef<str>,
    T: AsRef<[R]>,
    R: AsRef<str>,
{
    let stats = systems
        .iter()
        .map(|system| sentence_stats(system.as_ref(), references, options))
        .collect::<Result<Vec<_>>>()?;
    paired_bootstrap(&stats, options.smooth, test)
}

/// [`paired_bootstrap_bleu`] on the systems' sentence statistics ([`sentence_stats`]).
pub fn paired_bootstrap(
    systems: &[Vec<BleuStats>],
    smooth: Smoothing,
    test: &PairedBootstrap,
) -> Result<Vec<BootstrapResult>> {
    if systems.len() < 2 {
        return Err(Error::config("systems", systems.len(), "a baseline and at least one system to compare"));
    }
    if test.samples == 0 {
        return Err(Error::config("bootstrap samples", 0, "at least 1"));
    }
    let n = systems[0].len();
    if n == 0 {
        return Err(Error::config("hypotheses", "0 sentences", "at least one sentence"));
    }
    if let Some((index, system)) = systems.iter().enumerate().find(|(_, s)| s.len() != n) {
        return Err(Error::config(
            "systems",
            format!("system {} has {} sentences", index + 1, system.len()),
            format!("as many as the baseline ({n})"),
        ));
    }
    let indices = Pcg64::new(test.seed).choice(n, test.samples * n);
    let scored: Vec<(BleuScore, Vec<f64>)> = systems
        .iter()
        .map(|stats| (stats.iter().sum::<BleuStats>().score(smooth), resampled_scores(stats, &indices, smooth)))
        .collect();
    let (baseline, baseline_samples) = &scored[0];
    Ok(scored
        .iter()
        .enumerate()
        .map(|(i, (bleu, samples))| {
            let (mean, ci) = estimate_ci(samples);
            let p_value = (i > 0).then(|| p_value(baseline.score, baseline_samples, bleu.score, samples));
            BootstrapResult { bleu: bleu.clone(), mean, ci, p_value }
        })
        .collect())
}

/// The corpus BLEU of each resample (rows of `indices`), with sacreBLEU's float32 precisions.
fn resampled_scores(stats: &[BleuStats], indices: &[usize], smooth: Smoothing) -> Vec<f64> {
    indices
        .chunks(stats.len())
        .map(|sample| {
            let total: BleuStats = sample.iter().map(|&i| &stats[i]).sum();
            total.compute(smooth, Order::Full, Arithmetic::Single).score
        })
        .collect()
}

/// sacreBLEU's `estimate_ci`: the mean and half the 95% interval of the sorted scores.
fn estimate_ci(scores: &[f64]) -> (f64, f64) {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let lower = sorted.len() / 40;
    let upper = sorted.len() - lower - 1;
    (numpy_mean(&sorted), 0.5 * (sorted[upper] - sorted[lower]))
}

/// sacreBLEU's `_compute_p_value` on the centred differences of `_paired_bs_test`.
fn p_value(baseline: f64, baseline_samples: &[f64], system: f64, system_samples: &[f64]) -> f64 {
    let observed = (baseline - system).abs();
    let diffs: Vec<f64> = system_samples.iter().zip(baseline_samples).map(|(s, b)| (s - b).abs()).collect();
    let mean = numpy_mean(&diffs);
    let exceed = diffs.iter().filter(|&&d| d - mean > observed).count();
    (exceed + 1) as f64 / (diffs.len() + 1) as f64
}

/// `np.mean` of a float64 array: numpy's pairwise sum divided by the length, to the last bit, so that the
/// p-value's comparisons fall as sacreBLEU's do.
fn numpy_mean(values: &[f64]) -> f64 {
    pairwise_sum(values) / values.len() as f64
}

/// numpy's `DOUBLE_pairwise_sum` (`_core/src/umath/loops_utils.h.src`): blocks of up to 128 summed with eight
/// interleaved accumulators, longer runs split in halves rounded down to a multiple of 8.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |sum, &x| sum + x)
    } else if n <= 128 {
        let mut r: [f64; 8] = a[..8].try_into().expect("eight values");
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(block) {
                *acc += x;
            }
        }
        let sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        a[whole..].iter().fold(sum, |sum, &x| sum + x)
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(words: usize, matched: usize) -> BleuStats {
        let totals = std::array::from_fn(|n| words.saturating_sub(n));
        let counts = std::array::from_fn(|n| matched.saturating_sub(n));
        BleuStats { hyp_len: words, ref_len: words, counts, totals }
    }

    fn corpus(shift: usize) -> Vec<BleuStats> {
        (0..60).map(|i| stats(8 + i % 13, (3 + (i * 7 + shift) % 9).min(8 + i % 13))).collect()
    }

    #[test]
    fn pairwise_sum_orders_additions_as_numpy_does() {
        let values: Vec<f64> = (0..1000).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        // The eight-accumulator block order, checked by hand on 19 values: ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)),
        // then the last three in sequence.
        let small = &values[..19];
        let r: Vec<f64> = (0..8).map(|j| small[j] + small[j + 8]).collect();
        let expected =
            ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])) + small[16] + small[17] + small[18];
        assert_eq!(pairwise_sum(small), expected);
        assert_eq!(pairwise_sum(&values), pairwise_sum(&values[..496]) + pairwise_sum(&values[496..]));
        assert!((pairwise_sum(&values) - values.iter().sum::<f64>()).abs() < 1e-12);
        assert_eq!(pairwise_sum(&[]), 0.0);
    }

    #[test]
    fn interval_is_half_the_central_95_percent_range() {
        let scores: Vec<f64> = (0..80).rev().map(f64::from).collect();
        // 80 samples: the sorted scores at 2 and 77.
        assert_eq!(estimate_ci(&scores), (39.5, 0.5 * (77.0 - 2.0)));
        assert_eq!(estimate_ci(&[5.0]), (5.0, 0.0));
    }

    /// sacreBLEU's convention, not p ≈ 1: every resampled difference is 0, none exceeds the observed 0.
    #[test]
    fn a_system_identical_to_the_baseline_gets_the_smallest_p() {
        let test = PairedBootstrap { samples: 200, seed: 3 };
        let results = paired_bootstrap(&[corpus(0), corpus(0)], Smoothing::Exp, &test).unwrap();
        assert_eq!(results[1].p_value, Some(1.0 / 201.0));
        assert_eq!((results[0].mean, results[0].ci), (results[1].mean, results[1].ci));
        assert_eq!(results[0].p_value, None);
    }

    #[test]
    fn the_test_is_symmetric_in_baseline_and_system() {
        let test = PairedBootstrap { samples: 300, seed: 12345 };
        let forward = paired_bootstrap(&[corpus(0), corpus(4)], Smoothing::Exp, &test).unwrap();
        let backward = paired_bootstrap(&[corpus(4), corpus(0)], Smoothing::Exp, &test).unwrap();
        assert_eq!(forward[1].p_value, backward[1].p_value);
        assert_eq!((forward[0].mean, forward[0].ci), (backward[1].mean, backward[1].ci));
        assert_ne!(forward[0].bleu.score, forward[1].bleu.score);
    }

    #[test]
    fn a_large_difference_is_significant_and_a_small_one_is_not() {
        let test = PairedBootstrap::default();
        let base = corpus(0);
        let better: Vec<BleuStats> = base.iter().map(|s| stats(s.hyp_len, s.hyp_len)).collect();
        // One sentence of sixty gains one unigram match: the difference exceeds the observed one only in the
        // samples that draw that sentence three times or more (about one in seven).
        let mut nudged = base.clone();
        nudged[10].counts[0] += 1;
        let results = paired_bootstrap(&[base, better, nudged], Smoothing::Exp, &test).unwrap();
        assert_eq!(results[1].p_value, Some(1.0 / 1001.0));
        assert!(results[2].p_value.unwrap() > 0.05, "{:?}", results[2].p_value);
        assert!(results[1].mean > results[0].mean + 10.0);
        // The interval holds the full-set score.
        for r in &results {
            assert!((r.bleu.score - r.mean).abs() <= r.ci + 1e-9, "{r}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let test = PairedBootstrap::default();
        assert!(paired_bootstrap(&[corpus(0)], Smoothing::Exp, &test).unwrap_err().to_string().contains("baseline"));
        let short = corpus(0)[..10].to_vec();
        let err = paired_bootstrap(&[corpus(0), short], Smoothing::Exp, &test).unwrap_err().to_string();
        assert!(err.contains("system 2 has 10 sentences") && err.contains("60"), "{err}");
        let none = PairedBootstrap { samples: 0, seed: 1 };
        assert!(paired_bootstrap(&[corpus(0), corpus(1)], Smoothing::Exp, &none).is_err());
        assert!(paired_bootstrap(&[vec![], vec![]], Smoothing::Exp, &test).is_err());
    }

    #[test]
    fn cells_print_as_sacrebleus() {
        let bleu = stats(10, 6).score(Smoothing::Exp);
        let baseline = BootstrapResult { bleu: bleu.clone(), mean: 42.144, ci: 3.0849, p_value: None };
        let system = BootstrapResult { p_value: Some(0.03896), ..baseline.clone() };
        let score = format!("{:.2}", bleu.score);
        assert_eq!(baseline.to_string(), format!("{score} (42.14 ± 3.08)"));
        assert_eq!(system.to_string(), format!("{score} (42.14 ± 3.08) (p = 0.0390)*"));
        let unsure = BootstrapResult { p_value: Some(0.1219), ..baseline };
        assert!(unsure.to_string().ends_with("(p = 0.1219)"));
    }
}
