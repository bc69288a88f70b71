//! Why separate W_Q and W_K? With one shared matrix (Q = K) the score matrix of self-attention is symmetric and
//! its diagonal qᵢ·qᵢ = |qᵢ|² is large, so a token leans towards itself; with no projections at all
//! (q = k = v = x) each score is a plain similarity of embeddings and the diagonal |xᵢ|² dominates harder.
//! Measured: the weight each query puts on its own position, and what the task loses.

use serde_json::json;

use super::runs::AttentionStats;
use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::nn::Projections;
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

/// The variants compared, with their names in the report.
pub const VARIANTS: [(Projections, &str); 3] = [
    (Projections::Separate, "separate W_Q, W_K, W_V"),
    (Projections::SharedQk, "Q = K (one W_Q)"),
    (Projections::None, "no projections (q = k = v = x)"),
];

/// Answers "why separate W_Q and W_K?" (separate, Q = K, no projections) as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let mut trained = Vec::new();
    for (projections, name) in VARIANTS {
        let config = variant(&task, projections);
        trained.push((name, study.train_seeds(&format!("tied-qk: {name}"), &config)?));
    }
    figure(study, &trained)?;
    Ok(section(study, &trained))
}

/// The study's task with `projections` in every attention block (heads of d_model / h in every variant).
pub fn variant(task: &SyntheticConfig, projections: Projections) -> SyntheticConfig {
    SyntheticConfig { attention_projections: projections, head_dim: Some(task.d_model / task.heads), ..task.clone() }
}

fn own(runs: &[RunResult]) -> Vec<f64> {
    runs.iter().map(|r| AttentionStats::mean(&r.attention.encoder_self_mass)).collect()
}

fn section(study: &Study, trained: &[(&str, Vec<RunResult>)]) -> Section {
    let seeds = study.seeds();
    let task = study.task();
    let uniform = trained.first().and_then(|t| t.1.first()).map_or(f64::NAN, |r| {
        // The weight uniform attention would put on the own position: the mean of 1/n over the strings.
        (-r.attention.uniform_entropy).exp()
    });
    let mut table = Table::new(
        format!("Reversal task, {} seeds: the encoder self-attention's weight on the query's own position (uniform weights would give about {uniform:.2}), its entropy, and the task", seeds.len()),
        &["projections", "parameters", "own-position weight", "self-attn entropy (nats)", "exact match %", "final loss", "own weight vs separate (Welch p)"],
    );
    let base = own(&trained[0].1);
    for (name, runs) in trained {
        let p = match welch(&own(runs), &base) {
            Some(test) if *name != trained[0].0 => format!("{:.3}", test.p),
            _ => "—".into(),
        };
        table.row(vec![
            name.to_string(),
            runs.first().map_or(0, |r| r.parameters).to_string(),
            format_spread(&own(runs), 3),
            format_spread(
                &runs.iter().map(|r| AttentionStats::mean(&r.attention.encoder_entropy)).collect::<Vec<_>>(),
                2,
            ),
            format_spread(&exact_match(runs), 1),
            format_spread(&runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            p,
        ]);
    }
    let m = |i: usize, f: fn(&[RunResult]) -> Vec<f64>| mean_std(&f(&trained[i].1)).0;
    let answer = format!(
        "Each query's weight on its own position: {:.2} with separate W_Q, W_K, {:.2} with Q = K and {:.2} with q = k = v = x (uniform: {uniform:.2}); exact match {:.1}%, {:.1}% and {:.1}%. Q = K makes every score matrix symmetric (sᵢⱼ = sⱼᵢ), so a pair of tokens cannot attend asymmetrically, and without projections attention is embedding similarity, dominated by |xᵢ|².",
        m(0, own), m(1, own), m(2, own), m(0, exact_match), m(1, exact_match), m(2, exact_match),
    );
    Section {
        name: "tied-qk".into(),
        question: "Why not Q = K, or no projections at all?".into(),
        answer,
        setup: format!(
            "The built-in reversal task ({} Adam steps), {}+{} layers, d_model {}, {} heads; the three variants differ only in the attention's input projections, in every attention block; seeds {seeds:?}. The statistics average the encoder self-attention over every valid query of 256 held-out strings.",
            task.run.max_steps.unwrap_or(0), task.layers, task.layers, task.d_model, task.heads,
        ),
        tables: vec![table],
        figures: vec![Figure { file: "tied_qk.png".into(), caption: "Encoder self-attention weight on the own position, per variant (mean ± std over seeds)".into() }],
        results: json!(trained.iter().map(|(name, runs)| json!({"variant": name, "runs": runs})).collect::<Vec<_>>()),
    }
}

fn figure(study: &Study, trained: &[(&str, Vec<RunResult>)]) -> Result<()> {
    let point = |i: usize, values: Vec<f64>| {
        let (mean, std) = mean_std(&values);
        Point { x: i as f64, y: mean, spread: Some(std) }
    };
    Chart {
        title: "Self-attention on the own position".into(),
        note: format!("reversal task, mean ± std over {} seeds", study.seeds().len()),
        x_label: "input projections".into(),
        y_label: "weight on own position".into(),
        x_categories: trained.iter().map(|t| t.0.to_string()).collect(),
        series: vec![Series {
            name: "own-position weight".into(),
            points: trained.iter().enumerate().map(|(i, t)| point(i, own(&t.1))).collect(),
            dashed: false,
            points_only: false,
        }],
        ..Chart::default()
    }
    .draw(&study.figure("tied_qk.png"))
}
