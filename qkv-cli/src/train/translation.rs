//! `qkv train translation`: trains an encoder-decoder Transformer on a parallel corpus into a run directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use qkv::models::{PositionEncoding, TransformerConfig};
use qkv::nn::params::WeightInit;
use qkv::nn::NormPosition;
use qkv::text::tokenizer::SubwordModel;
use qkv::train::scheduled_sampling::SamplingOptions;
use qkv::train::trainer::{Finish, Task as _};
use qkv::train::translation::{TranslationTrainer, TranslationTraining};

use super::loop_args::{self, LoopArgs};
use super::session::{report_finish, run_with_progress, stop_on_ctrl_c};

#[derive(Parser)]
pub struct TranslationArgs {
    /// Run directory: checkpoints, best model, log.jsonl and loss.png go here
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// Training source sentences
    #[arg(long, alias = "train-src", required_unless_present = "resume")]
    train_source: Option<PathBuf>,
    /// Training target sentences, line-aligned with --train-source
    #[arg(long, alias = "train-tgt", required_unless_present = "resume")]
    train_target: Option<PathBuf>,
    /// Validation source sentences (loss and BLEU after each epoch)
    #[arg(long, alias = "valid-src", required_unless_present = "resume")]
    valid_source: Option<PathBuf>,
    /// Validation target sentences
    #[arg(long, alias = "valid-tgt", required_unless_present = "resume")]
    valid_target: Option<PathBuf>,
    /// Training options as JSON (the fields of training.json); flags below override it
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model size: small (3+3 layers, 256 wide; the default) or base (the paper's 6+6, 512)
    #[arg(long)]
    preset: Option<String>,
    /// Model config.json overriding the preset
    #[arg(long)]
    model_config: Option<PathBuf>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    d_ff: Option<usize>,
    /// Dropout (residual and embeddings; attention and activation dropout too)
    #[arg(long)]
    dropout: Option<f64>,
    /// Position information: the paper's sinusoids, a learned table, Shaw's relative representations,
    /// rotary queries and keys (RoPE), complex word embeddings (Wang et al.; implies --no-tie-output), or none
    #[arg(long, value_parser = ["sinusoidal", "learned", "relative", "rotary", "complex", "none"])]
    positions: Option<String>,
    #[arg(long, value_parser = ["post", "pre"])]
    norm: Option<String>,
    /// LayerNorm (layer_norm, the paper's) or BatchNorm over each batch's non-padding positions with running
    /// statistics for evaluation (batch_norm; needs --shards 1)
    #[arg(long, value_parser = ["layer_norm", "batch_norm"])]
    normalization: Option<String>,
    /// How queries score keys: q·k/√d_k (scaled_dot, the paper's), q·k (dot), T5's unscaled product with a
    /// 1/√d_k-smaller W_Q init (t5), LayerNorm on q and k (qk_norm), or Bahdanau's vᵀ tanh(q + k) (additive)
    #[arg(long, value_parser = ["scaled_dot", "dot", "t5", "qk_norm", "additive"])]
    attention_score: Option<String>,
    /// The attention's input projections: W_Q, W_K, W_V of their own (separate), one matrix for queries and
    /// keys (shared_qk), or none (q = k = v = x; only W_O remains)
    #[arg(long, value_parser = ["separate", "shared_qk", "none"])]
    attention_projections: Option<String>,
    /// Width of each head (default d_model / heads; wider heads cost more)
    #[arg(long)]
    head_dim: Option<usize>,
    /// Separate source and target embedding matrices (default: one shared matrix)
    #[arg(long)]
    no_share_embeddings: bool,
    /// A separate output projection (default: tied to the target embedding)
    #[arg(long)]
    no_tie_output: bool,
    /// Do not multiply the embeddings by √d_model (the paper does, §3.4)
    #[arg(long)]
    no_scale_embedding: bool,
    /// How the embedding tables are drawn: xavier_uniform, or normal:STD (e.g. normal:0.02, BERT's); default
    /// N(0, 1/d_model) with the √d_model factor, the model's init (xavier_uniform) without it
    #[arg(long, value_parser = parse_embedding_init)]
    embedding_init: Option<WeightInit>,
    /// No residual connections around the sub-layers (to see what they are for: deep stacks stop training)
    #[arg(long)]
    no_residuals: bool,
    /// When dropout's 1 − p is made up for: in training (inverted, the default), at evaluation (classic, as
    /// Srivastava et al.), or never (classic_unscaled: classic with the evaluation factor forgotten)
    #[arg(long, value_parser = ["inverted", "classic", "classic_unscaled"])]
    dropout_scaling: Option<String>,
    /// The vocabulary: byte-pair merges, WordPiece, single characters, or whole words (split at spaces and
    /// punctuation; --vocab-size most frequent, the rest <unk>)
    #[arg(long, value_parser = ["bpe", "wordpiece", "char", "word"])]
    subword: Option<String>,
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Tokens per batch, padding included
    #[arg(long)]
    max_tokens: Option<usize>,
    /// lr = factor · d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)
    #[arg(long)]
    lr_factor: Option<f64>,
    #[arg(long)]
    warmup: Option<usize>,
    /// Fade the learning rate linearly to 0 over the last N steps before --max-steps (warmup-stable-decay's decay)
    #[arg(long)]
    num_decay_steps: Option<usize>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Skip training pairs longer than this many subword tokens (counted and reported)
    #[arg(long)]
    max_len: Option<usize>,
    /// Beam size for the validation BLEU (1 = greedy)
    #[arg(long)]
    eval_beam: Option<usize>,
    /// Also score validation by exact match (for outputs of a word or two, where BLEU says little)
    #[arg(long)]
    exact_match: bool,
    /// Start from a trained model (a model directory, or a run directory: its best/): its weights, config
    /// and tokenizer, so no model or vocabulary option may be given with it
    #[arg(long)]
    init_from: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    run: LoopArgs,
}

/// Training the decoder on its own predictions against exposure bias (qkv::train::scheduled_sampling).
#[derive(Args, Default)]
struct SamplingArgs {
    /// What the decoder reads: gold prefixes (teacher-forcing, the default), gold mixed with its own pass-1
    /// predictions (scheduled, Mihaylova & Martins 2019), or Zhang et al.'s (2019) word or sentence oracle
    /// (the sentence oracle needs --init-from)
    #[arg(long, value_parser = ["teacher-forcing", "scheduled", "word-oracle", "sentence-oracle"])]
    sampling: Option<String>,
    /// How p, the probability of feeding the gold token, decays with i: linear max(floor, k - c*i),
    /// exponential k^i, inverse-sigmoid k/(k + exp(i/k)), zhang mu/(mu + exp(i/mu)) with mu = k
    /// (default linear, k 1, c 1e-4, floor 0.5)
    #[arg(long, value_parser = ["linear", "exponential", "inverse-sigmoid", "zhang"])]
    sampling_schedule: Option<String>,
    #[arg(long)]
    sampling_k: Option<f64>,
    #[arg(long)]
    sampling_c: Option<f64>,
    /// p never falls below this
    #[arg(long)]
    sampling_floor: Option<f64>,
    /// What i counts: optimizer steps done (default) or epochs done
    #[arg(long, value_parser = ["step", "epoch"])]
    sampling_unit: Option<String>,
    /// Scheduled sampling's pass-2 input: the argmax token (default), the softmax-weighted average of all
    /// token embeddings, the same over the top k, or a token sampled from the softmax
    #[arg(long, value_parser = ["argmax", "softmax", "top-k", "sample"])]
    sampling_mix: Option<String>,
    /// Divides pass-1 scores before softmax, top-k and sample (default 1)
    #[arg(long)]
    sampling_temperature: Option<f64>,
    /// k of --sampling-mix top-k (default 5)
    #[arg(long)]
    sampling_top_k: Option<usize>,
    /// Back-propagate through pass 1 too (softmax and top-k mixes only)
    #[arg(long)]
    sampling_through_pass1: bool,
    /// Temperature of the oracles' Gumbel noise: they draw from softmax(logits / tau) (default 1)
    #[arg(long)]
    oracle_gumbel_tau: Option<f64>,
    /// Beam of the sentence oracle's length-constrained search (default 4)
    #[arg(long)]
    oracle_beam: Option<usize>,
}

impl SamplingArgs {
    /// Sets every sampling option whose flag was given.
    fn apply(&self, s: &mut SamplingOptions) -> Result<()> {
        if let Some(mode) = &self.sampling {
            s.mode = mode.parse()?;
        }
        if let Some(decay) = &self.sampling_schedule {
            s.schedule.decay = decay.parse()?;
        }
        if let Some(unit) = &self.sampling_unit {
            s.schedule.unit = unit.parse()?;
        }
        if let Some(mix) = &self.sampling_mix {
            s.mix = mix.parse()?;
        }
        let schedule = &mut s.schedule;
        override_some!(schedule, k = self.sampling_k, c = self.sampling_c, floor = self.sampling_floor);
        override_some!(
            s,
            temperature = self.sampling_temperature,
            top_k = self.sampling_top_k,
            gumbel_tau = self.oracle_gumbel_tau,
            beam = self.oracle_beam,
        );
        s.through_pass1 |= self.sampling_through_pass1;
        Ok(())
    }
}

pub fn run(args: TranslationArgs) -> Result<()> {
    let mut trainer = if args.resume {
        let mut trainer =
            TranslationTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?;
        args.run.apply_to_resumed(&mut trainer)?;
        trainer
    } else {
        TranslationTrainer::create(&args.out, training_options(&args)?, model_config(&args)?)?
    };
    let stop = stop_on_ctrl_c()?;
    let finish = train_with_progress(&mut trainer, &stop, &args.out)?;
    report_finish(&finish, &format!("qkv train translation --out {}", args.out.display()));
    Ok(())
}

/// Runs a translation trainer with a progress bar and messages, then draws loss.png from the run's log.
pub fn train_with_progress(trainer: &mut TranslationTrainer, stop: &AtomicBool, out: &Path) -> Result<Finish> {
    let (train_pairs, skipped, valid_pairs) = trainer.task().data_sizes();
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} training pairs longer than max_len tokens");
    }
    let data = format!("{train_pairs} training pairs, {valid_pairs} validation pairs");
    // Exact match is asked for where outputs are a word or two, and BLEU means little there.
    let exact = trainer.task().training().exact_match;
    let metrics = exact.then(|| vec!["val_exact_match".to_string()]);
    let plotted = qkv::plot::CurveOptions { title: "translation training".into(), metrics };
    run_with_progress(trainer, stop, out, &data, plotted, |eval| {
        let exact = eval.metrics.get("val_exact_match").map(|e| format!("  exact match {:.1}%", 100.0 * e));
        format!(
            "BLEU {:.2}  chrF2 {:.2}{}",
            eval.metric("val_bleu"),
            eval.metric("val_chrf"),
            exact.unwrap_or_default()
        )
    })
}

