//! `qkv study`: the questions people ask about the Transformer's design ("why divide by √d_k?", "why several
//! heads?", "why not Q = K?") answered by running the experiment instead of reading the argument.
//!
//! Each question is a module whose `run` measures or trains and returns a [`Section`] of the report: a one-line
//! answer with its numbers, the setup, tables and figures. Trained variants use the built-in reversal task
//! ([`crate::train::synthetic`]), so a question takes minutes on two cores — all but [`tokenizers`] and [`bert`],
//! which read Multi30k, STS-B and all-MiniLM-L6-v2 from directories ([`StudyData`]); every trained number is a mean ±
//! standard deviation over seeds, and a difference within the spread is called no difference. Finished runs
//! are kept under the report directory ([`Study`]), so a study that is stopped continues where it was and
//! questions share the runs they have in common.

pub mod additive;
pub mod bert;
pub mod dropout;
pub mod embeddings;
pub mod heads;
pub mod heatmaps;
pub mod mask_value;
pub mod norms;
pub mod parallel_decoding;
pub mod positions;
pub mod projections;
pub mod report;
pub mod residuals;
pub mod runs;
pub mod scaling;
pub mod tokenizers;

pub use report::{keep_section, kept_sections, write_report, Figure, Section, Table};
pub use runs::{AttentionStats, RunResult, Study, StudyData, StudyOptions};

/// What answers one question.
pub type Answer = fn(&mut Study) -> crate::Result<Section>;

/// The questions of `qkv study`, in the report's order, with the function that answers each.
pub const QUESTIONS: &[(&str, Answer)] = &[
    ("scaling", scaling::run),
    ("heads", heads::run),
    ("tied-qk", projections::run),
    ("additive", additive::run),
    ("mask-value", mask_value::run),
    ("parallel-decoding", parallel_decoding::run),
    ("heatmaps", heatmaps::run),
    ("positions", positions::run),
    ("residuals", residuals::run),
    ("norms", norms::run),
    ("embeddings", embeddings::run),
    ("dropout", dropout::run),
    ("tokenizers", tokenizers::run),
    ("bert", bert::run),
];

/// Each run's held-out exact match in percent.
pub fn exact_match(runs: &[RunResult]) -> Vec<f64> {
    runs.iter().map(RunResult::exact_match_percent).collect()
}

/// Mean and sample standard deviation (n − 1; 0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The training loss averaged over runs at each kept step (runs of one variant keep the same steps).
pub fn mean_loss_curve(runs: &[RunResult]) -> Vec<crate::plot::Point> {
    let Some(first) = runs.first() else { return Vec::new() };
    (0..first.losses.len())
        .map(|i| {
            let values: Vec<f64> = runs.iter().filter_map(|r| r.losses.get(i).map(|l| l.1)).collect();
            crate::plot::Point { x: first.losses[i].0 as f64, y: mean_std(&values).0, spread: None }
        })
        .collect()
}

/// "m ± s" with `digits` decimals.
pub fn format_spread(values: &[f64], digits: usize) -> String {
    let (m, s) = mean_std(values);
    format!("{m:.digits$} ± {s:.digits$}")
}
