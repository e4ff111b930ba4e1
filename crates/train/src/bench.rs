//! Training throughput: the work of one optimizer step of causal-LM training (forward over
//! every position, masked cross-entropy, backward, AdamW) on random tokens, timed. The
//! PyTorch counterpart is `benches/peers/torch_train.py`; `kiln bench suite --peers` runs both.

use std::time::Instant;

use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use kiln_core::regression::summarize;
use kiln_data::shard::Example;
use kiln_model::gpt2::Gpt2Config;
use kiln_model::kernels::AdamW;

use crate::objective::{Lm, Objective};

/// The benchmark's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Vocabulary.
    pub vocab: usize,
    /// Blocks.
    pub layers: usize,
    /// Hidden size.
    pub dims: usize,
    /// Heads.
    pub heads: usize,
    /// Sequence length.
    pub seq: usize,
    /// Rows per batch.
    pub batch: usize,
}

impl Default for Shape {
    /// The CPU configuration: vocab 8192, 4 layers, 256 dims, 4 heads, seq 64,
    /// batch 32.
    fn default() -> Self {
        Self {
            vocab: 8192,
            layers: 4,
            dims: 256,
            heads: 4,
            seq: 64,
            batch: 32,
        }
    }
}

/// Untimed steps before a named model's timed ones ([`run_model`] for `gpt2`,
/// `smollm2-135m`, …). Two, not one: the first steps of a large model still grow the
/// allocator's arenas and fault their pages in (seconds of kernel time on a VM), which a
/// long training run pays once. The peers' scripts get the same number.
pub const MODEL_WARMUP: usize = 2;

/// Result of [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Timed steps.
    pub steps: usize,
    /// Their wall time.
    pub seconds: f64,
    /// Training tokens per second at the median step's time (a step that a page-fault burst
    /// or another process slowed does not move it; as the peers' scripts).
    pub tokens_per_s: f64,
}

/// Times `steps` training steps of the small GPT-2 of `shape` after `warmup` untimed ones,
/// on backend `B`.
pub fn run<B: AutodiffBackend>(
    shape: Shape,
    steps: usize,
    warmup: usize,
    device: &B::Device,
) -> crate::Result<Throughput> {
    let config = Gpt2Config::new(
        shape.vocab,
        shape.seq,
        shape.dims,
        shape.layers,
        shape.heads,
    );
    config.check_fits::<B>(Some((shape.batch, shape.seq)))?;
    let model =
        kiln_model::seeded::<B, _>(device, 0, || kiln_model::drawn(config.init::<B>(device)));
    run_model(
        kiln_model::Model::Gpt2(model),
        shape.vocab,
        shape.seq,
        shape.batch,
        steps,
        warmup,
    )
}

/// A model to benchmark by name: `gpt2` (124M) or a named shape of another architecture
/// (`smollm2-135m`, …), randomly initialized; and its vocabulary size.
///
/// # Errors
/// An unknown name.
pub fn named_model<B: AutodiffBackend>(
    name: &str,
    device: &B::Device,
) -> crate::Result<(kiln_model::Model<B>, usize)> {
    if name == "gpt2" {
        let config = Gpt2Config::gpt2();
        let vocab = config.vocab_size;
        let model =
            kiln_model::seeded::<B, _>(device, 0, || kiln_model::drawn(config.init::<B>(device)));
        return Ok((kiln_model::Model::Gpt2(model), vocab));
    }
    let shape = kiln_model::named::config(name).ok_or_else(|| {
        crate::Error::Invalid(format!(
            "no model shape {name:?}: write gpt2 or one of {}",
            kiln_model::named::NAMES.join(", ")
        ))
    })?;
    let model = kiln_model::seeded::<B, _>(device, 0, || {
        kiln_model::named::init::<B>(&shape, device).map(kiln_model::drawn)
    })?;
    let vocab = kiln_model::CausalLm::vocab_size(&model);
    Ok((model, vocab))
}

/// Times `steps` training steps of `model` (batches of `batch` random rows of `seq` tokens
/// below `vocab`, every target trained, AdamW) after `warmup` untimed ones.
///
/// # Errors
/// The loss fails (a row outside the vocabulary).
pub fn run_model<B: AutodiffBackend>(
    mut model: kiln_model::Model<B>,
    vocab: usize,
    seq: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> crate::Result<Throughput> {
    // The trainer's optimizer, with PyTorch's defaults.
    let mut optim = AdamW::new(0.9, 0.999, 1e-8, 0.0).init::<B, kiln_model::Model<B>>();
    // Random rows one token longer than seq: inputs are seq tokens, every target trained.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let rows: Vec<Example> = (0..batch)
        .map(|_| Example {
            input_ids: (0..=seq)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % vocab as u64) as u32
                })
                .collect(),
            label: None,
            labels: None,
        })
        .collect();
    let mut lm = Lm {
        pad: 0,
        max_length: Some(seq),
    };
    let device = kiln_model::CausalLm::device(&model);
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let started = Instant::now();
        let out = Objective::<B>::loss(&mut lm, &model, &rows)?;
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        // Wait for queued work (on asynchronous backends) before stopping the clock.
        B::sync(&device).map_err(|e| crate::Error::Device(format!("{e:?}")))?;
        if i >= warmup {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    let seconds = times.iter().sum();
    Ok(Throughput {
        steps,
        seconds,
        tokens_per_s: (batch * seq) as f64 / summarize(&times).map_or(f64::NAN, |f| f.value),
    })
}
