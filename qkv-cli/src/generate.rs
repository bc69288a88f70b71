//! `qkv generate`: text from a GPT-2 directory, streamed to stdout as it is produced.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use clap::Parser;
use qkv::decode::generate::{generate, generate_batch, GenerateOptions, StopReason};
use qkv::hub::{gpt2, tokenizer::PretrainedTokenizer};
use qkv::models::Gpt2;

#[derive(Parser)]
pub struct Args {
    /// GPT-2 directory (config.json, model.safetensors; tokenizer.json for --prompt)
    #[arg(long)]
    model: PathBuf,
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
    let model = gpt2::load(&args.model, &Device::Cpu)
        .and_then(|loaded| loaded.frozen())
        .with_context(|| format!("loading {}", args.model.display()))?;
    let tokenizer = match PretrainedTokenizer::from_dir(&args.model) {
        Ok(t) => Some(t),
        Err(_) if args.prompt.is_none() => None,
        Err(e) => return Err(e).context("--prompt needs the model's tokenizer.json (or give --prompt-ids)"),
    };
    if let Some(input) = &args.input {
        let tokenizer = tokenizer.context("--input needs the model's tokenizer")?;
        return batched(&args, input, &model, &tokenizer);
    }
    let prompt = match (&args.prompt, &args.prompt_ids, &tokenizer) {
        (Some(text), _, Some(t)) => t.ids(text)?,
        (_, Some(ids), _) => ids.clone(),
        _ => bail!("give --prompt TEXT or --prompt-ids 1,2,3"),
    };
    let options = options(&args, &model);
    let mut out = std::io::stdout().lock();
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0; // bytes of the decoded text already written
    let mut text = String::new();
    let started = Instant::now();
    let (tokens, mut reason) = generate(&model, &prompt, &options, |token| {
        generated.push(token);
        match &tokenizer {
            Some(t) => {
                text = t.decode(&generated)?;
                // Byte offsets into the decoded text; `get` declines offsets that are not character boundaries.
                let fresh = text.get(printed..).unwrap_or("");
                let cut = args.stop.iter().filter_map(|s| fresh.find(s.as_str()).map(|i| i + printed)).min();
                let end = cut.unwrap_or(text.len());
                // A token may end inside a multi-byte character: wait for the rest (decoding gives U+FFFD).
                if let Some(piece) =
                    text.get(printed..end).filter(|p| !args.json && !p.is_empty() && !p.ends_with('\u{fffd}'))
                {
                    out.write_all(piece.as_bytes())
                        .and_then(|_| out.flush())
                        .map_err(|e| qkv::Error::io("stdout", e))?;
                    printed = end;
                }
                if let Some(end) = cut {
                    text.truncate(end);
                    return Ok(false);
                }
            }
            None if !args.json => {
                write!(out, "{}{token}", if generated.len() > 1 { "," } else { "" })
                    .and_then(|_| out.flush())
                    .map_err(|e| qkv::Error::io("stdout", e))?;
            }
            None => {}
        }
        Ok(true)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if reason == StopReason::Caller && args.stop.is_empty() {
        reason = StopReason::MaxNewTokens;
    }
    let reason_name = reason_name(reason);
    if args.json {
        let record = serde_json::json!({
            "prompt_ids": prompt, "generated_ids": tokens, "text": tokenizer.as_ref().map(|_| &text),
            "stop_reason": reason_name, "tokens_per_s": tokens.len() as f64 / seconds,
        });
        println!("{record}");
    } else {
        if let Some(rest) = text.get(printed..).filter(|_| tokenizer.is_some()) {
            write!(out, "{rest}")?;
        }
        writeln!(out)?;
        eprintln!(
            "[{} tokens in {seconds:.2} s, {:.1} tokens/s; stopped: {reason_name}]",
            tokens.len(),
            tokens.len() as f64 / seconds
        );
    }
    Ok(())
}

fn options(args: &Args, model: &Gpt2) -> GenerateOptions {
    let vocab = model.config().vocab_size as u32;
    let eos = model.config().eos_token_id;
    GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        greedy: args.greedy,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        eos_token_id: (!args.ignore_eos && eos < vocab).then_some(eos),
        use_cache: !args.no_cache,
        slide: args.slide,
    }
}

fn reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::MaxNewTokens => "max_new_tokens",
        StopReason::Eos => "eos",
        StopReason::ContextFull => "n_positions",
        StopReason::Caller => "stop_string",
    }
}

/// `--input`: the prompts of a file in left-padded batches, one JSON line per prompt. A row stops at a stop
/// string like a single prompt does (the string is cut from its text).
fn batched(args: &Args, input: &Path, model: &Gpt2, tokenizer: &PretrainedTokenizer) -> Result<()> {
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let lines = crate::progress::input_lines((input != Path::new("-")).then_some(input))?;
    let options = options(args, model);
    let pad = options.eos_token_id.unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for chunk in lines.chunks(args.batch_size) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|p| tokenizer.ids(p)).collect::<qkv::Result<_>>()?;
        let mut texts = vec![String::new(); chunk.len()];
        let mut ids: Vec<Vec<u32>> = vec![Vec::new(); chunk.len()];
        let results = generate_batch(model, &prompts, &options, pad, |row, token| {
            ids[row].push(token);
            texts[row] = tokenizer.decode(&ids[row])?;
            match args.stop.iter().filter_map(|s| texts[row].find(s.as_str())).min() {
                Some(cut) => {
                    texts[row].truncate(cut);
                    Ok(false)
                }
                None => Ok(true),
            }
        })?;
        for ((prompt, result), text) in chunk.iter().zip(results).zip(texts) {
            let record = serde_json::json!({
                "prompt": prompt, "text": text, "generated_ids": result.tokens,
                "stop_reason": reason_name(result.stop),
            });
            writeln!(out, "{record}")?;
        }
    }
    Ok(())
}
