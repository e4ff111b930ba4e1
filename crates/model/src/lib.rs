//! GPT-2 models for kiln in burn, generic over the backend, with Hugging Face weights in and
//! out.
//!
//! - [`gpt2::Gpt2Config`] / [`gpt2::Gpt2`]: the model (named configs `gpt2`, `gpt2-medium`,
//!   `distilgpt2`, or any size).
//! - [`hf::load`] / [`hf::save`]: Hugging Face `config.json` + `model.safetensors` directories.
//! - [`lora`]: LoRA adapters on the attention projections, merged on export.
//! - [`backend`]: run-to-run deterministic sums and the widest usable float per backend.
//! - [`device`]: the `device` and `precision` params → a burn backend (CPU, CUDA, wgpu).
//! - [`host`]: device-to-host reads, counted (a training step makes one).
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

pub mod backend;
pub mod bloom;
mod causal;
pub mod device;
mod error;
pub mod gpt2;
pub mod hf;
pub mod host;
pub mod kernels;
mod layers;
pub mod llama;
pub mod lora;
pub mod named;
pub mod phi;
pub mod weights;

pub use burn;
pub use causal::{CausalLm, MODEL_TYPES, Model, config_token_id, load};
pub use error::{Error, Result};

/// burn's ndarray CPU backend.
pub type Cpu = burn::backend::NdArray<f32>;

/// burn's flex CPU backend (kiln's default for training and evaluation: faster here).
pub type Flex = burn::backend::Flex<f32, i32>;

/// Runs `draw` with backend `B`'s random numbers seeded by `seed`, and no other thread of
/// this process seeding or drawing through this function meanwhile.
///
/// burn keeps one random generator per backend, shared by every thread: two stages that seed
/// and then initialize weights at the same time (`kiln run --jobs 2`, tests in parallel)
/// would otherwise interleave their draws, and the same seed would give other weights.
pub fn seeded<B: burn::tensor::backend::Backend, R>(
    device: &B::Device,
    seed: u64,
    draw: impl FnOnce() -> R,
) -> R {
    let _only_us = RNG.lock();
    B::seed(device, seed);
    draw()
}

/// Runs `draw`, whose random numbers do not matter (weights about to be overwritten), without
/// disturbing a [`seeded`] section running on another thread.
pub fn unseeded<R>(draw: impl FnOnce() -> R) -> R {
    let _only_us = RNG.lock();
    draw()
}

/// `module` with every parameter drawn now.
///
/// burn initializes parameters lazily: `config.init()` only records how to draw each one, and
/// the draw happens wherever the parameter is first read (the first forward pass, a save),
/// outside the [`seeded`] or [`unseeded`] section that built the module, where another thread
/// may reseed or draw meanwhile. Call this inside the section. Parameters already holding a
/// value (loaded weights) cost nothing.
#[must_use]
pub fn drawn<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(module: M) -> M {
    struct Draw;
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Draw {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            if !param.is_initialized() {
                let _ = param.val();
            }
        }
    }
    module.visit(&mut Draw);
    module
}

/// Held while random numbers are drawn from burn's shared generators. Reentrant: a section
/// may call code that takes it again (a model loaded inside a seeded section).
static RNG: parking_lot::ReentrantMutex<()> = parking_lot::const_reentrant_mutex(());
