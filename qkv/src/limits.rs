//! The largest sizes qkv accepts, and the memory estimate behind requests that could exhaust a machine.
//!
//! Every size a user controls (a config.json field, a beam, a top-k, an output length) is checked against a
//! bound here before anything is allocated, so a typo or a hostile file is an error naming the option and the
//! limit rather than an abort from the allocator. The bounds sit far above real models (the largest
//! vocabularies have about 256 000 entries, the widest published models 25 600 dimensions) and far below
//! what overflows a `usize` product.

use crate::{Error, Result};

/// Entries of a vocabulary (rows of an embedding table, classes of a head).
pub const MAX_VOCAB: usize = 1 << 24;
/// Model width and feed-forward width.
pub const MAX_WIDTH: usize = 1 << 18;
/// Layers of one stack.
pub const MAX_LAYERS: usize = 1024;
/// Rows of a learned position table.
pub const MAX_POSITIONS: usize = 1 << 20;
/// Hypotheses of a beam search.
pub const MAX_BEAM: usize = 1024;
/// Tokens one translation or generation may produce, whatever its length options say: a model that never
/// emits end-of-sequence stops here.
pub const MAX_OUTPUT_TOKENS: usize = 4096;
/// Subword tokens of one sentence to translate. Attention's time and memory grow with the square of the
/// length; a longer line is almost always several sentences (or a file without line breaks).
pub const MAX_SOURCE_TOKENS: usize = 1024;
/// Worker threads (the pool is spawned up front; far more threads than cores only adds overhead).
pub const MAX_THREADS: usize = 1024;

/// `value` of `option`, at most `max`.
pub fn at_most(option: &'static str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(Error::config(option, value, format!("at most {max}")));
    }
    Ok(())
}

/// Each `(option, value, max)` at least 1 and at most `max` (the sizes of a model config).
pub fn sizes(fields: &[(&'static str, usize, usize)]) -> Result<()> {
    for &(option, value, max) in fields {
        if value == 0 {
            return Err(Error::config(option, 0, "at least 1"));
        }
        at_most(option, value, max)?;
    }
    Ok(())
}

/// Refuses a model of `parameters` (an estimate from its config) whose f32 weights would not fit in memory.
pub fn check_parameters(parameters: f64) -> Result<()> {
    check_memory(&format!("a model of {parameters:.3e} parameters (4 bytes each)"), 4.0 * parameters)
}

/// Refuses a request whose estimated memory, `bytes`, exceeds what this process may use (physical memory,
/// or a lower address-space limit), naming what needs it and both sizes. Where neither can be read the
/// request goes ahead.
pub fn check_memory(what: &str, bytes: f64) -> Result<()> {
    match memory_limit() {
        Some(limit) if bytes > limit as f64 => Err(Error::config(
            "memory",
            format!("{what} needs about {}", human_bytes(bytes)),
            format!("at most the {} this process may use", human_bytes(limit as f64)),
        )),
        _ => Ok(()),
    }
}

/// The smaller of physical memory (`MemTotal` of /proc/meminfo) and the soft address-space limit
/// (`ulimit -v`, from /proc/self/limits).
pub fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let address_space = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("Max address space"))?;
        line.split_whitespace().nth(3)?.parse::<u64>().ok() // "unlimited" does not parse
    });
    match (total, address_space) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// 1.5 GB, 830 MB, ... (decimal units, as `df -H` writes them).
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_estimates_name_the_limit() {
        let message = at_most("beam", 5000, MAX_BEAM).unwrap_err().to_string();
        assert!(message.contains("beam = 5000") && message.contains("at most 1024"), "{message}");
        assert!(at_most("beam", 4, MAX_BEAM).is_ok());
        assert_eq!(human_bytes(4.0e12), "4.0 TB");
        assert_eq!(human_bytes(512.0), "512 bytes");
        if memory_limit().is_some() {
            let message = check_memory("the model's parameters", 1e20).unwrap_err().to_string();
            assert!(message.contains("the model's parameters needs about 100000.0 PB"), "{message}");
        }
        assert!(check_memory("a little", 1000.0).is_ok());
    }
}
