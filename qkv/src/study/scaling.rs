//! Why divide by √d_k (§3.2.1)? For q and k with independent N(0, 1) components, q·k has variance d_k, so the
//! logits of the softmax grow with the head width, the softmax saturates on one key and its gradient vanishes.
//! (a) measures exactly that over many random draws; (b) trains the same model with and without the factor at
//! three head widths; (c) trains the two alternatives the notes name: T5's (no factor, W_Q initialised
//! 1/√d_k smaller) and a LayerNorm on q and k in place of the factor (QK-norm).

use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::nn::Score;
use crate::plot::{Chart, Point, Series};
use crate::rng::Rng;
use crate::Result;

/// Head widths of the numerical experiment (the notes' list).
const WIDTHS: [usize; 5] = [16, 64, 100, 256, 1000];
/// Keys each query is scored against.
const KEYS: usize = 50;
/// Head widths the models are trained at.
const TRAINED_WIDTHS: [usize; 3] = [16, 64, 256];
/// The scores trained: the paper's, none, and the two alternatives.
pub const SCORES: [(Score, &str); 4] =
    [(Score::ScaledDot, "q·k/√d_k"), (Score::Dot, "q·k"), (Score::T5, "q·k, T5 init"), (Score::QkNorm, "QK-norm")];
/// "Has learned the task": the training loss below this (nats per token).
const LEARNED_LOSS: f64 = 0.1;
/// Below this mean held-out exact match (%) a variant is said to fail the task.
const FAILED_PERCENT: f64 = 50.0;

/// Answers "why divide by √d_k?" (random draws, trained head widths, T5's and QK-norm's alternatives) as the
/// report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let draws = if study.quick() { 50 } else { 4000 };
    study.say(&format!("scaling: {draws} random draws of q and {KEYS} keys at d = {WIDTHS:?}"));
    let numeric: Vec<Numeric> = WIDTHS.iter().map(|&d| Numeric::measure(d, draws, 0x5ca1e)).collect();
    let mut trained = Vec::new();
    for &d_k in &TRAINED_WIDTHS {
        for &(score, name) in &SCORES {
            let config = crate::train::synthetic::SyntheticConfig {
                attention_score: score,
                head_dim: Some(d_k),
                ..study.task()
            };
            let runs = study.train_seeds(&format!("scaling: {name}, d_k = {d_k}"), &config)?;
            trained.push((d_k, score, name, runs));
        }
    }
    figure_numeric(study, &numeric)?;
    figure_trained(study, &trained)?;
    Ok(section(study, &numeric, &trained, draws))
}

/// The softmax over 50 scores of random q, k at one width, with and without the factor.
#[derive(Debug, Clone, serde::Serialize)]
struct Numeric {
    d: usize,
    /// The sample variance of q·k over every draw and key (theory: d).
    variance: f64,
    unscaled: Softmax,
    scaled: Softmax,
}

/// Percentiles over draws of a softmax's largest Jacobian entry and its entropy.
#[derive(Debug, Clone, serde::Serialize)]
struct Softmax {
    /// max over i, j of |∂pᵢ/∂xⱼ|: median, 5th and 95th percentile.
    max_gradient: [f64; 3],
    /// Entropy in nats (ln 50 = 3.91 is uniform): median, 5th, 95th percentile.
    entropy: [f64; 3],
    /// Draws whose largest weight exceeds 0.99: the softmax has become an argmax.
    saturated: f64,
}

impl Numeric {
    fn measure(d: usize, draws: usize, seed: u64) -> Self {
        let mut rng = Rng::seed_from_u64(seed ^ d as u64);
        let mut normal = move || -> f64 { StandardNormal.sample(&mut rng) };
        let (mut scores, mut unscaled, mut scaled) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..draws {
            let q: Vec<f64> = (0..d).map(|_| normal()).collect();
            let x: Vec<f64> = (0..KEYS).map(|_| (0..d).map(|i| q[i] * normal()).sum::<f64>()).collect();
            let factor = 1.0 / (d as f64).sqrt();
            unscaled.push(softmax_stats(&x));
            scaled.push(softmax_stats(&x.iter().map(|v| v * factor).collect::<Vec<_>>()));
            scores.extend(x);
        }
        let (_, std) = mean_std(&scores);
        Self { d, variance: std * std, unscaled: Softmax::of(&unscaled), scaled: Softmax::of(&scaled) }
    }
}

