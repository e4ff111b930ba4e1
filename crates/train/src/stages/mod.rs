//! The train crate's stage kinds. One file per kind; one line each in [`register`].
//!
//! Every model-producing kind writes a Hugging Face directory at `model/` in its output
//! (`config.json`, `model.safetensors`, and `tokenizer.json` when known), so the next stage
//! takes `model: ${stages.X.dir}/model`, and `transformers` can load it too.

mod internalize;
mod lm;
mod model_hf;
mod model_init;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_core::{ParamSpec, ParamType, Registry, StageContext, StageError};
use serde_json::Value;

use burn::tensor::backend::AutodiffBackend;
use kiln_data::shard::{Manifest, ShardReader};
use kiln_data::tokenizer::Tok;
use kiln_model::lora::LoraConfig;
use kiln_model::{CausalLm, Model};

use crate::device::{self, Device, Precision};
use crate::schedule::Decay;
use crate::trainer::{Data, Observer, TrainOptions, train};

pub use internalize::TrainInternalize;
pub use lm::TrainLm;
pub use model_hf::ModelHf;
pub use model_init::ModelInit;

/// Adds the train kinds to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(ModelInit);
    registry.add(ModelHf);
    registry.add(TrainLm);
    registry.add(TrainInternalize);
}

/// Parameters every training kind takes (after its own).
pub(crate) const TRAIN_PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "data",
        ParamType::Path,
        "dataset directory (a data stage's output)",
    ),
    ParamSpec::required(
        "model",
        ParamType::Path,
        "model directory to start from (Hugging Face layout)",
    ),
    ParamSpec::optional(
        "device",
        ParamType::String,
        "where to train (default cpu); cuda:N / wgpu:N is the Nth GPU the stage holds",
    )
    .parses(device::DEVICE_RULE, device::check_device),
    ParamSpec::optional("precision", ParamType::String, "default f32")
        .parses(device::PRECISION_RULE, device::check_precision),
    ParamSpec::optional("seed", ParamType::Int, "data order seed (default 0)").at_least(0),
    ParamSpec::optional(
        "batch_size",
        ParamType::Int,
        "rows per micro-batch (default 16)",
    )
    .at_least(1),
    ParamSpec::optional(
        "grad_accum",
        ParamType::Int,
        "micro-batches per step (default 1)",
    )
    .at_least(1),
    ParamSpec::optional(
        "max_steps",
        ParamType::Int,
        "optimizer steps (default: epochs)",
    )
    .at_least(1),
    ParamSpec::optional(
        "epochs",
        ParamType::Int,
        "passes over the train split when max_steps is not given (default 1)",
    )
    .at_least(1),
    ParamSpec::optional("lr", ParamType::Float, "peak learning rate (default 1e-4)").positive(),
    ParamSpec::optional(
        "schedule",
        ParamType::String,
        "constant (default), linear or cosine, after warm-up",
    )
    .one_of(&["constant", "linear", "cosine"]),
    ParamSpec::optional(
        "warmup_steps",
        ParamType::Int,
        "linear warm-up steps (default 0)",
    )
    .at_least(0),
    ParamSpec::optional(
        "weight_decay",
        ParamType::Float,
        "AdamW weight decay (default 0)",
    )
    .range(0.0, f64::MAX),
    ParamSpec::optional("adam_eps", ParamType::Float, "AdamW epsilon (default 1e-8)").positive(),
    ParamSpec::optional(
        "clip_grad_norm",
        ParamType::Float,
        "clip the global gradient norm (default: no clipping)",
    )
    .positive(),
    ParamSpec::optional(
        "eval_every",
        ParamType::Int,
        "evaluate on val every N steps (default: at the end)",
    )
    .at_least(1),
    ParamSpec::optional(
        "eval_batches",
        ParamType::Int,
        "at most N val batches per evaluation (default all)",
    )
    .at_least(1),
    ParamSpec::optional(
        "checkpoint_every",
        ParamType::Int,
        "checkpoint every N steps (default: at evaluations and the end)",
    )
    .at_least(1),
    ParamSpec::optional(
        "keep_checkpoints",
        ParamType::Int,
        "keep the N latest checkpoints plus the best (default 2)",
    )
    .at_least(1),
    ParamSpec::optional(
        "best_metric",
        ParamType::String,
        "metric picking the best checkpoint (default val_loss)",
    ),
    ParamSpec::optional(
        "load_best_at_end",
        ParamType::Bool,
        "end with the best checkpoint's weights (default true)",
    ),
    ParamSpec::optional(
        "max_length",
        ParamType::Int,
        "cut rows to N tokens (default: the model's n_positions; more is an error)",
    )
    .at_least(1),
    ParamSpec::optional(
        "lora_rank",
        ParamType::Int,
        "train LoRA adapters of this rank instead of every weight (default, or 0: full fine-tuning)",
    )
    .at_least(0),
    ParamSpec::optional(
        "lora_alpha",
        ParamType::Float,
        "LoRA scale numerator (update scaled by alpha / rank; default 8)",
    )
    .positive(),
    ParamSpec::optional(
        "lora_dropout",
        ParamType::Float,
        "LoRA input dropout (default 0)",
    )
    .range_open(0.0, 1.0),
    ParamSpec::optional(
        "lora_targets",
        ParamType::List,
        "projections with adapters (default: [c_attn] for GPT-2, [query_key_value] for BLOOM, [q_proj, v_proj] for Phi and the Llama family; also c_proj, k_proj, o_proj, dense)",
    ),
    ParamSpec::optional(
        "test_data",
        ParamType::Path,
        "a dataset to evaluate the final model on (test_* metrics)",
    ),
    ParamSpec::optional("test_split", ParamType::String, "its split (default test)"),
];

