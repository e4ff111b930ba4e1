//! Training checkpoints: a Hugging Face model directory plus what exact resumption needs.
//!
//! ```text
//! checkpoints/step-00000050/
//!   config.json, model.safetensors   the model (Hugging Face layout, loadable anywhere)
//!   optimizer.bin                    AdamW moments (burn record, keyed by parameter id)
//!   param_ids.json                   the parameter ids in module order, so the reloaded
//!                                    model's parameters meet their optimizer state again
//!   trainer.json                     step, data position, best metric ([`TrainerState`])
//!   metrics.json                     every metric reported up to this step
//!   checksums.json                   the blake3 of every other file
//! ```
//!
//! A checkpoint is written as `step-N.tmp/` and renamed when complete, so a kill leaves either
//! the previous checkpoints or a `.tmp` directory that is ignored and replaced. Loading checks
//! every file against `checksums.json` before any of them is decoded, so a truncated or
//! corrupted checkpoint is refused with an error naming the file (burn's decoder of
//! `optimizer.bin` trusts the lengths in the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::Optimizer;
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use kiln_model::Model;

use crate::error::{Error, Result, io};

/// A metric the trainer reported: (name, step, value). A checkpoint keeps every one reported
/// up to it, so a resumed run can report them again and its record is complete.
pub type Recorded = (String, usize, f64);

/// Where training is: everything besides weights and optimizer state that resuming needs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// The epoch the next batch comes from (0-based).
    pub epoch: usize,
    /// Batches already taken from that epoch.
    pub batch_in_epoch: usize,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// The best value of the chosen metric so far, and the step it was seen at.
    pub best: Option<(f64, usize)>,
    /// The options' hash: resuming with other options is refused.
    pub options_hash: String,
}

/// The directory of the checkpoint at `step`.
pub fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("trainer.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

struct CollectIds(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for CollectIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.id);
    }
}

struct SetIds {
    ids: Vec<ParamId>,
    next: usize,
}

impl<B: Backend> ModuleMapper<B> for SetIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let id = self.ids.get(self.next).copied().unwrap_or(id);
        self.next += 1;
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// The parameter ids of `model` in module order.
pub fn param_ids<B: Backend, M: Module<B>>(model: &M) -> Vec<ParamId> {
    let mut v = CollectIds(Vec::new());
    model.visit(&mut v);
    v.0
}

/// Writes a checkpoint of `model`, `optim` and `state` at `state.step` under `root`.
///
/// # Errors
/// When a file cannot be written.
pub fn save<B, O>(
    root: &Path,
    model: &Model<B>,
    optim: &O,
    state: &TrainerState,
    history: &[Recorded],
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    O: Optimizer<Model<B>, B>,
{
    let dir = step_dir(root, state.step);
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io("cannot clear", &tmp))?;
    }
    model.save(&tmp)?;
    BinFileRecorder::<FullPrecisionSettings>::new()
        .record(optim.to_record(), tmp.join("optimizer"))
        .map_err(|e| Error::Checkpoint {
            path: tmp.clone(),
            message: format!("cannot write the optimizer state: {e}"),
        })?;
    if model.has_lora() {
        // model.safetensors holds the merged weights; resuming needs base and adapters apart.
        BinFileRecorder::<FullPrecisionSettings>::new()
            .record(model.clone().into_record(), tmp.join("model"))
            .map_err(|e| Error::Checkpoint {
                path: tmp.clone(),
                message: format!("cannot write the LoRA model state: {e}"),
            })?;
    }
    let ids: Vec<u64> = param_ids(model).iter().map(|id| id.val()).collect();
    write_json(&tmp.join("param_ids.json"), &ids)?;
    write_json(&tmp.join("trainer.json"), state)?;
    write_json(&tmp.join("metrics.json"), &history)?;
    write_checksums(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io("cannot replace", &dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io("cannot complete", &dir))?;
    Ok(dir)
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Checkpoint {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(io("cannot write", path))
}

/// The file listing every other file of a checkpoint with its blake3.
const CHECKSUMS: &str = "checksums.json";

/// The files every checkpoint has (`model.bin` too when the model has LoRA adapters).
const REQUIRED: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "optimizer.bin",
    "param_ids.json",
    "trainer.json",
    "metrics.json",
];

