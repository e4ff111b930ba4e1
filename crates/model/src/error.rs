//! The model crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading or saving models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file is missing or unreadable.
    #[error("{what} {path}")]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a GPT-2 configuration.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights could not be read or do not fit the configuration.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong (missing tensors, shape mismatches, a corrupt file).
        message: String,
    },
    /// The device or precision cannot be used (not built in, no driver or adapter, out of
    /// range, unsupported precision).
    #[error("{0}")]
    Device(String),
}

/// Result with the model crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
