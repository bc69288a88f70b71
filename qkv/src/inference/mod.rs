//! What a user runs on a trained model directory, built once and callable from many threads (`&self`): the
//! layer the CLI's commands and `qkv serve` share.
//!
//! - [`Embedder`]: sentence embeddings (sentence-transformers or plain BERT directories);
//! - [`Generator`]: GPT-2 continuations, streamed as UTF-8-safe text that stops at stop strings;
//! - [`Translator`]: encoder-decoder translation, greedy or beam search;
//! - [`Pipeline`]: BERT task heads as transformers' pipelines — fill-mask, text classification, question
//!   answering;
//! - [`attention_grids`]: every layer's and head's attention weights over a text, for heatmaps;
//! - [`forward::checkpoint_outputs`]: any supported checkpoint's raw outputs on given ids;
//! - [`convert::convert`]: a model directory saved with its matrices in bf16 or int8.
//!
//! [`ModelKind::detect`] tells from a directory's files which of them it is.

pub mod attention;
pub mod convert;
pub mod embedder;
pub mod forward;
pub mod generator;
pub mod pipeline;
pub mod text_stream;
pub mod translator;

use std::path::Path;

pub use attention::{attention_grids, AttentionGrid};
pub use embedder::Embedder;
pub use generator::{Completion, Generator};
pub use pipeline::{Answer, LabelScore, MaskPrediction, Pipeline, QaOptions};
pub use text_stream::TextStream;
pub use translator::Translator;

use crate::hub::read_config;
use crate::models::bert::BertArchitecture;
use crate::{Error, Result};

/// Which inference type a model directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A sentence-transformers directory (modules.json), or a plain `BertModel`: embeddings.
    Embedder,
    /// A BERT with a task head: its pipeline.
    BertTask(BertArchitecture),
    /// A GPT-2 (`GPT2LMHeadModel` / `GPT2Model`): generation.
    Generator,
    /// qkv's encoder-decoder Transformer (a `qkv train translation` run or model directory): translation.
    Translator,
}

impl ModelKind {
    /// Reads `dir`'s config.json (a translation run directory means its `best/`): `model_type` "bert" or
    /// "gpt2", or the encoder-decoder's fields.
    pub fn detect(dir: &Path) -> Result<Self> {
        let dir = if !dir.join("config.json").exists() && dir.join("best/config.json").exists() {
            dir.join("best")
        } else {
            dir.to_path_buf()
        };
        let config: serde_json::Value = read_config(&dir)?;
        let field = |name: &str| config.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let architecture = config.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str());
        match field("model_type").as_deref() {
            Some("bert") if dir.join("modules.json").exists() => Ok(ModelKind::Embedder),
            Some("bert") => match architecture.map(str::parse::<BertArchitecture>).transpose()? {
                None | Some(BertArchitecture::Base) => Ok(ModelKind::Embedder),
                Some(head) => Ok(ModelKind::BertTask(head)),
            },
            Some("gpt2") => Ok(ModelKind::Generator),
            None if config.get("encoder_layers").is_some() && config.get("decoder_layers").is_some() => {
                Ok(ModelKind::Translator)
            }
            other => {
                let found = other.map_or("no model_type".to_string(), |t| format!("model_type {t:?}"));
                let message = format!("{found}: qkv runs bert, gpt2 and its own encoder-decoder directories");
                Err(Error::input(dir.join("config.json"), None, message))
            }
        }
    }
}
