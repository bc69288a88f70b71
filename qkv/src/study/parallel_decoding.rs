//! Why is training parallel and inference not? Under the causal mask, position t of the decoder sees only
//! positions ≤ t, so one teacher-forced pass computes the outputs of every position at once, exactly as
//! step-by-step decoding would, which must wait for each token before the next. And why may a decoder reuse
//! the keys and values of earlier positions (the GPT-2 question)? Because, under that mask, they do not depend
//! on anything that comes later: the cache gives the same logits, at a cost per token that no longer grows
//! with the position.

use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarMap;
use rand::{Rng as _, SeedableRng};
use serde_json::json;

use super::{Figure, Section, Study, Table};
use crate::models::{Transformer, TransformerConfig};
use crate::nn::{seeded_var_builder, Mode};
use crate::plot::{Chart, Point, Series};
use crate::rng::Rng;
use crate::Result;

#[derive(Debug, Clone, serde::Serialize)]
struct Timings {
    target_len: usize,
    /// One teacher-forced pass over every position, ms.
    parallel_ms: f64,
    /// Decoding one position at a time with the key/value cache, ms in all.
    cached_ms: f64,
    /// Decoding one position at a time, recomputing the whole prefix each step, ms in all.
    uncached_ms: f64,
    /// ms per token at each position, with and without the cache.
    cached_per_position: Vec<f64>,
    uncached_per_position: Vec<f64>,
    /// Largest |logit| difference of step-by-step decoding (with / without the cache) from the parallel pass.
    cached_max_difference: f64,
    uncached_max_difference: f64,
}

fn model_config() -> TransformerConfig {
    TransformerConfig {
        vocab_size: 1000,
        dropout: 0.0,
        attention_dropout: 0.0,
        activation_dropout: 0.0,
        ..TransformerConfig::small()
    }
}

/// Answers "why is training parallel and inference not?" and whether the key/value cache changes the
/// logits, as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let target_len = if study.quick() { 8 } else { 128 };
    let config = model_config();
    study.say(&format!("parallel-decoding: {target_len} target positions, teacher-forced against step by step"));
    let timings = measure(&config, 32, target_len)?;
    figure(study, &timings)?;
    Ok(section(&config, &timings))
}

fn measure(config: &TransformerConfig, source_len: usize, target_len: usize) -> Result<Timings> {
    let device = Device::Cpu;
    let vars = VarMap::new();
    let model = Transformer::new(config, seeded_var_builder(&vars, 7, DType::F32, &device))?;
    let mut rng = Rng::seed_from_u64(11);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(3..config.vocab_size as u32)).collect() };
    let src = Tensor::from_vec(ids(source_len), (1, source_len), &device)?;
    let src_valid = Tensor::ones((1, source_len), DType::U8, &device)?;
    let mut tgt_ids = vec![config.bos_token_id];
    tgt_ids.extend(ids(target_len - 1));
    let tgt = Tensor::from_vec(tgt_ids, (1, target_len), &device)?;

    let src_mask = Transformer::source_mask(&src_valid)?;
    let memory = model.encode(&src, &src_mask, &mut Mode::Eval)?;
    let start = Instant::now();
    let parallel = model.project(&model.decode(&tgt, &memory, &src_mask, &mut Mode::Eval)?)?; // (1, T, V)
    let parallel_ms = start.elapsed().as_secs_f64() * 1000.0;

    let mut cache = model.new_cache();
    let (mut cached_per_position, mut cached_max) = (Vec::new(), 0f64);
    for t in 0..target_len {
        let start = Instant::now();
        let hidden = model.decode_step(&tgt.i((.., t..t + 1))?, &memory, &src_mask, &mut cache)?;
        let logits = model.project(&hidden)?;
        cached_per_position.push(start.elapsed().as_secs_f64() * 1000.0);
        cached_max = cached_max.max(max_difference(&logits.i((0, 0))?, &parallel.i((0, t))?)?);
    }
    let (mut uncached_per_position, mut uncached_max) = (Vec::new(), 0f64);
    for t in 0..target_len {
        let start = Instant::now();
        let hidden = model.decode(&tgt.i((.., 0..t + 1))?, &memory, &src_mask, &mut Mode::Eval)?;
        let logits = model.project(&hidden.i((.., t..t + 1))?)?;
        uncached_per_position.push(start.elapsed().as_secs_f64() * 1000.0);
        uncached_max = uncached_max.max(max_difference(&logits.i((0, 0))?, &parallel.i((0, t))?)?);
    }
    Ok(Timings {
        target_len,
        parallel_ms,
        cached_ms: cached_per_position.iter().sum(),
        uncached_ms: uncached_per_position.iter().sum(),
        cached_per_position,
        uncached_per_position,
        cached_max_difference: cached_max,
        uncached_max_difference: uncached_max,
    })
}

