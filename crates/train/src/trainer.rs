//! The training loop: AdamW with PyTorch's conventions, a learning-rate schedule, global
//! gradient-norm clipping, gradient accumulation, periodic evaluation and checkpoints, and
//! exact resumption from the latest checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use kiln_core::MetricDirection;
use kiln_data::shard::{Manifest, ShardReader};
use kiln_model::kernels::AdamW;
use kiln_model::{CausalLm, Model};

use crate::checkpoint::{self, TrainerState};
use crate::error::{Error, Result};
use crate::objective::Objective;
use crate::schedule::{Decay, Schedule};

/// How to train. Defaults follow the research code: AdamW with ε = 1e-8 and no weight decay
/// (burn's own defaults are 1e-5 and 1e-4).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Seed of the data order (and of anything random in training).
    pub seed: u64,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps; when `None`, `epochs` passes over the training split.
    pub max_steps: Option<usize>,
    /// Passes over the training split (used when `max_steps` is `None`).
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule after warm-up.
    pub decay: Decay,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (none: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// Evaluate on the validation split every N steps (and at the end); none: only at the end.
    pub eval_every: Option<usize>,
    /// At most this many validation batches per evaluation.
    pub eval_batches: Option<usize>,
    /// Write a checkpoint every N steps (and at the end).
    pub checkpoint_every: Option<usize>,
    /// Keep this many most recent checkpoints (plus the best).
    pub keep_checkpoints: usize,
    /// The metric that picks the best checkpoint, e.g. `val_loss` (lower is better) or
    /// `val_accuracy` (higher is better); the direction comes from the name
    /// ([`kiln_core::MetricDirection::of`]).
    pub best_metric: String,
    /// Whether the returned model is the best checkpoint's rather than the last.
    pub load_best_at_end: bool,
    /// Record the training loss every N steps.
    pub log_every: usize,
    /// The training split's name.
    pub train_split: String,
    /// The validation split's name.
    pub val_split: String,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 16,
            grad_accum: 1,
            max_steps: None,
            epochs: 1,
            lr: 1e-4,
            decay: Decay::Constant,
            warmup_steps: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_grad_norm: None,
            eval_every: None,
            eval_batches: None,
            checkpoint_every: None,
            keep_checkpoints: 2,
            best_metric: "val_loss".into(),
            load_best_at_end: true,
            log_every: 1,
            train_split: "train".into(),
            val_split: "val".into(),
        }
    }
}

impl TrainOptions {
    fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        blake3::hash(json.as_bytes()).to_hex().to_string()
    }
}

/// What the loop reports while it runs; the stage kinds pass it on to the store and the
/// progress display, tests collect it.
pub trait Observer {
    /// A metric value at a step.
    fn metric(&mut self, name: &str, step: usize, value: f64);
    /// Progress after a step.
    fn progress(&mut self, _step: usize, _total: usize, _message: &str) {}
    /// A line for the log.
    fn log(&mut self, _line: &str) {}
    /// Whether to stop (after the current step's checkpoint, if one is due).
    fn should_stop(&mut self, _step: usize) -> bool {
        false
    }
}

/// What training produced.
pub struct Outcome<B: AutodiffBackend> {
    /// The model (the best checkpoint's when `load_best_at_end` and there is one).
    pub model: Model<B>,
    /// Steps done.
    pub steps: usize,
    /// The best value of the best metric and its step.
    pub best: Option<(f64, usize)>,
    /// The last evaluation's metrics (with `val_` names).
    pub last_eval: Vec<(String, f64)>,
    /// The step training resumed from (0 for a fresh start).
    pub resumed_from: usize,
}

/// Data for training: a dataset directory made by a data stage.
#[derive(Debug, Clone)]
pub struct Data {
    /// The dataset directory (manifest and shards).
    pub dir: PathBuf,
}

fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The training split's batches, from a data position on.
struct Feed {
    dir: PathBuf,
    split: String,
    batch: usize,
    seed: u64,
    epoch: usize,
    taken: usize,
    reader: ShardReader,
}

