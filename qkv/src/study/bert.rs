//! Three claims about BERT, on the all-MiniLM-L6-v2 checkpoint and on small BERTs pre-trained here:
//!
//! 1. Summing the token, position and segment embeddings is one linear layer applied to the concatenated
//!    one-hot vectors of the three: `[one-hot(w); one-hot(p); one-hot(s)] · [E_w; E_p; E_s] = E_w[w] + E_p[p] +
//!    E_s[s]`. Shown on the checkpoint's own tables.
//! 2. Why \[CLS\]? The \[CLS\] vector is a sentence summary only where training made it one (next-sentence
//!    prediction, fine-tuning on it); sentence similarity without that is better served by pooling every
//!    token. STS-B dev Spearman with \[CLS\], mean and max pooling, for MiniLM (trained with mean pooling) and for
//!    BERTs pre-trained here with the masked-LM loss alone, whose \[CLS\] no loss ever reached.
//! 3. Why an encoder with a bidirectional mask? The masked-LM loss of the same small BERT with BERT's mask
//!    and with a causal one (Hugging Face's `is_decoder`): a causal model predicts a masked word from its left
//!    context alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{format_spread, mean_std, Figure, Section, Study, Table};
use crate::hub::bert::load_frozen_body;
use crate::hub::sentence_transformers::Pooling;
use crate::hub::tokenizer::{PretrainedTokenizer, Truncation};
use crate::inference::Embedder;
use crate::metrics::correlation::spearman;
use crate::metrics::t_test::{paired, welch};
use crate::models::bert::BertConfig;
use crate::plot::{Chart, Point, Series};
use crate::text::corpus::read_lines;
use crate::text::labeled::{read_scored_pairs, ScoredPair};
use crate::train::mlm::{small_config, MlmTrainer, MlmTraining};
use crate::train::trainer::{Event, LoopSettings, Task as _};
use crate::{Error, Result};

/// The poolings compared, in table order.
pub const POOLINGS: [(Pooling, &str); 3] = [(Pooling::Cls, "[CLS]"), (Pooling::Mean, "mean"), (Pooling::Max, "max")];

/// The sentence the embedding identity is shown on.
const SENTENCE: &str = "A man is playing a guitar on the street.";
const SECOND: &str = "Someone plays music outside.";

/// Sentences per batch when embedding STS-B.
const BATCH: usize = 64;

/// The pre-training: optimizer steps, lines per batch, tokens per line, WordPiece vocabulary.
const PRETRAINING_STEPS: usize = 4000;
const BATCH_LINES: usize = 64;
/// High for BERT, but a 64-wide model of two layers leaves the unigram plateau within the budget only so.
const LEARNING_RATE: f64 = 5e-3;
const MAX_LENGTH: usize = 32;
const VOCABULARY: usize = 2000;

/// The pre-training of one small BERT: its text, options and model shape (the key its result is kept under).
#[derive(Debug, Clone, Serialize)]
pub struct Pretraining {
    /// A causal self-attention mask (Hugging Face's `is_decoder`) instead of BERT's bidirectional one.
    pub causal: bool,
    /// The masked-LM training options: text, vocabulary, steps, learning rate, seed.
    pub training: MlmTraining,
    /// The small BERT's shape.
    pub config: BertConfig,
}

/// What one pre-training gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pretrained {
    /// The seed of the pre-training.
    pub seed: u64,
    /// Whether the model was trained with the causal mask.
    pub causal: bool,
    /// Masked-LM cross-entropy per predicted token on the held-out lines (same masks for both masks).
    pub val_loss: f64,
    /// STS-B dev Spearman × 100 per pooling, in [`POOLINGS`] order.
    pub spearman: Vec<f64>,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall-clock seconds of the pre-training.
    pub train_seconds: f64,
}

/// The embedding identity on the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// Tokens of the sentence pair, \[CLS\] and \[SEP\] included.
    pub tokens: usize,
    /// V + max_len + types: the width of the concatenated one-hot rows.
    pub one_hot_width: usize,
    /// C: the checkpoint's `hidden_size`, the width of every embedding.
    pub hidden_size: usize,
    /// max |one-hot · tables − sum of lookups| in f32, and in f64.
    pub max_error_f32: f64,
    /// The same difference with tables and lookups in f64: rounding alone, the identity itself exact.
    pub max_error_f64: f64,
    /// max |sum of lookups|, for scale.
    pub max_value: f64,
}

