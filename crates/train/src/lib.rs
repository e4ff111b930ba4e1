//! kiln's training loop and objectives (causal LM, prompt internalization) as stage kinds (issue 5).
//!
//! The crate is part of the workspace so the crate graph is in place; its code arrives with
//! the issue named above.
#![deny(missing_docs)]
