//! `qkv embed`: sentence embeddings from a sentence-transformers (or plain BERT) directory, as JSON lines or a
//! .npy matrix.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qkv::inference::Embedder;
use qkv::text::table::TableFormat;

#[derive(Parser)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json; modules.json and 1_Pooling/ when it is a
    /// sentence-transformers model)
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// Sentences, one per line (default: stdin); or a .jsonl/.json (one object per line) or .parquet table,
    /// whose --text-column is embedded
    #[arg(long)]
    input: Option<PathBuf>,
    /// Column of a table input [default: the first of text, sentence1, premise, question, sentence]. Given for
    /// a .csv/.tsv input, that file is read as a table with a header row instead of as lines
    #[arg(long)]
    text_column: Option<String>,
    /// Output file: .npy writes an (N, C) float32 matrix, anything else JSON lines (default: JSON lines on stdout)
    #[arg(long)]
    output: Option<PathBuf>,
    /// Sentences per forward pass
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let sentences = sentences(&args)?;
    let encoder = load(&model, dtype)?;
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let started = Instant::now();
    let embeddings = encoder.embed(&refs, args.batch_size)?;
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} sentences → {}-dimensional embeddings in {seconds:.2} s ({:.0} sentences/s)",
        sentences.len(),
        encoder.dimension(),
        sentences.len() as f64 / seconds
    );
    match &args.output {
        // Written whole to a temporary file and renamed: a full disk leaves the old file (or none), never a
        // truncated one or a stray temporary.
        Some(path) => {
            let mut bytes = Vec::new();
            if path.extension().is_some_and(|e| e == "npy") {
                qkv::npy::write_f32_matrix(&mut bytes, &embeddings.to_vec2()?)?;
            } else {
                write_jsonl(&mut bytes, &sentences, &embeddings.to_vec2()?)?;
            }
            qkv::atomic_file::write_atomically(path, &bytes)?;
        }
        None => write_jsonl(BufWriter::new(std::io::stdout().lock()), &sentences, &embeddings.to_vec2()?)?,
    }
    Ok(())
}

/// The texts to embed: a table's text column, else the lines of the input.
fn sentences(args: &Args) -> Result<Vec<String>> {
    match &args.input {
        Some(path) if TableFormat::of(path).has_column_names() || args.text_column.is_some() => {
            Ok(qkv::text::table::read_texts(path, args.text_column.as_deref())?)
        }
        None if args.text_column.is_some() => bail!("--text-column needs an --input table"),
        input => crate::progress::input_lines(input.as_deref()),
    }
}

/// Loads the encoder and warns about checkpoint tensors it does not use.
pub fn load(dir: &Path, dtype: qkv::WeightDtype) -> Result<Embedder> {
    let encoder = crate::load_releasing(|| Embedder::load_as(dir, &crate::device::device(), dtype))
        .with_context(|| format!("loading {}", dir.display()))?;
    if !encoder.report.unused.is_empty() {
        eprintln!(
            "warning: {} tensor(s) of the checkpoint unused: {:?}",
            encoder.report.unused.len(),
            encoder.report.unused
        );
    }
    Ok(encoder)
}

/// One `{"text": ..., "embedding": [...]}` object per line.
fn write_jsonl(mut out: impl Write, sentences: &[String], rows: &[Vec<f32>]) -> Result<()> {
    for (text, embedding) in sentences.iter().zip(rows) {
        serde_json::to_writer(&mut out, &serde_json::json!({ "text": text, "embedding": embedding }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
