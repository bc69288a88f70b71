//! Where should LayerNorm go, and why the warm-up? The paper normalises after each residual add (post-LN) and
//! ramps the learning rate up over its first 4000 steps; later models normalise the sub-layer's input (pre-LN),
//! where the identity path from the loss to every layer carries no normalisation at all, and often train
//! without a ramp (Xiong et al., 2020). Measured: how often each arrangement fails to train over seeds, with
//! and without the ramp, at two depths and two peak learning rates, and the gradient of every layer at
//! initialisation. Then LayerNorm against BatchNorm (over the non-padding positions, running statistics for
//! evaluation) at batch sizes from small to large, and with strings of one length against strings of many, as
//! BatchNorm is said to suffer from small batches and variable lengths.

use serde_json::json;

use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::nn::{NormPosition, Normalization};
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

/// A run that ends with a training loss at least this high, or not finite, did not learn the task: a model
/// that cannot tell positions apart plateaus near 0.9 (`qkv study positions`), one that reverses ends
/// below 0.1.
pub const FAILED_LOSS: f64 = 0.5;

/// One arrangement: LayerNorm's place, the warm-up ramp, the depth per stack and the learning-rate factor
/// (× the paper's schedule, whose peak is d_model^−0.5 · warmup^−0.5).
#[derive(Debug, Clone, Copy)]
pub struct Arrangement {
    /// Post-LN (the paper) or pre-LN.
    pub norm: NormPosition,
    /// Whether the learning rate ramps up over the warm-up steps (otherwise the peak from the first step).
    pub ramp: bool,
    /// Layers in the encoder and, as many, in the decoder.
    pub layers: usize,
    /// Multiplies the paper's learning-rate schedule.
    pub lr_factor: f64,
}

impl Arrangement {
    fn name(&self) -> String {
        let norm = match self.norm {
            NormPosition::Post => "post-LN",
            NormPosition::Pre => "pre-LN",
        };
        let ramp = if self.ramp { "warm-up" } else { "no warm-up" };
        format!("{norm}, {ramp}, {} layers, lr ×{}", self.layers, self.lr_factor)
    }
}

/// Every norm × ramp combination at depth 6 with rates 0.3× and 1× (where post-LN's need of the ramp shows) and
/// at depth 2 with 1× and 3×. At 3× every arrangement fails at depth 2, as it did at depth 6 (12 runs of 12 on
/// the Intel host, 2026-12-07), so depth 6 is not trained at 3×: it cost a third of the question's time.
pub fn arrangements() -> Vec<Arrangement> {
    let mut all = Vec::new();
    for (layers, rates) in [(6, [0.3, 1.0]), (2, [1.0, 3.0])] {
        for lr_factor in rates {
            for norm in [NormPosition::Post, NormPosition::Pre] {
                for ramp in [true, false] {
                    all.push(Arrangement { norm, ramp, layers, lr_factor });
                }
            }
        }
    }
    all
}

/// Per seed, each layer's gradient norm at initialisation, for one LayerNorm placement.
pub type LayerGradients = (NormPosition, Vec<Vec<(String, f64)>>);

/// One arrangement's runs over the study's seeds.
pub struct Trained {
    /// The arrangement trained.
    pub arrangement: Arrangement,
    /// One run per seed.
    pub runs: Vec<RunResult>,
}

/// The batch sizes LayerNorm and BatchNorm are compared at.
pub const BATCH_SIZES: [usize; 3] = [4, 16, 64];

/// The batch size at which strings of one length are compared with strings of many: the smallest at which both
/// norms learn the task in the task's steps (at batch 4 neither does), where a batch's statistics still depend
/// on which lengths it happened to draw.
pub const FIXED_LENGTH_BATCH: usize = 16;

/// One LayerNorm-or-BatchNorm setting: the batch size, and whether every string has the task's longest length
/// (no padding anywhere) instead of lengths from min_len to max_len.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormChoice {
    /// LayerNorm or BatchNorm, in every residual sub-layer.
    pub normalization: Normalization,
    /// Strings per batch: the examples BatchNorm's statistics are taken over.
    pub batch_size: usize,
    /// Every string of the task's longest length (no padding) instead of lengths from min_len to max_len.
    pub fixed_length: bool,
}

impl NormChoice {
    fn name(&self) -> String {
        let lengths = if self.fixed_length { ", one length" } else { "" };
        format!("{}, batch {}{lengths}", normalization_name(self.normalization), self.batch_size)
    }
}

