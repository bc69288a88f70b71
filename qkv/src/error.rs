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

    /// The message already carries the OS error, so it is not chained as a source (which would print it twice).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },

    /// A user's file that cannot be used as it is: `path:line: message` (the line, 1-based, where there is one).
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input { path: PathBuf, line: Option<usize>, message: String },

    /// A figure that cannot be drawn (`path` is the image asked for): what is wrong with the data, or the
    /// drawing backend's error.
    #[error("cannot plot {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },

    /// An error reported by the Hugging Face `tokenizers` crate, with what qkv was doing.
    #[error("tokenizer: {context}: {message}")]
    Tokenizer { context: String, message: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(option: &'static str, value: impl ToString, expected: impl ToString) -> Self {
        Error::Config { option, value: value.to_string(), expected: expected.to_string() }
    }

    pub(crate) fn input(path: impl Into<PathBuf>, line: Option<usize>, message: impl ToString) -> Self {
        Error::Input { path: path.into(), line, message: message.to_string() }
    }

    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io { path: path.into(), error }
    }

    pub(crate) fn plot(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        Error::Plot { path: path.into(), message: message.to_string() }
    }

    pub(crate) fn tokenizer(context: impl ToString, message: impl ToString) -> Self {
        Error::Tokenizer { context: context.to_string(), message: message.to_string() }
    }

    pub(crate) fn shape(tensor: &'static str, expected: impl ToString, found: &[usize]) -> Self {
        Error::Shape { tensor, expected: expected.to_string(), found: found.to_vec() }
    }
}
