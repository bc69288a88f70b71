//! The library's one error type. Messages name the option, tensor or file at fault and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value that cannot work, caught when a module is built.
    #[error("invalid configuration: {option} = {value}: {expected}")]
    Config { option: &'static str, value: String, expected: String },

    /// A tensor handed to a forward pass has the wrong rank, size or dtype.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape { tensor: &'static str, expected: String, found: Vec<usize> },

    /// An input value outside what the module supports (a token id past the vocabulary, a position past the
    /// learned table).
    #[error("{what}: {found} is out of range, expected {expected}")]
    OutOfRange { what: &'static str, found: i64, expected: String },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(option: &'static str, value: impl ToString, expected: impl ToString) -> Self {
        Error::Config { option, value: value.to_string(), expected: expected.to_string() }
    }

    pub(crate) fn shape(tensor: &'static str, expected: impl ToString, found: &[usize]) -> Self {
        Error::Shape { tensor, expected: expected.to_string(), found: found.to_vec() }
    }
}
