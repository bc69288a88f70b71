//! The progress bar every training command shows, and the line-oriented input the inference commands read.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;

/// A steps bar, hidden until the caller knows the total (then `set_draw_target(stderr)`).
pub fn steps_bar() -> ProgressBar {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}<{eta_precise}]")
            .expect("static template"),
    );
    bar
}

/// The lines of `path`, or of stdin without one; none at all is an error.
pub fn input_lines(path: Option<&Path>) -> Result<Vec<String>> {
    let lines = match path {
        Some(path) => qkv::text::corpus::read_lines(path)?,
        None => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).context("reading stdin (not UTF-8?)")?;
            text.lines().map(str::to_string).collect()
        }
    };
    if lines.is_empty() {
        bail!("no input: give one item per line on stdin or with --input FILE");
    }
    Ok(lines)
}

/// A `--config FILE.json` of options, or `None` when not given.
pub fn json_config<T: DeserializeOwned>(path: Option<&Path>, what: &str) -> Result<Option<T>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = serde_json::from_str(&text).with_context(|| format!("{}: not a {what}", path.display()))?;
    Ok(Some(value))
}