impl Softmax {
    fn of(draws: &[(f64, f64, f64)]) -> Self {
        let column = |f: fn(&(f64, f64, f64)) -> f64| percentiles(draws.iter().map(f).collect());
        let saturated = draws.iter().filter(|d| d.2 > 0.99).count() as f64 / draws.len().max(1) as f64;
        Self { max_gradient: column(|d| d.0), entropy: column(|d| d.1), saturated }
    }
}

/// (max |∂p/∂x|, entropy, largest p) of softmax(x). The Jacobian is pᵢ(δᵢⱼ − pⱼ): its largest entry is either
/// a diagonal pᵢ(1 − pᵢ) or the product of the two largest weights.
fn softmax_stats(x: &[f64]) -> (f64, f64, f64) {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|v| v / sum).collect();
    let entropy = p.iter().filter(|&&v| v > 0.0).map(|v| -v * v.ln()).sum();
    p.sort_by(|a, b| b.total_cmp(a));
    let diagonal = p.iter().map(|v| v * (1.0 - v)).fold(0.0, f64::max);
    (diagonal.max(p[0] * p.get(1).copied().unwrap_or(0.0)), entropy, p[0])
}

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v.get(((v.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN);
    [at(0.5), at(0.05), at(0.95)]
}

type Trained<'a> = (usize, Score, &'a str, Vec<RunResult>);

fn losses(runs: &[RunResult]) -> Vec<f64> {
    runs.iter().map(|r| r.final_loss).collect()
}

/// "steps until the loss is below 0.1": the mean over the seeds that got there, and how many did.
fn speed(runs: &[RunResult]) -> String {
    let reached: Vec<f64> = runs.iter().filter_map(|r| r.steps_to_loss(LEARNED_LOSS)).map(|s| s as f64).collect();
    if reached.is_empty() {
        return format!("never (0/{})", runs.len());
    }
    format!("{:.0} ({}/{})", mean_std(&reached).0, reached.len(), runs.len())
}

