//! Whole models assembled from the [`crate::nn`] blocks.

pub mod bert;
pub mod gpt2;
pub mod transformer;

pub use gpt2::{Gpt2, Gpt2Config};
pub use transformer::{AttentionMaps, PositionEncoding, Transformer, TransformerConfig};
