//! qkv — the Transformer family on candle.
//!
//! Layers, each depending only on those before it:
//! - [`nn`]: building blocks of "Attention Is All You Need" (Vaswani et al., 2017) — attention, masks,
//!   position encodings, embeddings, dropout, LayerNorm with residual wiring, feed-forward, encoder and decoder.
//! - [`models`]: whole models assembled from the blocks.
//! - [`decode`]: turning a trained model into output sequences.
//! - [`inference`]: what a user runs on a model directory (embed, generate, translate, BERT pipelines), shared by
//!   the CLI and a server.
//! - [`plot`]: training curves and attention grids as PNG; [`run_log`]: the training log they read.
//! - [`text`]: corpora, subword tokenizers (Hugging Face `tokenizers`) and batches.
//! - [`plot`]: PNG figures: training curves of one run or several, attention heatmaps.
//! - [`train`]: losses, learning-rate schedules, checkpoints and training loops.
//! - [`study`]: `qkv study`, the design questions answered by experiments on top of all the above.
//!
//! Beneath them all, depending on nothing in the model stack:
//! - [`metrics`]: BLEU, chrF and other scores; pure functions, no tensors.
//! - [`run_log`]: a training run's `log.jsonl`, written by [`train`] and read by [`plot`].
//! - [`limits`]: the largest sizes accepted and the memory estimate behind them.
//!
//! Shapes use the same letters everywhere: B batch, T target/query length, S source/key length,
//! C model width, H heads, Dh head width, V vocabulary.

#![warn(missing_docs)]

pub mod atomic_file;
pub mod decode;
pub mod device;
pub mod error;
pub mod hub;
pub mod inference;
pub mod kernels;
pub mod limits;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod npy;
mod panic_guard;
pub mod plot;
pub mod rng;
pub mod run_log;
pub mod study;
pub mod text;
pub mod train;

pub use error::{Error, Result};
pub use kernels::reduced::WeightDtype;

// The README's Rust example is compiled and run as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