fn blake3_of(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(io("cannot read", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(io("cannot read", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Writes `dir/checksums.json`: every other file in `dir` with its blake3.
fn write_checksums(dir: &Path) -> Result<()> {
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))? {
        let path = entry.map_err(io("cannot list", dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(name) = name.filter(|n| n != CHECKSUMS && path.is_file()) {
            sums.insert(name, blake3_of(&path)?);
        }
    }
    write_json(&dir.join(CHECKSUMS), &sums)
}

/// Checks the checkpoint in `dir` against its `checksums.json`: every file listed has the
/// recorded blake3, and the files every checkpoint needs are listed.
///
/// # Errors
/// [`Error::Checkpoint`] naming a missing, truncated or corrupted file.
pub fn verify(dir: &Path) -> Result<()> {
    let corrupt = |message: String| Error::Checkpoint {
        path: dir.to_owned(),
        message,
    };
    let listing = dir.join(CHECKSUMS);
    if !listing.is_file() {
        return Err(corrupt(format!(
            "no {CHECKSUMS} (written by an older kiln, or damaged): delete the checkpoint to start over"
        )));
    }
    let sums: BTreeMap<String, String> = read_json(&listing)?;
    if let Some(missing) = REQUIRED.iter().find(|f| !sums.contains_key(**f)) {
        return Err(corrupt(format!("{CHECKSUMS} does not list {missing}")));
    }
    for (name, want) in &sums {
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(corrupt(format!(
                "{CHECKSUMS} lists {name:?}, not a file name"
            )));
        }
        let got = blake3_of(&dir.join(name))?;
        if &got != want {
            return Err(corrupt(format!(
                "{name} is truncated or corrupted (blake3 {got}, {CHECKSUMS} says {want})"
            )));
        }
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io("cannot read", path))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A loaded checkpoint.
pub struct Loaded<B: AutodiffBackend, O: Optimizer<Model<B>, B>> {
    /// The model, its parameters carrying their saved ids.
    pub model: Model<B>,
    /// The optimizer with its state.
    pub optim: O,
    /// Where training was.
    pub state: TrainerState,
    /// The metrics reported up to the checkpoint.
    pub history: Vec<Recorded>,
}

/// The model of the checkpoint in `dir` (checked with [`verify`] first). `template` is the
/// model training started with: a LoRA checkpoint's base weights and adapters are loaded into
/// it (keeping its structure); otherwise the Hugging Face weights are read.
///
/// # Errors
/// Missing or corrupt files, or a model that does not fit.
pub fn load_model<B: AutodiffBackend>(
    dir: &Path,
    template: &Model<B>,
    device: &B::Device,
) -> Result<Model<B>> {
    verify(dir)?;
    read_model(dir, template, device)
}

fn read_model<B: AutodiffBackend>(
    dir: &Path,
    template: &Model<B>,
    device: &B::Device,
) -> Result<Model<B>> {
    let record_path = dir.join("model.bin");
    if template.has_lora() || record_path.is_file() {
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(dir.join("model"), device)
            .map_err(|e| Error::Checkpoint {
                path: dir.to_owned(),
                message: format!("cannot read the LoRA model state: {e}"),
            })?;
        return Ok(template.clone().load_record(record));
    }
    Ok(kiln_model::load::<B>(dir, device)?)
}

/// Loads the checkpoint in `dir` (checked with [`verify`] first) into a fresh `optim`; see
/// [`load_model`] for `template`.
///
/// # Errors
/// Missing or corrupt files, or a model that does not fit.
pub fn load<B, O>(
    dir: &Path,
    template: &Model<B>,
    optim: O,
    device: &B::Device,
) -> Result<Loaded<B, O>>
where
    B: AutodiffBackend,
    O: Optimizer<Model<B>, B>,
{
    verify(dir)?;
    let model = read_model(dir, template, device)?;
    let ids: Vec<u64> = read_json(&dir.join("param_ids.json"))?;
    let expected = param_ids(&model).len();
    if ids.len() != expected {
        return Err(Error::Checkpoint {
            path: dir.to_owned(),
            message: format!(
                "param_ids.json lists {} parameters, the model has {expected}",
                ids.len()
            ),
        });
    }
    let model = model.map(&mut SetIds {
        ids: ids.into_iter().map(ParamId::from).collect(),
        next: 0,
    });
    let record = BinFileRecorder::<FullPrecisionSettings>::new()
        .load(dir.join("optimizer"), device)
        .map_err(|e| Error::Checkpoint {
            path: dir.to_owned(),
            message: format!("cannot read the optimizer state: {e}"),
        })?;
    let optim = optim.load_record(record);
    let state = read_json(&dir.join("trainer.json"))?;
    let history = read_json(&dir.join("metrics.json"))?;
    Ok(Loaded {
        model,
        optim,
        state,
        history,
    })
}

/// Deletes checkpoints beyond the `keep` most recent, sparing the one at `best_step`.
pub fn prune(root: &Path, keep: usize, best_step: Option<usize>) {
    let all = list(root);
    let cut = all.len().saturating_sub(keep);
    for (step, dir) in &all[..cut] {
        if Some(*step) != best_step {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
