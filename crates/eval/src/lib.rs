//! Evaluation and decoding for kiln: the research measurements on any GPT-2 directory.
//!
//! - [`score`]: next-token distributions, top-k, NLL and conditional NLL, per-token label
//!   traces, the internalization gap (on token ids).
//! - [`decode`]: temperature / top-k sampling and greedy decoding with a KV cache, and
//!   product-of-experts decoding from several contexts.
//! - [`Lm`]: a model directory with its tokenizer and the research code's text conventions.
//! - [`classify`]: sentiment accuracy, two-way accuracy, loss and confusion matrix.
//! - [`plot`]: per-token trace plots (SVG, PNG).
//! - [`stages`]: `eval.sentiment`, `eval.trace`, `eval.gap`, `eval.score`, `eval.generate`.
#![deny(missing_docs)]

pub mod bench;
pub mod classify;
pub mod decode;
mod error;
mod lm;
pub mod plot;
pub mod score;
pub mod stages;

pub use error::{Error, Result};
pub use lm::{Lm, TopToken};