/// Each batch size with both norms, then the fixed-length pair.
pub fn norm_choices() -> Vec<NormChoice> {
    let both = |batch_size, fixed_length| {
        [Normalization::LayerNorm, Normalization::BatchNorm].map(|normalization| NormChoice {
            normalization,
            batch_size,
            fixed_length,
        })
    };
    let mut all: Vec<NormChoice> = BATCH_SIZES.iter().flat_map(|&b| both(b, false)).collect();
    all.extend(both(FIXED_LENGTH_BATCH, true));
    all
}

/// `choice` on the task: post-norm, the task's depth and the paper's schedule unchanged whatever the batch size,
/// and every batch in one piece (one shard), so that BatchNorm's statistics are the whole batch's; LayerNorm
/// runs the same way so that the two differ in the norm alone.
pub fn norm_variant(task: &SyntheticConfig, choice: NormChoice) -> SyntheticConfig {
    let mut config = SyntheticConfig {
        normalization: choice.normalization,
        norm_position: NormPosition::Post,
        batch_size: choice.batch_size,
        min_len: if choice.fixed_length { task.max_len } else { task.min_len },
        ..task.clone()
    };
    config.run.shards = 1;
    config
}

/// One LayerNorm-or-BatchNorm setting's runs over the study's seeds.
pub struct NormRuns {
    /// The setting trained.
    pub choice: NormChoice,
    /// One run per seed.
    pub runs: Vec<RunResult>,
}

/// Answers "where should LayerNorm go, and why the warm-up?" and compares LayerNorm with BatchNorm, as the
/// report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let mut trained = Vec::new();
    for arrangement in arrangements() {
        let runs = study.train_seeds(&format!("norms: {}", arrangement.name()), &variant(&task, arrangement))?;
        trained.push(Trained { arrangement, runs });
    }
    let mut gradients = Vec::new();
    for norm in [NormPosition::Post, NormPosition::Pre] {
        let config = variant(&task, Arrangement { norm, ramp: true, layers: 6, lr_factor: 1.0 });
        gradients.push((norm, study.gradient_norms_per_seed(&config)?));
    }
    let mut compared = Vec::new();
    for choice in norm_choices() {
        let runs = study.train_seeds(&format!("norms: {}", choice.name()), &norm_variant(&task, choice))?;
        compared.push(NormRuns { choice, runs });
    }
    figures(study, &trained, &gradients)?;
    batch_norm_figure(study, &compared)?;
    let mut section = section(study, &trained, &gradients);
    add_batch_norm(&mut section, study, &compared);
    Ok(section)
}

/// The study's task in arrangement `a`: its norm position, ramp, depth and learning-rate factor.
pub fn variant(task: &SyntheticConfig, a: Arrangement) -> SyntheticConfig {
    SyntheticConfig {
        layers: a.layers,
        norm_position: a.norm,
        warmup_ramp: a.ramp,
        lr_factor: a.lr_factor,
        ..task.clone()
    }
}

fn failed(run: &RunResult) -> bool {
    !run.final_loss.is_finite() || run.final_loss >= FAILED_LOSS
}

fn normalization_name(normalization: Normalization) -> &'static str {
    match normalization {
        Normalization::LayerNorm => "LayerNorm",
        Normalization::BatchNorm => "BatchNorm",
    }
}

/// The runs of one setting, if it was trained.
fn runs_of(compared: &[NormRuns], normalization: Normalization, batch_size: usize, fixed_length: bool) -> &[RunResult] {
    let wanted = NormChoice { normalization, batch_size, fixed_length };
    compared.iter().find(|c| c.choice == wanted).map_or(&[][..], |c| &c.runs[..])
}

/// LayerNorm's and BatchNorm's exact match (%) at one setting and Welch's p of the difference (NaN with fewer
/// than two seeds).
fn layer_against_batch(compared: &[NormRuns], batch_size: usize, fixed_length: bool) -> (Vec<f64>, Vec<f64>, f64) {
    let ln = exact_match(runs_of(compared, Normalization::LayerNorm, batch_size, fixed_length));
    let bn = exact_match(runs_of(compared, Normalization::BatchNorm, batch_size, fixed_length));
    let p = welch(&bn, &ln).map_or(f64::NAN, |t| t.p);
    (ln, bn, p)
}