fn section(study: &Study, numeric: &[Numeric], trained: &[Trained], draws: usize) -> Section {
    let mut a = Table::new(
        format!("(a) softmax over {KEYS} scores of random q, k with N(0, 1) components, {draws} draws per width: median (5th – 95th percentile)"),
        &["d_k", "var(q·k)", "max |∂p/∂x| unscaled", "max |∂p/∂x| scaled", "entropy unscaled (nats)", "entropy scaled", "saturated unscaled", "saturated scaled"],
    );
    let range = |v: [f64; 3], digits: usize| format!("{:.digits$} ({:.digits$} – {:.digits$})", v[0], v[1], v[2]);
    for n in numeric {
        a.row(vec![
            n.d.to_string(),
            format!("{:.1}", n.variance),
            range(n.unscaled.max_gradient, 3),
            range(n.scaled.max_gradient, 3),
            range(n.unscaled.entropy, 2),
            range(n.scaled.entropy, 2),
            format!("{:.0}%", 100.0 * n.unscaled.saturated),
            format!("{:.0}%", 100.0 * n.scaled.saturated),
        ]);
    }
    let seeds = study.seeds();
    let mut b = Table::new(
        format!("(b, c) reversal task, {} seeds each: held-out exact match, final training loss, steps until the loss is below {LEARNED_LOSS} (seeds that got there)", seeds.len()),
        &["d_k", "score", "exact match %", "final loss", "steps to loss < 0.1", "vs q·k/√d_k (Welch p)"],
    );
    for (d_k, score, name, runs) in trained {
        let baseline = trained.iter().find(|t| t.0 == *d_k && t.1 == Score::ScaledDot).map(|t| exact_match(&t.3));
        let versus = match (score, baseline.and_then(|base| welch(&exact_match(runs), &base))) {
            (Score::ScaledDot, _) => "—".to_string(),
            (_, Some(test)) => format!("{:.3}", test.p),
            (_, None) => "n/a (one seed)".to_string(),
        };
        b.row(vec![
            d_k.to_string(),
            name.to_string(),
            format_spread(&exact_match(runs), 1),
            format_spread(&losses(runs), 3),
            speed(runs),
            versus,
        ]);
    }
    let widest = numeric.last();
    let at = |d_k: usize, score: Score| {
        trained.iter().find(|t| t.0 == d_k && t.1 == score).map(|t| mean_std(&exact_match(&t.3)).0)
    };
    let wide = TRAINED_WIDTHS[TRAINED_WIDTHS.len() - 1];
    let widths = TRAINED_WIDTHS.map(|d| d.to_string()).join(" / ");
    // Each score's mean exact match at every trained width, and where it stops learning the task.
    let outcome = |score: Score| {
        let means: Vec<f64> = TRAINED_WIDTHS.iter().map(|&d| at(d, score).unwrap_or(f64::NAN)).collect();
        let numbers = means.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>().join(" / ");
        let fails = TRAINED_WIDTHS.iter().zip(&means).find(|(_, &m)| m < FAILED_PERCENT).map(|(d, _)| *d);
        match fails {
            Some(d) => format!("{numbers}, failing from d_k = {d}"),
            None => format!("{numbers}, learning it at every width"),
        }
    };
    let answer = match widest {
        Some(n) => format!(
            "q·k has variance d_k ({:.0} measured at d = {}), so without the factor the softmax saturates as heads widen: at d = {} the median largest softmax gradient is {:.2e} unscaled against {:.3} scaled, and {:.0}% of unscaled draws put > 0.99 on one key (scaled: {:.0}%). Trained at d_k = {widths} (held-out exact match %, mean of {} seeds): q·k/√d_k {}; q·k {}; T5's init, which sets the scores' variance at initialisation only, {}; QK-norm, LayerNorm on q and k in place of the factor (with γ = 1 q·k again has variance d_k), {}. Spreads and Welch p-values are in the table.",
            n.variance, n.d, n.d, n.unscaled.max_gradient[0], n.scaled.max_gradient[0], 100.0 * n.unscaled.saturated, 100.0 * n.scaled.saturated,
            seeds.len(), outcome(Score::ScaledDot), outcome(Score::Dot), outcome(Score::T5), outcome(Score::QkNorm),
        ),
        None => String::new(),
    };
    let task = study.task();
    Section {
        name: "scaling".into(),
        question: "Why divide by √d_k?".into(),
        answer,
        setup: format!(
            "(a) q and {KEYS} keys with independent N(0, 1) components, {draws} draws per d; the Jacobian of the softmax is pᵢ(δᵢⱼ − pⱼ). (b, c) the built-in reversal task (strings of {}–{} of {} symbols), a {}+{}-layer Transformer, d_model {}, {} heads of width d_k (so W_Q, W_K, W_V are {}×(4·d_k)), {} Adam steps of {} sequences, the paper's warm-up schedule, seeds {:?}; exact match on {} held-out strings, greedy.",
            task.min_len, task.max_len, task.symbols, task.layers, task.layers, task.d_model, task.heads, task.d_model,
            task.run.max_steps.unwrap_or(0), task.batch_size, seeds, task.eval_size,
        ),
        tables: vec![a, b],
        figures: vec![
            Figure { file: "scaling_softmax.png".into(), caption: "(a) median largest softmax gradient against d_k, with and without 1/√d_k".into() },
            Figure { file: "scaling_training.png".into(), caption: format!("(b, c) training loss at d_k = {wide}, mean over seeds") },
        ],
        results: json!({ "numeric": numeric, "trained": trained.iter().map(|(d_k, score, name, runs)| json!({"d_k": d_k, "score": score, "name": name, "runs": runs})).collect::<Vec<_>>() }),
    }
}

