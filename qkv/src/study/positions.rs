//! How does a Transformer know where a token is? Attention itself is blind to order: permute the keys and each
//! query's output is the same. The paper adds fixed sinusoids (§3.5); the alternatives are a learned table,
//! Shaw et al.'s relative representations inside attention, rotary queries and keys (RoPE) and complex word
//! embeddings whose phase turns with position. Measured on reversal, where order is the whole answer, on the
//! lengths trained and on longer ones; and two claims about the sinusoids, checked numerically: PE(pos + k) is
//! a linear function of PE(pos), and the relative information in PEᵢ·PEⱼ does not survive W_Q and W_K.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde_json::json;

use super::{exact_match, format_spread, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::models::PositionEncoding;
use crate::nn::{seeded_var_builder, Linear, SinusoidalPosition, WeightInit};
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

/// The variants compared, with their names in the report.
pub const VARIANTS: [(PositionEncoding, &str); 6] = [
    (PositionEncoding::None, "no positions"),
    (PositionEncoding::Sinusoidal, "sinusoidal"),
    (PositionEncoding::Learned, "learned absolute"),
    (PositionEncoding::Relative, "Shaw relative (k = 4)"),
    (PositionEncoding::Rotary, "rotary (RoPE)"),
    (PositionEncoding::Complex, "complex embedding"),
];

/// After training on strings of 3–8 symbols, strings of 9 ..= this many are scored too.
pub const LONGEST: usize = 12;
/// Shaw et al.'s clipping distance: shorter than the trained strings, so that every distance a longer string
/// shows was trained — the reason the paper clips.
const CLIP: usize = 4;
/// Offsets k of the rotation claim, and the positions it is checked over.
const OFFSETS: [usize; 5] = [1, 2, 5, 10, 50];
const ROTATION_POSITIONS: usize = 1000;
/// Positions 0 .. this of the dot-product claim.
const DOT_POSITIONS: usize = 64;

/// Answers "how does a Transformer know where a token is?" (every position encoding trained on reversal, and
/// two claims about the sinusoids checked) as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let mut trained = Vec::new();
    for (encoding, name) in VARIANTS {
        trained.push((name, study.train_seeds(&format!("positions: {name}"), &variant(&task, encoding))?));
    }
    let rotation = rotation_errors(task.d_model)?;
    let seeds = study.seeds();
    let projected = seeds
        .iter()
        .map(|&seed| DotProducts::measure(task.d_model, task.d_model / task.heads, seed))
        .collect::<Result<Vec<_>>>()?;
    let raw = DotProducts::raw(task.d_model)?;
    figures(study, &trained, &raw, &projected)?;
    Ok(section(study, &trained, &rotation, &raw, &projected))
}

/// The study's task with `encoding`, an untied output projection (the complex embedding has no table to tie
/// it to, so no variant ties) and longer strings scored after training.
pub fn variant(task: &SyntheticConfig, encoding: PositionEncoding) -> SyntheticConfig {
    SyntheticConfig {
        position_encoding: encoding,
        relative_max_distance: CLIP,
        tie_word_embeddings: false,
        extrapolation_max_len: Some(LONGEST),
        ..task.clone()
    }
}

fn longer(runs: &[RunResult]) -> Vec<f64> {
    runs.iter().map(|r| 100.0 * r.longer_exact_match.unwrap_or(f64::NAN)).collect()
}

/// For each offset k: the largest |M_k·PE(pos) − PE(pos + k)| over pos in 0 .. 1000, where M_k turns each
/// (sin, cos) pair i by the angle k·ωᵢ — a matrix built from k alone. PE is qkv's own (f32) table.
pub fn rotation_errors(d_model: usize) -> Result<Vec<(usize, f64)>> {
    let longest = ROTATION_POSITIONS + OFFSETS.iter().max().copied().unwrap_or(0);
    let table = SinusoidalPosition::new(d_model)?.forward(longest, 0, &Device::Cpu)?.to_vec2::<f32>()?;
    let omega = |pair: usize| 10000f64.powf(-2.0 * pair as f64 / d_model as f64);
    let errors = OFFSETS.iter().map(|&k| {
        let mut worst = 0f64;
        for pos in 0..ROTATION_POSITIONS {
            for pair in 0..d_model / 2 {
                let (s, c) = (f64::from(table[pos][2 * pair]), f64::from(table[pos][2 * pair + 1]));
                let (sin_k, cos_k) = (k as f64 * omega(pair)).sin_cos();
                let turned = [s * cos_k + c * sin_k, c * cos_k - s * sin_k];
                let shifted = [table[pos + k][2 * pair], table[pos + k][2 * pair + 1]];
                for (t, e) in turned.iter().zip(shifted) {
                    worst = worst.max((t - f64::from(e)).abs());
                }
            }
        }
        (k, worst)
    });
    Ok(errors.collect())
}

