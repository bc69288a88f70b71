//! config.json: parsed, checked against the weights' header and the model built, for a BERT and a GPT-2.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for fixture in ["bert/BertModel", "gpt2/GPT2Model"] {
        let dir = common::scratch_copy(fixture);
        common::put(&dir, "config.json", data);
        common::run_model(&dir);
    }
});
