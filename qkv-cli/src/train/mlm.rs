//! `qkv train mlm`: pre-trains a BERT from scratch on a text file (one sentence or paragraph per line) with the
//! masked-language-model objective, on the shared trainer; its best/ is a Hugging Face BertForMaskedLM
//! directory (BertForPreTraining with --nsp).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::train::mlm::{small_config, MlmTrainer, MlmTraining};
use qkv::train::trainer::Finish;

use super::loop_args::{self, LoopArgs};
use super::session::{plotted, report_finish, run_with_progress, stop_on_ctrl_c};

#[derive(Parser)]
pub struct MlmArgs {
    /// Training text, one sequence per line (lines longer than --max-length tokens are cut)
    #[arg(long, alias = "text", required_unless_present = "resume")]
    text_file: Option<PathBuf>,
    /// Run directory: best/ (a BertForMaskedLM directory, BertForPreTraining with --nsp: config.json,
    /// model.safetensors, tokenizer.json),
    /// checkpoints/, log.jsonl and loss.png
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (every other option comes from the run)
    #[arg(long)]
    resume: bool,
    /// Training options as JSON (the fields of training.json); flags below override it
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Keep the case of the text (default: lower-case, as bert-base-uncased)
    #[arg(long)]
    cased: bool,
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long)]
    mlm_probability: Option<f64>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Share of the updates spent warming the learning rate up from 0
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Share of the lines held out for the validation loss
    #[arg(long)]
    validation_fraction: Option<f64>,
    /// Next-sentence prediction too: the text is documents separated by blank lines, one sentence per line;
    /// half the pairs are a sentence and its successor, half a sentence and a random one from another
    /// document. best/ is then a BertForPreTraining directory, and the log gets val_mlm_loss, val_nsp_loss
    /// and val_nsp_accuracy
    #[arg(long)]
    nsp: bool,
    /// Model width (the small preset: 256, 4 layers, 4 heads, feed-forward 4 × width)
    #[arg(long, default_value_t = 256)]
    hidden_size: usize,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[command(flatten)]
    run: LoopArgs,
}

pub fn run(args: MlmArgs) -> Result<()> {
    let mut trainer = if args.resume {
        let mut trainer = MlmTrainer::resume(&args.out).with_context(|| format!("resuming {}", args.out.display()))?;
        args.run.apply_to_resumed(&mut trainer)?;
        trainer
    } else {
        let training = training_options(&args)?;
        let config = qkv::models::bert::BertConfig {
            hidden_size: args.hidden_size,
            num_hidden_layers: args.layers,
            num_attention_heads: args.heads,
            intermediate_size: 4 * args.hidden_size,
            ..small_config(0, training.max_length)
        };
        MlmTrainer::create(&args.out, training, config)?
    };
    let stop = stop_on_ctrl_c()?;
    let (sequences, held_out) = trainer.task().data_sizes();
    let data = format!("{sequences} sequences ({held_out} held out)");
    let finish =
        run_with_progress(&mut trainer, &stop, &args.out, &data, plotted("masked-LM pre-training"), |_| String::new())?;
    report_finish(&finish, &format!("qkv train mlm --out {}", args.out.display()));
    let best = args.out.join("best");
    if finish != Finish::Interrupted && best.is_dir() {
        println!("model: {}", best.display());
    }
    Ok(())
}

fn training_options(args: &MlmArgs) -> Result<MlmTraining> {
    let mut t: MlmTraining = loop_args::options(args.config.as_deref(), &args.run)?;
    if let Some(text) = &args.text_file {
        t.text_file = text.clone();
    }
    t.lowercase &= !args.cased;
    t.nsp |= args.nsp;
    override_some!(
        t,
        vocab_size = args.vocab_size,
        max_length = args.max_length,
        mlm_probability = args.mlm_probability,
        batch_size = args.batch_size,
        learning_rate = args.learning_rate,
        warmup_ratio = args.warmup_ratio,
        validation_fraction = args.validation_fraction,
    );
    Ok(t)
}
