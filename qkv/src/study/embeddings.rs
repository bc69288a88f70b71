//! Why multiply the embeddings by √d_model, and why share and tie them? The paper (§3.4) multiplies the token
//! embeddings by √d_model before adding the position encoding, and uses one matrix for the source embedding,
//! the target embedding and the pre-softmax projection. Whether the factor helps depends on how the table is
//! drawn: it decides how loud the word is next to the position encoding, whose components have variance ½.
//! Measured: the spread of the embedding at initialisation against the encoding's, for the study's model and
//! for the paper's base model, and training on reversal with each factor × initialisation; then the parameters
//! and the training of each sharing and tying switch.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde_json::json;

use super::{exact_match, format_spread, mean_loss_curve, mean_std, Figure, RunResult, Section, Study, Table};
use crate::metrics::t_test::welch;
use crate::models::TransformerConfig;
use crate::nn::{seeded_var_builder, Embedding, SinusoidalPosition, WeightInit};
use crate::plot::{Chart, Point, Series};
use crate::train::synthetic::SyntheticConfig;
use crate::Result;

/// N(0, 0.02²): BERT's and GPT-2's `initializer_range`, the other common choice.
const NORMAL_002: WeightInit = WeightInit::Normal { std: 0.02 };

/// A training loss below this counts as "learned" for the speed column.
const LEARNED_LOSS: f64 = 0.1;

/// One way of drawing and scaling the embedding.
#[derive(Debug, Clone, Copy)]
pub struct Scaling {
    /// The variant's name in the report.
    pub name: &'static str,
    /// × √d_model.
    pub scaled: bool,
    /// Absent: the model's default rule (N(0, 1/d_model) when scaled).
    pub init: Option<WeightInit>,
}

/// The factor × initialisation variants, qkv's default first.
pub const SCALINGS: [Scaling; 5] = [
    Scaling { name: "×√d, N(0, 1/d) (qkv's default)", scaled: true, init: None },
    Scaling { name: "×√d, Xavier", scaled: true, init: Some(WeightInit::XavierUniform) },
    Scaling { name: "×√d, N(0, 0.02)", scaled: true, init: Some(NORMAL_002) },
    Scaling { name: "no factor, Xavier", scaled: false, init: Some(WeightInit::XavierUniform) },
    Scaling { name: "no factor, N(0, 0.02)", scaled: false, init: Some(NORMAL_002) },
];

/// One sharing arrangement: one matrix for source and target, and the output projection tied to the target's.
#[derive(Debug, Clone, Copy)]
pub struct Sharing {
    /// The arrangement's name in the report.
    pub name: &'static str,
    /// One embedding matrix for source and target.
    pub shared: bool,
    /// The output projection is the target embedding matrix.
    pub tied: bool,
}

/// The paper's arrangement first.
pub const SHARINGS: [Sharing; 4] = [
    Sharing { name: "shared and tied (the paper)", shared: true, tied: true },
    Sharing { name: "shared, untied output", shared: true, tied: false },
    Sharing { name: "separate, output tied to the target's", shared: false, tied: true },
    Sharing { name: "separate, untied", shared: false, tied: false },
];

/// The spread at initialisation of one scaling, for one model shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spread {
    /// V: rows of the table.
    pub vocab_size: usize,
    /// C: the model width, and the table's columns.
    pub d_model: usize,
    /// Standard deviation of the (scaled) embedding's components.
    pub embedding_std: f64,
    /// Variance of the embedding over the position encoding's variance.
    pub variance_ratio: f64,
}

/// Answers "why multiply the embeddings by √d_model, and why share and tie them?" as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let mut scaled = Vec::new();
    for scaling in SCALINGS {
        let runs = study.train_seeds(&format!("embeddings: {}", scaling.name), &scaling_variant(&task, scaling))?;
        scaled.push((scaling, runs));
    }
    let mut shared = Vec::new();
    for sharing in SHARINGS {
        let runs = study.train_seeds(&format!("embeddings: {}", sharing.name), &sharing_variant(&task, sharing))?;
        shared.push((sharing, runs));
    }
    let paper = TransformerConfig::base();
    let shapes = [(task.model().vocab_size, task.d_model), (paper.vocab_size, paper.d_model)];
    let spreads = SCALINGS
        .iter()
        .map(|s| shapes.iter().map(|&(v, d)| spread(v, d, *s)).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    figures(study, &scaled, &shared)?;
    Ok(section(study, &scaled, &shared, &spreads))
}

/// The study's task with `scaling`'s factor and initialisation.
pub fn scaling_variant(task: &SyntheticConfig, scaling: Scaling) -> SyntheticConfig {
    SyntheticConfig { scale_embedding: scaling.scaled, embedding_init: scaling.init, ..task.clone() }
}

/// The study's task with `sharing`'s shared and tied embeddings.
pub fn sharing_variant(task: &SyntheticConfig, sharing: Sharing) -> SyntheticConfig {
    SyntheticConfig {
        share_encoder_decoder_embeddings: sharing.shared,
        tie_word_embeddings: sharing.tied,
        ..task.clone()
    }
}