/// Reads the params every training kind shares.
pub(crate) struct Common {
    pub data: PathBuf,
    pub model: PathBuf,
    pub device: Device,
    pub precision: Precision,
    pub opts: TrainOptions,
    pub max_length: Option<usize>,
    pub test: Option<(PathBuf, String)>,
    pub lora: Option<LoraConfig>,
}

impl Common {
    pub(crate) fn read(ctx: &StageContext) -> Result<Self, StageError> {
        let p = ctx.p();
        let defaults = TrainOptions::default();
        let device = device::resolve(p.string("device")?.as_deref().unwrap_or("cpu"), &ctx.gpus)?;
        let precision = p
            .string("precision")?
            .unwrap_or_else(|| "f32".into())
            .parse::<Precision>()?;
        let decay = p
            .string("schedule")?
            .unwrap_or_else(|| "constant".into())
            .parse::<Decay>()?;
        let opts = TrainOptions {
            seed: p.u64("seed")?.unwrap_or(defaults.seed),
            batch_size: p.count("batch_size")?.unwrap_or(defaults.batch_size),
            grad_accum: p.count("grad_accum")?.unwrap_or(defaults.grad_accum),
            max_steps: p.count("max_steps")?,
            epochs: p.count("epochs")?.unwrap_or(defaults.epochs),
            lr: p.f64("lr")?.unwrap_or(defaults.lr),
            decay,
            warmup_steps: p.usize("warmup_steps")?.unwrap_or(0),
            weight_decay: p.f64("weight_decay")?.unwrap_or(defaults.weight_decay),
            eps: p.f64("adam_eps")?.unwrap_or(defaults.eps),
            clip_grad_norm: p.f64("clip_grad_norm")?,
            eval_every: p.count("eval_every")?,
            eval_batches: p.count("eval_batches")?,
            checkpoint_every: p.count("checkpoint_every")?,
            keep_checkpoints: p
                .count("keep_checkpoints")?
                .unwrap_or(defaults.keep_checkpoints),
            best_metric: p.string("best_metric")?.unwrap_or(defaults.best_metric),
            load_best_at_end: p.bool("load_best_at_end")?.unwrap_or(true),
            ..defaults
        };
        let data = p.require("data", p.path("data"))?;
        let model = p.require("model", p.path("model"))?;
        let test = match p.path("test_data")? {
            Some(d) => Some((d, p.string("test_split")?.unwrap_or_else(|| "test".into()))),
            None => None,
        };
        let lora = match p.usize("lora_rank")? {
            None | Some(0) => None,
            Some(rank) => {
                let targets = p.strings("lora_targets")?;
                if let Some(bad) = targets
                    .iter()
                    .flatten()
                    .find(|t| !LORA_TARGETS.contains(&t.as_str()))
                {
                    return Err(format!(
                        "lora_targets: {bad:?} is not one of {}",
                        LORA_TARGETS.join(", ")
                    )
                    .into());
                }
                let has = |name: &str| targets.iter().flatten().any(|t| t == name);
                let config = LoraConfig::new(rank)
                    .with_alpha(p.f64("lora_alpha")?.unwrap_or(8.0))
                    .with_dropout(p.f64("lora_dropout")?.unwrap_or(0.0));
                Some(match &targets {
                    // GPT-2 reads its two flags; the other architectures the names.
                    Some(t) => config
                        .with_c_attn(has("c_attn"))
                        .with_c_proj(has("c_proj"))
                        .with_targets(t.clone()),
                    None => config,
                })
            }
        };
        Ok(Self {
            lora,
            data,
            model,
            device,
            precision,
            opts,
            max_length: p.count("max_length")?,
            test,
        })
    }
}

