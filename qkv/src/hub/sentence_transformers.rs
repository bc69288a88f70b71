//! sentence-transformers directories: a Hugging Face BERT plus `modules.json` (Transformer → Pooling →
//! optional Normalize), `1_Pooling/config.json` (which pooling) and `sentence_bert_config.json` (the
//! longest input), read into a [`SentenceConfig`]; `crate::inference::Embedder` runs it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{existing, read_json};
use crate::{Error, Result};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average of the real tokens' vectors (padding left out).
    Mean,
    /// The first token's (\[CLS\]) vector.
    Cls,
    /// The maximum over the real tokens, dimension by dimension.
    Max,
    /// Sum over the real tokens divided by √(their count).
    MeanSqrtLen,
}

#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    /// sentence-transformers ≥ 5 writes the mode as one name (or a list of names) instead of the booleans.
    pooling_mode: Option<PoolingModes>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PoolingModes {
    One(String),
    Several(Vec<String>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// What a sentence-transformers directory says about turning token vectors into a sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceConfig {
    /// Which pooling `1_Pooling/config.json` selects (mean for a plain BERT directory).
    pub pooling: Pooling,
    /// An L2 normalisation module follows the pooling.
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`: longer inputs are truncated to it.
    pub max_seq_length: Option<usize>,
}

/// Reads `dir`'s modules.json, pooling config and sentence_bert_config.json. A plain BERT directory (no
/// modules.json) gets mean pooling and L2 normalisation.
pub fn read_sentence_config(dir: &Path) -> Result<SentenceConfig> {
    let (pooling, normalize) = match existing(dir, "modules.json") {
        Some(path) => read_modules(dir, &path)?,
        None => (Pooling::Mean, true),
    };
    let max_seq_length = match existing(dir, "sentence_bert_config.json") {
        Some(path) => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
        None => None,
    };
    Ok(SentenceConfig { pooling, normalize, max_seq_length })
}

/// Pooling and normalisation named by modules.json and the Pooling module's config.json.
fn read_modules(dir: &Path, modules_path: &Path) -> Result<(Pooling, bool)> {
    let modules: Vec<Module> = read_json(modules_path)?;
    let mut pooling = None;
    let mut normalize = false;
    for module in &modules {
        match module.kind.rsplit('.').next().unwrap_or_default() {
            "Transformer" => {}
            "Pooling" => pooling = Some(read_pooling(&dir.join(&module.path).join("config.json"))?),
            "Normalize" => normalize = true,
            other => {
                let message = format!("module type {other} is not supported (Transformer, Pooling, Normalize are)");
                return Err(Error::input(modules_path, None, message));
            }
        }
    }
    let pooling = pooling.ok_or_else(|| Error::input(modules_path, None, "lists no Pooling module"))?;
    Ok((pooling, normalize))
}

fn read_pooling(path: &PathBuf) -> Result<Pooling> {
    let config: PoolingConfig = read_json(path)?;
    let modes = [
        (config.pooling_mode_mean_tokens, Pooling::Mean),
        (config.pooling_mode_cls_token, Pooling::Cls),
        (config.pooling_mode_max_tokens, Pooling::Max),
        (config.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
    ];
    let mut chosen: Vec<Pooling> = modes.iter().filter(|(on, _)| *on).map(|(_, p)| *p).collect();
    let named = match &config.pooling_mode {
        None => Vec::new(),
        Some(PoolingModes::One(name)) => vec![name.as_str()],
        Some(PoolingModes::Several(names)) => names.iter().map(String::as_str).collect(),
    };
    for name in named {
        chosen.push(match name {
            "mean" => Pooling::Mean,
            "cls" => Pooling::Cls,
            "max" => Pooling::Max,
            "mean_sqrt_len_tokens" => Pooling::MeanSqrtLen,
            other => {
                let message = format!(
                    "pooling_mode {other:?} is not supported (qkv pools by mean, cls, max or \
                                       mean_sqrt_len_tokens)"
                );
                return Err(Error::input(path, None, message));
            }
        });
    }
    match chosen[..] {
        [one] => Ok(one),
        _ => Err(Error::input(
            path,
            None,
            "exactly one pooling mode must be chosen (concatenated modes are not supported)",
        )),
    }
}