/// Answers the three BERT questions (embedding sum as one linear layer, \[CLS\] against pooling, bidirectional
/// against causal mask) as the report's section.
pub fn run(study: &mut Study) -> Result<Section> {
    let data = study.data().clone();
    check_exists(&data.minilm.join("config.json"), "the all-MiniLM-L6-v2 directory (tools/models/fetch_minilm.sh)")?;
    let dev = read_scored_pairs(&data.stsb.join("dev.csv"))?;
    let dev = if study.quick() { dev.into_iter().take(64).collect() } else { dev };
    let identity = embedding_identity(&data.minilm)?;
    let minilm_key = json!({"minilm": data.minilm, "stsb_dev": dev.len(), "what": "pooling"});
    let minilm =
        study.kept("bert: MiniLM pooling on STS-B dev", &minilm_key, |_| pooled_spearman(&data.minilm, &dev))?;
    let text = pretraining_text(study, &data.multi30k, &data.stsb)?;
    let mut pretrained = Vec::new();
    for causal in [false, true] {
        let mut runs = Vec::new();
        for seed in study.seeds() {
            let pretraining = pretraining(study, &text, causal, seed);
            let label = format!("bert: masked-LM pre-training, {} mask, seed {seed}", mask_name(causal));
            runs.push(study.kept(&label, &pretraining, |study| pretrain(study, &pretraining, &dev))?);
        }
        pretrained.push(runs);
    }
    figure(study, &minilm, &pretrained)?;
    Ok(section(study, &identity, &minilm, &pretrained, dev.len()))
}

fn check_exists(path: &Path, what: &str) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(Error::input(path, None, format!("not found: qkv study bert needs {what}")))
    }
}

fn mask_name(causal: bool) -> &'static str {
    if causal {
        "causal"
    } else {
        "bidirectional"
    }
}

/// Both sides of the identity for the first sentence of a pair (segments 0 and 1 both used), f32 and f64.
pub fn embedding_identity(dir: &Path) -> Result<Identity> {
    let (model, _) = load_frozen_body(dir, &Device::Cpu)?;
    let tokenizer = PretrainedTokenizer::from_dir(dir)?;
    let longest = model.config().max_position_embeddings;
    let encoded = tokenizer.encode(&[(SENTENCE, Some(SECOND))], longest, Truncation::LongestFirst)?;
    let (ids, _, segments) = encoded.tensors(&Device::Cpu)?;
    let summed = model.embedding_sum(&ids, &segments)?.squeeze(0)?; // (S, C)
    let tables = model.embedding_tables();
    let rows: Vec<usize> = tables.iter().map(|t| t.dim(0)).collect::<candle_core::Result<_>>()?;
    let (ids, segments) = (ids.squeeze(0)?.to_vec1::<u32>()?, segments.squeeze(0)?.to_vec1::<u32>()?);
    // Row i: ones at word ids[i], at V + position i and at V + max_len + segment i.
    let width: usize = rows.iter().sum();
    let mut one_hot = vec![0f32; ids.len() * width];
    for (i, (&id, &segment)) in ids.iter().zip(&segments).enumerate() {
        for column in [id as usize, rows[0] + i, rows[0] + rows[1] + segment as usize] {
            one_hot[i * width + column] = 1.0;
        }
    }
    let one_hot = Tensor::from_vec(one_hot, (ids.len(), width), &Device::Cpu)?;
    let linear = |tables: &[Tensor]| -> Result<Tensor> {
        let stacked = Tensor::cat(tables, 0)?; // (V + max_len + types, C)
        Ok(one_hot.to_dtype(stacked.dtype())?.matmul(&stacked)?)
    };
    let f32_tables: Vec<Tensor> = tables.iter().map(|t| (*t).clone()).collect();
    let f64_tables = f32_tables.iter().map(|t| t.to_dtype(DType::F64)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Identity {
        tokens: ids.len(),
        one_hot_width: width,
        hidden_size: summed.dim(1)?,
        max_error_f32: max_abs(&(linear(&f32_tables)? - &summed)?)?,
        max_error_f64: max_abs(&(linear(&f64_tables)? - sum_in_f64(&f64_tables, &ids, &segments)?)?)?,
        max_value: max_abs(&summed)?,
    })
}

