//! `qkv bleu`: corpus BLEU and chrF of a system output against one or more references, as sacreBLEU scores them.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use qkv::metrics::{corpus_bleu, corpus_chrf, BleuOptions, ChrfOptions, Tokenize};
use qkv::text::corpus::read_lines;

#[derive(Parser)]
pub struct Args {
    /// System output: UTF-8, one sentence per line
    #[arg(long, value_name = "FILE")]
    hyp: PathBuf,
    /// Reference translations, line-aligned with --hyp; repeat the flag for several references
    #[arg(long = "ref", value_name = "FILE", required = true)]
    refs: Vec<PathBuf>,
    /// Print one JSON object {"bleu": {...}, "chrf": {...}} instead of sacreBLEU's two lines
    #[arg(long)]
    json: bool,
    /// BLEU's tokenizer: 13a (sacreBLEU's default) or none (split on whitespace: for already tokenized text)
    #[arg(long, value_enum, default_value_t = TokenizeArg::V13a)]
    tokenize: TokenizeArg,
    /// Case-insensitive scores: lowercase hypotheses and references for both BLEU and chrF
    #[arg(long)]
    lowercase: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenizeArg {
    #[value(name = "13a")]
    V13a,
    None,
}

pub fn run(args: Args) -> Result<()> {
    let hypotheses = read_lines(&args.hyp)?;
    let mut references = Vec::with_capacity(args.refs.len());
    for path in &args.refs {
        let lines = read_lines(path)?;
        if lines.len() != hypotheses.len() {
            bail!(
                "{} has {} lines but {} has {}: references must be line-aligned with the hypotheses",
                args.hyp.display(),
                hypotheses.len(),
                path.display(),
                lines.len()
            );
        }
        references.push(lines);
    }
    let tokenize = match args.tokenize {
        TokenizeArg::V13a => Tokenize::V13a,
        TokenizeArg::None => Tokenize::None,
    };
    let bleu_options = BleuOptions { tokenize, lowercase: args.lowercase, ..BleuOptions::default() };
    let chrf_options = ChrfOptions { lowercase: args.lowercase, ..ChrfOptions::default() };
    let bleu = corpus_bleu(&hypotheses, &references, &bleu_options)?;
    let chrf = corpus_chrf(&hypotheses, &references, &chrf_options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "bleu": bleu, "chrf": chrf }))?);
    } else {
        println!("{bleu}");
        println!("{chrf}");
    }
    Ok(())
}