impl Feed {
    fn open(
        dir: &Path,
        split: &str,
        batch: usize,
        seed: u64,
        epoch: usize,
        skip: usize,
    ) -> Result<Self> {
        let mut reader = ShardReader::open(dir, split, batch, Some(epoch_seed(seed, epoch)))?;
        for _ in 0..skip {
            if reader.next().transpose()?.is_none() {
                break;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            split: split.to_owned(),
            batch,
            seed,
            epoch,
            taken: skip,
            reader,
        })
    }

    fn next(&mut self) -> Result<Vec<kiln_data::shard::Example>> {
        loop {
            if let Some(rows) = self.reader.next().transpose()? {
                self.taken += 1;
                return Ok(rows);
            }
            if self.taken == 0 {
                return Err(Error::Invalid(format!(
                    "{}: split {:?} has no rows",
                    self.dir.display(),
                    self.split
                )));
            }
            *self = Self::open(
                &self.dir,
                &self.split,
                self.batch,
                self.seed,
                self.epoch + 1,
                0,
            )?;
        }
    }
}

/// Each gradient's sum of squares, in the model's visiting order, as a one-element f32
/// tensor on the device (half-precision gradients are widened first, so squares cannot
/// overflow).
struct GradSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    squares: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let g = g.cast(FloatDType::F32);
            self.squares
                .push(kiln_model::backend::sum(g.powi_scalar(2)));
        }
    }
}

struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g * self.factor);
        }
    }
}

/// What a step reads back from the device, in one read: its micro-batches' losses and the
/// gradients' squared norms.
struct StepValues {
    /// Mean of the micro-batch losses.
    loss: f64,
    /// The first non-finite micro-batch loss, if any.
    bad_loss: Option<f64>,
    /// Global L2 norm of the gradients.
    grad_norm: f64,
}

/// Reads the step's `losses` and `grads`' squared norms with one device-to-host read.
fn read_step<B: AutodiffBackend>(
    model: &Model<B>,
    grads: &GradientsParams,
    losses: Vec<Tensor<B::InnerBackend, 1>>,
) -> StepValues {
    let mut visitor = GradSquares::<B> {
        grads,
        squares: Vec::new(),
    };
    model.visit(&mut visitor);
    let n = losses.len();
    let mut parts: Vec<_> = losses
        .into_iter()
        .map(|l| l.cast(FloatDType::F32))
        .collect();
    parts.extend(visitor.squares);
    let values = kiln_model::host::read_f32(Tensor::cat(parts, 0));
    let (losses, squares) = values.split_at(n.min(values.len()));
    let losses: Vec<f64> = losses.iter().map(|&v| f64::from(v)).collect();
    StepValues {
        loss: losses.iter().sum::<f64>() / n.max(1) as f64,
        bad_loss: losses.iter().copied().find(|v| !v.is_finite()),
        grad_norm: squares.iter().map(|&v| f64::from(v)).sum::<f64>().sqrt(),
    }
}

/// Clips the gradients to a global L2 norm of `max` as `torch.nn.utils.clip_grad_norm_` does
/// (scale by `max / (norm + 1e-6)` when that is below 1).
fn clip<B: AutodiffBackend>(
    model: &Model<B>,
    grads: &mut GradientsParams,
    norm: f64,
    max: Option<f64>,
) {
    if let Some(max) = max {
        let factor = max / (norm + 1e-6);
        if factor < 1.0 {
            model.visit(&mut ScaleGrads { grads, factor });
        }
    }
}

/// Micro-batch `micro`'s loss at `step`.
///
/// A model whose forward pass draws random numbers (LoRA dropout) draws them from burn's
/// shared generator, seeded for this step and micro-batch under `kiln_model`'s lock: the same
/// masks whatever else the process runs meanwhile (`--jobs 2`), and the same after a resume
/// as in an uninterrupted run. The lock is held for the forward pass only, and only then.
fn micro_loss<B, O>(
    objective: &mut O,
    model: &Model<B>,
    rows: &[kiln_data::shard::Example],
    seed: u64,
    step: usize,
    micro: usize,
) -> Result<crate::objective::StepLoss<B>>
where
    B: AutodiffBackend,
    O: Objective<B>,
{
    if !model.draws_in_forward() {
        return objective.loss(model, rows);
    }
    let mix = |a: u64, b: usize| kiln_data::rng::SplitMix64::new(a ^ b as u64).next_u64();
    let draw_seed = mix(mix(seed, step), micro);
    kiln_model::seeded::<B, _>(&model.device(), draw_seed, || objective.loss(model, rows))
}

