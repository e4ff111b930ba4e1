//! The train crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong building models and training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Loading or saving a model.
    #[error(transparent)]
    Model(#[from] kiln_model::Error),
    /// Reading a dataset or tokenizer.
    #[error(transparent)]
    Data(#[from] kiln_data::Error),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What kiln was doing.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint is unreadable or does not fit.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss stopped being a number.
    #[error(
        "step {step}: the loss is {value} (not finite); checkpoints up to the last good step are kept"
    )]
    NonFinite {
        /// The optimizer step (1-based) whose loss it was.
        step: usize,
        /// The value.
        value: f64,
    },
    /// Stopped on request after `step` steps (the last checkpoint can be resumed from).
    #[error("interrupted after step {step}")]
    Interrupted {
        /// Steps done.
        step: usize,
    },
    /// Inputs that do not fit together (vocabulary, labels, sizes).
    #[error("{0}")]
    Invalid(String),
    /// The device failed to finish queued work.
    #[error("the device failed: {0}")]
    Device(String),
}

/// Result with the train crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `Error::Io` for `path`, for `map_err`.
pub(crate) fn io(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}
