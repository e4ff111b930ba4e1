//! Sweep reports: one self-contained HTML file (inline SVG, no network) and a Markdown
//! summary, from what an experiment's trials recorded in the results store.
//!
//! - the trial table: swept params and final metrics, sortable by clicking a column;
//! - a heatmap of the chosen metric over the first two swept params (e.g. α × T);
//! - training and validation loss curves per trial;
//! - for the best trial: its per-token sentiment trace plots (from `eval.trace`), top-k
//!   next-token tables and greedy samples from its model.
#![deny(missing_docs)]

mod bench;
mod gather;
mod render;

pub use bench::bench_html;
pub use gather::{Report, Trial, gather};
pub use render::{html, markdown};

/// Everything that can go wrong making a report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    /// Nothing to report.
    #[error("{0}")]
    Empty(String),
}

/// Result with the report crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
