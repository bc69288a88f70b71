//! `qkv bleu`: BLEU and chrF of system outputs against one or more references, as sacreBLEU scores them;
//! with `--sentence` one BLEU line per sentence, with `--paired-bs` sacreBLEU's paired bootstrap test of
//! every system against the first, with `--by-length` corpus BLEU by reference-length bucket.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use qkv::metrics::{
    bleu_by_length, corpus_bleu, corpus_chrf, paired_bootstrap_bleu, sentence_bleu, BleuOptions, ChrfOptions,
    PairedBootstrap, Smoothing, Tokenize, LENGTH_BOUNDS,
};
use qkv::text::corpus::read_lines;
use serde_json::json;

#[derive(Parser)]
pub struct Args {
    /// System output: UTF-8, one sentence per line. Several files (`--hyp a b` or `--hyp a --hyp b`) score
    /// several systems; with --paired-bs the first is the baseline
    #[arg(long, value_name = "FILE", required = true, num_args = 1..)]
    hyp: Vec<PathBuf>,
    /// Reference translations, line-aligned with --hyp; repeat the flag for several references
    #[arg(long = "ref", value_name = "FILE", required = true)]
    refs: Vec<PathBuf>,
    /// Print JSON instead of sacreBLEU's lines and tables
    #[arg(long)]
    json: bool,
    /// BLEU's tokenizer: 13a (sacreBLEU's default) or none (split on whitespace: for already tokenized text)
    #[arg(long, value_enum, default_value_t = TokenizeArg::V13a)]
    tokenize: TokenizeArg,
    /// Case-insensitive scores: lowercase hypotheses and references for both BLEU and chrF
    #[arg(long)]
    lowercase: bool,
    /// Decimals of the printed scores (sacreBLEU's --width; 2 is its Python API's, its command line prints 1)
    #[arg(long, value_name = "N", default_value_t = 2)]
    width: usize,
    /// BLEU's smoothing of orders without matches: exp (sacreBLEU's default), floor, add-k or none
    #[arg(long, value_name = "METHOD", default_value = "exp")]
    smooth_method: String,
    /// The value of floor (default 0.1) or add-k (default 1) smoothing
    #[arg(long, value_name = "X")]
    smooth_value: Option<f64>,
    /// One BLEU line per sentence of one system, as sacreBLEU's --sentence-level (effective order)
    #[arg(long, conflicts_with_all = ["paired_bs", "by_length"])]
    sentence: bool,
    /// Paired bootstrap resampling (sacreBLEU's --paired-bs): BLEU, its bootstrap mean ± 95% CI and the
    /// p-value of every further --hyp against the first
    #[arg(long, conflicts_with = "by_length")]
    paired_bs: bool,
    /// Bootstrap resamples for --paired-bs
    #[arg(long, value_name = "N", default_value_t = PairedBootstrap::default().samples, requires = "paired_bs")]
    paired_bs_n: usize,
    /// Seed of --paired-bs's resampling (sacreBLEU's SACREBLEU_SEED, 12345 there too)
    #[arg(long, default_value_t = PairedBootstrap::default().seed, requires = "paired_bs")]
    seed: u64,
    /// Corpus BLEU of the sentences grouped by reference length (the first --ref, in BLEU's tokens: 13a, or
    /// whitespace with --tokenize none)
    #[arg(long)]
    by_length: bool,
    /// Upper ends of the --by-length buckets: 10,20,30 gives 1-10, 11-20, 21-30 and 31+
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', default_values_t = LENGTH_BOUNDS, requires = "by_length")]
    buckets: Vec<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenizeArg {
    #[value(name = "13a")]
    V13a,
    None,
}

/// JSON, or text with BLEU scores to this many decimals.
#[derive(Clone, Copy)]
struct Output {
    json: bool,
    width: usize,
}

/// A system's output with the name its table row shows.
struct System {
    name: String,
    lines: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let tokenize = match args.tokenize {
        TokenizeArg::V13a => Tokenize::V13a,
        TokenizeArg::None => Tokenize::None,
    };
    let smooth = Smoothing::from_name(&args.smooth_method, args.smooth_value)?;
    let options = BleuOptions { tokenize, lowercase: args.lowercase, smooth };
    let (systems, references) = read_aligned(&args.hyp, &args.refs)?;
    let output = Output { json: args.json, width: args.width };
    if args.sentence {
        sentences(&systems, &references, &options, output)
    } else if args.paired_bs {
        let test = PairedBootstrap { samples: args.paired_bs_n, seed: args.seed };
        paired_bs(&systems, &references, &options, &test, output)
    } else if args.by_length {
        by_length(&systems, &references, &options, &args.buckets, output)
    } else {
        corpus(&systems, &references, &options, output)
    }
}

/// Reads every system and reference file, and checks that they all have as many lines as the first --hyp.
fn read_aligned(hyps: &[PathBuf], refs: &[PathBuf]) -> Result<(Vec<System>, Vec<Vec<String>>)> {
    let first = &hyps[0];
    let mut systems: Vec<System> = Vec::with_capacity(hyps.len());
    for path in hyps {
        let lines = read_lines(path)?;
        if let Some(baseline) = systems.first() {
            check_aligned(
                first,
                baseline.lines.len(),
                path,
                lines.len(),
                "every --hyp must have one line per reference",
            )?;
        }
        systems.push(System { name: path.display().to_string(), lines });
    }
    let n = systems[0].lines.len();
    let mut references = Vec::with_capacity(refs.len());
    for path in refs {
        let lines = read_lines(path)?;
        check_aligned(first, n, path, lines.len(), "references must be line-aligned with the hypotheses")?;
        references.push(lines);
    }
    Ok((systems, references))
}

fn check_aligned(first: &Path, first_len: usize, other: &Path, other_len: usize, rule: &str) -> Result<()> {
    if first_len != other_len {
        bail!("{} has {first_len} lines but {} has {other_len}: {rule}", first.display(), other.display());
    }
    Ok(())
}

/// sacreBLEU's two lines per system (BLEU, chrF2); with several systems each line starts with its file.
fn corpus(systems: &[System], references: &[Vec<String>], options: &BleuOptions, output: Output) -> Result<()> {
    let chrf_options = ChrfOptions { lowercase: options.lowercase, ..ChrfOptions::default() };
    let mut scored = Vec::with_capacity(systems.len());
    for system in systems {
        let bleu = corpus_bleu(&system.lines, references, options)?;
        let chrf = corpus_chrf(&system.lines, references, &chrf_options)?;
        scored.push((system, bleu, chrf));
    }
    let width = output.width;
    match (output.json, scored.as_slice()) {
        (true, [(_, bleu, chrf)]) => {
            println!("{}", serde_json::to_string_pretty(&json!({ "bleu": bleu, "chrf": chrf }))?)
        }
        (true, _) => {
            let rows: Vec<_> = scored
                .iter()
                .map(|(system, bleu, chrf)| json!({ "system": system.name, "bleu": bleu, "chrf": chrf }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        (false, [(_, bleu, chrf)]) => println!("{bleu:.width$}\n{chrf:.width$}"),
        (false, _) => {
            for (system, bleu, chrf) in &scored {
                println!("{}: {bleu:.width$}\n{}: {chrf:.width$}", system.name, system.name);
            }
        }
    }
    Ok(())
}

/// One sacreBLEU sentence-BLEU line (or JSON score) per hypothesis.
fn sentences(systems: &[System], references: &[Vec<String>], options: &BleuOptions, output: Output) -> Result<()> {
    let [system] = systems else {
        bail!("--sentence scores one system, but {} --hyp files were given", systems.len());
    };
    let mut scores = Vec::with_capacity(system.lines.len());
    for (index, hypothesis) in system.lines.iter().enumerate() {
        let refs: Vec<&str> = references.iter().map(|stream| stream[index].as_str()).collect();
        scores.push(sentence_bleu(hypothesis, &refs, options)?);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if output.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&scores)?)
    } else {
        scores.iter().try_for_each(|score| writeln!(out, "{score:.width$}", width = output.width))
    };
    match written.and_then(|()| out.flush()) {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// sacreBLEU's paired bootstrap table: each system's BLEU (bootstrap mean ± 95% CI) and p-value.
fn paired_bs(
    systems: &[System],
    references: &[Vec<String>],
    options: &BleuOptions,
    test: &PairedBootstrap,
    output: Output,
) -> Result<()> {
    if systems.len() < 2 {
        bail!("--paired-bs compares systems with a baseline: give the baseline and at least one more --hyp");
    }
    let outputs: Vec<&[String]> = systems.iter().map(|s| s.lines.as_slice()).collect();
    let results = paired_bootstrap_bleu(&outputs, references, options, test)?;
    if output.json {
        let rows: Vec<_> = systems
            .iter()
            .zip(&results)
            .enumerate()
            .map(|(i, (system, r))| {
                json!({ "system": system.name, "baseline": i == 0, "bleu": r.bleu, "mean": r.mean, "ci": r.ci,
                        "p_value": r.p_value })
            })
            .collect();
        let document = json!({ "samples": test.samples, "seed": test.seed, "systems": rows });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("Paired bootstrap resampling, {} samples, seed {}", test.samples, test.seed);
    let mut rows = vec![vec!["System".to_string(), "BLEU (μ ± 95% CI)".to_string()]];
    for (i, (system, result)) in systems.iter().zip(&results).enumerate() {
        let name = if i == 0 { format!("Baseline: {}", system.name) } else { system.name.clone() };
        rows.push(vec![name, format!("{result:.width$}", width = output.width)]);
    }
    print_table(&rows, &[Align::Left, Align::Left]);
    println!("* p ≤ 0.05: the difference from the baseline is unlikely to be chance (which system is better, it does not say)");
    for system in &systems[1..] {
        if system.lines == systems[0].lines {
            println!(
                "note: {} is identical to the baseline; this test (sacreBLEU's) gives such a system p = 1/{}",
                system.name,
                test.samples + 1
            );
        }
    }
    Ok(())
}

/// Corpus BLEU per reference-length bucket, one column per system.
fn by_length(
    systems: &[System],
    references: &[Vec<String>],
    options: &BleuOptions,
    bounds: &[usize],
    output: Output,
) -> Result<()> {
    let mut per_system = Vec::with_capacity(systems.len());
    for system in systems {
        per_system.push(bleu_by_length(&system.lines, references, options, bounds)?);
    }
    if output.json {
        let rows: Vec<_> = systems
            .iter()
            .zip(&per_system)
            .map(|(system, buckets)| json!({ "system": system.name, "buckets": buckets }))
            .collect();
        let document = json!({ "tokenize": options.tokenize, "bounds": bounds, "systems": rows });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("BLEU by reference length ({} tokens of the first --ref)", options.tokenize);
    let mut rows = vec![["ref length", "sentences"].map(String::from).to_vec()];
    rows[0].extend(systems.iter().map(|s| s.name.clone()));
    for (i, bucket) in per_system[0].iter().enumerate() {
        let mut row = vec![bucket.label(), bucket.sentences.to_string()];
        row.extend(per_system.iter().map(|buckets| match &buckets[i].bleu {
            Some(bleu) => format!("{:.width$}", bleu.score, width = output.width),
            None => "-".to_string(),
        }));
        rows.push(row);
    }
    print_table(&rows, &[Align::Right]);
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

/// Rows in columns two spaces apart; `align` gives the first columns' alignment, the rest are right-aligned.
fn print_table(rows: &[Vec<String>], align: &[Align]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| match align.get(c).copied().unwrap_or(Align::Right) {
                Align::Left => format!("{cell:<width$}", width = widths[c]),
                Align::Right => format!("{cell:>width$}", width = widths[c]),
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