/// The standard deviation of a freshly drawn (V, C) table's scaled rows, and its variance over the sinusoidal
/// encoding's (over the first 512 positions).
pub fn spread(vocab_size: usize, d_model: usize, scaling: Scaling) -> Result<Spread> {
    let config = TransformerConfig {
        vocab_size,
        d_model,
        scale_embedding: scaling.scaled,
        embedding_init: scaling.init,
        ..TransformerConfig::default()
    };
    let vars = VarMap::new();
    let vb = seeded_var_builder(&vars, 1, DType::F32, &Device::Cpu);
    let table = Embedding::token(vb, vocab_size, d_model, scaling.scaled, config.embedding_weight_init())?;
    let ids = Tensor::arange(0u32, vocab_size as u32, &Device::Cpu)?.unsqueeze(0)?;
    let embedding_var = variance(&table.forward(&ids)?)?;
    let position_var = variance(&SinusoidalPosition::new(d_model)?.forward(512, 0, &Device::Cpu)?)?;
    Ok(Spread {
        vocab_size,
        d_model,
        embedding_std: embedding_var.sqrt(),
        variance_ratio: embedding_var / position_var,
    })
}

/// The population variance of every element.
fn variance(x: &Tensor) -> Result<f64> {
    let values = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    Ok(values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
}

/// Steps until the kept training loss first drops below [`LEARNED_LOSS`]; a run that never does counts its
/// whole length.
fn steps_to_learn(runs: &[RunResult]) -> Vec<f64> {
    runs.iter().map(|r| r.steps_to_loss(LEARNED_LOSS).unwrap_or(r.steps) as f64).collect()
}

fn welch_p(runs: &[RunResult], base: &[RunResult]) -> f64 {
    welch(&exact_match(runs), &exact_match(base)).map_or(f64::NAN, |t| t.p)
}

fn verdict(p: f64) -> &'static str {
    if p < 0.05 {
        "differs, Welch p < 0.05"
    } else {
        "within noise"
    }
}

