//! `qkv study QUESTION --out DIR`: runs one of the design questions of [`qkv::study`] (or `all`), prints its
//! one-line answer and writes the report (report.md, results.json, figures) into DIR.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qkv::study::{keep_section, kept_sections, write_report, Study, StudyData, StudyOptions, QUESTIONS};

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
    /// and peak rates; gradient per layer at initialisation. And LayerNorm or BatchNorm? Exact match at batch
    /// sizes 4, 16 and 64, and with strings of one length against many at batch 4
    Norms(Common),
    /// Why multiply the embeddings by √d_model, and why share and tie them? The embedding's spread next to the
    /// position encoding's under each factor × initialisation, training with each; parameters and training of
    /// each sharing and tying switch
    Embeddings(Common),
    /// Where does dropout go, and what must evaluation do about it? Each of the four places switched off in
    /// turn; inverted against classic dropout, and classic dropout whose evaluation forgets to rescale
    Dropout(Common),
    /// Why is BERT's input a sum of embeddings, why [CLS], why bidirectional? The sum as one linear layer on
    /// one-hots (all-MiniLM-L6-v2's tables); STS-B dev Spearman with [CLS], mean and max pooling for MiniLM and
    /// for small BERTs pre-trained here; the masked-LM loss with a bidirectional and a causal mask
    Bert(Common),
    /// Which vocabulary: BPE, WordPiece, characters or words? Vocabulary size against tokens per sentence and
    /// the <unk> rate on the Multi30k test set; de→en test BLEU of a tiny Transformer with each
    Tokenizers(Common),
    /// Every question above, into one report
    All(Common),
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
    /// all-MiniLM-L6-v2 (sentence-transformers directory) for `bert`; default: the one
    /// tools/models/fetch_minilm.sh keeps in $QKV_CACHE (or ~/.cache/qkv), fetched when it is missing
    #[arg(long)]
    minilm: Option<PathBuf>,
    /// STS-B directory (train.csv, dev.csv) for `bert`
    #[arg(long, default_value = "../shared/data/stsb")]
    stsb: PathBuf,
    /// Multi30k directory (train.en, …) for `bert` and `tokenizers`
    #[arg(long, default_value = "../shared/data/multi30k")]
    multi30k: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let (names, common): (Vec<&str>, Common) = match args.question {
        Question::Scaling(c) => (vec!["scaling"], c),
        Question::Heads(c) => (vec!["heads"], c),
        Question::TiedQk(c) => (vec!["tied-qk"], c),
        Question::Additive(c) => (vec!["additive"], c),
        Question::MaskValue(c) => (vec!["mask-value"], c),
        Question::ParallelDecoding(c) => (vec!["parallel-decoding"], c),
        Question::Heatmaps(c) => (vec!["heatmaps"], c),
        Question::Positions(c) => (vec!["positions"], c),
        Question::Residuals(c) => (vec!["residuals"], c),
        Question::Norms(c) => (vec!["norms"], c),
        Question::Embeddings(c) => (vec!["embeddings"], c),
        Question::Dropout(c) => (vec!["dropout"], c),
        Question::Bert(c) => (vec!["bert"], c),
        Question::Tokenizers(c) => (vec!["tokenizers"], c),
        Question::All(c) => (QUESTIONS.iter().map(|q| q.0).collect(), c),
    };
    let start = Instant::now();
    let options = StudyOptions {
        seeds: common.seeds.clone(),
        quick: common.quick,
        release_memory: Some(crate::release_freed_memory),
        data: StudyData {
            minilm: minilm_dir(common.minilm.clone(), names.contains(&"bert"))?,
            stsb: common.stsb.clone(),
            multi30k: common.multi30k.clone(),
        },
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

/// The MiniLM directory: the one given, or (when a question needs it) the one tools/models/fetch_minilm.sh
/// prints, fetching it into its cache ($QKV_CACHE or ~/.cache/qkv) first when it is not there.
fn minilm_dir(given: Option<PathBuf>, needed: bool) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    if !needed {
        return Ok(StudyData::default().minilm);
    }
    let script = std::path::Path::new("tools/models/fetch_minilm.sh");
    anyhow::ensure!(
        script.exists(),
        "{} not found (run qkv from the project's root, or pass --minilm DIR)",
        script.display()
    );
    let output = std::process::Command::new("bash").arg(script).stderr(std::process::Stdio::inherit()).output();
    let output = output.with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}); fetch the model yourself and pass --minilm DIR",
        script.display(),
        output.status
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}