/// Trains `model` with `objective` on `data`, checkpointing under `checkpoints` and resuming
/// from the latest complete checkpoint there when one exists (made with the same options).
///
/// # Errors
/// Unreadable data, a non-finite loss (naming the step), an interrupt (after the step's
/// checkpoint), or a checkpoint that cannot be written or read.
#[allow(clippy::too_many_lines)]
pub fn train<B, O>(
    model: Model<B>,
    objective: &mut O,
    data: &Data,
    opts: &TrainOptions,
    checkpoints: &Path,
    observer: &mut dyn Observer,
) -> Result<Outcome<B>>
where
    B: AutodiffBackend,
    O: Objective<B>,
{
    let device = model.device();
    let manifest = Manifest::load(&data.dir)?;
    let rows = manifest
        .splits
        .get(&opts.train_split)
        .map(|s| s.rows)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no split {:?}",
                data.dir.display(),
                opts.train_split
            ))
        })?;
    let per_step = (opts.batch_size * opts.grad_accum).max(1);
    let total = opts
        .max_steps
        .unwrap_or_else(|| opts.epochs * rows.div_ceil(per_step));
    if total == 0 {
        return Err(Error::Invalid(
            "nothing to train: 0 steps (max_steps 0, epochs 0 or an empty split)".into(),
        ));
    }
    let schedule = Schedule {
        lr: opts.lr,
        warmup: opts.warmup_steps,
        total,
        decay: opts.decay,
    };
    let has_val = manifest
        .splits
        .get(&opts.val_split)
        .is_some_and(|s| s.rows > 0);
    let options_hash = opts.hash();

    let mut optim = AdamW::new(
        opts.beta1 as f32,
        opts.beta2 as f32,
        opts.eps as f32,
        opts.weight_decay as f32,
    )
    .init::<B, Model<B>>();
    let mut model = model;
    let mut history: Vec<checkpoint::Recorded> = Vec::new();
    let report = |observer: &mut dyn Observer,
                  history: &mut Vec<checkpoint::Recorded>,
                  name: &str,
                  step: usize,
                  value: f64| {
        observer.metric(name, step, value);
        history.push((name.to_owned(), step, value));
    };
    let mut state = TrainerState {
        options_hash: options_hash.clone(),
        ..TrainerState::default()
    };
    if let Some((step, dir)) = checkpoint::list(checkpoints).pop() {
        let loaded = checkpoint::load::<B, _>(&dir, &model, optim, &device)?;
        if loaded.state.options_hash != options_hash {
            return Err(Error::Checkpoint {
                path: dir,
                message: "made with other training options; delete it to start over".into(),
            });
        }
        observer.log(&format!(
            "resuming from the checkpoint at step {step} (reporting its {} earlier metric values again)",
            loaded.history.len()
        ));
        model = loaded.model;
        optim = loaded.optim;
        state = loaded.state;
        // This attempt's record is complete: the steps before the checkpoint are reported
        // again, exactly as they were.
        for (name, step, value) in &loaded.history {
            observer.metric(name, *step, *value);
        }
        history = loaded.history;
    }
    let resumed_from = state.step;
    // Under kiln_model's lock: seeding burn's shared generator while another thread's seeded
    // section draws (parallel stages or tests) would change that thread's weights.
    kiln_model::seeded::<B, _>(&device, opts.seed.wrapping_add(state.step as u64), || ());
    let mut feed = Feed::open(
        &data.dir,
        &opts.train_split,
        opts.batch_size,
        opts.seed,
        state.epoch,
        state.batch_in_epoch,
    )?;
    let mut last_eval = Vec::new();
    let started = Instant::now();
    let mut tokens_since = 0usize;
    let mut window = Instant::now();

    while state.step < total {
        let step = state.step + 1;
        let mut accumulated = GradientsAccumulator::<Model<B>>::new();
        let mut losses = Vec::with_capacity(opts.grad_accum.max(1));
        for micro in 0..opts.grad_accum.max(1) {
            let rows = feed.next()?;
            let out = micro_loss(objective, &model, &rows, opts.seed, step, micro)?;
            losses.push(out.loss.clone().inner());
            tokens_since += out.tokens;
            state.tokens += out.tokens as u64;
            let grads = (out.loss / opts.grad_accum.max(1) as f64).backward();
            accumulated.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        state.epoch = feed.epoch;
        state.batch_in_epoch = feed.taken;
        let mut grads = accumulated.grads();
        // The step's only read from the device.
        let values = read_step(&model, &grads, losses);
        if let Some(value) = values.bad_loss {
            return Err(Error::NonFinite { step, value });
        }
        let grad_norm = values.grad_norm;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                step,
                value: grad_norm,
            });
        }
        clip(&model, &mut grads, grad_norm, opts.clip_grad_norm);
        let lr = schedule.at(state.step);
        model = optim.step(lr, model, grads);
        state.step = step;

        let loss = values.loss;
        if step.is_multiple_of(opts.log_every.max(1)) || step == total {
            let seconds = window.elapsed().as_secs_f64().max(1e-9);
            report(observer, &mut history, "loss", step, loss);
            report(observer, &mut history, "lr", step, lr);
            report(observer, &mut history, "grad_norm", step, grad_norm);
            let tokens_per_s = tokens_since as f64 / seconds;
            report(observer, &mut history, "tokens_per_s", step, tokens_per_s);
            report(observer, &mut history, "epoch", step, state.epoch as f64);
            tokens_since = 0;
            window = Instant::now();
        }
        let eval_due = has_val
            && (opts
                .eval_every
                .is_some_and(|n| n > 0 && step.is_multiple_of(n))
                || step == total);
        if eval_due {
            let valid = model.valid();
            let mut reader = ShardReader::open(&data.dir, &opts.val_split, opts.batch_size, None)?
                .take(opts.eval_batches.unwrap_or(usize::MAX));
            last_eval = objective
                .evaluate(&valid, &mut reader)?
                .into_iter()
                .map(|(k, v)| (format!("val_{k}"), v))
                .collect();
            for (k, v) in &last_eval {
                report(observer, &mut history, k, step, *v);
            }
            if let Some(&(_, v)) = last_eval.iter().find(|(k, _)| *k == opts.best_metric) {
                let better = match state.best {
                    None => true,
                    Some((b, _)) => MetricDirection::of(&opts.best_metric).is_better(v, b),
                };
                if better {
                    state.best = Some((v, step));
                }
            }
        }
        let stop = observer.should_stop(step);
        let checkpoint_due = step == total
            || stop
            || eval_due && state.best.is_some_and(|(_, s)| s == step)
            || opts
                .checkpoint_every
                .is_some_and(|n| n > 0 && step.is_multiple_of(n));
        if checkpoint_due {
            checkpoint::save(checkpoints, &model, &optim, &state, &history)?;
            checkpoint::prune(
                checkpoints,
                opts.keep_checkpoints.max(1),
                state.best.map(|(_, s)| s),
            );
        }
        let elapsed = started.elapsed().as_secs_f64();
        let done = (step - resumed_from) as f64;
        let eta = elapsed / done * (total - step) as f64;
        observer.progress(step, total, &format!("loss {loss:.4} · eta {eta:.0}s"));
        if stop {
            return Err(Error::Interrupted { step });
        }
    }

    if opts.load_best_at_end
        && let Some((value, step)) = state.best
        && step != state.step
    {
        let dir = checkpoint::step_dir(checkpoints, step);
        observer.log(&format!(
            "loading the best checkpoint: step {step}, {} = {value}",
            opts.best_metric
        ));
        model = checkpoint::load_model(&dir, &model, &device)?;
    }
    Ok(Outcome {
        model,
        steps: state.step,
        best: state.best,
        last_eval,
        resumed_from,
    })
}
