//! A character-level GPT trained from scratch on the shared training loop, then sampled.
//!
//!     cargo run --release --example train_lm [TEXT_FILE] [STEPS]
//!
//! Without a file it trains on a few built-in lines (it learns to spell them back within a few hundred steps);
//! tinyshakespeare/input.txt with a few thousand steps is nanoGPT's CPU run. Nothing is written to disk: the
//! trainer is in memory (`Trainer::create` with a directory gives checkpoints, a log and `best/`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use qkv::decode::generate::{generate, GenerateOptions};
use qkv::models::Gpt2Config;
use qkv::train::language_model::{LmTrainer, LmTraining};
use qkv::train::trainer::Event;

const BUILT_IN: &str = "the cat sat on the mat.\nthe dog sat on the log.\nthe bird sat on the word.\n";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let scratch = std::env::temp_dir().join(format!("qkv-example-train-lm-{}", std::process::id()));
    let text = match args.next() {
        Some(path) => PathBuf::from(path),
        None => {
            // The task reads its text from a file; the built-in lines are repeated so that the held-out tenth
            // has whole windows.
            std::fs::create_dir_all(&scratch)?;
            let path = scratch.join("text.txt");
            std::fs::write(&path, BUILT_IN.repeat(40))?;
            path
        }
    };
    let steps = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);

    let mut training = LmTraining { text, block_size: 32, batch_size: 16, eval_interval: 100, ..LmTraining::default() };
    training.run.max_steps = Some(steps);
    training.learning_rate = 3e-3;
    training.warmup = 20;
    // 2 layers, 2 heads, 64 wide: seconds on a laptop core
    let model =
        Gpt2Config { n_positions: 32, n_embd: 64, n_layer: 2, n_head: 2, ..qkv::train::language_model::small_config() };
    let mut trainer = LmTrainer::in_memory(training, model)?;
    let finish = trainer.run(&AtomicBool::new(false), |event| {
        if let Event::Eval(eval) = event {
            println!("step {:4}: validation loss {:.3}", eval.step, eval.val_loss);
        }
    })?;
    println!("finished: {finish:?}");

    let task = trainer.task();
    let prompt = task.tokenizer().encode("the ", false).map_err(|e| anyhow::anyhow!("{e}"))?.get_ids().to_vec();
    // `slide`: past the 32 positions, keep the last 32 tokens as context (nanoGPT's sampler) instead of stopping
    let options = GenerateOptions { max_new_tokens: 80, greedy: true, slide: true, ..GenerateOptions::default() };
    let (tokens, _) = generate(task.model(), &prompt, &options, |_| Ok(true))?;
    let sample = task.tokenizer().decode(&[prompt, tokens].concat(), false).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("greedy sample:\n{sample}");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    Ok(())
}
