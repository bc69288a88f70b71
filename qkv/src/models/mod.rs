//! Whole models assembled from the [`crate::nn`] blocks.

pub mod transformer;

pub use transformer::{PositionEncoding, Transformer, TransformerConfig};
