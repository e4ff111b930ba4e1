//! GPT-2 models for kiln in burn, generic over the backend, with Hugging Face weights in and
//! out.
//!
//! - [`gpt2::Gpt2Config`] / [`gpt2::Gpt2`]: the model (named configs `gpt2`, `gpt2-medium`,
//!   `distilgpt2`, or any size).
//! - [`hf::load`] / [`hf::save`]: Hugging Face `config.json` + `model.safetensors` directories.
//! - [`lora`]: LoRA adapters on the attention projections, merged on export.
//! - [`kernels`]: fused row kernels (cross-entropy, softmax, GELU) with a burn-flex fast path,
//!   and softmaxes of rows on the host in f64.
//!
//! ```no_run
//! use kiln_model::{Cpu, hf};
//! let device = Default::default();
//! let (_config, model) = hf::load::<Cpu>("tests/fixtures/numerics/tiny-gpt2".as_ref(), &device).expect("loads");
//! # let _ = model;
//! ```
#![deny(missing_docs)]

mod error;
pub mod gpt2;
pub mod hf;
pub mod kernels;
pub mod lora;

pub use burn;
pub use error::{Error, Result};

/// burn's ndarray CPU backend.
pub type Cpu = burn::backend::NdArray<f32>;

/// burn's flex CPU backend (kiln's default for training and evaluation: faster here).
pub type Flex = burn::backend::Flex<f32, i32>;
