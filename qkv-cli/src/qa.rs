//! `qkv qa`: extractive question answering with a BertForQuestionAnswering directory; contexts longer than
//! the model are read in overlapping windows.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::inference::pipeline::{Pipeline, QaOptions};
use qkv::models::bert::BertArchitecture;

#[derive(Parser)]
pub struct Args {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    #[arg(long)]
    question: String,
    /// The context text (or --context-file)
    #[arg(long, required_unless_present = "context_file")]
    context: Option<String>,
    #[arg(long, conflicts_with = "context")]
    context_file: Option<PathBuf>,
    /// Answers to print
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Tokens per window (question + context + specials), at most the model's limit
    #[arg(long, default_value_t = QaOptions::default().max_seq_len)]
    max_seq_len: usize,
    /// Context tokens shared by consecutive windows (default: min(max_seq_len / 2, 128))
    #[arg(long)]
    doc_stride: Option<usize>,
    /// Longest answer, in tokens
    #[arg(long, default_value_t = QaOptions::default().max_answer_len)]
    max_answer_len: usize,
    /// Print the answers as JSON ({"score", "start", "end", "answer"}, character offsets)
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let context = match (&args.context, &args.context_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        (None, None) => anyhow::bail!("give the context with --context or --context-file"),
    };
    let pipeline = crate::load_releasing(|| {
        Pipeline::load_as(&model, BertArchitecture::QuestionAnswering, &crate::device::device(), dtype)
    })
    .with_context(|| format!("loading {}", model.display()))?;
    let options = QaOptions {
        top_k: args.top_k,
        max_seq_len: args.max_seq_len,
        doc_stride: args.doc_stride.unwrap_or((args.max_seq_len / 2).min(128)),
        max_answer_len: args.max_answer_len,
    };
    let answers = pipeline.answer(&args.question, &context, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
    } else {
        for a in &answers {
            println!("{:.4}  [{}..{}]  {}", a.score, a.start, a.end, a.answer);
        }
    }
    Ok(())
}
