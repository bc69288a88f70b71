//! Text in and out of the models: corpora and labelled tables (CSV/TSV, JSON lines, Parquet) read from files, subword tokenizers and padded batches.

pub mod batch;
pub mod corpus;
pub mod labeled;
pub mod lm_tokenizer;
pub mod next_sentence;
pub mod number_words;
pub mod table;
pub mod tokenizer;

pub use batch::{token_batches, Batch, Example};
pub use corpus::{read_lines, read_parallel, SentencePair};
pub use tokenizer::{SubwordModel, Tokenizer};
