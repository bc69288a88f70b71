//! One forward pass of a Hugging Face checkpoint on given token ids, returning every output the class returns
//! under transformers' names (`last_hidden_state`, `pooler_output`, `logits`, …): what `qkv forward` writes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::hub::{self, bert, gpt2};
use crate::models::bert::BertInput;
use crate::nn::Mode;
use crate::{Error, Result};

/// What a checkpoint's class returned.
pub struct CheckpointOutputs {
    /// Under transformers' names, in the order the class returns them.
    pub outputs: Vec<(String, Tensor)>,
    /// Input tensors the class does not take.
    pub unused_inputs: Vec<String>,
}

/// The outputs of `dir`'s class on `inputs` (`input_ids`, and `attention_mask` / `token_type_ids` where the
/// class takes them).
pub fn checkpoint_outputs(
    dir: &Path,
    mut inputs: HashMap<String, Tensor>,
    device: &Device,
) -> Result<CheckpointOutputs> {
    let architecture = hub::architecture_name(dir)?;
    let input_ids =
        inputs.remove("input_ids").ok_or_else(|| Error::config("inputs", "no input_ids", "a tensor `input_ids`"))?;
    let outputs: Vec<(String, Tensor)> = if architecture.starts_with("Bert") || architecture == "bert" {
        let (model, _) = bert::load_frozen(dir, None, device)?;
        let input = BertInput {
            input_ids,
            attention_mask: inputs.remove("attention_mask"),
            token_type_ids: inputs.remove("token_type_ids"),
        };
        model.forward(&input, &mut Mode::Eval)?.into_iter().map(|(name, t)| (name.to_string(), t)).collect()
    } else if architecture.starts_with("GPT2") || architecture == "gpt2" {
        let (model, _) = gpt2::load_frozen(dir, device)?;
        let mask = inputs.remove("attention_mask");
        let hidden = model.hidden_masked(&input_ids, mask.as_ref(), &mut Mode::Eval)?;
        if architecture == "GPT2Model" {
            vec![("last_hidden_state".to_string(), hidden)]
        } else {
            vec![("logits".to_string(), model.logits(&hidden)?)]
        }
    } else {
        let message = format!(
            "architecture {architecture} is not supported (BertModel, BertFor*, GPT2Model and GPT2LMHeadModel are)"
        );
        return Err(Error::input(dir.join("config.json"), None, message));
    };
    let mut unused_inputs: Vec<String> = inputs.into_keys().collect();
    unused_inputs.sort();
    Ok(CheckpointOutputs { outputs, unused_inputs })
}
