//! Turning a trained model into output sequences.

pub mod greedy;

pub use greedy::greedy;
