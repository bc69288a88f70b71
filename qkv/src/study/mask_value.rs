//! Which value should a padding mask add: −∞, −1e9, −1e4 or nothing? Added before the softmax, the mask must
//! drive a padded key's weight to exactly zero; −∞ does, but a query whose keys are all masked then divides 0 by 0
//! (NaN), and −1e9 overflows f16 to −∞. Measured on one attention operation with random queries, keys and
//! values, in f32, f16 and bf16: the weight that leaks onto padding, how far the padded output is from the
//! unpadded one (an f64 softmax over the real keys alone), and what a fully masked row becomes; against qkv's
//! masked softmax, which writes the mask per dtype and zeroes fully masked rows.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

use super::{Figure, Section, Study, Table};
use crate::kernels::{masked_value, softmax::masked_softmax, softmax::softmax};
use crate::plot::{Chart, Point, Series};
use crate::rng::Rng;
use crate::Result;

/// Queries per measurement, real and padded keys, head width.
const QUERIES: usize = 256;
const REAL: usize = 6;
const PADDED: usize = 4;
const HEAD_DIM: usize = 64;

const DTYPES: [(DType, &str); 3] = [(DType::F32, "f32"), (DType::F16, "f16"), (DType::BF16, "bf16")];

/// How a mask is applied: a constant added to the padded keys' scores before a plain softmax, or qkv's.
#[derive(Debug, Clone, Copy)]
enum Masking {
    Add(f64),
    Qkv,
}

impl Masking {
    fn name(self) -> String {
        match self {
            Masking::Add(v) if v == f64::NEG_INFINITY => "−∞".into(),
            Masking::Add(0.0) => "0 (no mask)".into(),
            Masking::Add(v) => format!("{v:e}").replace('-', "−"),
            Masking::Qkv => "qkv (per-dtype value, zero rows)".into(),
        }
    }
}

const MASKINGS: [Masking; 5] =
    [Masking::Add(f64::NEG_INFINITY), Masking::Add(-1e9), Masking::Add(-1e4), Masking::Add(0.0), Masking::Qkv];

#[derive(Debug, Clone, serde::Serialize)]
struct Measurement {
    mask: String,
    dtype: &'static str,
    /// Mean total weight on the padded keys.
    leak: f64,
    /// Largest |padded output − unpadded output|, NaN when the output has NaN.
    output_error: f64,
    /// What a query with every key masked gets: "NaN", "zeros" or the size of its (garbage) output.
    fully_masked: String,
}

/// Answers "which value should a padding mask add?" (−∞, −1e9, −1e4 or nothing, in f32, f16 and bf16) as the
/// report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    study.say("mask-value: one attention operation, 4 mask values × 3 dtypes");
    let inputs = Inputs::draw(0x3a5c);
    let mut measured = Vec::new();
    for (dtype, dtype_name) in DTYPES {
        for masking in MASKINGS {
            measured.push(inputs.measure(masking, dtype, dtype_name)?);
        }
    }
    figure(study, &measured)?;
    Ok(section(&measured))
}

/// Scores (Q, REAL + PADDED) of random unit-normal q·k/√d and values (REAL + PADDED, HEAD_DIM); the padded keys'
/// values are large garbage, as padding positions' states may be.
struct Inputs {
    scores: Vec<f64>,
    values: Vec<f64>,
}

impl Inputs {
    fn draw(seed: u64) -> Self {
        let mut rng = Rng::seed_from_u64(seed);
        let mut normal = move || -> f64 { StandardNormal.sample(&mut rng) };
        let n = REAL + PADDED;
        let q: Vec<f64> = (0..QUERIES * HEAD_DIM).map(|_| normal()).collect();
        let k: Vec<f64> = (0..n * HEAD_DIM).map(|_| normal()).collect();
        let scale = 1.0 / (HEAD_DIM as f64).sqrt();
        let scores = (0..QUERIES)
            .flat_map(|i| {
                let (q, k) = (&q, &k);
                (0..n)
                    .map(move |j| scale * (0..HEAD_DIM).map(|d| q[i * HEAD_DIM + d] * k[j * HEAD_DIM + d]).sum::<f64>())
            })
            .collect();
        let values =
            (0..n * HEAD_DIM).map(|i| if i >= REAL * HEAD_DIM { 100.0 * normal() } else { normal() }).collect();
        Self { scores, values }
    }

