//! The data readers: CSV and TSV (scored sentence pairs, labelled texts with and without a header), JSONL
//! (a training log) and the tables of qkv::text::table (JSON lines, Parquet, CSV by column name).
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
    let named = qkv::text::table::Columns { text_column: Some("text".into()), ..Default::default() };
    for name in ["table.jsonl", "table.parquet", "table.csv"] {
        let path = common::put(&dir, name, data);
        let _ = qkv::text::table::read_labeled(&path, &qkv::text::table::Columns::default(), false);
        let _ = qkv::text::table::read_labeled(&path, &named, false);
        let _ = qkv::text::table::read_texts(&path, None);
    }
});
