//! `qkv study QUESTION --out DIR`: runs one of the design questions of [`qkv::study`] (or `all`), prints its
//! one-line answer and writes the report (report.md, results.json, figures) into DIR.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qkv::study::{keep_section, kept_sections, write_report, Study, StudyOptions, DEFAULT_MULTI30K, QUESTIONS};

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    question: Question,
}

#[derive(Subcommand)]
enum Question {
    /// Why divide by √d_k? Softmax saturation over random draws; training with and without the factor, T5's
    /// init and QK-norm
    Scaling(Common),
    /// Why several heads of d_model/h? h = 1, 2, 4, 8 at equal cost, per-head statistics, full-width heads
    Heads(Common),
    /// Why not Q = K, or no projections? Attention on the own position and the task
    TiedQk(Common),
    /// Dot-product against additive attention: time, memory and quality as d_k grows
    Additive(Common),
    /// −∞, −1e9, −1e4 or 0 as the padding mask, in f32, f16 and bf16
    MaskValue(Common),
    /// Why training is parallel and decoding is not; why the key/value cache is exact
    ParallelDecoding(Common),
    /// What does attention look like? Heatmaps of every head of the tied-qk runs (`qkv attention` draws any
    /// model's)
    Heatmaps(Common),
    /// How does the model know where a token is? None, sinusoidal, learned, Shaw relative, RoPE and complex
    /// embeddings on trained and longer lengths; PE(pos + k) as a rotation; PE·PE before and after W_Q, W_K
    Positions(Common),
    /// What are residual connections for? Gradient norm per layer at initialisation and training of a 6 + 6
    /// layer model with and without them, post- and pre-LN
    Residuals(Common),
    /// Post-LN or pre-LN, and why the warm-up? Failed runs over seeds with and without the ramp, at two depths
    /// and peak rates; gradient per layer at initialisation
    Norms(Common),
    /// Where does dropout go, and what must evaluation do about it? Each of the four places switched off in
    /// turn; inverted against classic dropout, and classic dropout whose evaluation forgets to rescale
    Dropout(Common),
    /// Which vocabulary: BPE, WordPiece, characters or words? Vocabulary size against tokens per sentence and
    /// the <unk> rate on the Multi30k test set; de→en test BLEU of a tiny Transformer with each (about 10 minutes)
    Tokenizers(WithCorpus),
    /// Every question above, into one report (about an hour on 2 cores)
    All(WithCorpus),
}

#[derive(clap::Args)]
struct Common {
    /// Report directory: report.md, results.json, the PNG figures, and runs/ (finished trainings, reused when
    /// the study runs again, so an interrupted study continues)
    #[arg(long, default_value = "runs/study")]
    out: PathBuf,
    /// Seeds of every trained variant (numbers average over them)
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// A seconds-long smoke run (first seed, a few steps): checks the pipeline; its numbers mean nothing
    #[arg(long)]
    quick: bool,
}

#[derive(clap::Args)]
struct WithCorpus {
    #[command(flatten)]
    common: Common,
    /// The Multi30k directory (train, val, test_2016_flickr; .de and .en): the questions on real translation
    /// read it
    #[arg(long, default_value = DEFAULT_MULTI30K)]
    multi30k: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let (names, common, multi30k): (Vec<&str>, Common, Option<PathBuf>) = match args.question {
        Question::Scaling(c) => (vec!["scaling"], c, None),
        Question::Heads(c) => (vec!["heads"], c, None),
        Question::TiedQk(c) => (vec!["tied-qk"], c, None),
        Question::Additive(c) => (vec!["additive"], c, None),
        Question::MaskValue(c) => (vec!["mask-value"], c, None),
        Question::ParallelDecoding(c) => (vec!["parallel-decoding"], c, None),
        Question::Heatmaps(c) => (vec!["heatmaps"], c, None),
        Question::Positions(c) => (vec!["positions"], c, None),
        Question::Residuals(c) => (vec!["residuals"], c, None),
        Question::Norms(c) => (vec!["norms"], c, None),
        Question::Dropout(c) => (vec!["dropout"], c, None),
        Question::Tokenizers(c) => (vec!["tokenizers"], c.common, Some(c.multi30k)),
        Question::All(c) => (QUESTIONS.iter().map(|q| q.0).collect(), c.common, Some(c.multi30k)),
    };
    let start = Instant::now();
    let options = StudyOptions {
        seeds: common.seeds.clone(),
        quick: common.quick,
        release_memory: Some(crate::release_freed_memory),
        multi30k: multi30k.unwrap_or_else(|| PathBuf::from(DEFAULT_MULTI30K)),
    };
    let mut study = Study::new(&common.out, options, move |message| {
        eprintln!("[{:>6.1} s] {message}", start.elapsed().as_secs_f64());
    })
    .with_context(|| format!("study directory {}", common.out.display()))?;
    for name in &names {
        let Some((_, answer)) = QUESTIONS.iter().find(|q| q.0 == *name) else { continue };
        let section = answer(&mut study).with_context(|| format!("qkv study {name}"))?;
        println!("{}: {}", section.question, section.answer);
        keep_section(&common.out, &section)?;
    }
    let all: Vec<&str> = QUESTIONS.iter().map(|q| q.0).collect();
    let sections = kept_sections(&common.out, &all)?;
    let title = if common.quick { "qkv study (quick smoke run: the numbers mean nothing)" } else { "qkv study" };
    write_report(&common.out, title, &sections)?;
    eprintln!("report: {} ({:.0} s)", common.out.join("report.md").display(), start.elapsed().as_secs_f64());
    Ok(())
}
