//! Why several heads, and why h heads of d_model/h rather than h heads of d_model (§3.2.2)? At equal d_model,
//! splitting keeps parameters and FLOPs fixed whatever h is; each head can attend somewhere else. The contrast is
//! h heads of full width, which multiplies the attention's cost by h.

use serde_json::json;

use super::runs::AttentionStats;
use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

const HEADS: [usize; 4] = [1, 2, 4, 8];

/// One trained variant: heads and their width.
struct Variant {
    heads: usize,
    head_dim: usize,
    /// Heads of d_model / h (the paper), or of d_model each.
    split: bool,
    runs: Vec<RunResult>,
}

/// Answers "why several heads, and why of width d_model/h?" as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let d_model = study.task().d_model;
    let mut variants = Vec::new();
    for split in [true, false] {
        for &h in &HEADS {
            if !split && h == 1 {
                continue; // one head of d_model is both
            }
            let head_dim = if split { d_model / h } else { d_model };
            let config = SyntheticConfig { heads: h, head_dim: Some(head_dim), ..study.task() };
            let runs = study.train_seeds(&format!("heads: {h} × {head_dim}"), &config)?;
            variants.push(Variant { heads: h, head_dim, split, runs });
        }
    }
    figure(study, &variants)?;
    Ok(section(study, &variants))
}

/// Multiply-adds ×2 per token of one attention block: four projections C × H·Dh, and q·k plus the weighted sum
/// over `keys` positions, each H·Dh per key.
fn attention_flops(d_model: usize, inner: usize, keys: f64) -> f64 {
    2.0 * 4.0 * (d_model * inner) as f64 + 2.0 * 2.0 * keys * inner as f64
}

fn stat(runs: &[RunResult], f: impl Fn(&AttentionStats) -> f64) -> Vec<f64> {
    runs.iter().map(|r| f(&r.attention)).collect()
}

