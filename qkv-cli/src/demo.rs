//! `qkv demo`: the README's main job. Trains a small Transformer to translate English number words into German
//! ("four hundred twenty-two" → "vierhundertzweiundzwanzig": German says the units before the tens, so the model
//! must learn to reorder), scores it on numbers it never saw, and draws its cross-attention. No data needed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qkv::decode::DecodeOptions;
use qkv::inference::Translator;
use qkv::models::TransformerConfig;
use qkv::plot;
use qkv::text::number_words::{self, NumberPair};
use qkv::train::trainer::LoopSettings;
use qkv::train::translation::{TranslationTrainer, TranslationTraining};
use rand::SeedableRng;
use serde::Serialize;

use crate::train::translation::train_with_progress;

#[derive(Parser)]
pub struct Args {
    /// Directory for the generated data, the run (checkpoints, log, loss.png) and attention.png
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Training pairs (numbers 0 – 999 999 drawn at random)
    #[arg(long, default_value_t = 20_000)]
    train_size: usize,
    /// Held-out numbers, never trained on, for the exact-match score
    #[arg(long, default_value_t = 500)]
    test_size: usize,
    /// Passes over the training pairs
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    /// Model width d_model
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Encoder and decoder layers
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Seed for data, initialisation and dropout
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// Marks a directory as the demo's own, so a rerun may clear it.
const MARKER: &str = ".qkv-demo";
const VALID_SIZE: usize = 300;

#[derive(Serialize)]
struct Report {
    train_pairs: usize,
    held_out: usize,
    exact_match: usize,
    exact_match_rate: f64,
    train_seconds: f64,
    examples: Vec<(String, String, String)>,
    attention_png: PathBuf,
    loss_png: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    prepare_out_dir(&args.out)?;
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let sample =
        number_words::pairs(0..number_words::MAX + 1, args.train_size + VALID_SIZE + args.test_size, &mut rng)?;
    let (rest, test) = number_words::split_held_out(sample, args.test_size)?;
    let (train, valid) = number_words::split_held_out(rest, VALID_SIZE)?;
    let data = args.out.join("data");
    for (split, pairs) in [("train", &train), ("valid", &valid), ("test", &test)] {
        write_side(&data.join(format!("{split}.en")), pairs, |p| &p.1)?;
        write_side(&data.join(format!("{split}.de")), pairs, |p| &p.2)?;
    }

    let training = TranslationTraining {
        train_source: data.join("train.en"),
        train_target: data.join("train.de"),
        valid_source: data.join("valid.en"),
        valid_target: data.join("valid.de"),
        // Small enough that number words split into their parts (fünf|und|fünfzig), so alignments show.
        vocab_size: 160,
        max_tokens: 3000,
        warmup: 400,
        lr_factor: 1.0,
        max_len: 64,
        // One or two words per output: exact match, not BLEU, says how good a model is.
        exact_match: true,
        run: LoopSettings {
            num_train_epochs: Some(args.epochs),
            seed: args.seed,
            save_total_limit: Some(2),
            ..TranslationTraining::default().run
        },
        ..TranslationTraining::default()
    };
    let model = TransformerConfig {
        d_model: args.d_model,
        encoder_layers: args.layers,
        decoder_layers: args.layers,
        encoder_attention_heads: args.heads,
        decoder_attention_heads: args.heads,
        encoder_ffn_dim: 4 * args.d_model,
        decoder_ffn_dim: 4 * args.d_model,
        ..TransformerConfig::small()
    };
    let run_dir = args.out.join("run");
    let started = Instant::now();
    let mut trainer = TranslationTrainer::create(&run_dir, training, model)?;
    train_with_progress(&mut trainer, &AtomicBool::new(false), &run_dir)?;
    let train_seconds = started.elapsed().as_secs_f64();

    let model = Translator::load(&run_dir, &crate::device::device())?;
    let sources: Vec<String> = test.iter().map(|p| p.1.clone()).collect();
    let translations = model.translate(&sources, &DecodeOptions::greedy(), 4096)?;
    let exact_match = test.iter().zip(&translations).filter(|(p, t)| p.2 == **t).count();
    let examples = test.iter().zip(&translations).take(6).map(|(p, t)| (p.1.clone(), p.2.clone(), t.clone())).collect();
    let attention_png = args.out.join("attention.png");
    // Short enough to read in a heatmap, with units and tens to reorder.
    let n = 3_456;
    let example = (n, number_words::english(n)?, number_words::german(n)?);
    draw_cross_attention(&model, &example, &attention_png)?;
    let report = Report {
        train_pairs: train.len(),
        held_out: test.len(),
        exact_match,
        exact_match_rate: exact_match as f64 / test.len().max(1) as f64,
        train_seconds,
        examples,
        attention_png,
        loss_png: run_dir.join("loss.png"),
    };
    print_report(&report, args.json)
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("trained on {} pairs in {:.0} s", report.train_pairs, report.train_seconds);
    for (english, german, got) in &report.examples {
        let mark = if german == got { "✓" } else { "✗" };
        println!(
            "  {mark} {english:<55} → {got}{}",
            if german == got { String::new() } else { format!("  (expected {german})") }
        );
    }
    println!(
        "exact match on {} held-out numbers: {:.1}% ({}/{})",
        report.held_out,
        100.0 * report.exact_match_rate,
        report.exact_match,
        report.held_out
    );
    println!("cross-attention: {}\nloss curve:      {}", report.attention_png.display(), report.loss_png.display());
    Ok(())
}

/// Clears a previous demo run in `out`; refuses to touch a directory that is not the demo's.
fn prepare_out_dir(out: &Path) -> Result<()> {
    if out.exists() {
        let empty = std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?.next().is_none();
        if !empty && !out.join(MARKER).exists() {
            bail!("{} exists and is not a qkv demo directory; choose another --out", out.display());
        }
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("data")).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(MARKER), b"").with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn write_side(path: &Path, pairs: &[NumberPair], side: impl Fn(&NumberPair) -> &String) -> Result<()> {
    let text: String = pairs.iter().map(|p| format!("{}\n", side(p))).collect();
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Every decoder layer's and head's cross-attention while the model reads its own translation of `example`.
fn draw_cross_attention(model: &Translator, example: &NumberPair, path: &Path) -> Result<()> {
    let maps = model.cross_attention(&example.1, None)?;
    let title = format!("cross-attention reading \"{}\"", example.1);
    Ok(plot::attention_grid(&maps.weights, &maps.source_tokens, &maps.target_tokens, &title, path)?)
}