fn training_options(args: &TranslationArgs) -> Result<TranslationTraining> {
    let mut t: TranslationTraining = loop_args::options(args.config.as_deref(), &args.run)?;
    let path = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
    t.train_source = path(&args.train_source);
    t.train_target = path(&args.train_target);
    t.valid_source = path(&args.valid_source);
    t.valid_target = path(&args.valid_target);
    if let Some(subword) = &args.subword {
        t.subword = SubwordModel::from_name(subword).context("--subword")?;
    }
    override_some!(
        t,
        vocab_size = args.vocab_size,
        max_tokens = args.max_tokens,
        lr_factor = args.lr_factor,
        warmup = args.warmup,
        num_decay_steps = args.num_decay_steps,
        label_smoothing = args.label_smoothing,
        max_len = args.max_len,
    );
    if let Some(beam) = args.eval_beam {
        t.eval_decode.beam = beam;
    }
    t.exact_match |= args.exact_match;
    args.sampling.apply(&mut t.sampling)?;
    if let Some(dir) = &args.init_from {
        t.init_from = Some(dir.clone());
    }
    if t.init_from.is_some() {
        refuse_model_options(args)?;
    }
    Ok(t)
}

/// A model started from --init-from has that model's shape and vocabulary: options that would set them are
/// errors rather than silently unused.
fn refuse_model_options(args: &TranslationArgs) -> Result<()> {
    let given = [
        ("--preset", args.preset.is_some()),
        ("--model-config", args.model_config.is_some()),
        ("--layers", args.layers.is_some()),
        ("--d-model", args.d_model.is_some()),
        ("--heads", args.heads.is_some()),
        ("--d-ff", args.d_ff.is_some()),
        ("--dropout", args.dropout.is_some()),
        ("--positions", args.positions.is_some()),
        ("--norm", args.norm.is_some()),
        ("--normalization", args.normalization.is_some()),
        ("--attention-score", args.attention_score.is_some()),
        ("--attention-projections", args.attention_projections.is_some()),
        ("--head-dim", args.head_dim.is_some()),
        ("--no-share-embeddings", args.no_share_embeddings),
        ("--no-tie-output", args.no_tie_output),
        ("--no-residuals", args.no_residuals),
        ("--no-scale-embedding", args.no_scale_embedding),
        ("--embedding-init", args.embedding_init.is_some()),
        ("--dropout-scaling", args.dropout_scaling.is_some()),
        ("--subword", args.subword.is_some()),
        ("--vocab-size", args.vocab_size.is_some()),
    ];
    let named: Vec<&str> = given.iter().filter(|(_, set)| *set).map(|(flag, _)| *flag).collect();
    if !named.is_empty() {
        bail!("{} cannot be used with --init-from: the model and its vocabulary come from there", named.join(", "));
    }
    Ok(())
}

