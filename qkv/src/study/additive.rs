//! Dot-product or additive attention (§3.2.1)? "The two are similar in theoretical complexity, but dot-product
//! attention is much faster and more space-efficient in practice … for small d_k the two perform similarly,
//! additive attention outperforms dot product attention without scaling for larger d_k." Measured here: time
//! and peak memory of one forward and backward pass, and the trained task, as d_k grows, for additive attention
//! against the scaled and the unscaled dot product.

use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use serde_json::json;

use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::models::Transformer;
use crate::nn::{seeded_var_builder, Mode, Score};
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::{held_out_batch, SyntheticConfig};
use crate::Result;

const WIDTHS: [usize; 3] = [16, 64, 256];
const SCORES: [(Score, &str); 3] = [(Score::Additive, "additive"), (Score::ScaledDot, "q·k/√d_k"), (Score::Dot, "q·k")];
/// Strings in the batch whose forward and backward pass is timed.
const BATCH: usize = 64;

struct Variant {
    d_k: usize,
    score: Score,
    name: &'static str,
    runs: Vec<RunResult>,
    cost: Cost,
}

/// One forward and backward pass of a batch.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Cost {
    /// Median over repeats, milliseconds.
    ms: f64,
    /// Growth of the peak resident set during the pass (Linux), MB.
    peak_mb: Option<f64>,
    /// What the scores of every attention block hold at once by arithmetic: B·H·T·S numbers for a dot product,
    /// B·H·T·S·Dh for additive attention's tanh(q + k), MB.
    score_mb: f64,
}

/// Answers "dot-product or additive attention?": the timings, memory and trained runs as d_k grows, as the
/// report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let mut variants = Vec::new();
    for &d_k in &WIDTHS {
        for &(score, name) in &SCORES {
            let config = SyntheticConfig { attention_score: score, head_dim: Some(d_k), ..study.task() };
            // The dot products' runs are those `qkv study scaling` trains: the same configurations, kept once.
            let runs = study.train_seeds(&format!("additive: {name}, d_k = {d_k}"), &config)?;
            study.say(&format!("additive: timing {name} at d_k = {d_k}"));
            let cost = measure(study, &config)?;
            variants.push(Variant { d_k, score, name, runs, cost });
        }
    }
    figure(study, &variants)?;
    Ok(section(study, &variants))
}

/// Times forward and backward passes of one batch of the task under `config`'s model (five, one in a quick
/// study) and measures the peak memory one adds.
fn measure(study: &Study, config: &SyntheticConfig) -> Result<Cost> {
    let repeats = if study.quick() { 1 } else { 5 };
    let device = Device::Cpu;
    let vars = VarMap::new();
    let model = Transformer::new(&config.model(), seeded_var_builder(&vars, 1, DType::F32, &device))?;
    let (src, src_valid, tgt) = held_out_batch(config, BATCH, &device)?;
    let pass = || -> Result<()> {
        let logits = model.forward(&src, &src_valid, &tgt, &mut Mode::Eval)?;
        logits.sqr()?.mean_all()?.backward()?;
        Ok(())
    };
    pass()?; // warm-up: first-touch allocations, thread pool
    let peak = study.with_memory_released(|| peak_growth(&pass))?;
    let mut times = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        pass()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let (b, h, t, s) = (BATCH, config.heads, config.max_len + 1, config.max_len);
    let dh = config.head_dim.unwrap_or(config.d_model / config.heads);
    let per_block = (b * h * t * s) as f64 * if config.attention_score == Score::Additive { dh as f64 } else { 1.0 };
    let blocks = 3 * config.layers; // encoder self-, decoder self- and cross-attention
    let peak_mb = peak.map(|bytes| bytes as f64 / 1e6);
    Ok(Cost { ms: times[times.len() / 2], peak_mb, score_mb: per_block * blocks as f64 * 4.0 / 1e6 })
}

/// Runs `f` with the kernel's record of the peak resident set reset first, and returns how far the peak rose
/// above the resident set before (Linux; `None` elsewhere).
fn peak_growth(f: &dyn Fn() -> Result<()>) -> Result<Option<u64>> {
    let read = |name: &str| -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    };
    // Writing 5 to clear_refs resets VmHWM to the current resident set.
    let before = std::fs::write("/proc/self/clear_refs", "5").ok().and_then(|()| read("VmRSS:"));
    f()?;
    Ok(before.and_then(|before| Some(read("VmHWM:")?.saturating_sub(before))))
}

