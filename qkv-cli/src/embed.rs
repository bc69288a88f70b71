//! `qkv embed`: sentence embeddings from a sentence-transformers (or plain BERT) directory, as JSON lines or a
//! .npy matrix.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use qkv::inference::Embedder;

#[derive(Parser)]
pub struct Args {
    /// Model directory (config.json, model.safetensors, tokenizer.json; modules.json and 1_Pooling/ when it is a
    /// sentence-transformers model)
    #[arg(long)]
    model: PathBuf,
    /// Sentences, one per line (default: stdin)
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output file: .npy writes an (N, C) float32 matrix, anything else JSON lines (default: JSON lines on stdout)
    #[arg(long)]
    output: Option<PathBuf>,
    /// Sentences per forward pass
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

pub fn run(args: Args) -> Result<()> {
    let sentences = crate::progress::input_lines(args.input.as_deref())?;
    let encoder = load(&args.model)?;
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
        Some(path) if path.extension().is_some_and(|e| e == "npy") => {
            let tmp = path.with_extension("npy.tmp");
            let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            write_npy(BufWriter::new(file), &embeddings.to_vec2()?)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        }
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            write_jsonl(BufWriter::new(file), &sentences, &embeddings.to_vec2()?)?;
        }
        None => write_jsonl(BufWriter::new(std::io::stdout().lock()), &sentences, &embeddings.to_vec2()?)?,
    }
    Ok(())
}

/// Loads the encoder and warns about checkpoint tensors it does not use.
pub fn load(dir: &Path) -> Result<Embedder> {
    let encoder =
        Embedder::load(dir, &crate::device::device()).with_context(|| format!("loading {}", dir.display()))?;
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

/// An (N, C) float32 matrix in NumPy's .npy format (version 1.0), written through a buffer (candle's
/// `write_npy` issues one system call per element).
fn write_npy(mut out: impl Write, rows: &[Vec<f32>]) -> Result<()> {
    let columns = rows.first().map_or(0, Vec::len);
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {columns}), }}", rows.len());
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for row in rows {
        for value in row {
            out.write_all(&value.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn npy_header_is_aligned_and_data_follows() {
        let mut bytes = Vec::new();
        super::write_npy(&mut bytes, &[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]]).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (3, 2)") && header.ends_with('\n'), "{header}");
        assert_eq!(bytes.len(), 10 + header_len + 6 * 4);
        assert_eq!(&bytes[10 + header_len..10 + header_len + 4], &1f32.to_le_bytes());
    }
}