fn section(study: &Study, variants: &[Variant]) -> Section {
    let task = study.task();
    let keys = (task.min_len + task.max_len) as f64 / 2.0;
    let seeds = study.seeds();
    let mut table = Table::new(
        format!("Reversal task, {} seeds: cost and outcome of h heads (attention FLOPs per token of one block, at the mean length {keys}); attention statistics of the encoder's self-attention and the decoder's cross-attention on held-out strings", seeds.len()),
        &["heads × width", "parameters", "attention FLOPs/token", "ms/step", "exact match %", "final loss", "self-attn entropy (nats)", "own-position weight", "head divergence JS (nats)", "cross-attn weight on the aligned source (best head)"],
    );
    for v in variants {
        let ms: Vec<f64> = v.runs.iter().map(RunResult::ms_per_step).collect();
        let best_alignment = |s: &AttentionStats| s.cross_alignment.iter().flatten().copied().fold(0.0, f64::max);
        table.row(vec![
            format!("{} × {}{}", v.heads, v.head_dim, if v.split { "" } else { " (full width)" }),
            v.runs.first().map_or(0, |r| r.parameters).to_string(),
            format!("{:.0}", attention_flops(task.d_model, v.heads * v.head_dim, keys)),
            format_spread(&ms, 1),
            format_spread(&exact_match(&v.runs), 1),
            format_spread(&v.runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            format_spread(&stat(&v.runs, |s| AttentionStats::mean(&s.encoder_entropy)), 2),
            format_spread(&stat(&v.runs, |s| AttentionStats::mean(&s.encoder_self_mass)), 2),
            format_spread(&stat(&v.runs, |s| mean_std(&s.encoder_head_divergence).0), 3),
            format_spread(&stat(&v.runs, best_alignment), 2),
        ]);
    }
    let find = |h: usize, split: bool| variants.iter().find(|v| v.heads == h && v.split == split);
    let em = |v: Option<&Variant>| v.map_or(f64::NAN, |v| mean_std(&exact_match(&v.runs)).0);
    let params = |v: Option<&Variant>| v.and_then(|v| v.runs.first()).map_or(0, |r| r.parameters);
    let answer = format!(
        "Splitting d_model = {} into h heads keeps the cost fixed ({} parameters at h = 1 and h = 8) while the heads learn different patterns (JS divergence between heads {:.3} nats at h = 8); exact match: {:.1}% (h = 1), {:.1}% (h = 2), {:.1}% (h = 4), {:.1}% (h = 8); {}. Eight full-width heads cost {} parameters and {:.1}× the attention FLOPs for {:.1}%.",
        task.d_model,
        params(find(1, true)),
        find(8, true).map_or(f64::NAN, |v| mean_std(&stat(&v.runs, |s| mean_std(&s.encoder_head_divergence).0)).0),
        em(find(1, true)), em(find(2, true)), em(find(4, true)), em(find(8, true)),
        against_one_head(variants),
        params(find(8, false)),
        attention_flops(task.d_model, 8 * task.d_model, keys) / attention_flops(task.d_model, task.d_model, keys),
        em(find(8, false)),
    );
    Section {
        name: "heads".into(),
        question: "Why several heads, each d_model/h wide?".into(),
        answer,
        setup: format!(
            "The built-in reversal task ({} Adam steps of {} strings of {}–{} symbols), a {}+{}-layer Transformer with d_model {}; h ∈ {HEADS:?} heads of d_model/h, and h ∈ {{2, 4, 8}} heads of d_model each; seeds {seeds:?}. Attention statistics average every valid query of 256 held-out strings: entropy of its weights (uniform would be {:.2} nats), the weight on its own position, and the Jensen–Shannon divergence between two heads' weights for the same query.",
            task.run.max_steps.unwrap_or(0), task.batch_size, task.min_len, task.max_len, task.layers, task.layers, task.d_model,
            variants.first().and_then(|v| v.runs.first()).map_or(f64::NAN, |r| r.attention.uniform_entropy),
        ),
        tables: vec![table],
        figures: vec![Figure { file: "heads.png".into(), caption: "Held-out exact match against the number of heads, split and full-width".into() }],
        results: json!(variants.iter().map(|v| json!({"heads": v.heads, "head_dim": v.head_dim, "split": v.split, "runs": v.runs})).collect::<Vec<_>>()),
    }
}

/// The best split variant with more than one head against one head: Welch's p and whether it is beyond noise.
fn against_one_head(variants: &[Variant]) -> String {
    let one = variants.iter().find(|v| v.heads == 1 && v.split);
    let mean = |v: &Variant| mean_std(&exact_match(&v.runs)).0;
    let best = variants.iter().filter(|v| v.heads > 1 && v.split).max_by(|a, b| mean(a).total_cmp(&mean(b)));
    match (one, best) {
        (Some(one), Some(best)) => match welch(&exact_match(&best.runs), &exact_match(&one.runs)) {
            Some(test) if test.p < 0.05 => format!("h = {} beats one head (Welch p = {:.3})", best.heads, test.p),
            Some(test) => format!(
                "even the best, h = {}, is within noise of one head on this task (Welch p = {:.2})",
                best.heads, test.p
            ),
            None => "one seed: no test".into(),
        },
        _ => "no comparison".into(),
    }
}

fn figure(study: &Study, variants: &[Variant]) -> Result<()> {
    let series = |split: bool, name: &str| Series {
        name: name.into(),
        points: HEADS
            .iter()
            .enumerate()
            .filter_map(|(i, &h)| {
                let v = variants.iter().find(|v| v.heads == h && (v.split == split || h == 1))?;
                let (mean, std) = mean_std(&exact_match(&v.runs));
                Some(Point { x: i as f64, y: mean, spread: Some(std) })
            })
            .collect(),
        dashed: !split,
        points_only: false,
    };
    Chart {
        title: "Reversal task: exact match against heads".into(),
        note: format!("mean ± std over {} seeds; d_model {}", study.seeds().len(), study.task().d_model),
        x_label: "heads".into(),
        y_label: "held-out exact match (%)".into(),
        x_categories: HEADS.iter().map(|h| h.to_string()).collect(),
        series: vec![series(true, "h heads of d_model/h"), series(false, "h heads of d_model")],
        ..Chart::default()
    }
    .draw(&study.figure("heads.png"))
}
