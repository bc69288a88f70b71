//! `qkv train translation|lm|mlm`: trains a model from scratch into a run directory. Each objective has its own
//! file; the loop's flags ([`loop_args`]) and the progress display ([`session`]) are shared with
//! `qkv finetune`.

use anyhow::Result;
use clap::{Parser, Subcommand};

pub mod lm;
pub mod loop_args;
pub mod mlm;
pub mod session;
pub mod translation;

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    task: Objective,
}

#[derive(Subcommand)]
enum Objective {
    /// An encoder-decoder Transformer on parallel text files (one sentence per line)
    Translation(Box<translation::TranslationArgs>),
    /// A BERT pre-trained from scratch with the masked-language-model objective (WordPiece vocabulary included)
    Mlm(Box<mlm::MlmArgs>),
    /// A GPT-2 language model from scratch on one text file (character or byte-level BPE vocabulary)
    Lm(Box<lm::LmArgs>),
}

pub fn run(args: Args) -> Result<()> {
    match args.task {
        Objective::Translation(args) => translation::run(*args),
        Objective::Mlm(args) => mlm::run(*args),
        Objective::Lm(args) => lm::run(*args),
    }
}
