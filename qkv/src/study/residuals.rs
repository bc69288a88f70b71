//! What are the residual connections for? Each sub-layer computes x + Sublayer(x) (§3.1), so the gradient of
//! the loss reaches every layer through the identity path as well as through the layers above it. Without
//! that path a deep stack passes its gradient through every sub-layer in turn and the bottom layers learn
//! little. Measured on a 6 + 6-layer model: the gradient norm of every layer at initialisation, and training.

use serde_json::json;

use super::{exact_match, format_spread, mean_loss_curve, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::nn::NormPosition;
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

/// Layers per stack of the deep model.
pub const DEPTH: usize = 6;

/// The variants: where LayerNorm sits and whether x is added back, with their names in the report.
pub const VARIANTS: [(NormPosition, bool, &str); 4] = [
    (NormPosition::Post, true, "post-LN with residuals (the paper)"),
    (NormPosition::Post, false, "post-LN without residuals"),
    (NormPosition::Pre, true, "pre-LN with residuals"),
    (NormPosition::Pre, false, "pre-LN without residuals"),
];

/// One variant's trained runs and, per seed, each layer's gradient norm at initialisation.
pub struct Trained {
    /// The variant's name in the report.
    pub name: &'static str,
    /// One run per seed.
    pub runs: Vec<RunResult>,
    /// Per seed, (layer name, gradient norm) at initialisation.
    pub gradients: Vec<Vec<(String, f64)>>,
}

/// Answers "what are the residual connections for?" as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let mut trained = Vec::new();
    for (norm, residual, name) in VARIANTS {
        let config = variant(&task, norm, residual);
        let runs = study.train_seeds(&format!("residuals: {name}"), &config)?;
        let gradients = study.gradient_norms_per_seed(&config)?;
        trained.push(Trained { name, runs, gradients });
    }
    figures(study, &trained)?;
    Ok(section(study, &trained))
}

/// The study's task, `DEPTH` layers per stack, with `norm` and with or without residual connections.
pub fn variant(task: &SyntheticConfig, norm: NormPosition, residual: bool) -> SyntheticConfig {
    SyntheticConfig { layers: DEPTH, norm_position: norm, residual_connections: residual, ..task.clone() }
}

/// Per seed, the gradient norm of the bottom decoder layer over the top one's. The decoder is the pure
/// chain: every decoder layer reads the encoder's memory directly, so the encoder's gradient does not have
/// to pass the decoder stack, but the bottom decoder layer's must pass every layer above it.
fn bottom_over_top(trained: &Trained) -> Vec<f64> {
    trained
        .gradients
        .iter()
        .map(|layers| {
            let norm = |name: &str| layers.iter().find(|l| l.0 == name).map_or(f64::NAN, |l| l.1);
            norm("decoder 1") / norm(&format!("decoder {DEPTH}"))
        })
        .collect()
}

/// Per seed, the training loss at `step` (the last kept one at or before it).
fn loss_at(runs: &[RunResult], step: usize) -> Vec<f64> {
    runs.iter().map(|r| r.losses.iter().take_while(|(s, _)| *s <= step).last().map_or(f64::NAN, |l| l.1)).collect()
}

