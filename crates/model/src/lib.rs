//! GPT-2 models for kiln in burn, with Hugging Face weights in and out (issue 5).
//!
//! The crate is part of the workspace so the crate graph is in place; its code arrives with
//! the issue named above.
#![deny(missing_docs)]
