//! Training: losses, learning-rate schedules, and a small built-in sequence task.

pub mod loss;
pub mod optim;
pub mod schedule;
pub mod synthetic;

pub use loss::cross_entropy;
pub use optim::{AdamW, AdamWConfig};