fn model_config(args: &TranslationArgs) -> Result<TransformerConfig> {
    let mut c = match crate::progress::json_config(args.model_config.as_deref(), "model config")? {
        Some(config) => config,
        None => TransformerConfig::preset(args.preset.as_deref().unwrap_or("small"))?,
    };
    if let Some(layers) = args.layers {
        (c.encoder_layers, c.decoder_layers) = (layers, layers);
    }
    if let Some(d) = args.d_model {
        c.d_model = d;
    }
    if let Some(h) = args.heads {
        (c.encoder_attention_heads, c.decoder_attention_heads) = (h, h);
    }
    if let Some(f) = args.d_ff {
        (c.encoder_ffn_dim, c.decoder_ffn_dim) = (f, f);
    }
    if let Some(p) = args.dropout {
        (c.dropout, c.attention_dropout, c.activation_dropout) = (p, p, p);
    }
    if let Some(positions) = &args.positions {
        c.position_encoding = from_name(positions, "--positions")?;
        // A position-dependent embedding is no table the output projection could share.
        c.tie_word_embeddings &= c.position_encoding != PositionEncoding::Complex;
    }
    if let Some(norm) = &args.norm {
        c.norm_position = if norm == "pre" { NormPosition::Pre } else { NormPosition::Post };
    }
    if let Some(normalization) = &args.normalization {
        c.normalization = from_name(normalization, "--normalization")?;
    }
    if let Some(score) = &args.attention_score {
        c.attention_score = from_name(score, "--attention-score")?;
    }
    if let Some(projections) = &args.attention_projections {
        c.attention_projections = from_name(projections, "--attention-projections")?;
    }
    c.head_dim = args.head_dim.or(c.head_dim);
    c.share_encoder_decoder_embeddings &= !args.no_share_embeddings;
    c.tie_word_embeddings &= !args.no_tie_output;
    c.residual_connections &= !args.no_residuals;
    c.scale_embedding &= !args.no_scale_embedding;
    c.embedding_init = args.embedding_init.or(c.embedding_init);
    if let Some(scaling) = &args.dropout_scaling {
        c.dropout_scaling = from_name(scaling, "--dropout-scaling")?;
    }
    Ok(c)
}

