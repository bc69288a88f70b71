//! The library's one error type. Messages name the option, tensor or file at fault and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong in qkv; each variant's message names what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value that cannot work, caught when a module is built.
    #[error("invalid configuration: {option} = {value}: {expected}")]
    Config {
        /// The option's name as the user writes it (a config key or command-line flag).
        option: &'static str,
        /// The value given, as text.
        value: String,
        /// What would have worked, phrased for the message.
        expected: String,
    },

    /// A tensor handed to a forward pass has the wrong rank, size or dtype.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected}")]
    Shape {
        /// The argument or tensor's name in the forward pass.
        tensor: &'static str,
        /// The shape, rank or dtype that was expected, e.g. `(B, T, C)`.
        expected: String,
        /// The dimensions actually received.
        found: Vec<usize>,
    },

    /// An input value outside what the module supports (a token id past the vocabulary, a position past the
    /// learned table).
    #[error("{what}: {found} is out of range, expected {expected}")]
    OutOfRange {
        /// What the value is (e.g. "token id", "position").
        what: &'static str,
        /// The value received.
        found: i64,
        /// The accepted range, phrased for the message.
        expected: String,
    },

    /// The message already carries the OS error, so it is not chained as a source (which would print it twice).
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// A user's file that cannot be used as it is: `path:line: message` (the line, 1-based, where there is one).
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        /// The user's file.
        path: PathBuf,
        /// The 1-based line at fault, where the problem is on one line.
        line: Option<usize>,
        /// What is wrong with it.
        message: String,
    },

    /// A figure that cannot be drawn (`path` is the image asked for): what is wrong with the data, or the
    /// drawing backend's error.
    #[error("cannot plot {}: {message}", path.display())]
    Plot {
        /// The image file that was to be written.
        path: PathBuf,
        /// What is wrong with the data, or the backend's error.
        message: String,
    },

    /// An error reported by the Hugging Face `tokenizers` crate, with what qkv was doing.
    #[error("tokenizer: {context}: {message}")]
    Tokenizer {
        /// What qkv was doing (loading a file, training, encoding).
        context: String,
        /// The `tokenizers` crate's error message.
        message: String,
    },

    /// An error from candle itself (a tensor operation, a safetensors file), passed through unchanged.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The library's result type: [`std::result::Result`] with qkv's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(option: &'static str, value: impl ToString, expected: impl ToString) -> Self {
        Error::Config { option, value: value.to_string(), expected: expected.to_string() }
    }

    pub(crate) fn input(path: impl Into<PathBuf>, line: Option<usize>, message: impl ToString) -> Self {
        Error::Input { path: path.into(), line, message: message.to_string() }
    }

    /// An [`Error::Io`]: `error` met while reading or writing `path` (a file, or a stream named like `stdout`).
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