/// E_w[ids] + E_p[0 .. S] + E_s[segments] from f64 tables, (S, C).
fn sum_in_f64(tables: &[Tensor], ids: &[u32], segments: &[u32]) -> Result<Tensor> {
    let index = |v: &[u32]| Tensor::new(v, &Device::Cpu);
    let words = tables[0].index_select(&index(ids)?, 0)?;
    let positions = tables[1].narrow(0, 0, ids.len())?;
    let kinds = tables[2].index_select(&index(segments)?, 0)?;
    Ok(((words + positions)? + kinds)?)
}

fn max_abs(x: &Tensor) -> Result<f64> {
    Ok(x.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// STS-B Spearman × 100 of the cosine of `dir`'s sentence vectors, per pooling of [`POOLINGS`]; NaN where
/// every pair gets the same cosine (a causal model's \[CLS\] sees only itself: one vector for every sentence).
pub fn pooled_spearman(dir: &Path, pairs: &[ScoredPair]) -> Result<Vec<f64>> {
    let firsts: Vec<&str> = pairs.iter().map(|p| p.first.as_str()).collect();
    let seconds: Vec<&str> = pairs.iter().map(|p| p.second.as_str()).collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let mut scores = Vec::new();
    let mut embedder = Embedder::load(dir, &Device::Cpu)?;
    for (pooling, _) in POOLINGS {
        embedder = embedder.with_pooling(pooling);
        let cosines = embedder.cosines(&firsts, &seconds, BATCH)?;
        let spread = cosines.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))
            - cosines.iter().fold(f64::INFINITY, |a, &b| a.min(b));
        scores.push(if spread < 1e-6 { f64::NAN } else { 100.0 * spearman(&cosines, &gold)? });
    }
    Ok(scores)
}

/// The pre-training text, written once under `runs/`: Multi30k's English training captions and the
/// sentences of STS-B's training pairs (the dev pairs, which are scored, are not in it).
fn pretraining_text(study: &Study, multi30k: &Path, stsb: &Path) -> Result<PathBuf> {
    let mut lines = read_lines(&multi30k.join("train.en"))?;
    for pair in read_scored_pairs(&stsb.join("train.csv"))? {
        lines.push(pair.first);
        lines.push(pair.second);
    }
    lines.retain(|l| !l.trim().is_empty());
    if study.quick() {
        lines.truncate(400);
    }
    let path = study.scratch_dir("bert")?.join(format!("pretraining-{}.txt", lines.len()));
    crate::atomic_file::write_atomically(&path, (lines.join("\n") + "\n").as_bytes())?;
    Ok(path)
}

/// A 2-layer, 64-wide BERT over a 2000-piece WordPiece vocabulary, trained with the masked-LM loss for a
/// fixed number of steps: about a minute on two cores.
fn pretraining(study: &Study, text: &Path, causal: bool, seed: u64) -> Pretraining {
    let steps = if study.quick() { 4 } else { PRETRAINING_STEPS };
    let training = MlmTraining {
        text_file: text.to_path_buf(),
        vocab_size: if study.quick() { 300 } else { VOCABULARY },
        max_length: MAX_LENGTH,
        batch_size: BATCH_LINES,
        learning_rate: LEARNING_RATE,
        validation_fraction: 0.05,
        run: LoopSettings {
            num_train_epochs: None,
            max_steps: Some(steps),
            shards: 2,
            seed,
            save_total_limit: None,
            ..MlmTraining::default().run
        },
        ..MlmTraining::default()
    };
    let config = BertConfig {
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 256,
        is_decoder: causal,
        ..small_config(0, MAX_LENGTH)
    };
    Pretraining { causal, training, config }
}