/// `xavier_uniform` or `normal:STD` with a positive STD.
fn parse_embedding_init(text: &str) -> Result<WeightInit, String> {
    if text == "xavier_uniform" {
        return Ok(WeightInit::XavierUniform);
    }
    let std = text.strip_prefix("normal:").and_then(|s| s.parse::<f64>().ok());
    match std {
        Some(std) if std > 0.0 && std.is_finite() => Ok(WeightInit::Normal { std }),
        _ => Err(format!("{text:?}: expected xavier_uniform or normal:STD with STD > 0 (e.g. normal:0.02)")),
    }
}

/// A config enum from the name it has in config.json (clap has already checked it is one of them).
fn from_name<T: serde::de::DeserializeOwned>(name: &str, flag: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).with_context(|| format!("{flag} {name}"))
}

#[cfg(test)]
mod tests {
    use qkv::nn::{Projections, Score};

    use super::*;

    fn parse(extra: &[&str]) -> Result<TranslationArgs, clap::Error> {
        let base = ["translation", "--out", "r", "--train-source", "s", "--train-target", "t"];
        TranslationArgs::try_parse_from(
            base.iter().chain(["--valid-source", "s", "--valid-target", "t"].iter()).chain(extra),
        )
    }

    #[test]
    fn attention_flags_set_the_model_config() {
        let args = parse(&["--attention-score", "qk_norm", "--attention-projections", "shared_qk", "--head-dim", "96"]);
        let config = model_config(&args.unwrap()).unwrap();
        assert_eq!(config.attention_score, Score::QkNorm);
        assert_eq!(config.attention_projections, Projections::SharedQk);
        assert_eq!(config.head_dim, Some(96));
        let default = model_config(&parse(&[]).unwrap()).unwrap();
        assert_eq!(
            (default.attention_score, default.attention_projections, default.head_dim),
            (Score::ScaledDot, Projections::Separate, None)
        );
        let message = parse(&["--attention-score", "cosine"]).err().unwrap().to_string();
        assert!(message.contains("cosine") && message.contains("scaled_dot"), "{message}");
    }

