//! GPT-2 checkpoints as transformers writes them (`GPT2Model`, `GPT2LMHeadModel`): the one place that maps
//! their tensors to qkv's parameters. transformers keeps GPT-2's projections in `Conv1D` modules whose weights
//! are stored (in, out) — the transpose of a Linear's (out, in) — and fuses Q, K and V into one `c_attn`; both
//! are undone here on load and redone on save.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use super::header::{Agreement, WeightHeader};
use super::reduced::OutputAxis;
use super::{assign, load_weights, read_config, save_safetensors, write_json, LoadReport, WeightSource};
use crate::models::{Gpt2, Gpt2Config};
use crate::nn::{params::named_vars, seeded_var_builder};
use crate::{Error, Result};

/// Per block: checkpoint module under `h.{i}.` → qkv module under `blocks.{i}.`, and whether the weight is a
/// Conv1D (stored transposed). `attn.c_attn` is split into the three projections separately.
const BLOCK: [(&str, &str, bool); 5] = [
    ("ln_1", "self_attn_norm", false),
    ("attn.c_proj", "self_attn.out_proj", true),
    ("ln_2", "feed_forward_norm", false),
    ("mlp.c_fc", "feed_forward.fc1", true),
    ("mlp.c_proj", "feed_forward.fc2", true),
];

/// Top-level tensors with the same meaning on both sides.
const TOP: [&str; 3] = ["wte", "wpe", "ln_f"];

/// How `qkv convert --dtype` stores a checkpoint tensor ([`super::reduced`]): reduced are the matrices
/// [`Gpt2::pack_weights`] packs — each block's projections (Conv1D, output channels along axis 1), the token
/// embedding and an untied LM head (rows); the position table and LayerNorms stay f32.
pub fn packed_axis(name: &str, shape: &[usize]) -> Option<OutputAxis> {
    let name = name.strip_prefix("transformer.").unwrap_or(name);
    match name {
        _ if shape.len() != 2 => None,
        "wte.weight" | "lm_head.weight" => Some(OutputAxis::Rows),
        _ if name.starts_with("h.") && name.ends_with(".weight") => Some(OutputAxis::Columns),
        _ => None,
    }
}

/// A GPT-2 loaded from a directory, with its trainable parameters.
pub struct LoadedGpt2 {
    /// The model, with its weights set from the checkpoint.
    pub model: Gpt2,
    /// qkv parameter names and their variables (for training and saving).
    pub vars: Vec<(String, Var)>,
    /// What loading left over ([`LoadReport`]): parameters initialised fresh, checkpoint tensors unused.
    pub report: LoadReport,
}

/// Reads config.json (`model_type` "gpt2") and the weights of `dir`. The LM head is the token embedding unless
/// `tie_word_embeddings` is false, in which case `lm_head.weight` must be in the checkpoint.
pub fn load(dir: &Path, device: &Device) -> Result<LoadedGpt2> {
    let config = read_gpt2_config(dir)?;
    check_against_weights(dir, &config)?;
    let varmap = VarMap::new();
    let model = Gpt2::new(&config, seeded_var_builder(&varmap, 0, DType::F32, device))?;
    let vars = named_vars(&varmap);
    let report = load_into(dir, &vars, config.tie_word_embeddings)?;
    Ok(LoadedGpt2 { model, vars, report })
}

/// config.json, which must be a GPT-2's.
fn read_gpt2_config(dir: &Path) -> Result<Gpt2Config> {
    let config: Gpt2Config = read_config(dir)?;
    if config.model_type != "gpt2" {
        let message = format!("model_type is {:?}; this loader reads \"gpt2\"", config.model_type);
        return Err(Error::input(dir.join("config.json"), None, message));
    }
    Ok(config)
}

/// Refuses a config whose sizes disagree with the weights' headers or exceed qkv's limits, before the model
/// it describes is built.
pub fn check_against_weights(dir: &Path, config: &Gpt2Config) -> Result<()> {
    WeightHeader::read_dir(dir)?.check_config(&dir.join("config.json"), &agreements(config))?;
    super::validate_in(dir, config.validate())
}

/// The config fields GPT-2's tensors repeat, with and without the `transformer.` prefix of GPT2LMHeadModel.
/// Conv1D weights are stored (in, out), so the feed-forward width is axis 1 of `c_fc`.
fn agreements(config: &Gpt2Config) -> Vec<Agreement> {
    let top =
        |field, value, name: &str, axis| Agreement::axis(field, value, &[name, &format!("transformer.{name}")], axis);
    let inner = config.n_inner.unwrap_or(config.n_embd.saturating_mul(4));
    let mut agreements = vec![
        top("vocab_size", config.vocab_size, "wte.weight", 0),
        top("n_embd", config.n_embd, "wte.weight", 1),
        top("n_positions", config.n_positions, "wpe.weight", 0),
        top("n_inner", inner, "h.0.mlp.c_fc.weight", 1),
        Agreement::layers("n_layer", config.n_layer, "h."),
        Agreement::layers("n_layer", config.n_layer, "transformer.h."),
    ];
    if !config.tie_word_embeddings {
        agreements.push(Agreement::axis("vocab_size", config.vocab_size, &["lm_head.weight"], 0));
    }
    agreements
}

/// Reads `dir` for inference: the model is built directly over the checkpoint's tensors (renamed, Conv1D
/// weights transposed, `c_attn` split), with no fresh initialisation and no variables. Tensors it does not use
/// are reported.
pub fn load_frozen(dir: &Path, device: &Device) -> Result<(Gpt2, LoadReport)> {
    let config = read_gpt2_config(dir)?;
    check_against_weights(dir, &config)?;
    let weights = from_checkpoint(load_weights(dir, device)?, dir, config.tie_word_embeddings)?;
    let source = WeightSource::new(weights, dir);
    let model = Gpt2::new(&config, source.builder(DType::F32, device))?;
    Ok((model, source.report()))
}

