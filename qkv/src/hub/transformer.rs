//! The encoder-decoder Transformer's model directories (a translation run's `best/`, its checkpoints, an
//! averaged model): config.json with [`TransformerConfig`]'s fields and model.safetensors under qkv's own
//! parameter names. The checks that config and weights agree live here, beside BERT's and GPT-2's.

use std::path::{Path, PathBuf};

use super::header::{Agreement, WeightHeader};
use super::reduced::OutputAxis;
use super::{read_config, WEIGHTS};
use crate::models::{PositionEncoding, TransformerConfig};
use crate::Result;

/// The directory a translation model loads from: `dir`, or a run directory's `best/` when `dir` has no weights
/// of its own.
pub fn model_dir(dir: &Path) -> PathBuf {
    if !dir.join(WEIGHTS).exists() && dir.join("best").is_dir() {
        dir.join("best")
    } else {
        dir.to_path_buf()
    }
}

/// `dir/config.json`, checked against the header of `dir/model.safetensors` before any model is built.
pub fn read_checked_config(dir: &Path) -> Result<TransformerConfig> {
    let config: TransformerConfig = read_config(dir)?;
    check_against_weights(dir, &config)?;
    Ok(config)
}

/// Refuses a config whose sizes disagree with the weights' header or exceed qkv's limits.
pub fn check_against_weights(dir: &Path, config: &TransformerConfig) -> Result<()> {
    let header = WeightHeader::read_file(&dir.join(WEIGHTS))?;
    header.check_config(&dir.join("config.json"), &agreements(config))?;
    super::validate_in(dir, config.validate())
}

/// The config fields the tensors repeat (parameter names as [`crate::models::Transformer::new`] gives them).
fn agreements(config: &TransformerConfig) -> Vec<Agreement> {
    // A complex embedding's tables are (V, C/2): its amplitudes give the vocabulary, the layers the width.
    let complex = config.position_encoding == PositionEncoding::Complex;
    let (tokens, target, width) = if complex {
        (
            ["shared.amplitude.weight", "encoder.embed_tokens.amplitude.weight"],
            ["decoder.embed_tokens.amplitude.weight", "lm_head.weight"],
            Agreement::axis("d_model", config.d_model, &["encoder.layers.0.feed_forward.fc1.weight"], 1),
        )
    } else {
        let tokens = ["shared.weight", "encoder.embed_tokens.weight"];
        (
            tokens,
            ["decoder.embed_tokens.weight", "lm_head.weight"],
            Agreement::axis("d_model", config.d_model, &tokens, 1),
        )
    };
    let mut agreements = vec![
        Agreement::axis("vocab_size", config.vocab_size, &tokens, 0),
        Agreement::axis("vocab_size", config.vocab_size, &target, 0),
        width,
        Agreement::axis("encoder_ffn_dim", config.encoder_ffn_dim, &["encoder.layers.0.feed_forward.fc1.weight"], 0),
        Agreement::axis("decoder_ffn_dim", config.decoder_ffn_dim, &["decoder.layers.0.feed_forward.fc1.weight"], 0),
        Agreement::layers("encoder_layers", config.encoder_layers, "encoder.layers."),
        Agreement::layers("decoder_layers", config.decoder_layers, "decoder.layers."),
    ];
    if config.position_encoding == PositionEncoding::Learned {
        for table in ["encoder.embed_positions.weight", "decoder.embed_positions.weight"] {
            agreements.push(Agreement::axis("max_position_embeddings", config.max_position_embeddings, &[table], 0));
        }
    }
    agreements
}

/// How `qkv convert --dtype` stores a tensor ([`super::reduced`]): reduced are the encoder's and decoder's
/// layer matrices, which [`crate::models::Transformer::pack_weights`] packs; embeddings and LayerNorms stay f32.
pub fn packed_axis(name: &str, shape: &[usize]) -> Option<OutputAxis> {
    let in_layers = name.starts_with("encoder.layers.") || name.starts_with("decoder.layers.");
    (shape.len() == 2 && in_layers && name.ends_with(".weight")).then_some(OutputAxis::Rows)
}