/// Scores sᵢⱼ between the encodings of positions i, j < 64, and how much of their variance the offset i − j
/// explains (R² of the best function of i − j: 1 − within-offset variance / total variance).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DotProducts {
    /// sᵢⱼ, row i, column j.
    pub scores: Vec<Vec<f64>>,
    /// R² of the best function of the offset i − j: the share of the scores' variance the offset explains.
    pub explained_by_offset: f64,
}

impl DotProducts {
    /// sᵢⱼ = PEᵢ·PEⱼ.
    pub fn raw(d_model: usize) -> Result<Self> {
        let pe = SinusoidalPosition::new(d_model)?.forward(DOT_POSITIONS, 0, &Device::Cpu)?;
        Self::from_scores(pe.matmul(&pe.t()?)?)
    }

    /// sᵢⱼ = (PEᵢ W_Q)·(PEⱼ W_K) / √d_k for one head of width `head_dim`, W_Q and W_K drawn as the models draw
    /// them (Xavier uniform) with `seed`.
    pub fn measure(d_model: usize, head_dim: usize, seed: u64) -> Result<Self> {
        let vars = VarMap::new();
        let vb = seeded_var_builder(&vars, seed, DType::F32, &Device::Cpu);
        let project = |name: &str| Linear::new(vb.pp(name), d_model, d_model, false, WeightInit::XavierUniform);
        let (w_q, w_k) = (project("q_proj")?, project("k_proj")?);
        let pe = SinusoidalPosition::new(d_model)?.forward(DOT_POSITIONS, 0, &Device::Cpu)?;
        let q = w_q.forward(&pe)?.narrow(1, 0, head_dim)?;
        let k = w_k.forward(&pe)?.narrow(1, 0, head_dim)?;
        Self::from_scores((q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?)
    }

    fn from_scores(scores: Tensor) -> Result<Self> {
        let scores: Vec<Vec<f64>> =
            scores.to_vec2::<f32>()?.into_iter().map(|row| row.into_iter().map(f64::from).collect()).collect();
        let n = scores.len();
        let all: Vec<f64> = scores.iter().flatten().copied().collect();
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let total: f64 = all.iter().map(|s| (s - mean).powi(2)).sum();
        let mut within = 0.0;
        for offset in -(n as i64 - 1)..n as i64 {
            let group: Vec<f64> = (0..n as i64)
                .filter_map(|i| {
                    let j = i - offset;
                    (0..n as i64).contains(&j).then(|| scores[i as usize][j as usize])
                })
                .collect();
            let m = group.iter().sum::<f64>() / group.len() as f64;
            within += group.iter().map(|s| (s - m).powi(2)).sum::<f64>();
        }
        // Scores that do not vary at all are trivially a function of the offset.
        let explained = if total > 0.0 { 1.0 - within / total } else { 1.0 };
        Ok(Self { scores, explained_by_offset: explained })
    }

    /// s(pos, pos + k) for k = 0 .. `span`.
    fn along(&self, pos: usize, span: usize) -> Vec<Point> {
        (0..=span)
            .filter(|k| pos + k < self.scores.len())
            .map(|k| Point { x: k as f64, y: self.scores[pos][pos + k], spread: None })
            .collect()
    }
}

fn section(
    study: &Study,
    trained: &[(&str, Vec<RunResult>)],
    rotation: &[(usize, f64)],
    raw: &DotProducts,
    projected: &[DotProducts],
) -> Section {
    let seeds = study.seeds();
    let task = study.task();
    let base = trained.iter().find(|t| t.0.starts_with("sinusoidal")).map_or(&trained[0].1, |t| &t.1);
    let p = |name: &str, a: Vec<f64>, b: Vec<f64>| match welch(&a, &b) {
        Some(test) if !name.starts_with("sinusoidal") => format!("{:.3}", test.p),
        _ => "—".into(),
    };
    let mut table = Table::new(
        format!("Reversal, {} seeds: exact match on held-out strings of the trained lengths (3–8) and of longer ones (9–{LONGEST}), never trained on", seeds.len()),
        &["positions", "parameters", "exact match % (3–8)", "exact match % (9–12)", "final loss", "3–8 vs sinusoidal (Welch p)", "9–12 vs sinusoidal (Welch p)"],
    );
    for (name, runs) in trained {
        table.row(vec![
            name.to_string(),
            runs.first().map_or(0, |r| r.parameters).to_string(),
            format_spread(&exact_match(runs), 1),
            format_spread(&longer(runs), 1),
            format_spread(&runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            p(name, exact_match(runs), exact_match(base)),
            p(name, longer(runs), longer(base)),
        ]);
    }
    let mut rotation_table = Table::new(
        format!("PE(pos + k) against M_k·PE(pos), M_k the rotation of each (sin, cos) pair i by k·ωᵢ, over pos 0 .. {ROTATION_POSITIONS} (d_model {}; PE in f32)", task.d_model),
        &["k", "largest error, max over pos and components"],
    );
    for (k, error) in rotation {
        rotation_table.row(vec![k.to_string(), format!("{error:.1e}")]);
    }
    let explained: Vec<f64> = projected.iter().map(|d| d.explained_by_offset).collect();
    let mut dot_table = Table::new(
        format!("Share of the variance of sᵢⱼ over positions i, j < {DOT_POSITIONS} that the offset i − j explains (R²; 1 = a function of i − j alone)"),
        &["score", "R² of i − j"],
    );
    dot_table.row(vec!["PEᵢ·PEⱼ".into(), format!("{:.6}", raw.explained_by_offset)]);
    dot_table.row(vec![
        format!("(PEᵢ W_Q)·(PEⱼ W_K)/√d_k, one head, Xavier W_Q, W_K ({} seeds)", seeds.len()),
        format_spread(&explained, 3),
    ]);

    let answer = answer(trained, base, rotation, raw, &explained);
    Section {
        name: "positions".into(),
        question: "How does the model know where a token is, and which encoding extrapolates?".into(),
        answer,
        setup: format!(
            "The built-in reversal task ({} Adam steps on strings of 3–8 symbols), {}+{} layers, d_model {}, {} heads, untied output projection in every variant; the variants differ only in position information (the encoder's and decoder's self-attention for Shaw and RoPE, the embeddings otherwise; Shaw clips at k = {CLIP}); seeds {seeds:?}. Exact match is greedy decoding of {} held-out strings per length range. The two claims use qkv's sinusoidal table at d_model {}; W_Q and W_K are drawn as the models draw them (the trained ones are not read back).",
            task.run.max_steps.unwrap_or(0), task.layers, task.layers, task.d_model, task.heads, task.eval_size, task.d_model,
        ),
        tables: vec![table, rotation_table, dot_table],
        figures: vec![
            Figure { file: "positions.png".into(), caption: "Exact match per position encoding, trained lengths and longer ones (mean ± std over seeds)".into() },
            Figure { file: "pe_relative.png".into(), caption: "PE(pos)·PE(pos + k) against k from three starting positions: one curve, a function of k alone".into() },
            Figure { file: "pe_projected.png".into(), caption: "The same scores after W_Q and W_K (first seed): the curves part, the score depends on pos too".into() },
        ],
        results: json!({
            "variants": trained.iter().map(|(name, runs)| json!({"variant": name, "runs": runs})).collect::<Vec<_>>(),
            "rotation_errors": rotation,
            "explained_by_offset": {"raw": raw.explained_by_offset, "projected": explained},
        }),
    }
}

/// The one-line answer, from the numbers: a difference from the sinusoids is called one only where Welch's test
/// over the seeds gives p < 0.05.
fn answer(
    trained: &[(&str, Vec<RunResult>)],
    base: &[RunResult],
    rotation: &[(usize, f64)],
    raw: &DotProducts,
    explained: &[f64],
) -> String {
    let p_value = |a: &[f64], b: &[f64]| welch(a, b).map_or(f64::NAN, |t| t.p);
    let describe = |f: fn(&[RunResult]) -> Vec<f64>| -> Vec<String> {
        trained
            .iter()
            .map(|(name, runs)| {
                let p = p_value(&f(runs), &f(base));
                let versus =
                    if name.starts_with("sinusoidal") || p.is_nan() { String::new() } else { format!(" (p = {p:.2})") };
                format!("{name} {}{versus}", format_spread(&f(runs), 1))
            })
            .collect()
    };
    let differs = |f: fn(&[RunResult]) -> Vec<f64>| -> Vec<&str> {
        trained
            .iter()
            .filter(|(name, runs)| !name.starts_with("sinusoidal") && p_value(&f(runs), &f(base)) < 0.05)
            .map(|t| t.0)
            .collect()
    };
    let verdict = |names: Vec<&str>| match names.is_empty() {
        true => "no variant differs from the sinusoids beyond seed noise (Welch p ≥ 0.05)".to_string(),
        false => format!("only {} differ from the sinusoids beyond seed noise (Welch p < 0.05)", names.join(" and ")),
    };
    let worst_rotation = rotation.iter().map(|r| r.1).fold(0.0, f64::max);
    format!(
        "Exact match % on the trained lengths 3–8: {}; {}. On longer strings (9–{LONGEST}): {}; {}. PE(pos + k) is a rotation of PE(pos) by a matrix of k alone (largest error {worst_rotation:.0e}, f32 rounding), and i − j explains {:.4} of the variance of PEᵢ·PEⱼ but {} of (PEᵢ W_Q)·(PEⱼ W_K): the projections lose the relative structure of the raw encodings.",
        describe(exact_match).join(", "),
        verdict(differs(exact_match)),
        describe(longer).join(", "),
        verdict(differs(longer)),
        raw.explained_by_offset,
        format_spread(explained, 2),
    )
}

fn figures(
    study: &Study,
    trained: &[(&str, Vec<RunResult>)],
    raw: &DotProducts,
    projected: &[DotProducts],
) -> Result<()> {
    let point = |i: usize, values: Vec<f64>| {
        let (mean, std) = mean_std(&values);
        Point { x: i as f64, y: mean, spread: Some(std) }
    };
    let series = |name: &str, f: fn(&[RunResult]) -> Vec<f64>, dashed| Series {
        name: name.into(),
        points: trained.iter().enumerate().map(|(i, t)| point(i, f(&t.1))).collect(),
        dashed,
        points_only: false,
    };
    Chart {
        title: "Reversal by position encoding".into(),
        note: format!("trained on 3–8 symbols, mean ± std over {} seeds", study.seeds().len()),
        x_label: "position information".into(),
        y_label: "exact match %".into(),
        x_categories: trained.iter().map(|t| t.0.to_string()).collect(),
        series: vec![
            series("lengths 3–8 (trained)", exact_match, false),
            series("lengths 9–12 (longer)", longer, true),
        ],
        ..Chart::default()
    }
    .draw(&study.figure("positions.png"))?;
    let along = |scores: &DotProducts, title: &str, note: &str, file: &str| {
        Chart {
            title: title.into(),
            note: note.into(),
            x_label: "offset k".into(),
            y_label: "score".into(),
            series: [0, 10, 30]
                .iter()
                .map(|&pos| Series {
                    name: format!("pos = {pos}"),
                    points: scores.along(pos, 30),
                    dashed: pos > 0,
                    points_only: false,
                })
                .collect(),
            ..Chart::default()
        }
        .draw(&study.figure(file))
    };
    along(raw, "PE(pos)·PE(pos + k)", "sinusoidal encodings, d_model as the task's", "pe_relative.png")?;
    if let Some(first) = projected.first() {
        along(
            first,
            "(PE(pos) W_Q)·(PE(pos + k) W_K) / √d_k",
            "one head, Xavier-initialised W_Q and W_K",
            "pe_projected.png",
        )?;
    }
    Ok(())
}
