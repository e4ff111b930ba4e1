//! Sweep reports for kiln: HTML and Markdown from the results store (issue 7).
//!
//! The crate is part of the workspace so the crate graph is in place; its code arrives with
//! the issue named above.
#![deny(missing_docs)]
