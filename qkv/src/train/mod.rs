//! Training: the one loop every objective runs on ([`trainer`]) and its settings ([`options`]), the objectives
//! (translation, language modelling, masked-LM pre-training, classification fine-tuning, a synthetic task),
//! losses, AdamW, learning-rate schedules and data-parallel micro-batches; translation's training on its own
//! predictions ([`scheduled_sampling`], [`sentence_oracle`]) and the schedules of p ([`sampling_schedule`]); hyper-parameter search over any of them ([`search`]).

pub mod classification;
pub mod data_parallel;
pub mod fingerprint;
pub mod language_model;
pub mod loss;
pub mod mlm;
pub mod optim;
pub mod options;
pub mod sampling_schedule;
pub mod schedule;
pub mod scheduled_sampling;
pub mod search;
pub mod sentence_oracle;
pub mod synthetic;
pub mod trainer;
pub mod translation;

pub use loss::{cross_entropy, projected_cross_entropy};
pub use optim::{AdamW, AdamWConfig};