    /// The unpadded reference: softmax over the real keys alone, in f64.
    fn reference(&self) -> Vec<f64> {
        let n = REAL + PADDED;
        let mut out = vec![0.0; QUERIES * HEAD_DIM];
        for i in 0..QUERIES {
            let row = &self.scores[i * n..i * n + REAL];
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (j, w) in e.iter().enumerate() {
                for d in 0..HEAD_DIM {
                    out[i * HEAD_DIM + d] += w / sum * self.values[j * HEAD_DIM + d];
                }
            }
        }
        out
    }

    fn measure(&self, masking: Masking, dtype: DType, dtype_name: &'static str) -> Result<Measurement> {
        let n = REAL + PADDED;
        let dev = &Device::Cpu;
        let scores = Tensor::from_vec(self.scores.clone(), (QUERIES, n), dev)?.to_dtype(dtype)?;
        let values = Tensor::from_vec(self.values.clone(), (n, HEAD_DIM), dev)?.to_dtype(dtype)?;
        let padded: Vec<bool> = (0..n).map(|j| j >= REAL).collect();
        let weights = apply(&scores, masking, &padded, dtype)?;
        let output = weights.matmul(&values)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let w = weights.to_dtype(DType::F64)?;
        let leak = w.narrow(1, REAL, PADDED)?.sum(1)?.mean_all()?.to_scalar::<f64>()?;
        let reference = self.reference();
        let output_error = output
            .iter()
            .zip(&reference)
            .map(|(a, b)| if a.is_nan() { f64::NAN } else { (a - b).abs() })
            .fold(0.0, |m: f64, e| if e.is_nan() || m.is_nan() { f64::NAN } else { m.max(e) });
        // One query whose keys are all masked.
        let all = apply(&scores.narrow(0, 0, 1)?, masking, &[true; REAL + PADDED], dtype)?;
        let row = all.matmul(&values)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let fully_masked = if row.iter().any(|v| v.is_nan()) {
            "NaN".to_string()
        } else if row.iter().all(|&v| v == 0.0) {
            "zeros".to_string()
        } else {
            let mean_abs = row.iter().map(|v| v.abs()).sum::<f64>() / row.len() as f64;
            format!("uniform over padding (mean |output| {mean_abs:.0})")
        };
        Ok(Measurement { mask: masking.name(), dtype: dtype_name, leak, output_error, fully_masked })
    }
}

/// Softmax weights (Q, N) of `scores` with the keys where `padded` is true masked by `masking`, in `dtype`.
fn apply(scores: &Tensor, masking: Masking, padded: &[bool], dtype: DType) -> Result<Tensor> {
    let n = padded.len();
    let bias_of = |value: f64| -> Result<Tensor> {
        let bias: Vec<f64> = padded.iter().map(|&p| if p { value } else { 0.0 }).collect();
        // Written in the dtype the scores have: this is where −1e9 becomes −∞ in f16.
        Ok(Tensor::from_vec(bias, (1, n), &Device::Cpu)?.to_dtype(dtype)?)
    };
    match masking {
        Masking::Add(value) => softmax(&scores.broadcast_add(&bias_of(value)?)?),
        Masking::Qkv => masked_softmax(scores, Some(&bias_of(masked_value(dtype))?), 1.0),
    }
}