/// The LayerNorm-against-BatchNorm table, the answer's sentence on it, the setup's paragraph and the figure.
fn add_batch_norm(section: &mut Section, study: &Study, compared: &[NormRuns]) {
    let task = study.task();
    let mut table = Table::new(
        format!(
            "LayerNorm against BatchNorm, post-norm, {} seeds per row: held-out exact match % and final training loss",
            study.seeds().len()
        ),
        &[
            "batch size",
            "string lengths",
            "LayerNorm",
            "BatchNorm",
            "BatchNorm − LayerNorm",
            "Welch p",
            "final loss LayerNorm",
            "final loss BatchNorm",
        ],
    );
    let mut settings: Vec<(usize, bool)> = BATCH_SIZES.iter().map(|&b| (b, false)).collect();
    settings.push((FIXED_LENGTH_BATCH, true));
    let mut gaps = Vec::new();
    for &(batch_size, fixed_length) in &settings {
        let (ln, bn, p) = layer_against_batch(compared, batch_size, fixed_length);
        let gap = mean_std(&bn).0 - mean_std(&ln).0;
        let lengths = if fixed_length {
            format!("{} only", task.max_len)
        } else {
            format!("{}–{}", task.min_len, task.max_len)
        };
        table.row(vec![
            batch_size.to_string(),
            lengths,
            format_spread(&ln, 1),
            format_spread(&bn, 1),
            format!("{gap:+.1}"),
            format!("{p:.3}"),
            final_loss(runs_of(compared, Normalization::LayerNorm, batch_size, fixed_length)),
            final_loss(runs_of(compared, Normalization::BatchNorm, batch_size, fixed_length)),
        ]);
        gaps.push((batch_size, fixed_length, mean_std(&ln), mean_std(&bn), gap, p));
    }
    let per_batch: Vec<String> = gaps
        .iter()
        .filter(|g| !g.1)
        .map(|(b, _, ln, bn, _, p)| {
            format!("batch {b}: {:.1} ± {:.1} against {:.1} ± {:.1} (p = {p:.3})", ln.0, ln.1, bn.0, bn.1)
        })
        .collect();
    let gap_of =
        |fixed: bool| gaps.iter().find(|g| g.0 == FIXED_LENGTH_BATCH && g.1 == fixed).map_or(f64::NAN, |g| g.4);
    section.answer.push_str(&format!(
        " LayerNorm against BatchNorm (post-norm, held-out exact match %, LayerNorm first): {}. At batch {FIXED_LENGTH_BATCH}, BatchNorm − LayerNorm is {:+.1} points with strings of {}–{} symbols and {:+.1} with strings all of length {}.",
        per_batch.join("; "),
        gap_of(false),
        task.min_len,
        task.max_len,
        gap_of(true),
        task.max_len,
    ));
    section.setup.push_str(&format!(
        " LayerNorm against BatchNorm: post-norm, {} + {} layers, at batch sizes {BATCH_SIZES:?} with the same {} steps and the paper's schedule (no rate scaled with the batch: smaller batches see fewer strings), every batch on one shard so that BatchNorm's statistics are the whole batch's (LayerNorm runs the same way). BatchNorm takes its statistics over each batch's non-padding positions (encoder: source tokens; decoder: BOS and target tokens) and evaluates with running statistics (momentum 0.1, as torch.nn.BatchNorm1d). Variable lengths: at batch {FIXED_LENGTH_BATCH}, strings of {}–{} symbols against strings all of length {} (no padding, the same number of real positions in every batch).",
        task.layers, task.layers, task.run.max_steps.unwrap_or(0), task.min_len, task.max_len, task.max_len,
    ));
    section.tables.push(table);
    section.figures.push(Figure {
        file: "norms_batch_norm.png".into(),
        caption: "Held-out exact match of LayerNorm and BatchNorm by batch size (mean ± std over seeds); the dashed points are strings all of the longest length".into(),
    });
    if let Some(results) = section.results.as_object_mut() {
        results.insert(
            "layer_norm_against_batch_norm".into(),
            json!(compared.iter().map(|c| json!({"setting": c.choice.name(), "runs": c.runs})).collect::<Vec<_>>()),
        );
    }
}

fn final_loss(runs: &[RunResult]) -> String {
    format_spread(&runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3)
}