fn section(study: &Study, trained: &[Trained]) -> Section {
    let seeds = study.seeds();
    let task = study.task();
    let steps = task.run.max_steps.unwrap_or(0);
    let early = steps / 4;
    let mut table = Table::new(
        format!("Reversal, {DEPTH} + {DEPTH} layers, {} seeds: gradient at initialisation and training, with and without residual connections", seeds.len()),
        &["variant", "‖g‖ decoder layer 1 / decoder layer 6 at init", &format!("loss at step {early}"), "final loss", "exact match %", "exact match vs the same LayerNorm with residuals (Welch p)"],
    );
    // Each variant without residuals against the one with the same LayerNorm and them.
    let reference = |i: usize| exact_match(&trained[i - i % 2].runs);
    for (i, t) in trained.iter().enumerate() {
        let p = match welch(&exact_match(&t.runs), &reference(i)) {
            Some(test) if i % 2 == 1 => format!("{:.3}", test.p),
            _ => "—".into(),
        };
        table.row(vec![
            t.name.to_string(),
            format_ratio(&bottom_over_top(t)),
            format_spread(&loss_at(&t.runs, early), 3),
            format_spread(&t.runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            format_spread(&exact_match(&t.runs), 1),
            p,
        ]);
    }
    let m = |i: usize| mean_std(&exact_match(&trained[i].runs)).0;
    let ratio = |i: usize| short(mean_std(&bottom_over_top(&trained[i])).0);
    let significant = |i: usize| welch(&exact_match(&trained[i].runs), &reference(i)).is_some_and(|t| t.p < 0.05);
    let verdict =
        |i: usize| if significant(i) { "a difference beyond seed noise, Welch p < 0.05" } else { "within seed noise" };
    let answer = format!(
        "At {DEPTH} + {DEPTH} layers the bottom decoder layer's gradient at initialisation is {}× the top one's with residuals (post-LN) and {}× without them ({}× and {}× with pre-LN; the encoder keeps its gradient either way, through every decoder layer's cross-attention); after {steps} steps the model reverses {:.1}% of held-out strings with residuals against {:.1}% without ({}), and {:.1}% against {:.1}% with pre-LN ({}).",
        ratio(0), ratio(1), ratio(2), ratio(3), m(0), m(1), verdict(1), m(2), m(3), verdict(3),
    );
    let answer = if m(0) < 50.0 {
        format!("{answer} Post-LN does not train at this depth and rate even with residuals (see `norms`).")
    } else {
        answer
    };
    Section {
        name: "residuals".into(),
        question: "What are the residual connections for?".into(),
        answer,
        setup: format!(
            "The built-in reversal task ({steps} Adam steps, the paper's schedule with {} warm-up steps), {DEPTH}+{DEPTH} layers, d_model {}, {} heads; the variants differ only in LayerNorm's place and in whether each sub-layer adds its input back; seeds {seeds:?}. Gradient norms: all parameters of one layer, from the loss of the first training batch each seed draws, before any update.",
            task.warmup, task.d_model, task.heads,
        ),
        tables: vec![table],
        figures: vec![
            Figure { file: "residuals_gradients.png".into(), caption: "Gradient norm of every layer at initialisation, encoder bottom to decoder top (log scale; mean over seeds)".into() },
            Figure { file: "residuals_training.png".into(), caption: "Training loss of the deep model per variant (mean over seeds)".into() },
        ],
        results: json!(trained.iter().map(|t| json!({"variant": t.name, "runs": t.runs, "gradient_norms_at_init": t.gradients})).collect::<Vec<_>>()),
    }
}

/// A ratio that may be tiny, in a readable form.
fn short(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 0.01 {
        format!("{value:.2}")
    } else {
        format!("{value:.1e}")
    }
}

/// "m ± s" of ratios that may span orders of magnitude.
fn format_ratio(values: &[f64]) -> String {
    let (m, s) = mean_std(values);
    if m.abs() >= 0.01 {
        format!("{m:.3} ± {s:.3}")
    } else {
        format!("{m:.1e} ± {s:.1e}")
    }
}

fn figures(study: &Study, trained: &[Trained]) -> Result<()> {
    let layers: Vec<String> =
        trained[0].gradients.first().map(|g| g.iter().map(|l| l.0.clone()).collect()).unwrap_or_default();
    let gradient_series = trained
        .iter()
        .map(|t| Series {
            name: t.name.into(),
            points: (0..layers.len())
                .map(|i| {
                    let logs: Vec<f64> = t.gradients.iter().map(|g| g[i].1.max(1e-30).log10()).collect();
                    Point { x: i as f64, y: mean_std(&logs).0, spread: Some(mean_std(&logs).1) }
                })
                .collect(),
            dashed: t.name.contains("without"),
            points_only: false,
        })
        .collect();
    Chart {
        title: "Gradient norm per layer at initialisation".into(),
        note: format!("{DEPTH} + {DEPTH} layers, reversal task, mean ± std over {} seeds", study.seeds().len()),
        x_label: "layer".into(),
        y_label: "log10 gradient norm".into(),
        x_categories: layers,
        series: gradient_series,
        ..Chart::default()
    }
    .draw(&study.figure("residuals_gradients.png"))?;
    Chart {
        title: "Training loss with and without residual connections".into(),
        note: format!("{DEPTH} + {DEPTH} layers, mean over {} seeds", study.seeds().len()),
        x_label: "step".into(),
        y_label: "training loss".into(),
        series: trained
            .iter()
            .map(|t| Series {
                name: t.name.into(),
                points: mean_loss_curve(&t.runs),
                dashed: t.name.contains("without"),
                points_only: false,
            })
            .collect(),
        ..Chart::default()
    }
    .draw(&study.figure("residuals_training.png"))
}
