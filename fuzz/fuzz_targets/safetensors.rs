//! A model.safetensors: its header (JSON length, dtypes, shapes, offsets) and data, loaded alone and as a BERT's
//! weights.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_copy("bert/BertModel");
    let path = common::put(&dir, "model.safetensors", data);
    let _ = qkv::hub::load_safetensors(&path, &candle_core::Device::Cpu);
    common::run_model(&dir);
});
