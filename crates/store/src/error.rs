//! The store's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the results store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store URL is neither a path nor a `sqlite:` URL.
    #[error("unsupported store URL {url:?}: give a file path or a sqlite:// URL")]
    UnsupportedUrl {
        /// The URL as given.
        url: String,
    },
    /// The directory holding the store could not be created.
    #[error("cannot create the directory of the results store {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Opening the database failed.
    #[error("cannot open the results store {url}")]
    Open {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// A read-only store was asked for but the file does not exist.
    #[error("the results store {path} does not exist yet (run a pipeline first)")]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// Applying the schema migrations failed.
    #[error("cannot apply the schema migrations to the results store")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A statement failed.
    #[error("results store: {what}")]
    Sql {
        /// What kiln was doing.
        what: &'static str,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
    /// `kiln query` was given a statement that would change the store.
    #[error(
        "kiln query is read-only: {keyword} statements are refused (the store is changed only by kiln runs)"
    )]
    ReadOnly {
        /// The refused statement's first keyword, upper-cased.
        keyword: String,
    },
    /// A user query failed.
    #[error("query failed: {message}")]
    Query {
        /// SQLite's message.
        message: String,
    },
    /// The batched metric writer stopped before it could take more rows.
    #[error("the metric writer has stopped")]
    WriterClosed,
}

/// Result with the store's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a sqlx error with what kiln was doing.
pub(crate) fn sql(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |source| Error::Sql { what, source }
}
