//! Training: losses, learning-rate schedules, and a small built-in sequence task.

pub mod classification;
pub mod data_parallel;
pub mod language_model;
pub mod loss;
pub mod mlm;
pub mod optim;
pub mod options;
pub mod schedule;
pub mod synthetic;
pub mod trainer;
pub mod translation;

pub use loss::cross_entropy;
pub use optim::{AdamW, AdamWConfig};
