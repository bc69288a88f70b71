//! What attention looks like: every head's weights as heatmaps, from the tied-qk question's three trained
//! variants (same runs, read back from `runs/`) on one held-out string. The cross-attention of a model that
//! reverses strings is the anti-diagonal; Q = K and missing projections show up in the encoder's maps. Any
//! model directory draws the same way with `qkv attention --model DIR --text …`.

use serde_json::json;

use super::projections::{variant, VARIANTS};
use super::runs::AttentionStats;
use super::{Figure, RunResult, Section, Study, Table};
use crate::nn::Projections;
use crate::plot::attention_grid;
use crate::Result;

/// Draws every head's attention of the tied-qk question's three variants on one held-out string, as the
/// report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let task = study.task();
    let seed = study.seeds()[0];
    let mut runs = Vec::new();
    for (projections, name) in VARIANTS {
        let result = study.train(&format!("tied-qk: {name}"), &variant(&task, projections), seed)?;
        runs.push((projections, name, result));
    }
    let mut figures = Vec::new();
    for (projections, name, result) in &runs {
        let example = &result.example;
        let file = format!("heatmap_encoder_{}.png", file_stem(*projections));
        let title = format!("encoder self-attention, {name}, seed {seed}");
        let tokens = &example.source_tokens;
        attention_grid(&example.encoder, tokens, tokens, &title, &study.figure(&file))?;
        figures.push(Figure { file, caption: format!("Encoder self-attention of every head, {name}") });
    }
    let (_, name, baseline) = &runs[0];
    let example = &baseline.example;
    let file = "heatmap_cross_separate.png".to_string();
    let title = format!("cross-attention, {name}, seed {seed}");
    attention_grid(&example.cross, &example.source_tokens, &example.predicted_tokens, &title, &study.figure(&file))?;
    figures.push(Figure {
        file,
        caption: format!("Cross-attention of every head, {name}: rows are the symbols predicted, columns the source"),
    });
    Ok(section(study, seed, &runs, figures))
}

fn file_stem(projections: Projections) -> &'static str {
    match projections {
        Projections::Separate => "separate",
        Projections::SharedQk => "shared_qk",
        Projections::None => "no_projection",
    }
}

fn section(study: &Study, seed: u64, runs: &[(Projections, &str, RunResult)], figures: Vec<Figure>) -> Section {
    let shown = runs[0].2.example.source_tokens.join(" ");
    let mut table = Table::new(
        format!("The runs drawn (seed {seed}), on held-out string {shown}: statistics over 256 held-out strings"),
        &["projections", "own-position weight (encoder)", "cross weight on the mirrored position", "exact match %"],
    );
    for (_, name, r) in runs {
        table.row(vec![
            name.to_string(),
            format!("{:.3}", AttentionStats::mean(&r.attention.encoder_self_mass)),
            format!("{:.3}", AttentionStats::mean(&r.attention.cross_alignment)),
            format!("{:.1}", r.exact_match_percent()),
        ]);
    }
    let own = |i: usize| AttentionStats::mean(&runs[i].2.attention.encoder_self_mass);
    let answer = format!(
        "In the runs drawn (seed {seed}), a model that reverses strings puts {:.2} of each output's cross-attention on the mirrored source symbol: the heatmap is the anti-diagonal. The encoder's maps show the projections: weight on the own position {:.2} (separate), {:.2} (Q = K), {:.2} (q = k = v = x, a bright diagonal). `qkv attention --model DIR --text …` draws the same grids for any BERT, GPT-2 or translation model.",
        AttentionStats::mean(&runs[0].2.attention.cross_alignment), own(0), own(1), own(2),
    );
    Section {
        name: "heatmaps".into(),
        question: "What does attention look like?".into(),
        answer,
        setup: format!(
            "The tied-qk question's three runs with seed {seed} ({} steps of the reversal task), drawn on the first held-out string; every layer (rows) and head (columns).",
            study.task().run.max_steps.unwrap_or(0),
        ),
        tables: vec![table],
        figures,
        results: json!(runs.iter().map(|(_, name, r)| json!({"variant": name, "example": r.example})).collect::<Vec<_>>()),
    }
}