/// The projection names `lora_targets` accepts, over all architectures (each checks its own
/// when the adapters are attached).
const LORA_TARGETS: &[&str] = &[
    "c_attn",
    "c_proj",
    "query_key_value",
    "dense",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
];

/// Checks what the param specs cannot: LoRA targets.
pub(crate) fn validate_common(
    params: &BTreeMap<String, Value>,
    problems: &mut Vec<(String, String)>,
) {
    if let Some(targets) = params.get("lora_targets").and_then(Value::as_array) {
        for t in targets {
            if !t.as_str().is_some_and(|t| LORA_TARGETS.contains(&t)) {
                problems.push((
                    "lora_targets".into(),
                    format!("{t} is not one of {}", LORA_TARGETS.join(", ")),
                ));
            }
        }
    }
}

/// Passes training events to the stage's metrics, progress display, log and cancel token.
pub(crate) struct StageObserver<'a> {
    pub ctx: &'a StageContext,
}

impl Observer for StageObserver<'_> {
    fn metric(&mut self, name: &str, step: usize, value: f64) {
        self.ctx.metrics.record(name, step as i64, value);
    }
    fn progress(&mut self, step: usize, total: usize, message: &str) {
        self.ctx
            .progress
            .update(step as u64, Some(total as u64), Some(message));
    }
    fn log(&mut self, line: &str) {
        self.ctx.log(line);
        tracing::info!(stage = %self.ctx.stage, "{line}");
    }
    fn should_stop(&mut self, _step: usize) -> bool {
        self.ctx.cancel.is_cancelled()
    }
}

/// Copies a dataset's or model's `tokenizer.json` into `model_dir`, when there is one, with
/// the files beside it that name its special tokens and chat template (so a trained model
/// keeps the BOS/EOS its data was rendered with).
pub(crate) fn copy_tokenizer(from_dirs: &[&Path], model_dir: &Path) -> Result<(), StageError> {
    for dir in from_dirs {
        if !dir.join("tokenizer.json").is_file() {
            continue;
        }
        for name in [
            "tokenizer.json",
            kiln_data::specials::FILES[0],
            kiln_data::specials::FILES[1],
        ] {
            let t = dir.join(name);
            if t.is_file() {
                std::fs::copy(&t, model_dir.join(name))
                    .map_err(|e| format!("cannot copy {}: {e}", t.display()))?;
            }
        }
        return Ok(());
    }
    Ok(())
}

