//! Building blocks of "Attention Is All You Need" (Vaswani et al., 2017), one module per concept.
//!
//! Every block is differentiable: softmax, LayerNorm and GELU run as [`crate::kernels`] with their own backward
//! passes on the CPU, and as compositions of candle's differentiable primitives elsewhere.

pub mod attention;
pub mod complex_embedding;
pub mod decoder;
pub mod dropout;
pub mod embedding;
pub mod encoder;
pub mod feed_forward;
pub mod kv_cache;
pub mod layer;
pub mod linear;
pub mod mask;
pub mod mode;
pub mod norm;
pub mod params;
pub mod position;

pub use attention::{AttentionConfig, MultiHeadAttention, Projections, ScaledDotProduct, Score};
pub use complex_embedding::ComplexEmbedding;
pub use decoder::{Decoder, DecoderLayer};
pub use dropout::{Dropout, DropoutRates, DropoutScaling};
pub use embedding::Embedding;
pub use encoder::{Encoder, EncoderLayer};
pub use feed_forward::{Activation, FeedForward};
pub use kv_cache::{DecoderCache, DecoderLayerCache, KvCache};
pub use layer::LayerConfig;
pub use linear::Linear;
pub use mask::AttentionMask;
pub use mode::Mode;
pub use norm::{BatchNorm, LayerNorm, Norm, NormPosition, Normalization, Residual};
pub use params::{seeded_var_builder, WeightInit};
pub use position::{LearnedPosition, RelativePosition, RelativeTerms, RotaryPosition, SinusoidalPosition};
