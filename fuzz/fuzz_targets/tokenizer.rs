//! tokenizer.json: loaded as the translator's tokenizer and as a BERT's, then used to encode and decode.
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_copy("bert/BertModel");
    let path = common::put(&dir, "tokenizer.json", data);
    let text = "Hello, world: naïve tokenizers über alles.";
    if let Ok(tokenizer) = qkv::text::tokenizer::Tokenizer::load(&path) {
        if let Ok(ids) = tokenizer.encode(text) {
            let _ = tokenizer.decode(&ids);
        }
    }
    if let Ok(tokenizer) = qkv::hub::tokenizer::PretrainedTokenizer::from_dir(&dir) {
        if let Ok(ids) = tokenizer.ids(text) {
            let _ = tokenizer.decode(&ids);
        }
    }
});
