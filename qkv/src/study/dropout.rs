//! Where does dropout go, and what must evaluation do about it? The paper drops out at four places (§5.4 and
//! its code): the embeddings plus positions, the attention probabilities, each sub-layer's output before the
//! residual add, and inside the feed-forward network. Measured on reversal from a fixed pool of training strings,
//! so that a model can overfit: all four at P_drop, each switched off in turn, none at all; then the
//! evaluation-time rule — inverted dropout (×1/(1 − p) while training) against the original classic dropout
//! (×(1 − p) at test time), and classic dropout whose evaluation forgets the factor.

use serde_json::json;

use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::{paired, welch};
use crate::nn::{DropoutRates, DropoutScaling};
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

/// Dropout probability at every place that has it (higher than the paper's 0.1 so that placement matters on
/// a small model).
pub const P_DROP: f64 = 0.2;
/// Training strings in the fixed pool.
pub const TRAIN_SIZE: usize = 1000;

/// The variants, with their names in the report.
pub fn variants() -> Vec<(&'static str, DropoutRates)> {
    let all = DropoutRates::uniform(P_DROP);
    vec![
        ("all four places", all),
        ("no dropout", DropoutRates::uniform(0.0)),
        ("all but the embeddings", DropoutRates { embedding: 0.0, ..all }),
        ("all but attention", DropoutRates { attention: 0.0, ..all }),
        ("all but the residual branches", DropoutRates { residual: 0.0, ..all }),
        ("all but the feed-forward activation", DropoutRates { activation: 0.0, ..all }),
        ("classic: ×(1 − p) at evaluation", DropoutRates { scaling: DropoutScaling::Classic, ..all }),
        ("classic, evaluation forgets ×(1 − p)", DropoutRates { scaling: DropoutScaling::ClassicUnscaled, ..all }),
    ]
}

/// Answers "where does dropout go, and what must evaluation do about it?" as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let mut trained = Vec::new();
    for (name, rates) in variants() {
        trained.push((name, study.train_seeds(&format!("dropout: {name}"), &variant(&task, rates))?));
    }
    figure(study, &trained)?;
    Ok(section(study, &trained))
}

/// The study's task with dropout `rates` and the fixed pool of [`TRAIN_SIZE`] training strings.
pub fn variant(task: &SyntheticConfig, rates: DropoutRates) -> SyntheticConfig {
    SyntheticConfig { dropout_rates: Some(rates), train_size: Some(TRAIN_SIZE), ..task.clone() }
}

fn section(study: &Study, trained: &[(&str, Vec<RunResult>)]) -> Section {
    let seeds = study.seeds();
    let task = study.task();
    let base = exact_match(&trained[0].1);
    let p = |runs: &[RunResult]| welch(&exact_match(runs), &base).map_or(f64::NAN, |t| t.p);
    let mut table = Table::new(
        format!("Reversal from a pool of {TRAIN_SIZE} training strings, {} seeds: held-out exact match and the final training loss (with dropout active)", seeds.len()),
        &["dropout", "exact match % (held out)", "final training loss", "vs all four places (Welch p)"],
    );
    for (i, (name, runs)) in trained.iter().enumerate() {
        table.row(vec![
            name.to_string(),
            format_spread(&exact_match(runs), 1),
            format_spread(&runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            if i == 0 { "—".into() } else { format!("{:.3}", p(runs)) },
        ]);
    }
    let describe = |range: std::ops::Range<usize>| -> String {
        trained[range]
            .iter()
            .map(|(name, runs)| {
                let verdict = if p(runs) < 0.05 { "differs, p < 0.05" } else { "within noise" };
                format!("{name} {:.1}% ({verdict})", mean_std(&exact_match(runs)).0)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    // The two classic rows are the same trained models evaluated two ways: a paired comparison.
    let (classic, forgot) = (exact_match(&trained[6].1), exact_match(&trained[7].1));
    let forgetting = paired(&forgot, &classic).map_or(f64::NAN, |t| t.p);
    let answer = format!(
        "Held-out exact match with P_drop = {P_DROP} at all four places: {:.1}%; {}. Evaluation: {}. Forgetting the ×(1 − p) of classic dropout changes the same trained models' exact match by {:+.1} points (paired t-test over seeds, p = {forgetting:.2}): every layer then gets inputs 1/(1 − p) too large, but the LayerNorm after each residual add takes most of that scale out again.",
        mean_std(&base).0,
        describe(1..6),
        describe(6..8),
        mean_std(&forgot).0 - mean_std(&classic).0,
    );
    Section {
        name: "dropout".into(),
        question: "Where does dropout go, and what must evaluation do about it?".into(),
        answer,
        setup: format!(
            "The built-in reversal task ({} Adam steps of {} strings drawn from a fixed pool of {TRAIN_SIZE}, so the model can overfit), {}+{} layers, d_model {}, {} heads; dropout {P_DROP} at the places named, inverted unless said; the classic rows train exactly as inverted dropout's would be trained without its ×1/(1 − p) and differ only at evaluation; seeds {seeds:?}. Exact match: greedy decoding of {} held-out strings, never in the pool.",
            task.run.max_steps.unwrap_or(0), task.batch_size, task.layers, task.layers, task.d_model, task.heads, task.eval_size,
        ),
        tables: vec![table],
        figures: vec![Figure { file: "dropout.png".into(), caption: "Held-out exact match per dropout placement and evaluation rule (mean ± std over seeds)".into() }],
        results: json!(trained.iter().map(|(name, runs)| json!({"variant": name, "runs": runs})).collect::<Vec<_>>()),
    }
}

fn figure(study: &Study, trained: &[(&str, Vec<RunResult>)]) -> Result<()> {
    Chart {
        title: "Dropout: placement and evaluation rule".into(),
        note: format!(
            "reversal from {TRAIN_SIZE} training strings, p = {P_DROP}, mean ± std over {} seeds",
            study.seeds().len()
        ),
        x_label: "dropout".into(),
        y_label: "held-out exact match %".into(),
        x_categories: trained.iter().map(|t| t.0.to_string()).collect(),
        series: vec![Series {
            name: "exact match".into(),
            points: trained
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let (mean, std) = mean_std(&exact_match(&t.1));
                    Point { x: i as f64, y: mean, spread: Some(std) }
                })
                .collect(),
            dashed: false,
            points_only: false,
        }],
        ..Chart::default()
    }
    .draw(&study.figure("dropout.png"))
}
