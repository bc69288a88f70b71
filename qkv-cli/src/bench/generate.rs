//! Text generation with a GPT-2 directory (tools/bench/generate.py is the transformers side): greedy decoding
//! of `new_tokens` after a `prompt_tokens`-long prompt, with the key/value cache and without it (recomputing
//! the whole sequence every step), the prompt's forward pass on its own, and one cached decoding step after
//! 16, 256 and 1000 cached positions.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Parser;
use qkv::decode::generate::{generate, GenerateOptions};
use qkv::device::on_workers;
use qkv::hub::gpt2;
use qkv::nn::Mode;

use qkv::WeightDtype;

use super::{median, time, Measurement};

#[derive(Parser)]
pub struct Args {
    /// GPT-2 directory (tools/bench/make_gpt2_small.py writes a random GPT-2 small)
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Cached positions before the timed single-token steps
    #[arg(long, value_delimiter = ',', default_value = "16,256,1000")]
    positions: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[command(flatten)]
    precision: crate::device::Precision,
}

/// The prompt both sides use: ids 0, 7, 14, … modulo the vocabulary.
pub fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| (i * 7 % vocab) as u32).collect()
}

pub fn run(args: &Args) -> Result<Vec<Measurement>> {
    let model = crate::model_dir::resolve(&args.model)?;
    let dtype = args.precision.dtype_for(&model)?;
    let model = crate::load_releasing(|| -> Result<_> {
        let mut model = gpt2::load_frozen(&model, &Device::Cpu)?.0;
        model.pack_weights(dtype)?;
        Ok(model)
    })?;
    let model = &model;
    let paren = super::dtype_suffix(dtype);
    let loaded = super::resident_memory(&format!("generate{paren}"))?;
    let prompt = prompt(args.prompt_tokens, model.config().vocab_size);
    let n = args.new_tokens;
    let options = |use_cache| GenerateOptions {
        max_new_tokens: n,
        greedy: true,
        use_cache,
        eos_token_id: None,
        ..GenerateOptions::default()
    };
    let run = |use_cache| {
        let (tokens, _) = generate(model, &prompt, &options(use_cache), |_| Ok(true))?;
        anyhow::ensure!(tokens.len() == n, "generated {} tokens, expected {n}", tokens.len());
        Ok(())
    };
    let cached = time(1, args.reps, || run(true))?;
    let uncached = time(1, args.reps, || run(false))?;
    let ids = Tensor::new(vec![prompt.clone()], &Device::Cpu)?;
    // The timed passes run on a pool worker, as generation's own do (qkv::device::on_workers).
    let prefill = time(2, args.reps.max(5), || {
        on_workers(|| model.forward_step(&ids, &mut model.new_cache(), &mut Mode::Eval))?;
        Ok(())
    })?;
    // Per generated token after the prompt: the cached run less its prompt pass.
    let decode_ms = (median(&cached).as_secs_f64() - median(&prefill).as_secs_f64()) * 1e3 / (n - 1).max(1) as f64;
    // The dtype inside a row's parentheses too (", int8"), where llama.cpp's rows carry ", q8_0".
    let tag = match dtype {
        WeightDtype::F32 => String::new(),
        dtype => format!(", {dtype}"),
    };
    let mut results = vec![
        Measurement::rate(format!("generate tokens/s cached ({n} new{tag})"), "tokens/s", n as f64, &cached),
        Measurement::rate(format!("generate tokens/s uncached ({n} new{tag})"), "tokens/s", n as f64, &uncached),
        Measurement::milliseconds(format!("prompt forward ({} tokens{tag})", args.prompt_tokens), &prefill),
        Measurement::reading(format!("decode step cached, mean over the run{paren}"), "ms", decode_ms),
    ];
    for &position in &args.positions {
        // Fill the cache untimed; each timed step then adds one more position (reps ≪ position).
        let mut cache = model.new_cache();
        let context = Tensor::new(vec![self::prompt(position, model.config().vocab_size)], &Device::Cpu)?;
        model.forward_step(&context, &mut cache, &mut Mode::Eval)?;
        let next = Tensor::new(&[[1u32]], &Device::Cpu)?;
        let steps = time(2, 10, || {
            on_workers(|| model.forward_step(&next, &mut cache, &mut Mode::Eval))?;
            Ok(())
        })?;
        results.push(Measurement::milliseconds(format!("decode step at position {position}{paren}"), &steps));
    }
    results.push(super::peak_memory(&format!("generate{paren}"))?);
    results.push(loaded);
    Ok(results)
}