fn section(study: &Study, variants: &[Variant]) -> Section {
    let seeds = study.seeds();
    let mut table = Table::new(
        format!("Reversal task, {} seeds; one forward and backward pass of {BATCH} strings timed (median) and its peak memory growth measured", seeds.len()),
        &["d_k", "score", "ms per pass", "peak memory growth (MB)", "scores held at once (MB, arithmetic)", "ms per training step", "exact match %", "vs q·k/√d_k (Welch p)"],
    );
    for v in variants {
        let base =
            variants.iter().find(|o| o.d_k == v.d_k && o.score == Score::ScaledDot).map(|o| exact_match(&o.runs));
        let p = match base.and_then(|b| welch(&exact_match(&v.runs), &b)) {
            Some(test) if v.score != Score::ScaledDot => format!("{:.3}", test.p),
            _ => "—".into(),
        };
        let step_ms: Vec<f64> = v.runs.iter().map(RunResult::ms_per_step).collect();
        table.row(vec![
            v.d_k.to_string(),
            v.name.to_string(),
            format!("{:.1}", v.cost.ms),
            v.cost.peak_mb.map_or("n/a".into(), |mb| format!("{mb:.1}")),
            format!("{:.2}", v.cost.score_mb),
            format_spread(&step_ms, 1),
            format_spread(&exact_match(&v.runs), 1),
            p,
        ]);
    }
    let get = |d_k: usize, score: Score| variants.iter().find(|v| v.d_k == d_k && v.score == score);
    let wide = WIDTHS[WIDTHS.len() - 1];
    let em = |v: Option<&Variant>| v.map_or(f64::NAN, |v| mean_std(&exact_match(&v.runs)).0);
    let ratio = |a: Option<&Variant>, b: Option<&Variant>| match (a, b) {
        (Some(a), Some(b)) => a.cost.ms / b.cost.ms,
        _ => f64::NAN,
    };
    let answer = format!(
        "Additive attention's pass takes {:.1}× the scaled dot product's time at d_k = {} and {:.1}× at d_k = {wide} (its tanh(q + k) holds d_k numbers per query-key pair); trained at d_k = {wide}: exact match {:.1}% additive, {:.1}% scaled and {:.1}% unscaled dot product (at d_k = {}: {:.1}%, {:.1}%, {:.1}%).",
        ratio(get(WIDTHS[0], Score::Additive), get(WIDTHS[0], Score::ScaledDot)), WIDTHS[0],
        ratio(get(wide, Score::Additive), get(wide, Score::ScaledDot)),
        em(get(wide, Score::Additive)), em(get(wide, Score::ScaledDot)), em(get(wide, Score::Dot)),
        WIDTHS[0], em(get(WIDTHS[0], Score::Additive)), em(get(WIDTHS[0], Score::ScaledDot)), em(get(WIDTHS[0], Score::Dot)),
    );
    let task = study.task();
    Section {
        name: "additive".into(),
        question: "Why dot-product rather than additive attention?".into(),
        answer,
        setup: format!(
            "Additive score vₕᵀ tanh(qᵢ + kⱼ) per head (q, k the usual projections; vₕ learned), against q·k/√d_k and q·k, at d_k ∈ {WIDTHS:?} with {} heads; the built-in reversal task ({} Adam steps, d_model {}), seeds {seeds:?}. Timing: one forward and backward pass of {BATCH} held-out strings in one process, the median of 5 after a warm-up; memory: the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs) during one pass, after the allocator has handed its free memory back to the OS: a lower bound, as memory freed within the pass is reused unseen; the arithmetic column counts the scores of the three attention blocks alone.",
            task.heads, task.run.max_steps.unwrap_or(0), task.d_model,
        ),
        tables: vec![table],
        figures: vec![
            Figure { file: "additive_time.png".into(), caption: "Time of one forward and backward pass against d_k".into() },
            Figure { file: "additive_quality.png".into(), caption: "Held-out exact match against d_k (mean ± std over seeds)".into() },
        ],
        results: json!(variants.iter().map(|v| json!({"d_k": v.d_k, "score": v.score, "cost": v.cost, "runs": v.runs})).collect::<Vec<_>>()),
    }
}

fn figure(study: &Study, variants: &[Variant]) -> Result<()> {
    let series = |score: Score, name: &str, y: &dyn Fn(&Variant) -> (f64, Option<f64>)| Series {
        name: name.into(),
        points: variants
            .iter()
            .filter(|v| v.score == score)
            .map(|v| {
                let (y, spread) = y(v);
                Point { x: v.d_k as f64, y, spread }
            })
            .collect(),
        dashed: score == Score::Dot,
        points_only: false,
    };
    let all = |y: &dyn Fn(&Variant) -> (f64, Option<f64>)| SCORES.iter().map(|&(s, n)| series(s, n, y)).collect();
    Chart {
        title: "Forward + backward pass of one batch".into(),
        note: format!("{BATCH} strings, median of repeats"),
        x_label: "d_k".into(),
        y_label: "ms".into(),
        log_x: true,
        series: all(&|v: &Variant| (v.cost.ms, None)),
        ..Chart::default()
    }
    .draw(&study.figure("additive_time.png"))?;
    Chart {
        title: "Reversal task: exact match against d_k".into(),
        note: format!("mean ± std over {} seeds", study.seeds().len()),
        x_label: "d_k".into(),
        y_label: "held-out exact match (%)".into(),
        log_x: true,
        series: all(&|v: &Variant| {
            let (m, s) = mean_std(&exact_match(&v.runs));
            (m, Some(s))
        }),
        ..Chart::default()
    }
    .draw(&study.figure("additive_quality.png"))
}
