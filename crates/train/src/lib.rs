//! Training for kiln: the research objectives on GPT-2 in burn, resumable, recorded in the
//! results store.
//!
//! - [`loss`]: masked cross-entropy (−100 ignored) and the prompt-internalization loss.
//! - [`objective`]: [`objective::Lm`] (causal LM, full or completion-masked labels) and
//!   [`objective::Internalize`] (a frozen teacher reading text + prompt).
//! - [`trainer`]: the loop (AdamW, schedule, clipping, accumulation, evaluation,
//!   checkpoints, exact resume).
//! - [`checkpoint`]: checkpoint layout; [`schedule`]: learning-rate schedules.
//! - [`stages`]: the stage kinds `model.init`, `model.hf`, `train.lm`, `train.internalize`.
#![deny(missing_docs)]

pub mod bench;
pub mod checkpoint;
mod error;
pub mod loss;
pub mod objective;
pub mod schedule;
pub mod stages;
pub mod trainer;

/// Device selection lives in the model crate (evaluation uses it too).
pub use kiln_model::device;

pub use error::{Error, Result};