fn batch_norm_figure(study: &Study, compared: &[NormRuns]) -> Result<()> {
    let point = |runs: &[RunResult], x: usize| {
        let (mean, std) = mean_std(&exact_match(runs));
        Point { x: x as f64, y: mean, spread: Some(std) }
    };
    let series = |normalization: Normalization, fixed_length: bool| Series {
        name: format!("{}{}", normalization_name(normalization), if fixed_length { ", one length" } else { "" }),
        points: BATCH_SIZES
            .iter()
            .enumerate()
            .filter(|&(_, &b)| !fixed_length || b == FIXED_LENGTH_BATCH)
            .map(|(i, &b)| point(runs_of(compared, normalization, b, fixed_length), i))
            .filter(|p| p.y.is_finite())
            .collect(),
        dashed: fixed_length,
        points_only: false,
    };
    Chart {
        title: "LayerNorm against BatchNorm by batch size".into(),
        note: format!("reversal task, post-norm, mean ± std over {} seeds", study.seeds().len()),
        x_label: "batch size".into(),
        y_label: "held-out exact match %".into(),
        x_categories: BATCH_SIZES.iter().map(|b| b.to_string()).collect(),
        series: [
            (Normalization::LayerNorm, false),
            (Normalization::BatchNorm, false),
            (Normalization::LayerNorm, true),
            (Normalization::BatchNorm, true),
        ]
        .iter()
        .map(|&(n, fixed)| series(n, fixed))
        .collect(),
        ..Chart::default()
    }
    .draw(&study.figure("norms_batch_norm.png"))
}

fn norm_name(norm: NormPosition) -> &'static str {
    match norm {
        NormPosition::Post => "post-LN",
        NormPosition::Pre => "pre-LN",
    }
}