/// Moves the checkpoints from the stage's resumable state into its output.
pub(crate) fn keep_checkpoints(ctx: &StageContext) -> Result<(), StageError> {
    let from = ctx.state_dir.join("checkpoints");
    if !from.is_dir() {
        return Ok(());
    }
    let to = ctx.out_dir.join("checkpoints");
    std::fs::create_dir_all(&to)?;
    for (_, dir) in crate::checkpoint::list(&from) {
        if let Some(name) = dir.file_name() {
            std::fs::rename(&dir, to.join(name))
                .map_err(|e| format!("cannot move checkpoint {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

/// What a training kind optimizes.
pub(crate) enum ObjectiveSpec {
    /// Causal LM.
    Lm,
    /// Prompt internalization.
    Internalize {
        teacher: PathBuf,
        prompt: String,
        alpha: f64,
        temperature: f64,
    },
}

/// A training stage's work, run on the backend its `device` param picks.
pub(crate) struct TrainJob<'a> {
    pub ctx: &'a StageContext,
    pub common: Common,
    pub spec: ObjectiveSpec,
}

/// Runs a training kind: load the model, train, save `model/`, evaluate on `test_data`.
pub(crate) fn run_training(ctx: &StageContext, spec: ObjectiveSpec) -> Result<(), StageError> {
    let common = Common::read(ctx)?;
    let (device, precision) = (common.device, common.precision);
    crate::device::dispatch(device, precision, TrainJob { ctx, common, spec })?
}

impl crate::device::Job for TrainJob<'_> {
    type Output = Result<(), StageError>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        use crate::objective::{Internalize, Lm};
        let Self { ctx, common, spec } = self;
        ctx.log(&format!(
            "training on {} at {}",
            device::describe(common.device),
            common.precision
        ));
        let started = std::time::Instant::now();
        let mut model = kiln_model::load::<B>(&common.model, &device)?;
        let context = model.max_positions().unwrap_or(usize::MAX);
        if let Model::Gpt2(gpt2) = &model {
            let positions = common.max_length.unwrap_or(context);
            let batch = Some((common.opts.batch_size, positions));
            gpt2.config.check_fits::<B>(batch)?;
        }
        let manifest = Manifest::load(&common.data)?;
        let tok_path = common.data.join("tokenizer.json");
        let tok = Tok::load(&tok_path)?;
        if manifest.vocab_size > model.vocab_size() {
            ctx.log(&format!(
                "resizing token embeddings {} -> {} for the dataset's added tokens (new rows: mean embedding)",
                model.vocab_size(),
                manifest.vocab_size
            ));
            model = model.resize_token_embeddings(manifest.vocab_size);
        }
        if let Some(lora) = &common.lora {
            // The adapters' initialization is seeded, like everything else the run draws.
            model = kiln_model::seeded::<B, _>(&device, common.opts.seed, || {
                model.with_lora(lora, &device).map(kiln_model::drawn)
            })?;
            let on = if lora.targets.is_empty() {
                format!("the {} default projections", model.model_type())
            } else {
                lora.targets.join(", ")
            };
            ctx.log(&format!(
                "LoRA rank {} (alpha {}) on {on}: only the adapters train; they are merged on export",
                lora.rank, lora.alpha,
            ));
        }
        let pad = kiln_model::config_token_id(&common.model, "eos_token_id")
            .or_else(|| tok.eos_id())
            .ok_or("no padding token: neither the model's config.json (eos_token_id) nor the tokenizer has one")?;
        let vocab = model.vocab_size();
        let checkpoints = ctx.state_dir.join("checkpoints");
        let data = Data {
            dir: common.data.clone(),
        };
        let mut observer = StageObserver { ctx };
        let cut = |reserve: usize| -> Result<Option<usize>, StageError> {
            let room = context.saturating_sub(reserve);
            let max = cut_length(common.max_length, context, reserve)?;
            report_truncated(ctx, &manifest, &common.data, max)?;
            Ok(Some(max.min(room)))
        };
        kiln_model::seeded::<B, _>(&device, common.opts.seed, || ());
        let (outcome, test) = match spec {
            ObjectiveSpec::Lm => {
                let mut objective = Lm {
                    pad,
                    max_length: cut(0)?,
                };
                fit(
                    model,
                    &mut objective,
                    &data,
                    &common,
                    &checkpoints,
                    &mut observer,
                )?
            }
            ObjectiveSpec::Internalize {
                teacher,
                prompt,
                alpha,
                temperature,
            } => {
                let prompt_ids = tok.encode(&prompt)?;
                if prompt_ids.is_empty() {
                    return Err("`prompt` encodes to no tokens".into());
                }
                let teacher = if alpha < 1.0 {
                    let t = kiln_model::load::<B::InnerBackend>(&teacher, &device)?;
                    Some(t.resize_token_embeddings(vocab))
                } else {
                    None
                };
                let label_pair = match (
                    manifest.label_map.get("negative"),
                    manifest.label_map.get("positive"),
                ) {
                    (Some(n), Some(p)) => Some((n.id, p.id)),
                    _ => None,
                };
                for label in manifest.label_map.values() {
                    if label.id as usize >= vocab {
                        return Err(format!(
                            "label token {:?} (id {}) is outside the model's vocabulary ({})",
                            label.token, label.id, vocab
                        )
                        .into());
                    }
                }
                let mut objective = Internalize::<B> {
                    teacher,
                    prompt: prompt_ids.clone(),
                    alpha,
                    temperature,
                    pad,
                    max_length: cut(prompt_ids.len())?,
                    label_pair,
                };
                fit(
                    model,
                    &mut objective,
                    &data,
                    &common,
                    &checkpoints,
                    &mut observer,
                )?
            }
        };
        for (name, value) in &test {
            ctx.metrics.record(name, outcome.steps as i64, *value);
        }
        let seconds = started.elapsed().as_secs_f64();
        ctx.metrics
            .record("train_seconds", outcome.steps as i64, seconds);
        let model_dir = ctx.out_dir.join("model");
        outcome.model.save(&model_dir)?;
        copy_tokenizer(&[&common.data, &common.model], &model_dir)?;
        keep_checkpoints(ctx)?;
        let summary = serde_json::json!({
            "steps": outcome.steps,
            "resumed_from": outcome.resumed_from,
            "best": outcome.best.map(|(value, step)| serde_json::json!({"metric": common.opts.best_metric, "value": value, "step": step})),
            "last_eval": outcome.last_eval.iter().cloned().collect::<BTreeMap<String, f64>>(),
            "test": test.iter().cloned().collect::<BTreeMap<String, f64>>(),
            "seconds": seconds,
            "options": common.opts,
        });
        std::fs::write(
            ctx.out_dir.join("train.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        ctx.log(&format!(
            "trained {} steps in {seconds:.1} s",
            outcome.steps
        ));
        Ok(())
    }
}

/// The length rows are cut to: `max_length`, or the model's context less `reserve` tokens (the
/// internalization prompt the teacher reads after each row).
///
/// # Errors
/// When `max_length` does not fit in that context: kiln never cuts more than asked silently.
fn cut_length(
    max_length: Option<usize>,
    n_positions: usize,
    reserve: usize,
) -> Result<usize, StageError> {
    let room = n_positions.saturating_sub(reserve);
    match max_length {
        Some(m) if m > room => {
            let less = if reserve > 0 {
                format!(" less the prompt's {reserve} tokens")
            } else {
                String::new()
            };
            Err(format!(
                "with.max_length: {m} is longer than the model's context ({n_positions} positions{less}, so at most {room})"
            )
            .into())
        }
        Some(m) => Ok(m),
        None if room == 0 => Err(format!(
            "the model's context ({n_positions} positions) has no room left after the prompt's {reserve} tokens"
        )
        .into()),
        None => Ok(room),
    }
}

/// Counts the rows of each split longer than `max` (they are cut to their first `max`
/// tokens): a `rows_truncated` metric, and a warning when there are any.
fn report_truncated(
    ctx: &StageContext,
    manifest: &Manifest,
    data: &Path,
    max: usize,
) -> Result<(), StageError> {
    let mut total = 0usize;
    let mut parts = Vec::new();
    for split in manifest.splits.keys() {
        let mut n = 0usize;
        for rows in ShardReader::open(data, split, 1024, None)? {
            n += rows?.iter().filter(|r| r.input_ids.len() > max).count();
        }
        if n > 0 {
            parts.push(format!("{n} in {split}"));
        }
        total += n;
    }
    ctx.metrics.record("rows_truncated", 0, total as f64);
    if total > 0 {
        ctx.warn(&format!(
            "{total} row(s) longer than {max} tokens are cut to their first {max} ({})",
            parts.join(", ")
        ));
    }
    Ok(())
}

/// What training returned, and the `test_*` metrics of its model.
type Fitted<B> = (crate::trainer::Outcome<B>, Vec<(String, f64)>);

/// Trains with `objective`, then scores the result on the `test_data` split (if any).
fn fit<B: AutodiffBackend, O: crate::objective::Objective<B>>(
    model: Model<B>,
    objective: &mut O,
    data: &Data,
    common: &Common,
    checkpoints: &Path,
    observer: &mut StageObserver<'_>,
) -> Result<Fitted<B>, StageError> {
    let outcome = train(model, objective, data, &common.opts, checkpoints, observer)?;
    let test = evaluate_test::<B, _>(objective, &outcome.model, common)?;
    Ok((outcome, test))
}

fn evaluate_test<B: AutodiffBackend, O: crate::objective::Objective<B>>(
    objective: &mut O,
    model: &Model<B>,
    common: &Common,
) -> Result<Vec<(String, f64)>, StageError> {
    use burn::module::AutodiffModule;
    let Some((dir, split)) = &common.test else {
        return Ok(Vec::new());
    };
    let mut reader = ShardReader::open(dir, split, common.opts.batch_size, None)?;
    Ok(objective
        .evaluate(&model.valid(), &mut reader)?
        .into_iter()
        .map(|(k, v)| (format!("test_{k}"), v))
        .collect())
}
