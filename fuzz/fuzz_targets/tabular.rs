//! The data readers: CSV and TSV (scored sentence pairs, labelled texts with and without a header) and JSONL
//! (a training log).
#![no_main]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_copy("bert/BertModel");
    for name in ["data.csv", "data.tsv"] {
        let path = common::put(&dir, name, data);
        let _ = qkv::text::labeled::read_scored_pairs(&path);
        let _ = qkv::text::labeled::read_labeled_texts(&path, true);
        let _ = qkv::text::labeled::read_labeled_texts(&path, false);
    }
    let path = common::put(&dir, "log.jsonl", data);
    let _ = qkv::run_log::read_log(&path);
});
