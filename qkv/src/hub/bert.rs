//! BERT checkpoints as transformers writes them: the one table from qkv's parameter names to
//! `modeling_bert.py`'s, and loading / saving whole directories.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::header::{Agreement, WeightHeader};
use super::reduced::OutputAxis;
use super::{assign, load_weights, read_config, save_safetensors, write_json, LoadReport, WeightSource};
use crate::models::bert::{Bert, BertArchitecture, BertConfig};
use crate::nn::{params::named_vars, seeded_var_builder};
use crate::{Error, Result};

/// qkv module path → checkpoint module path, for the encoder body (under `bert.` in the task classes).
const BODY: [(&str, &str); 5] = [
    ("embeddings.word", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.segment", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    ("pooler", "pooler.dense"),
];

/// Inside `encoder.layers.{i}` ↔ `encoder.layer.{i}`.
const LAYER: [(&str, &str); 8] = [
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_norm", "attention.output.LayerNorm"),
    ("feed_forward.fc1", "intermediate.dense"),
    ("feed_forward.fc2", "output.dense"),
    ("feed_forward_norm", "output.LayerNorm"),
];

/// The heads, at the top level of the checkpoint. The MLM decoder's weight is the word embedding matrix
/// (tied, not stored) and its bias is `cls.predictions.bias`.
const HEADS: [(&str, &str); 6] = [
    ("classifier", "classifier"),
    ("qa_outputs", "qa_outputs"),
    ("mlm.transform", "cls.predictions.transform.dense"),
    ("mlm.norm", "cls.predictions.transform.LayerNorm"),
    ("mlm.bias", "cls.predictions.bias"),
    ("next_sentence", "cls.seq_relationship"),
];

/// How `qkv convert --dtype` stores a checkpoint tensor ([`super::reduced`]): reduced are the encoder layers'
/// matrices, which [`Bert::pack_weights`] packs; the embeddings, LayerNorms, pooler and heads stay f32.
pub fn packed_axis(name: &str, shape: &[usize]) -> Option<OutputAxis> {
    (shape.len() == 2 && name.contains("encoder.layer.") && name.ends_with(".weight")).then_some(OutputAxis::Rows)
}

/// The checkpoint name of qkv parameter `name` in a checkpoint of `architecture` (task classes keep the body
/// under `bert.`, `BertModel` at the top).
pub fn checkpoint_name(name: &str, architecture: BertArchitecture) -> String {
    let prefix = if architecture == BertArchitecture::Base { "" } else { "bert." };
    if let Some(rest) = name.strip_prefix("encoder.layers.") {
        if let Some((index, inner)) = rest.split_once('.') {
            let inner = rename(inner, &LAYER).unwrap_or_else(|| inner.to_string());
            return format!("{prefix}encoder.layer.{index}.{inner}");
        }
    }
    if let Some(mapped) = rename(name, &BODY) {
        return format!("{prefix}{mapped}");
    }
    rename(name, &HEADS).unwrap_or_else(|| name.to_string())
}

/// `name` with the longest matching module prefix of `table` replaced.
fn rename(name: &str, table: &[(&str, &str)]) -> Option<String> {
    table.iter().find_map(|(ours, theirs)| {
        if name == *ours {
            Some(theirs.to_string())
        } else {
            name.strip_prefix(ours).filter(|rest| rest.starts_with('.')).map(|rest| format!("{theirs}{rest}"))
        }
    })
}

/// Checkpoint names as the current transformers writes them: the body under `bert.` when `architecture` is a
/// task class (added or removed as needed, as `from_pretrained` does), `LayerNorm.weight`/`bias` for the
/// TensorFlow-era `gamma`/`beta`, and the tied or buffer tensors dropped.
fn normalise_names(
    weights: std::collections::HashMap<String, Tensor>,
    architecture: BertArchitecture,
) -> std::collections::HashMap<String, Tensor> {
    let has_prefix = weights.keys().any(|k| k.starts_with("bert."));
    let is_body = |k: &str| k.starts_with("embeddings.") || k.starts_with("encoder.") || k.starts_with("pooler.");
    weights
        .into_iter()
        .filter(|(k, _)| {
            !k.ends_with("embeddings.position_ids")
                && k != "cls.predictions.decoder.weight"
                && k != "cls.predictions.decoder.bias"
        })
        .map(|(k, t)| {
            let k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias");
            let k = match (architecture == BertArchitecture::Base, has_prefix) {
                (true, true) => k.strip_prefix("bert.").map(str::to_string).unwrap_or(k),
                (false, false) if is_body(&k) => format!("bert.{k}"),
                _ => k,
            };
            (k, t)
        })
        .collect()
}

/// How to load a directory.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The class to build; `None` takes config.json's `architectures[0]` (BertModel when absent).
    pub architecture: Option<BertArchitecture>,
    /// Let parameters missing from the checkpoint keep a fresh N(0, initializer_range²) initialisation, as a
    /// new task head on a pre-trained body does. Without it a missing tensor is an error.
    pub initialize_missing: bool,
    /// Seed of that initialisation.
    pub seed: u64,
}