fn section(measured: &[Measurement]) -> Section {
    let mut table = Table::new(
        format!("One attention operation: {QUERIES} random queries over {REAL} real and {PADDED} padded keys (scores q·k/√d of unit normals, d = {HEAD_DIM}); the padded keys' values are garbage of size ~100"),
        &["mask", "dtype", "weight on padding", "max |padded − unpadded output|", "query with every key masked"],
    );
    for m in measured {
        table.row(vec![
            m.mask.clone(),
            m.dtype.to_string(),
            format!("{:.2e}", m.leak),
            if m.output_error.is_nan() { "NaN".into() } else { format!("{:.2e}", m.output_error) },
            m.fully_masked.clone(),
        ]);
    }
    let get = |mask: &str, dtype: &str| measured.iter().find(|m| m.mask.starts_with(mask) && m.dtype == dtype);
    let describe = |m: Option<&Measurement>| m.map_or("?".to_string(), |m| m.fully_masked.clone());
    let leak = |m: Option<&Measurement>| m.map_or(f64::NAN, |m| m.leak);
    let answer = format!(
        "Any large negative value stops the leak (weight on padding {:.1e} with −1e4 in f32, against {:.2} with no mask), but a query whose keys are all masked gets {} with −∞, {} with −1e9 in f16 (−1e9 overflows to −∞) and {} with −1e9 in f32; qkv writes the mask per dtype and gives such a query {} in every dtype.",
        leak(get("−1e4", "f32")), leak(get("0", "f32")),
        describe(get("−∞", "f32")), describe(get("−1e9", "f16")), describe(get("−1e9", "f32")), describe(get("qkv", "f16")),
    );
    Section {
        name: "mask-value".into(),
        question: "Which value should the padding mask add before the softmax?".into(),
        answer,
        setup: format!(
            "Scores and values are drawn once (seeded) in f64 and cast to each dtype; the mask is added in that dtype and the softmax composed in it (exp(x − max) / Σ). The reference is an f64 softmax over the {REAL} real keys alone. qkv's masked softmax adds −1e9 (f32, bf16) or −65504 (f16) and zeroes rows whose keys are all masked."
        ),
        tables: vec![table],
        figures: vec![Figure { file: "mask_value.png".into(), caption: "Weight leaking onto padding, per mask value and dtype".into() }],
        results: json!(measured),
    }
}

fn figure(study: &Study, measured: &[Measurement]) -> Result<()> {
    let masks: Vec<String> = MASKINGS.iter().map(|m| m.name()).collect();
    let series = DTYPES
        .iter()
        .map(|(_, dtype)| Series {
            name: dtype.to_string(),
            points: masks
                .iter()
                .enumerate()
                .filter_map(|(i, mask)| {
                    let m = measured.iter().find(|m| &m.mask == mask && m.dtype == *dtype)?;
                    // log-free axis: the leak is 0 or order 1
                    Some(Point { x: i as f64, y: m.leak, spread: None })
                })
                .collect(),
            dashed: false,
            points_only: false,
        })
        .collect();
    Chart {
        title: "Attention weight on padded keys".into(),
        note: format!("{QUERIES} queries, {REAL} real + {PADDED} padded keys"),
        x_label: "mask value".into(),
        y_label: "weight on padding".into(),
        x_categories: masks,
        series,
        ..Chart::default()
    }
    .draw(&study.figure("mask_value.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The facts the section reports, checked: −∞ turns a fully masked row into NaN, −1e9 does too in f16, no
    /// mask leaks, qkv's rows are zeros in every dtype and its partial rows match the unpadded reference (f32:
    /// 1e-5; f16/bf16: their rounding, 0.1 on outputs of size ~1).
    #[test]
    fn mask_values_behave_as_reported() {
        let inputs = Inputs::draw(1);
        let m = |masking, dtype| inputs.measure(masking, dtype, "").unwrap();
        assert_eq!(m(Masking::Add(f64::NEG_INFINITY), DType::F32).fully_masked, "NaN");
        assert_eq!(m(Masking::Add(-1e9), DType::F16).fully_masked, "NaN");
        assert!(m(Masking::Add(-1e9), DType::F32).fully_masked.starts_with("uniform"));
        assert!(m(Masking::Add(0.0), DType::F32).leak > 0.1);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let qkv = m(Masking::Qkv, dtype);
            assert_eq!(qkv.fully_masked, "zeros", "{dtype:?}");
            assert_eq!(qkv.leak, 0.0, "{dtype:?}");
            let tolerance = if dtype == DType::F32 { 1e-5 } else { 0.1 };
            assert!(qkv.output_error < tolerance, "{dtype:?}: {}", qkv.output_error);
        }
    }
}