fn section(
    study: &Study,
    scaled: &[(Scaling, Vec<RunResult>)],
    shared: &[(Sharing, Vec<RunResult>)],
    spreads: &[Vec<Spread>],
) -> Section {
    let seeds = study.seeds();
    let task = study.task();
    let paper = TransformerConfig::base();
    let mut spread_table = Table::new(
        format!(
            "Spread of the embedding at initialisation next to the sinusoidal encoding's (component std {:.3}): this study's model (V {}, d {}) and the paper's base model (V {}, d {})",
            0.5f64.sqrt(),
            spreads[0][0].vocab_size,
            spreads[0][0].d_model,
            spreads[0][1].vocab_size,
            spreads[0][1].d_model
        ),
        &["embedding", "std (study)", "var / var(PE) (study)", "std (base)", "var / var(PE) (base)"],
    );
    for (scaling, s) in SCALINGS.iter().zip(spreads) {
        spread_table.row(vec![
            scaling.name.to_string(),
            format!("{:.4}", s[0].embedding_std),
            format!("{:.3}", s[0].variance_ratio),
            format!("{:.4}", s[1].embedding_std),
            format!("{:.2e}", s[1].variance_ratio),
        ]);
    }
    let base = &scaled[0].1;
    let mut scaling_table = Table::new(
        format!("Reversal, {} seeds: each factor × initialisation", seeds.len()),
        &[
            "embedding",
            "exact match %",
            "final loss",
            &format!("steps to loss < {LEARNED_LOSS}"),
            "vs default (Welch p)",
        ],
    );
    for (i, (scaling, runs)) in scaled.iter().enumerate() {
        scaling_table.row(vec![
            scaling.name.to_string(),
            format_spread(&exact_match(runs), 1),
            format_spread(&runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            format_spread(&steps_to_learn(runs), 0),
            if i == 0 { "—".into() } else { format!("{:.3}", welch_p(runs, base)) },
        ]);
    }
    let parameters = |sharing: &Sharing| {
        TransformerConfig {
            share_encoder_decoder_embeddings: sharing.shared,
            tie_word_embeddings: sharing.tied,
            ..paper.clone()
        }
        .parameter_count()
    };
    let tied_base = &shared[0].1;
    let mut sharing_table = Table::new(
        format!("Sharing and tying: parameters of this study's model and of the paper's base model (37 000-token joint vocabulary), and reversal over {} seeds", seeds.len()),
        &["embeddings", "parameters (study)", "parameters (base)", "exact match %", "final loss", "vs shared and tied (Welch p)"],
    );
    for (i, (sharing, runs)) in shared.iter().enumerate() {
        sharing_table.row(vec![
            sharing.name.to_string(),
            runs.first().map_or(0, |r| r.parameters).to_string(),
            format!("{:.1} M", parameters(sharing) / 1e6),
            format_spread(&exact_match(runs), 1),
            format_spread(&runs.iter().map(|r| r.final_loss).collect::<Vec<_>>(), 3),
            if i == 0 { "—".into() } else { format!("{:.3}", welch_p(runs, tied_base)) },
        ]);
    }
    let describe_scaling = scaled[1..]
        .iter()
        .zip(&spreads[1..])
        .map(|((s, runs), spread)| {
            let (em, p) = (mean_std(&exact_match(runs)).0, welch_p(runs, base));
            format!("{} (ratio {:.3}) {em:.1}% ({})", s.name, spread[0].variance_ratio, verdict(p))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let describe_sharing = shared[1..]
        .iter()
        .map(|(s, runs)| {
            format!(
                "{} {:.1} M parameters, {:.1}% ({})",
                s.name,
                parameters(s) / 1e6,
                mean_std(&exact_match(runs)).0,
                verdict(welch_p(runs, tied_base))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let sharing_differs = shared[1..].iter().any(|(_, runs)| welch_p(runs, tied_base) < 0.05);
    let (xavier_base, normal_base) = (&spreads[3][1], &spreads[4][1]);
    let answer = format!(
        "The factor only makes sense with the table drawn for it. In the paper's base model (V {}, d {}), ×√d over N(0, 1/d) gives the word {:.1}× the sinusoidal encoding's variance, while unscaled Xavier gives it {:.1e} of it and unscaled N(0, 0.02) {:.1e}: the input is almost all position. On reversal (V {}, d {}, where Xavier's tables are far larger than at V = 37 000) the default (ratio {:.2}) reaches {:.1}% exact match; {describe_scaling}. Sharing and tying: one matrix for source, target and output (the paper) has {:.1} M parameters in the base model; {describe_sharing} — {}.",
        paper.vocab_size,
        paper.d_model,
        spreads[0][1].variance_ratio,
        xavier_base.variance_ratio,
        normal_base.variance_ratio,
        task.model().vocab_size,
        task.d_model,
        spreads[0][0].variance_ratio,
        mean_std(&exact_match(base)).0,
        parameters(&SHARINGS[0]) / 1e6,
        if sharing_differs {
            "the switches change the result beyond seed noise"
        } else {
            "the saving costs nothing measurable here"
        },
    );
    Section {
        name: "embeddings".into(),
        question: "Why multiply the embeddings by √d_model, and why share and tie them?".into(),
        answer,
        setup: format!(
            "Spreads: one table drawn per variant (seed 1) and looked up for every id, the sinusoidal encoding over positions 0 .. 512. Training: the built-in reversal task ({} Adam steps of {} strings, the paper's schedule), {}+{} layers, d_model {}, {} heads; the variants differ only in the embedding's factor and initialisation, or in which of the three matrices are one; seeds {seeds:?}. Exact match: greedy decoding of {} held-out strings. The study's vocabulary is 13 tokens, so its parameter differences are small; the base-model column counts the paper's 37 000-token vocabulary (TransformerConfig::parameter_count).",
            task.run.max_steps.unwrap_or(0), task.batch_size, task.layers, task.layers, task.d_model, task.heads, task.eval_size,
        ),
        tables: vec![spread_table, scaling_table, sharing_table],
        figures: vec![
            Figure { file: "embeddings_loss.png".into(), caption: "Training loss per embedding factor × initialisation (mean over seeds)".into() },
            Figure { file: "embeddings_sharing.png".into(), caption: "Held-out exact match per sharing arrangement (mean ± std over seeds)".into() },
        ],
        results: json!({
            "spreads": SCALINGS.iter().zip(spreads).map(|(s, sp)| json!({"variant": s.name, "spreads": sp})).collect::<Vec<_>>(),
            "scaling": scaled.iter().map(|(s, runs)| json!({"variant": s.name, "runs": runs})).collect::<Vec<_>>(),
            "sharing": shared.iter().map(|(s, runs)| json!({"variant": s.name, "parameters_base": parameters(s), "runs": runs})).collect::<Vec<_>>(),
        }),
    }
}

fn figures(study: &Study, scaled: &[(Scaling, Vec<RunResult>)], shared: &[(Sharing, Vec<RunResult>)]) -> Result<()> {
    let seeds = study.seeds().len();
    Chart {
        title: "Embedding factor and initialisation".into(),
        note: format!("reversal, training loss, mean over {seeds} seeds"),
        x_label: "step".into(),
        y_label: "training loss".into(),
        series: scaled
            .iter()
            .map(|(s, runs)| Series {
                name: s.name.into(),
                points: mean_loss_curve(runs),
                dashed: !s.scaled,
                points_only: false,
            })
            .collect(),
        ..Chart::default()
    }
    .draw(&study.figure("embeddings_loss.png"))?;
    Chart {
        title: "Sharing and tying the embeddings".into(),
        note: format!("reversal, mean ± std over {seeds} seeds"),
        x_label: "embeddings".into(),
        y_label: "held-out exact match %".into(),
        x_categories: shared.iter().map(|s| s.0.name.to_string()).collect(),
        series: vec![Series {
            name: "exact match".into(),
            points: shared
                .iter()
                .enumerate()
                .map(|(i, (_, runs))| {
                    let (mean, std) = mean_std(&exact_match(runs));
                    Point { x: i as f64, y: mean, spread: Some(std) }
                })
                .collect(),
            dashed: false,
            points_only: false,
        }],
        ..Chart::default()
    }
    .draw(&study.figure("embeddings_sharing.png"))
}
