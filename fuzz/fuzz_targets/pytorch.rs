//! A pytorch_model.bin: the zip, its data.pkl (opcodes, globals, lengths) and its storages, checked and loaded
//! alone and as a BERT's weights; and the bytes as data.pkl itself, through the opcode scan.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = qkv::hub::pytorch::scan_pickle(data);
    let dir = common::scratch_copy("pytorch/BertModel");
    let path = common::put(&dir, "pytorch_model.bin", data);
    let _ = qkv::hub::pytorch::load_pytorch(&path, &candle_core::Device::Cpu);
    common::run_model(&dir);
});
