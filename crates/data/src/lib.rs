//! Data preparation for kiln: readers for sentiment140 and Alpaca, GPT-2-exact tokenization, Arrow shards and collation (issue 4).
//!
//! The crate is part of the workspace so the crate graph is in place; its code arrives with
//! the issue named above.
#![deny(missing_docs)]
