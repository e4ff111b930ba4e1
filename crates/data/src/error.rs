//! The data crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading, tokenizing and sharding data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What kiln was doing ("cannot read", …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer file is missing.
    #[error("tokenizer file not found: {path}")]
    TokenizerMissing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// The tokenizers library failed.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer's file or directory.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// A CSV row is malformed.
    #[error("{path}:{line}: {message}")]
    BadRow {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A record of a JSON/JSONL file is malformed.
    #[error("{path}: record {index}: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 0-based record index.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// polars failed.
    #[error("{path}: {message}")]
    Polars {
        /// The file.
        path: PathBuf,
        /// polars' message.
        message: String,
    },
    /// Arrow failed.
    #[error("{path}: {message}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// arrow's message.
        message: String,
    },
    /// A label is not exactly one token.
    #[error("label {label:?}: {message}")]
    Label {
        /// The label as configured.
        label: String,
        /// What is wrong.
        message: String,
    },
    /// A split has no rows.
    #[error(
        "split {split:?} is empty after filtering ({rows} rows in all; fractions train {train}, val {val}, test {test})"
    )]
    EmptySplit {
        /// The split's name.
        split: String,
        /// Rows available.
        rows: usize,
        /// Train fraction.
        train: f64,
        /// Validation fraction.
        val: f64,
        /// Test fraction.
        test: f64,
    },
    /// A parameter or column mapping is wrong.
    #[error("{0}")]
    Config(String),
    /// A download failed.
    #[error("cannot download {url}: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong, with advice.
        message: String,
    },
    /// A downloaded file does not have the expected hash.
    #[error("{url}: blake3 {actual} does not match the expected {expected}")]
    HashMismatch {
        /// The URL.
        url: String,
        /// Expected hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
}

/// Result with the data crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error mapper naming the path.
pub(crate) fn io(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}
