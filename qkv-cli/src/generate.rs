//! `qkv generate`: text from a GPT-2 directory, streamed to stdout as it is produced.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use qkv::decode::generate::GenerateOptions;
use qkv::inference::Generator;

#[derive(Parser)]
pub struct Args {
    /// GPT-2 directory (config.json, model.safetensors; tokenizer.json for --prompt)
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    precision: crate::device::Precision,
    /// Prompt text (needs the directory's tokenizer)
    #[arg(long, required_unless_present_any = ["prompt_ids", "input"], conflicts_with_all = ["prompt_ids", "input"])]
    prompt: Option<String>,
    /// Many prompts, one per line (`-` for stdin), generated together as left-padded batches; prints one JSON
    /// object per prompt, in order: {"prompt", "text", "generated_ids", "stop_reason"}
    #[arg(long, conflicts_with = "prompt_ids")]
    input: Option<PathBuf>,
    /// Prompts per batch with --input
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Prompt as token ids, e.g. 12,7,99 (no tokenizer needed; output is ids too unless one is present)
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 50)]
    max_new_tokens: usize,
    /// Always take the most likely token (otherwise sample)
    #[arg(long)]
    greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when the generated text contains this string (repeatable); the string is not printed
    #[arg(long)]
    stop: Vec<String>,
    /// Do not stop at the end-of-text token
    #[arg(long)]
    ignore_eos: bool,
    /// Recompute the whole sequence at every step instead of caching keys and values
    #[arg(long)]
    no_cache: bool,
    /// When the context (n_positions) is full, drop the oldest tokens and go on (as nanoGPT's sampler does)
    /// instead of stopping
    #[arg(long)]
    slide: bool,
    /// Print {"prompt_ids", "generated_ids", "text", "stop_reason", "tokens_per_s"} instead of streaming
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let generator = crate::load_releasing(|| Generator::load_as(&model, &crate::device::device(), dtype))
        .with_context(|| format!("loading {}", model.display()))?;
    if let Some(input) = &args.input {
        return batched(&args, input, &generator);
    }
    let prompt = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) => {
            generator.encode(text).context("--prompt needs the model's tokenizer.json (or give --prompt-ids)")?
        }
        (_, Some(ids)) => ids.clone(),
        _ => bail!("give --prompt TEXT or --prompt-ids 1,2,3"),
    };
    let options = options(&args, &generator);
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut printed_ids = 0;
    let completion = generator.complete(&prompt, &options, &args.stop, |piece| {
        if !args.json {
            out.write_all(piece.as_bytes()).and_then(|_| out.flush()).map_err(|e| qkv::Error::io("stdout", e))?;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens = completion.generated_ids.len();
    if args.json {
        let record = serde_json::json!({
            "prompt_ids": prompt, "generated_ids": completion.generated_ids, "text": completion.text,
            "stop_reason": completion.stop.name(), "tokens_per_s": tokens as f64 / seconds,
        });
        println!("{record}");
        return Ok(());
    }
    if completion.text.is_none() {
        // No tokenizer: the ids are the output.
        for id in &completion.generated_ids {
            write!(out, "{}{id}", if printed_ids > 0 { "," } else { "" })?;
            printed_ids += 1;
        }
    }
    writeln!(out)?;
    eprintln!(
        "[{tokens} tokens in {seconds:.2} s, {:.1} tokens/s; stopped: {}]",
        tokens as f64 / seconds,
        completion.stop.name()
    );
    Ok(())
}

fn options(args: &Args, generator: &Generator) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        greedy: args.greedy,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        eos_token_id: generator.eos_token_id().filter(|_| !args.ignore_eos),
        use_cache: !args.no_cache,
        slide: args.slide,
        logprobs: None,
    }
}

/// `--input`: the prompts of a file in left-padded batches, one JSON line per prompt. A row stops at a stop
/// string like a single prompt does (the string is cut from its text).
fn batched(args: &Args, input: &Path, generator: &Generator) -> Result<()> {
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let lines = crate::progress::input_lines((input != Path::new("-")).then_some(input))?;
    let options = options(args, generator);
    let mut out = std::io::stdout().lock();
    for chunk in lines.chunks(args.batch_size) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| generator.encode(p)).collect::<qkv::Result<_>>()?;
        let completions = generator.complete_batch(&prompts, &options, &args.stop)?;
        for (prompt, completion) in chunk.iter().zip(completions) {
            let record = serde_json::json!({
                "prompt": prompt, "text": completion.text, "generated_ids": completion.generated_ids,
                "stop_reason": completion.stop.name(),
            });
            writeln!(out, "{record}")?;
        }
    }
    Ok(())
}
