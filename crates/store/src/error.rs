//! The store's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the results store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store URL is neither a path, a `sqlite:` URL nor a `postgres://` URL.
    #[error(
        "unsupported store URL {url:?}: give a file path, a sqlite:// URL or a postgres:// URL"
    )]
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
        /// The database's message.
        message: String,
    },
    /// `kiln store copy` found rows in the target.
    #[error(
        "the target store already has rows in {table}: copy only into a new, empty store (nothing was written)"
    )]
    CopyTarget {
        /// The first table holding rows.
        table: String,
    },
    /// A store's tables are not the ones this kiln knows.
    #[error(
        "store {store}: table {table}: {detail} (run `kiln store migrate` with the same kiln on both stores)"
    )]
    CopySchema {
        /// The store.
        store: String,
        /// The table.
        table: String,
        /// What differs.
        detail: String,
    },
    /// A copied table read back differently; the copy was rolled back.
    #[error(
        "table {table} did not copy faithfully ({source_rows} rows in the source, {target_rows} in the target, or their checksums differ); nothing was committed"
    )]
    CopyMismatch {
        /// The table.
        table: String,
        /// Rows in the source.
        source_rows: u64,
        /// Rows in the target.
        target_rows: u64,
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