fn section(study: &Study, trained: &[Trained], gradients: &[LayerGradients]) -> Section {
    let seeds = study.seeds();
    let task = study.task();
    let peak = |factor: f64| factor * (task.d_model as f64).powf(-0.5) * (task.warmup.max(1) as f64).powf(-0.5);
    let mut table = Table::new(
        format!("Reversal, {} seeds per row: runs that failed to train (final loss ≥ {FAILED_LOSS} or not finite), exact match and final loss", seeds.len()),
        &["LayerNorm", "warm-up ramp", "layers per stack", "peak lr", "failed runs", "exact match %", "final loss"],
    );
    for t in trained {
        let a = t.arrangement;
        table.row(vec![
            norm_name(a.norm).into(),
            if a.ramp { format!("{} steps", task.warmup) } else { "none (peak from step 1)".into() },
            a.layers.to_string(),
            format!("{:.4}", peak(a.lr_factor)),
            format!("{} of {}", t.runs.iter().filter(|r| failed(r)).count(), t.runs.len()),
            format_spread(&exact_match(&t.runs), 1),
            format_spread(&t.runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
        ]);
    }
    let mut gradient_table = Table::new(
        format!("Gradient norm at initialisation, 6 + 6 layers, mean ± std over {} seeds", seeds.len()),
        &["LayerNorm", "encoder layer 1", "encoder layer 6", "decoder layer 1", "decoder layer 6"],
    );
    for (norm, per_seed) in gradients {
        let at = |name: &str| {
            let values: Vec<f64> =
                per_seed.iter().filter_map(|layers| layers.iter().find(|l| l.0 == name).map(|l| l.1)).collect();
            format_spread(&values, 3)
        };
        gradient_table.row(vec![
            norm_name(*norm).into(),
            at("encoder 1"),
            at("encoder 6"),
            at("decoder 1"),
            at("decoder 6"),
        ]);
    }
    let failed_of = |a: Arrangement| {
        trained
            .iter()
            .find(|t| {
                let b = t.arrangement;
                b.norm == a.norm && b.ramp == a.ramp && b.layers == a.layers && b.lr_factor == a.lr_factor
            })
            .map_or("–".to_string(), |t| t.runs.iter().filter(|r| failed(r)).count().to_string())
    };
    let mut settings: Vec<(usize, f64)> =
        trained.iter().map(|t| (t.arrangement.layers, t.arrangement.lr_factor)).collect();
    settings.dedup();
    let per_setting: Vec<String> = settings
        .iter()
        .map(|&(layers, lr_factor)| {
            let count = |norm, ramp| failed_of(Arrangement { norm, ramp, layers, lr_factor });
            format!(
                "{layers} layers at lr ×{lr_factor}: post-LN {}/{}, pre-LN {}/{}",
                count(NormPosition::Post, true),
                count(NormPosition::Post, false),
                count(NormPosition::Pre, true),
                count(NormPosition::Pre, false),
            )
        })
        .collect();
    let top_over_bottom = |norm: NormPosition| {
        let per_seed = &gradients.iter().find(|g| g.0 == norm).map_or(&[][..], |g| &g.1[..]);
        let ratios: Vec<f64> = per_seed
            .iter()
            .map(|layers| layers.last().map_or(f64::NAN, |l| l.1) / layers.first().map_or(f64::NAN, |l| l.1))
            .collect();
        mean_std(&ratios).0
    };
    let answer = format!(
        "Failed runs of {} per setting (with the warm-up ramp / without it): {}. At initialisation the top decoder layer's gradient is {:.2}× the bottom encoder layer's with post-LN and {:.2}× with pre-LN.",
        seeds.len(),
        per_setting.join("; "),
        top_over_bottom(NormPosition::Post),
        top_over_bottom(NormPosition::Pre),
    );
    Section {
        name: "norms".into(),
        question: "Post-LN or pre-LN, and why the warm-up? And LayerNorm or BatchNorm?".into(),
        answer,
        setup: format!(
            "The built-in reversal task ({} Adam steps), d_model {}, {} heads; the paper's schedule lr = factor · d^−0.5 · min(step^−0.5, step · warmup^−1.5) with warmup {} (peak at factor 1: {:.4}), or, without the ramp, the same schedule holding its peak from the first step; seeds {seeds:?}. A run failed when its final training loss was ≥ {FAILED_LOSS} or not finite. Gradient norms: all parameters of one layer, from the loss of the first training batch each seed draws, before any update.",
            task.run.max_steps.unwrap_or(0), task.d_model, task.heads, task.warmup, peak(1.0),
        ),
        tables: vec![table, gradient_table],
        figures: vec![
            Figure { file: "norms_failures.png".into(), caption: "Final training loss of every run, per arrangement (mean ± std over seeds)".into() },
            Figure { file: "norms_gradients.png".into(), caption: "Gradient norm of every layer at initialisation, post-LN against pre-LN (6 + 6 layers)".into() },
        ],
        results: json!({
            "runs": trained.iter().map(|t| json!({"arrangement": t.arrangement.name(), "runs": t.runs})).collect::<Vec<_>>(),
            "gradient_norms_at_init": gradients.iter().map(|(norm, g)| json!({"norm": norm_name(*norm), "seeds": g})).collect::<Vec<_>>(),
        }),
    }
}

fn figures(study: &Study, trained: &[Trained], gradients: &[LayerGradients]) -> Result<()> {
    let groups: Vec<(usize, f64)> = {
        let mut g: Vec<(usize, f64)> =
            trained.iter().map(|t| (t.arrangement.layers, t.arrangement.lr_factor)).collect();
        g.dedup();
        g
    };
    let series = |norm: NormPosition, ramp: bool| Series {
        name: format!("{}, {}", norm_name(norm), if ramp { "warm-up" } else { "no warm-up" }),
        points: groups
            .iter()
            .enumerate()
            .filter_map(|(i, &(layers, lr))| {
                let t = trained.iter().find(|t| {
                    let a = t.arrangement;
                    a.norm == norm && a.ramp == ramp && a.layers == layers && a.lr_factor == lr
                })?;
                let (mean, std) = mean_std(&t.runs.iter().map(|r| r.final_loss.min(10.0)).collect::<Vec<_>>());
                Some(Point { x: i as f64, y: mean, spread: Some(std) })
            })
            .collect(),
        dashed: !ramp,
        points_only: false,
    };
    Chart {
        title: "Final training loss by arrangement".into(),
        note: format!("reversal task, mean ± std over {} seeds (losses capped at 10)", study.seeds().len()),
        x_label: "depth per stack, learning-rate factor".into(),
        y_label: "final training loss".into(),
        x_categories: groups.iter().map(|(layers, lr)| format!("{layers} layers, lr ×{lr}")).collect(),
        series: [
            (NormPosition::Post, true),
            (NormPosition::Post, false),
            (NormPosition::Pre, true),
            (NormPosition::Pre, false),
        ]
        .iter()
        .map(|&(norm, ramp)| series(norm, ramp))
        .collect(),
        ..Chart::default()
    }
    .draw(&study.figure("norms_failures.png"))?;
    let layers: Vec<String> = gradients
        .first()
        .and_then(|g| g.1.first())
        .map(|g| g.iter().map(|l| l.0.clone()).collect())
        .unwrap_or_default();
    Chart {
        title: "Gradient norm per layer at initialisation".into(),
        note: "6 + 6 layers, reversal task, mean ± std over seeds".into(),
        x_label: "layer".into(),
        y_label: "gradient norm".into(),
        x_categories: layers.clone(),
        series: gradients
            .iter()
            .map(|(norm, per_seed)| Series {
                name: norm_name(*norm).into(),
                points: (0..layers.len())
                    .map(|i| {
                        let values: Vec<f64> = per_seed.iter().map(|g| g[i].1).collect();
                        let (mean, std) = mean_std(&values);
                        Point { x: i as f64, y: mean, spread: Some(std) }
                    })
                    .collect(),
                dashed: *norm == NormPosition::Pre,
                points_only: false,
            })
            .collect(),
        ..Chart::default()
    }
    .draw(&study.figure("norms_gradients.png"))
}