/// A BERT model loaded from a directory, with its trainable parameters.
pub struct LoadedBert {
    /// The model, with its weights set from the checkpoint.
    pub model: Bert,
    /// qkv parameter names and their variables (for fine-tuning and saving).
    pub vars: Vec<(String, Var)>,
    /// What loading left over ([`LoadReport`]): parameters initialised fresh, checkpoint tensors unused.
    pub report: LoadReport,
}

/// Reads config.json (`model_type` "bert") and the weights of `dir` into the class named by `options` or by
/// the config.
pub fn load(dir: &Path, options: &LoadOptions, device: &Device) -> Result<LoadedBert> {
    let config: BertConfig = read_config(dir)?;
    load_with_config(dir, config, options, device)
}

/// As [`load`], with a config the caller has adjusted (e.g. the number of labels of a new classifier).
pub fn load_with_config(dir: &Path, config: BertConfig, options: &LoadOptions, device: &Device) -> Result<LoadedBert> {
    check_config(dir, &config)?;
    check_against_weights(dir, &config)?;
    let architecture = architecture_of(&config, options.architecture)?;
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, options.seed, DType::F32, device);
    let model = Bert::new(&config, architecture, vb)?;
    let vars = named_vars(&varmap);
    let report = load_into(dir, &vars, architecture, options.initialize_missing)?;
    Ok(LoadedBert { model, vars, report })
}

/// Reads `dir` for inference: the model is built directly over the checkpoint's tensors through the name
/// table (no fresh initialisation, no variables, no gradients recorded). Every parameter must be in the
/// checkpoint; tensors the class does not use are reported.
pub fn load_frozen(dir: &Path, architecture: Option<BertArchitecture>, device: &Device) -> Result<(Bert, LoadReport)> {
    let (config, source) = frozen_source(dir, architecture, device)?;
    let architecture = architecture_of(&config, architecture)?;
    let model = Bert::new(&config, architecture, source.builder(DType::F32, device))?;
    Ok((model, source.report()))
}

/// As [`load_frozen`] for the encoder body (BertModel), whatever class the checkpoint is: the pooler is built
/// when the checkpoint has one and left out otherwise (a masked LM has none), for callers that pool the
/// token vectors themselves.
pub fn load_frozen_body(dir: &Path, device: &Device) -> Result<(Bert, LoadReport)> {
    let (config, source) = frozen_source(dir, Some(BertArchitecture::Base), device)?;
    let vb = source.builder(DType::F32, device);
    let model = if vb.contains_tensor("pooler.weight") {
        Bert::new(&config, BertArchitecture::Base, vb)?
    } else {
        Bert::body(&config, vb)?
    };
    Ok((model, source.report()))
}

/// The checked config of `dir` and its weights under qkv's names for `architecture` (the config's when None).
fn frozen_source(
    dir: &Path,
    architecture: Option<BertArchitecture>,
    device: &Device,
) -> Result<(BertConfig, WeightSource)> {
    let config: BertConfig = read_config(dir)?;
    check_config(dir, &config)?;
    check_against_weights(dir, &config)?;
    let architecture = architecture_of(&config, architecture)?;
    let weights = normalise_names(load_weights(dir, device)?, architecture);
    let source = WeightSource::renamed(weights, dir, move |name| checkpoint_name(name, architecture));
    Ok((config, source))
}

/// A BERT config qkv can build.
fn check_config(dir: &Path, config: &BertConfig) -> Result<()> {
    if config.model_type != "bert" {
        let message = format!("model_type is {:?}; this loader reads \"bert\"", config.model_type);
        return Err(Error::input(dir.join("config.json"), None, message));
    }
    if !config.tie_word_embeddings {
        let message = "tie_word_embeddings = false is not supported (the MLM decoder is the word embedding)";
        return Err(Error::input(dir.join("config.json"), None, message));
    }
    Ok(())
}

