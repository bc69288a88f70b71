//! model.safetensors.index.json of a sharded GPT-2 (its three shards present): parsed and followed.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_copy("gpt2/GPT2LMHeadModel");
    common::put(&dir, "model.safetensors.index.json", data);
    let _ = qkv::hub::load_weights(&dir, &candle_core::Device::Cpu);
    common::run_model(&dir);
});