fn figure_numeric(study: &Study, numeric: &[Numeric]) -> Result<()> {
    let series = |name: &str, f: fn(&Numeric) -> f64| Series {
        name: name.into(),
        points: numeric.iter().map(|n| Point { x: n.d as f64, y: f(n), spread: None }).collect(),
        dashed: false,
        points_only: false,
    };
    Chart {
        title: "Softmax of q·k over 50 keys: largest gradient".into(),
        note: "median over random draws; q, k ~ N(0, I)".into(),
        x_label: "d_k".into(),
        y_label: "max |∂softmax/∂x|".into(),
        log_x: true,
        series: vec![series("q·k/√d_k", |n| n.scaled.max_gradient[0]), series("q·k", |n| n.unscaled.max_gradient[0])],
        ..Chart::default()
    }
    .draw(&study.figure("scaling_softmax.png"))
}

fn figure_trained(study: &Study, trained: &[Trained]) -> Result<()> {
    let wide = TRAINED_WIDTHS[TRAINED_WIDTHS.len() - 1];
    let series = trained
        .iter()
        .filter(|t| t.0 == wide)
        .map(|(_, _, name, runs)| Series {
            name: name.to_string(),
            points: mean_curve(runs),
            dashed: false,
            points_only: false,
        })
        .collect();
    Chart {
        title: format!("Reversal task, d_k = {wide}: training loss"),
        note: format!("mean over {} seeds, ± one standard deviation", study.seeds().len()),
        x_label: "step".into(),
        y_label: "loss (nats per token)".into(),
        series,
        ..Chart::default()
    }
    .draw(&study.figure("scaling_training.png"))
}

/// The mean loss curve over runs, ± its standard deviation, at the steps every run kept.
pub fn mean_curve(runs: &[RunResult]) -> Vec<Point> {
    let Some(first) = runs.first() else { return vec![] };
    (0..first.losses.len())
        .filter_map(|i| {
            let values: Option<Vec<f64>> = runs.iter().map(|r| r.losses.get(i).map(|l| l.1)).collect();
            let (mean, std) = mean_std(&values?);
            Some(Point { x: first.losses[i].0 as f64, y: mean, spread: Some(std) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// var(q·k) = d for independent unit normals (tolerance 10%: 50 keys × 400 draws); the scaled softmax keeps
    /// its entropy as d grows while the unscaled one collapses.
    #[test]
    fn dot_products_have_variance_d_and_scaling_keeps_the_softmax_soft() {
        let small = Numeric::measure(16, 400, 7);
        let large = Numeric::measure(1000, 400, 7);
        assert!((small.variance / 16.0 - 1.0).abs() < 0.1, "{}", small.variance);
        assert!((large.variance / 1000.0 - 1.0).abs() < 0.1, "{}", large.variance);
        assert!((small.scaled.entropy[0] - large.scaled.entropy[0]).abs() < 0.3);
        assert!(large.unscaled.entropy[0] < 0.5 && large.unscaled.saturated > 0.5);
        assert!(large.unscaled.max_gradient[0] < large.scaled.max_gradient[0]);
    }

    #[test]
    fn softmax_gradient_bound_of_known_inputs() {
        // Uniform over two: p = ½, ½; the largest |∂p/∂x| is ¼ (diagonal and off-diagonal alike).
        let (g, h, p) = softmax_stats(&[0.0, 0.0]);
        assert!((g - 0.25).abs() < 1e-12 && (h - 2f64.ln()).abs() < 1e-12 && (p - 0.5).abs() < 1e-12);
        // A saturated softmax has a vanishing gradient.
        let (g, _, p) = softmax_stats(&[100.0, 0.0, 0.0]);
        assert!(g < 1e-40 && p > 0.999);
    }
}