/// Refuses a config whose sizes disagree with the weights' headers or exceed qkv's limits, before the model
/// it describes is built.
pub fn check_against_weights(dir: &Path, config: &BertConfig) -> Result<()> {
    WeightHeader::read_dir(dir)?.check_config(&dir.join("config.json"), &agreements(config))?;
    super::validate_in(dir, config.validate())
}

/// The config fields BERT's tensors repeat, under the names of both checkpoint flavours (task classes keep
/// the body under `bert.`).
fn agreements(config: &BertConfig) -> Vec<Agreement> {
    let body = |field, value, name: &str, axis| Agreement::axis(field, value, &[name, &format!("bert.{name}")], axis);
    let word = "embeddings.word_embeddings.weight";
    vec![
        body("vocab_size", config.vocab_size, word, 0),
        body("hidden_size", config.hidden_size, word, 1),
        body("max_position_embeddings", config.max_position_embeddings, "embeddings.position_embeddings.weight", 0),
        body("type_vocab_size", config.type_vocab_size, "embeddings.token_type_embeddings.weight", 0),
        body("intermediate_size", config.intermediate_size, "encoder.layer.0.intermediate.dense.weight", 0),
        Agreement::layers("num_hidden_layers", config.num_hidden_layers, "encoder.layer."),
        Agreement::layers("num_hidden_layers", config.num_hidden_layers, "bert.encoder.layer."),
    ]
}

/// The class asked for, else the config's `architectures[0]`, else BertModel.
fn architecture_of(config: &BertConfig, asked: Option<BertArchitecture>) -> Result<BertArchitecture> {
    match asked {
        Some(a) => Ok(a),
        None => match config.architectures.as_ref().and_then(|a| a.first()) {
            Some(name) => name.parse(),
            None => Ok(BertArchitecture::Base),
        },
    }
}

/// Sets the parameters `vars` of an existing `architecture` model from the weights in `dir`; with
/// `initialize_missing`, task heads and the pooler the checkpoint lacks keep their values.
pub fn load_into(
    dir: &Path,
    vars: &[(String, Var)],
    architecture: BertArchitecture,
    initialize_missing: bool,
) -> Result<LoadReport> {
    let device = vars.first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
    let weights = normalise_names(load_weights(dir, &device)?, architecture);
    let is_head = |name: &str| HEADS.iter().any(|(ours, _)| name.starts_with(ours)) || name.starts_with("pooler.");
    assign(vars, weights, dir, |name| checkpoint_name(name, architecture), |name| initialize_missing && is_head(name))
}

/// Writes `dir/config.json` (with `architectures` set to the model's class) and `dir/model.safetensors` under
/// transformers' names, so `AutoModel*.from_pretrained(dir)` loads it. `dir` must exist.
pub fn save(dir: &Path, model: &Bert, vars: &[(String, Var)]) -> Result<()> {
    let architecture = model.architecture();
    let mut config = model.config().clone();
    config.architectures = Some(vec![architecture.name().to_string()]);
    if config.id2label.is_none() && architecture == BertArchitecture::SequenceClassification {
        let labels = config.labels();
        config.set_labels(&[], labels);
    }
    let tensors: Vec<(String, Tensor)> =
        vars.iter().map(|(name, var)| (checkpoint_name(name, architecture), var.as_tensor().clone())).collect();
    save_safetensors(&tensors, &dir.join(super::WEIGHTS))?;
    write_json(&dir.join("config.json"), &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_transformers() {
        let task = BertArchitecture::SequenceClassification;
        assert_eq!(
            checkpoint_name("encoder.layers.3.self_attn.q_proj.weight", task),
            "bert.encoder.layer.3.attention.self.query.weight"
        );
        assert_eq!(
            checkpoint_name("encoder.layers.0.feed_forward_norm.bias", BertArchitecture::Base),
            "encoder.layer.0.output.LayerNorm.bias"
        );
        assert_eq!(checkpoint_name("embeddings.word.weight", task), "bert.embeddings.word_embeddings.weight");
        assert_eq!(checkpoint_name("pooler.weight", task), "bert.pooler.dense.weight");
        assert_eq!(checkpoint_name("mlm.bias", BertArchitecture::MaskedLm), "cls.predictions.bias");
        assert_eq!(
            checkpoint_name("mlm.norm.weight", BertArchitecture::MaskedLm),
            "cls.predictions.transform.LayerNorm.weight"
        );
        assert_eq!(checkpoint_name("classifier.weight", task), "classifier.weight");
    }
}