fn max_difference(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(f64::from((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?))
}

fn section(config: &TransformerConfig, t: &Timings) -> Section {
    let mut table = Table::new(
        format!("One target of {} positions behind a 32-token source, batch 1, random weights", t.target_len),
        &["how", "ms in all", "ms per token (first → last position)", "max |logit − parallel logit|"],
    );
    let ends = |v: &[f64]| {
        format!("{:.2} → {:.2}", v.first().copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
    };
    table.row(vec![
        "teacher forcing: every position in one pass".into(),
        format!("{:.1}", t.parallel_ms),
        format!("{:.3} (all at once)", t.parallel_ms / t.target_len as f64),
        "—".into(),
    ]);
    table.row(vec![
        "step by step, key/value cache".into(),
        format!("{:.1}", t.cached_ms),
        ends(&t.cached_per_position),
        format!("{:.1e}", t.cached_max_difference),
    ]);
    table.row(vec![
        "step by step, prefix recomputed".into(),
        format!("{:.1}", t.uncached_ms),
        ends(&t.uncached_per_position),
        format!("{:.1e}", t.uncached_max_difference),
    ]);
    let answer = format!(
        "The causal mask lets one pass compute all {} positions in {:.1} ms, {:.1}× faster than decoding them one by one with the cache ({:.1} ms) and {:.0}× faster than without it ({:.1} ms), with the same logits (largest difference {:.1e}); the cache is exact ({:.1e}) because earlier keys and values never see later tokens, and it keeps the cost per token flat ({:.2} → {:.2} ms from first to last position, against {:.2} → {:.2} ms recomputing).",
        t.target_len, t.parallel_ms, t.cached_ms / t.parallel_ms, t.cached_ms, t.uncached_ms / t.parallel_ms, t.uncached_ms,
        t.uncached_max_difference, t.cached_max_difference,
        t.cached_per_position.first().copied().unwrap_or(f64::NAN), t.cached_per_position.last().copied().unwrap_or(f64::NAN),
        t.uncached_per_position.first().copied().unwrap_or(f64::NAN), t.uncached_per_position.last().copied().unwrap_or(f64::NAN),
    );
    Section {
        name: "parallel-decoding".into(),
        question: "Why is training parallel and decoding sequential, and why can a decoder cache K and V?".into(),
        answer,
        setup: format!(
            "A randomly initialised Transformer of the `small` preset ({}+{} layers, d_model {}, {} heads, vocabulary {}), inference mode; the target tokens are fixed (random), so the three ways compute the same function: one teacher-forced pass; one position at a time with the decoder's key/value cache; one position at a time over the whole prefix. Times are single measurements on this machine, with all its threads.",
            config.encoder_layers, config.decoder_layers, config.d_model, config.decoder_attention_heads, config.vocab_size,
        ),
        tables: vec![table],
        figures: vec![Figure { file: "parallel_decoding.png".into(), caption: "Time per decoded token against its position, with and without the cache".into() }],
        results: json!(t),
    }
}

fn figure(study: &Study, t: &Timings) -> Result<()> {
    let series = |name: &str, v: &[f64], dashed: bool| Series {
        name: name.into(),
        points: v.iter().enumerate().map(|(i, &ms)| Point { x: (i + 1) as f64, y: ms, spread: None }).collect(),
        dashed,
        points_only: false,
    };
    Chart {
        title: "Decoding one token at a time".into(),
        note: "batch 1, small preset, random weights".into(),
        x_label: "position".into(),
        y_label: "ms per token".into(),
        series: vec![
            series("key/value cache", &t.cached_per_position, false),
            series("prefix recomputed", &t.uncached_per_position, true),
        ],
        ..Chart::default()
    }
    .draw(&study.figure("parallel_decoding.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the causal mask the three ways give the same logits (f32 reassociation only: 1e-4).
    #[test]
    fn parallel_cached_and_recomputed_decoding_agree() {
        let config = TransformerConfig {
            d_model: 32,
            encoder_layers: 1,
            decoder_layers: 2,
            encoder_ffn_dim: 64,
            decoder_ffn_dim: 64,
            vocab_size: 50,
            ..model_config()
        };
        let t = measure(&config, 5, 6).unwrap();
        assert!(t.cached_max_difference < 1e-4, "{}", t.cached_max_difference);
        assert!(t.uncached_max_difference < 1e-4, "{}", t.uncached_max_difference);
        assert_eq!(t.cached_per_position.len(), 6);
    }
}
