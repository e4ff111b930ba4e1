//! The eval crate's error type.

/// Everything that can go wrong scoring and decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading a model.
    #[error(transparent)]
    Model(#[from] kiln_model::Error),
    /// Reading a dataset or tokenizer.
    #[error(transparent)]
    Data(#[from] kiln_data::Error),
    /// Input that cannot be scored or decoded (empty text, too long, a bad k, a label).
    #[error("{0}")]
    Invalid(String),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result with the eval crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
