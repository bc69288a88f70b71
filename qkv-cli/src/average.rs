//! `qkv average`: averages the parameters of a run's last N checkpoints into one model directory.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qkv::hub::average_model_dirs;
use qkv::train::trainer::step_checkpoints;

#[derive(Parser)]
pub struct Args {
    /// Run directory whose checkpoints/ to average
    #[arg(long, conflicts_with = "inputs")]
    run: Option<PathBuf>,
    /// How many of the run's newest checkpoints
    #[arg(long, default_value_t = 10)]
    last: usize,
    /// Model directories to average instead of a run's checkpoints
    #[arg(long, num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Output model directory
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let inputs = match &args.run {
        Some(run) => {
            let all = step_checkpoints(run)?;
            if all.is_empty() {
                bail!("{}: no step checkpoints (checkpoints/step-N or checkpoint-N)", run.display());
            }
            all[all.len().saturating_sub(args.last)..].to_vec()
        }
        None if !args.inputs.is_empty() => args.inputs.clone(),
        None => bail!("give --run DIR or --inputs DIR..."),
    };
    average_model_dirs(&inputs, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("averaged {} checkpoints into {}", inputs.len(), args.out.display());
    for input in &inputs {
        println!("  {}", input.display());
    }
    Ok(())
}
