//! `qkv train translation`: trains an encoder-decoder Transformer on a parallel corpus into a run directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qkv::models::{PositionEncoding, TransformerConfig};
use qkv::nn::NormPosition;
use qkv::text::tokenizer::SubwordModel;
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
    /// Model size: small (3+3 layers, 256 wide) or base (the paper's 6+6, 512)
    #[arg(long, default_value = "small")]
    preset: String,
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
    #[arg(long, value_parser = ["sinusoidal", "learned", "relative"])]
    positions: Option<String>,
    #[arg(long, value_parser = ["post", "pre"])]
    norm: Option<String>,
    /// Separate source and target embedding matrices (default: one shared matrix)
    #[arg(long)]
    no_share_embeddings: bool,
    /// A separate output projection (default: tied to the target embedding)
    #[arg(long)]
    no_tie_output: bool,
    #[arg(long, value_parser = ["bpe", "wordpiece"])]
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
    #[command(flatten)]
    run: LoopArgs,
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
        t.subword = if subword == "bpe" { SubwordModel::Bpe } else { SubwordModel::WordPiece };
    }
    override_some!(
        t,
        vocab_size = args.vocab_size,
        max_tokens = args.max_tokens,
        lr_factor = args.lr_factor,
        warmup = args.warmup,
        label_smoothing = args.label_smoothing,
        max_len = args.max_len,
    );
    if let Some(beam) = args.eval_beam {
        t.eval_decode.beam = beam;
    }
    t.exact_match |= args.exact_match;
    Ok(t)
}

fn model_config(args: &TranslationArgs) -> Result<TransformerConfig> {
    let mut c = match crate::progress::json_config(args.model_config.as_deref(), "model config")? {
        Some(config) => config,
        None => TransformerConfig::preset(&args.preset)?,
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
        c.position_encoding = match positions.as_str() {
            "sinusoidal" => PositionEncoding::Sinusoidal,
            "learned" => PositionEncoding::Learned,
            "relative" => PositionEncoding::Relative,
            other => bail!("--positions {other}: expected sinusoidal, learned or relative"),
        };
    }
    if let Some(norm) = &args.norm {
        c.norm_position = if norm == "pre" { NormPosition::Pre } else { NormPosition::Post };
    }
    c.share_encoder_decoder_embeddings &= !args.no_share_embeddings;
    c.tie_word_embeddings &= !args.no_tie_output;
    Ok(c)
}
