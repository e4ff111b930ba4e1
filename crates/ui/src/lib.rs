//! `kiln ui`: a local, read-only web page over the results store.
//!
//! - `/` lists experiments (trials, best value) and runs, filtered (`status`, `pipeline`,
//!   `experiment`, and a [`filter`] expression such as `alpha >= 0.5 and accuracy > 0.8`),
//!   sorted by any column and paginated by the database;
//! - `/runs/{id}`: a run's params, stage executions (with their logs), metric charts,
//!   artifacts (images inline, text previewed), config and git commit; it follows a running
//!   run by polling;
//! - `/compare?runs=1,2,…` (2–20 runs, or `experiment=ID` for a sweep's trials): params
//!   and final metrics side by side (only the differences by default), overlaid curves of a
//!   picked metric with smoothing, and for a sweep its parallel coordinates and heatmap;
//! - `/api/…` returns each page's data as JSON.
//!
//! Everything is server-rendered HTML with inline SVG and a few lines of JavaScript (no
//! CDN, no network). Only `GET` routes exist; files are served only from inside the results
//! directory ([`files`]); every value from the store is escaped by the templates.
#![deny(missing_docs)]

pub mod files;
pub mod filter;
mod server;
pub mod svg;
mod views;

use std::path::{Path, PathBuf};

pub use server::{Options, router, serve};

/// Everything that can go wrong answering a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    /// A filter expression that does not parse.
    #[error("{0}")]
    Filter(String),
    /// A request parameter that makes no sense.
    #[error("{0}")]
    BadRequest(String),
    /// No such run, file or page.
    #[error("{0}")]
    NotFound(String),
    /// A file outside the results directory.
    #[error("{0}")]
    Forbidden(String),
    /// A page template failed to render.
    #[error("rendering the page: {0}")]
    Template(#[from] minijinja::Error),
    /// A file could not be read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}
