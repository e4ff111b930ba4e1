//! Evaluation and decoding for kiln: sentiment accuracy, traces, top-k, NLL, generation (issue 6).
//!
//! The crate is part of the workspace so the crate graph is in place; its code arrives with
//! the issue named above.
#![deny(missing_docs)]
