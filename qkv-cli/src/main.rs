//! `qkv`: each subcommand translates its arguments into a library call and reports the result.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `override_some!(target, field = option, ...)`: sets each `target.field` whose command-line `option` was
/// given (options that override a --config file or a preset).
macro_rules! override_some {
    ($target:ident, $($field:ident = $value:expr),* $(,)?) => { $(if let Some(v) = $value { $target.$field = v; })* };
}

mod attention;
mod average;
mod bench;
mod bleu;
mod classify;
mod convert;
mod demo;
mod device;
mod embed;
mod fill_mask;
mod finetune;
mod forward;
mod generate;
mod model_dir;
mod plot;
mod progress;
mod qa;
mod search;
mod serve;
mod sts;
mod study;
mod train;
mod translate;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory mapped instead of returning it to the OS: candle allocates a fresh buffer for every op's
/// output, and memory handed back is faulted in again, zero-filled by the kernel, on the next step. Measured on
/// the large GPT training step: 1450 ms median with mimalloc's default purging, 1178 ms without (same peak RSS).
/// MIMALLOC_PURGE_DELAY in the environment still wins.
#[cfg(feature = "mimalloc")]
fn keep_freed_memory() {
    // mimalloc.h (v2 and v3) declares `mi_option_purge_delay` right before `mi_option_use_numa_nodes`, which
    // the bindings export; the purge option itself they do not.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options at each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[cfg(not(feature = "mimalloc"))]
fn keep_freed_memory() {}

/// For `qkv study`, which measures peak memory from the resident set: while `release` is true, freed memory
/// goes back to the OS at once (memory kept mapped after one measurement would hide the next one's
/// allocations); false restores [`keep_freed_memory`]'s setting. Only around a measurement: releasing
/// throughout made the study's trainings spend more time in the kernel's page faults than in their own code
/// (user 12.6 min, system 16.0 min for the first 21 minutes of `qkv study all`).
#[cfg(feature = "mimalloc")]
pub fn release_freed_memory(release: bool) {
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;
    if release {
        // SAFETY: as in `keep_freed_memory`; mi_collect only returns the calling thread's free pages.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
        // What is already kept mapped goes back now, on this thread and on every worker that ran tensor ops,
        // or the measured pass would reuse it unseen.
        let collect = || unsafe { libmimalloc_sys::mi_collect(true) };
        collect();
        rayon::broadcast(|_| collect());
    } else {
        keep_freed_memory();
    }
}

#[cfg(not(feature = "mimalloc"))]
pub fn release_freed_memory(_release: bool) {}

/// Runs a model's load (and its packing to `--dtype`) with freed memory going back to the OS at once: the
/// load's temporaries and the f32 copies a bf16 or int8 model no longer needs. Kept mapped
/// ([`keep_freed_memory`]; mimalloc never purges what was freed under that setting, even when asked later),
/// they would stay resident for as long as the command or server runs: GPT-2 small in int8 held 626 MiB after
/// its load with them and 145 MiB without.
pub fn load_releasing<T>(load: impl FnOnce() -> T) -> T {
    release_freed_memory(true);
    let loaded = load();
    release_freed_memory(false);
    loaded
}

#[derive(Parser)]
#[command(name = "qkv", version, about = "Train, run and study Transformer models (encoder-decoder, BERT, GPT-2)")]
struct Cli {
    /// Worker threads for matrix products and qkv's kernels (default: all cores; at most 1024); also read from
    /// QKV_THREADS
    #[arg(long, global = true, env = "QKV_THREADS")]
    threads: Option<usize>,
    /// Where models run (this build: cpu)
    #[arg(long, global = true, default_value = "cpu", env = "QKV_DEVICE")]
    device: String,
    /// Branch, tag or commit of a --model given as a Hugging Face Hub id (org/name), looked up in
    /// huggingface_hub's cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)
    #[arg(long, global = true, default_value = "main")]
    revision: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small Transformer to translate English number words into German, score it on unseen numbers and
    /// draw its cross-attention (no data needed)
    Demo(demo::Args),
    /// Train a model: `qkv train translation ...`, `qkv train lm ...` or `qkv train mlm ...`
    Train(train::Args),
    /// Translate sentences (stdin or --input, one per line, at most 1024 subword tokens each) with a trained model
    /// directory
    Translate(translate::Args),
    /// Average the parameters of a run's last checkpoints into one model directory
    Average(average::Args),
    /// Rewrite a model directory's weights in another format (pytorch_model.bin → model.safetensors)
    Convert(convert::Args),
    /// Draw PNG plots: `qkv plot loss` (a run's log.jsonl), `qkv plot compare` (several runs' logs),
    /// `qkv plot attention` (attention weights as JSON) or `qkv plot chart` (measured series as JSON)
    Plot(plot::Args),
    /// Score system outputs against references as sacreBLEU does: corpus BLEU and chrF, sentence BLEU
    /// (--sentence), paired bootstrap resampling (--paired-bs), BLEU by reference length (--by-length)
    Bleu(bleu::Args),
    /// Fine-tune a pre-trained model: `qkv finetune classify ...` (BERT sequence classification)
    Finetune(finetune::Args),
    /// Sentence embeddings from a sentence-transformers or BERT directory (JSON lines or .npy)
    Embed(embed::Args),
    /// Semantic similarity: Spearman correlation of embedding cosines with gold scores (STS-B style CSV)
    Sts(sts::Args),
    /// The most likely tokens for each [MASK] of a text (BertForMaskedLM)
    FillMask(fill_mask::Args),
    /// Label probabilities for texts or text pairs (BertForSequenceClassification)
    Classify(classify::Args),
    /// Generate text with a GPT-2 directory (greedy or sampled), streamed as it is produced
    Generate(generate::Args),
    /// Extractive question answering over a context of any length (BertForQuestionAnswering)
    Qa(qa::Args),
    /// Run a Hugging Face checkpoint on token ids from a safetensors file; write its outputs to another
    Forward(forward::Args),
    /// Serve model directories over an OpenAI-compatible HTTP API (/v1/embeddings, /v1/completions, /v1/models)
    Serve(serve::Args),
    /// Answer the notes' design questions by experiment ("why divide by √d_k?", "why several heads?", …):
    /// `qkv study scaling|heads|tied-qk|additive|mask-value|parallel-decoding|all --out DIR`
    Study(study::Args),
    /// Heatmaps of every layer's and head's attention weights over a text (BERT, GPT-2 or translation model),
    /// tokens on the axes
    Attention(attention::Args),
    /// Time qkv's side of a benchmark workload and print JSON (tools/bench/run.sh compares it with PyTorch)
    Bench(bench::Args),
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    model_dir::set_revision(cli.revision.clone());
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Err(err) = set_threads(threads) {
        eprintln!("error: --threads: {err:#}");
        return ExitCode::FAILURE;
    }
    if let Err(err) = device::choose(&cli.device) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    if !matches!(cli.command, Command::Serve(_) | Command::Bench(_)) {
        die_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Bleu(args) => bleu::run(args),
        Command::Train(args) => train::run(args),
        Command::Translate(args) => translate::run(args),
        Command::Average(args) => average::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Finetune(args) => finetune::run(args),
        Command::Sts(args) => sts::run(args),
        Command::Forward(args) => forward::run(args),
        Command::FillMask(args) => fill_mask::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Qa(args) => qa::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Attention(args) => attention::run(args),
        Command::Study(args) => study::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sizes candle's two thread pools before the first tensor operation. Matrix products and qkv's kernels run on
/// rayon's pool with `threads` workers. candle's own element-wise pool spins while it waits for work, competing
/// with rayon's workers for the same cores, so it gets one thread (no helpers) unless CANDLE_NUM_THREADS says
/// otherwise: on 2 cores that measured 35–41 ms per small GPT training step against 40–43 ms with two.
/// RAYON_NUM_THREADS is always set because candle re-reads /proc/cpuinfo on every matrix product without it.
/// The pool is started here so that a count the system cannot start is an error, not a panic mid-command.
fn set_threads(threads: usize) -> qkv::Result<()> {
    std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    qkv::device::start_thread_pool(threads)
}

/// Output piped into a reader that stops early (`qkv bleu ... | head`) ends the process as it ends `cat` or
/// `grep`, by SIGPIPE, instead of a panic in `println!`: Rust ignores the signal so that a closed socket is an
/// error, which the server (and the load generator) do want, so they keep Rust's setting.
#[cfg(unix)]
fn die_quietly_on_closed_pipe() {
    // SAFETY: SIG_DFL installs no handler; the disposition is process-wide and set before any output.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn die_quietly_on_closed_pipe() {}