    #[test]
    fn embedding_flags_set_the_model_config() {
        let args = parse(&["--no-scale-embedding", "--embedding-init", "normal:0.02"]).unwrap();
        let config = model_config(&args).unwrap();
        assert!(!config.scale_embedding);
        assert_eq!(config.embedding_init, Some(WeightInit::Normal { std: 0.02 }));
        let config = model_config(&parse(&["--embedding-init", "xavier_uniform"]).unwrap()).unwrap();
        assert!(config.scale_embedding);
        assert_eq!(config.embedding_init, Some(WeightInit::XavierUniform));
        for bad in ["normal:-1", "normal:x", "kaiming"] {
            let message = parse(&["--embedding-init", bad]).err().unwrap().to_string();
            assert!(message.contains("normal:STD"), "{message}");
        }
    }

    #[test]
    fn normalization_flag_sets_the_model_config() {
        let config = model_config(&parse(&["--normalization", "batch_norm"]).unwrap()).unwrap();
        assert_eq!(config.normalization, qkv::nn::Normalization::BatchNorm);
        let default = model_config(&parse(&[]).unwrap()).unwrap();
        assert_eq!(default.normalization, qkv::nn::Normalization::LayerNorm);
        let message = parse(&["--normalization", "group_norm"]).err().unwrap().to_string();
        assert!(message.contains("group_norm") && message.contains("batch_norm"), "{message}");
    }

    #[test]
    fn subword_names_every_vocabulary() {
        for model in SubwordModel::ALL {
            let options = training_options(&parse(&["--subword", model.name()]).unwrap()).unwrap();
            assert_eq!(options.subword, model);
        }
        assert!(parse(&["--subword", "bytes"]).is_err());
    }
}
