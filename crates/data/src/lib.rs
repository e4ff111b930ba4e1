//! kiln's data preparation: raw sentiment140 tweets and Alpaca instructions become tokenized,
//! split Arrow shards that training streams.
//!
//! - [`sentiment`] reads labelled text (sentiment140's original layout, the Hugging Face
//!   parquet layout, or any table with a column mapping) with polars.
//! - [`alpaca`] reads instruction records, renders the Alpaca template and masks labels.
//! - [`instruct`] reads instruction and chat records (JSON, JSONL, CSV, parquet) and renders
//!   them through a [`template`] preset, a custom template or the model's Jinja
//!   [`chat_template`].
//! - [`tokenizer::Tok`] wraps Hugging Face `tokenizers`: GPT-2 from `vocab.json` +
//!   `merges.txt`, `tokenizer.json`, training a byte-level BPE, special tokens.
//! - [`prompted`] renders a labelled row as LM text through a template (`"{text} I feel{label}"`).
//! - [`dataset`] builds a dataset directory: [`shard`] files plus a manifest.
//! - [`collate`] pads rows into training batches.
//! - [`source`] fetches local files, URLs and `hf://` files (downloaded once, hash-checked).
//! - [`stages`] are the pipeline stage kinds (`data.tokenizer`, `data.sentiment140`,
//!   `data.alpaca`).
//!
//! ```no_run
//! # fn demo() -> kiln_data::Result<()> {
//! let tok = kiln_data::tokenizer::Tok::load("../shared/data/gpt2-tokenizer".as_ref())?;
//! assert_eq!(tok.encode(" I feel")?, [314, 1254]);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod alpaca;
pub mod chat_template;
pub mod collate;
pub mod dataset;
mod error;
pub mod instruct;
pub mod pretok;
pub mod prompted;
pub mod rng;
pub mod sentiment;
pub mod shard;
pub mod source;
pub mod specials;
pub mod stages;
pub mod template;
pub mod tokenizer;

pub use error::{Error, Result};