/// Trains, scores the validation masked-LM loss, saves the model and pools it on STS-B dev.
fn pretrain(study: &Study, pretraining: &Pretraining, dev: &[ScoredPair]) -> Result<Pretrained> {
    let mut trainer = MlmTrainer::in_memory(pretraining.training.clone(), pretraining.config.clone())?;
    let (mut val_loss, mut steps) = (f64::NAN, 0);
    let started = Instant::now();
    trainer.run(&AtomicBool::new(false), |event| match event {
        Event::Eval(record) => val_loss = record.val_loss,
        Event::Step(record) => steps = record.step,
        _ => {}
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let seed = pretraining.training.run.seed;
    let dir = study.scratch_dir(&format!("bert/{}-{seed}", mask_name(pretraining.causal)))?;
    trainer.task().save_model(&dir)?;
    Ok(Pretrained {
        seed,
        causal: pretraining.causal,
        val_loss,
        spearman: pooled_spearman(&dir, dev)?,
        steps,
        train_seconds: seconds,
    })
}

fn column(runs: &[Pretrained], pooling: usize) -> Vec<f64> {
    runs.iter().map(|r| r.spearman[pooling]).collect()
}

/// "m ± s", or what a NaN means here.
fn spread_or_constant(values: &[f64]) -> String {
    if values.iter().any(|v| v.is_nan()) {
        "— (one vector for every sentence)".into()
    } else {
        format_spread(values, 1)
    }
}

fn section(
    study: &Study,
    identity: &Identity,
    minilm: &[f64],
    pretrained: &[Vec<Pretrained>],
    pairs: usize,
) -> Section {
    let seeds = study.seeds();
    let mut identity_table = Table::new(
        "all-MiniLM-L6-v2: one-hot rows [word; position; segment] times the stacked tables against the sum of the three lookups (before LayerNorm), on one sentence pair",
        &["tokens", "one-hot width (V + max_len + types)", "C", "max |difference|, f32", "max |difference|, f64", "max |sum|"],
    );
    identity_table.row(vec![
        identity.tokens.to_string(),
        identity.one_hot_width.to_string(),
        identity.hidden_size.to_string(),
        format!("{:.1e}", identity.max_error_f32),
        format!("{:.1e}", identity.max_error_f64),
        format!("{:.3}", identity.max_value),
    ]);
    let mut pooling_table = Table::new(
        format!("STS-B dev ({pairs} pairs), Spearman × 100 of the cosine of pooled sentence vectors; pre-trained models over {} seeds", seeds.len()),
        &["model", "[CLS]", "mean", "max"],
    );
    pooling_table.row(
        std::iter::once("all-MiniLM-L6-v2 (trained with mean pooling)".to_string())
            .chain(minilm.iter().map(|s| format!("{s:.1}")))
            .collect(),
    );
    for runs in pretrained {
        let name = format!("small BERT, masked LM only, {} mask", mask_name(runs[0].causal));
        pooling_table.row(
            std::iter::once(name).chain((0..POOLINGS.len()).map(|p| spread_or_constant(&column(runs, p)))).collect(),
        );
    }
    let losses = |runs: &[Pretrained]| runs.iter().map(|r| r.val_loss).collect::<Vec<_>>();
    let (bidirectional, causal) = (losses(&pretrained[0]), losses(&pretrained[1]));
    // Same seed, same split and the same validation masks: the two masks are compared pair by pair.
    let loss_p = paired(&causal, &bidirectional).map_or(f64::NAN, |t| t.p);
    let mut mask_table = Table::new(
        format!(
            "Masked-LM validation loss (nats per predicted token, same held-out lines and masks), {} seeds",
            seeds.len()
        ),
        &["mask", "validation loss", "perplexity", "steps", "training s"],
    );
    for runs in pretrained {
        let loss = losses(runs);
        mask_table.row(vec![
            mask_name(runs[0].causal).to_string(),
            format_spread(&loss, 3),
            format!("{:.1}", mean_std(&loss).0.exp()),
            runs[0].steps.to_string(),
            format!("{:.0}", mean_std(&runs.iter().map(|r| r.train_seconds).collect::<Vec<_>>()).0),
        ]);
    }
    let (cls, mean) = (column(&pretrained[0], 0), column(&pretrained[0], 1));
    let cls_p = welch(&cls, &mean).map_or(f64::NAN, |t| t.p);
    let pooling_verdict = if cls_p >= 0.05 {
        format!("within seed noise (Welch p = {cls_p:.2}): no pooling is better here")
    } else if mean_std(&mean).0 > mean_std(&cls).0 {
        format!("beyond seed noise (Welch p = {cls_p:.3}): pooling every token beats the [CLS] vector, which no loss trained for sentences")
    } else {
        format!(
            "beyond seed noise (Welch p = {cls_p:.3}): [CLS] is better even though no loss trained it for sentences"
        )
    };
    let (b, c) = (mean_std(&bidirectional).0, mean_std(&causal).0);
    let lower = bidirectional.iter().zip(&causal).filter(|(b, c)| b < c).count();
    let mask_verdict = if loss_p >= 0.05 {
        format!(
            "within seed noise by the paired test, though the bidirectional model is lower in {lower} of {} seeds",
            causal.len()
        )
    } else if c > b {
        format!("perplexity {:.0} against {:.0}: filling a blank needs the words after it, which only the bidirectional mask shows", c.exp(), b.exp())
    } else {
        format!("perplexity {:.0} against {:.0}: the causal model did better here", c.exp(), b.exp())
    };
    let answer = format!(
        "(a) One-hot rows [word; position; segment] times the stacked tables equal the summed lookups: largest difference {:.1e} in f32 and {:.1e} in f64, on values up to {:.2} — the sum is one linear layer on the concatenated one-hots. (b) STS-B dev Spearman of MiniLM: [CLS] {:.1}, mean {:.1}, max {:.1}; of a small BERT pre-trained here with masked LM only: [CLS] {} against mean {}, {pooling_verdict}. (c) Masked-LM validation loss with the bidirectional mask {} nats, with a causal mask {} (paired t-test over seeds, p = {loss_p:.3}), {mask_verdict}.",
        identity.max_error_f32,
        identity.max_error_f64,
        identity.max_value,
        minilm[0],
        minilm[1],
        minilm[2],
        spread_or_constant(&cls),
        spread_or_constant(&mean),
        format_spread(&bidirectional, 3),
        format_spread(&causal, 3),
    );
    let first = &pretrained[0][0];
    Section {
        name: "bert".into(),
        question: "Why is BERT's input a sum of embeddings, why [CLS], and why a bidirectional encoder?".into(),
        answer,
        setup: format!(
            "(a) all-MiniLM-L6-v2's word, position and segment tables, on the pair {SENTENCE:?} / {SECOND:?}. (b) Cosine of the pooled (unnormalised) last hidden states, Spearman against the gold scores of STS-B dev; pre-trained BERTs: 2 layers, 64 wide, 2 heads, a {VOCABULARY}-piece WordPiece vocabulary trained on the pre-training text, {} steps of {BATCH_LINES} lines (≤ {MAX_LENGTH} tokens) with the masked-LM loss (15% of tokens, 80/10/10), lr {LEARNING_RATE} with 6% warm-up and linear decay, on Multi30k's English training captions and STS-B's training sentences, 5% held out; seeds {seeds:?}. (c) The same models, the causal one with Hugging Face's is_decoder (each token sees itself and those before it); both are scored on the same held-out lines with the same masks.",
            first.steps,
        ),
        tables: vec![identity_table, pooling_table, mask_table],
        figures: vec![Figure { file: "bert_pooling.png".into(), caption: "STS-B dev Spearman per pooling: MiniLM and the small BERTs pre-trained here (mean ± std over seeds)".into() }],
        results: json!({"identity": identity, "minilm_spearman": minilm, "pretrained": pretrained}),
    }
}

fn figure(study: &Study, minilm: &[f64], pretrained: &[Vec<Pretrained>]) -> Result<()> {
    let mut series = vec![Series {
        name: "all-MiniLM-L6-v2".into(),
        points: minilm.iter().enumerate().map(|(i, &y)| Point { x: i as f64, y, spread: None }).collect(),
        dashed: false,
        points_only: false,
    }];
    for runs in pretrained {
        series.push(Series {
            name: format!("small BERT, masked LM, {} mask", mask_name(runs[0].causal)),
            // A constant pooling (NaN) has no point.
            points: (0..POOLINGS.len())
                .filter_map(|p| {
                    let (mean, std) = mean_std(&column(runs, p));
                    mean.is_finite().then_some(Point { x: p as f64, y: mean, spread: Some(std) })
                })
                .collect(),
            dashed: runs[0].causal,
            points_only: false,
        });
    }
    Chart {
        title: "Why [CLS]? Pooling on STS-B dev".into(),
        note: format!(
            "Spearman × 100 of cosine similarity; pre-trained models: mean ± std over {} seeds",
            study.seeds().len()
        ),
        x_label: "pooling".into(),
        y_label: "Spearman × 100".into(),
        x_categories: POOLINGS.iter().map(|p| p.1.to_string()).collect(),
        series,
        ..Chart::default()
    }
    .draw(&study.figure("bert_pooling.png"))
}