/// Sets the parameters `vars` of an existing GPT-2 from the weights in `dir` (every parameter must be there).
pub fn load_into(dir: &Path, vars: &[(String, Var)], tied: bool) -> Result<LoadReport> {
    let device = vars.first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu);
    let weights = from_checkpoint(load_weights(dir, &device)?, dir, tied)?;
    assign(vars, weights, dir, |name| name.to_string(), |_| false)
}

/// Checkpoint tensors renamed to qkv's parameters: the `transformer.` prefix dropped, Conv1D weights
/// transposed, `c_attn` split into Q, K, V, buffers (`attn.bias`, `attn.masked_bias`) and a tied `lm_head`
/// left out.
fn from_checkpoint(weights: HashMap<String, Tensor>, dir: &Path, tied: bool) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (key, tensor) in weights {
        let name = key.strip_prefix("transformer.").unwrap_or(&key);
        if name == "lm_head.weight" {
            if !tied {
                out.insert(name.to_string(), tensor);
            }
            continue;
        }
        if TOP.iter().any(|top| name.strip_prefix(top).is_some_and(|rest| rest.starts_with('.'))) {
            out.insert(name.to_string(), tensor);
            continue;
        }
        let Some((index, inner)) = name.strip_prefix("h.").and_then(|rest| rest.split_once('.')) else {
            out.insert(name.to_string(), tensor); // reported as unused
            continue;
        };
        let block = format!("blocks.{index}");
        if inner == "attn.bias" || inner == "attn.masked_bias" {
            continue; // causal-mask buffers of older checkpoints
        }
        if let Some(part) = inner.strip_prefix("attn.c_attn.") {
            // weight (C, 3C) → three (C, C) Linear weights; bias (3C) → three (C).
            let fused = if part == "weight" { tensor.t()?.contiguous()? } else { tensor };
            let c = fused.dim(0)? / 3;
            if c * 3 != fused.dim(0)? {
                return Err(Error::input(dir, None, format!("tensor `{key}` has shape {:?}: not 3 × C", fused.dims())));
            }
            for (i, projection) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                out.insert(format!("{block}.self_attn.{projection}.{part}"), fused.narrow(0, i * c, c)?.contiguous()?);
            }
            continue;
        }
        match BLOCK
            .iter()
            .find_map(|(theirs, ours, conv)| inner.strip_prefix(theirs)?.strip_prefix('.').map(|p| (ours, conv, p)))
        {
            Some((ours, conv, part)) => {
                let tensor = if *conv && part == "weight" { tensor.t()?.contiguous()? } else { tensor };
                out.insert(format!("{block}.{ours}.{part}"), tensor);
            }
            None => {
                out.insert(name.to_string(), tensor);
            }
        }
    }
    Ok(out)
}

/// qkv's parameters under transformers' `GPT2LMHeadModel` names, Conv1D weights transposed and Q, K, V fused.
pub fn to_checkpoint(vars: &[(String, Var)]) -> Result<Vec<(String, Tensor)>> {
    let by_name: HashMap<&str, &Tensor> = vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())).collect();
    let mut out = Vec::new();
    for (name, var) in vars {
        let tensor = var.as_tensor();
        if TOP.iter().any(|top| name.starts_with(&format!("{top}."))) || name == "lm_head.weight" {
            let key = if name == "lm_head.weight" { name.clone() } else { format!("transformer.{name}") };
            out.push((key, tensor.clone()));
            continue;
        }
        let Some((index, inner)) = name.strip_prefix("blocks.").and_then(|rest| rest.split_once('.')) else {
            return Err(Error::config("parameter", name, "a GPT-2 parameter"));
        };
        let prefix = format!("transformer.h.{index}");
        if let Some(part) = inner.strip_prefix("self_attn.q_proj.") {
            // Q, K, V fused back into c_attn when Q is seen.
            let get = |p: &str| {
                by_name.get(format!("blocks.{index}.self_attn.{p}.{part}").as_str()).copied().ok_or_else(|| {
                    Error::config("parameter", format!("blocks.{index}.self_attn.{p}.{part}"), "present")
                })
            };
            let fused = Tensor::cat(&[get("q_proj")?, get("k_proj")?, get("v_proj")?], 0)?;
            let fused = if part == "weight" { fused.t()?.contiguous()? } else { fused };
            out.push((format!("{prefix}.attn.c_attn.{part}"), fused));
            continue;
        }
        if inner.starts_with("self_attn.k_proj.") || inner.starts_with("self_attn.v_proj.") {
            continue;
        }
        let Some((theirs, conv, part)) = BLOCK
            .iter()
            .find_map(|(theirs, ours, conv)| inner.strip_prefix(ours)?.strip_prefix('.').map(|p| (theirs, conv, p)))
        else {
            return Err(Error::config("parameter", name, "a GPT-2 parameter"));
        };
        let tensor = if *conv && part == "weight" { tensor.t()?.contiguous()? } else { tensor.clone() };
        out.push((format!("{prefix}.{theirs}.{part}"), tensor));
    }
    Ok(out)
}

/// Writes config.json (architectures = GPT2LMHeadModel) and model.safetensors into the existing `dir`.
pub fn save(dir: &Path, model: &Gpt2, vars: &[(String, Var)]) -> Result<()> {
    let mut config = model.config().clone();
    config.architectures = Some(vec!["GPT2LMHeadModel".into()]);
    save_safetensors(&to_checkpoint(vars)?, &dir.join(super::WEIGHTS))?;
    write_json(&dir.join("config.json"), &config)
}
