//! `qkv forward`'s input file: integer tensors (input_ids, attention_mask, token_type_ids) read from safetensors
//! and run through a BERT.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_copy("bert/BertModel");
    let path = common::put(&dir, "input.safetensors", data);
    let device = candle_core::Device::Cpu;
    if let Ok(inputs) = qkv::hub::load_integer_tensors(&path, &device) {
        let _ = qkv::inference::forward::checkpoint_outputs(&dir, inputs, &device);
    }
});
