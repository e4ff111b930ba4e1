//! The [`Stage`] trait that every stage kind implements, the [`StageContext`] it runs with,
//! and the [`Registry`] of kinds.
//!
//! A stage kind is a unit struct in its own file that says its `uses` name, version, one-line
//! doc and parameters, and runs with a context: resolved params, input paths, an output
//! directory, a metrics sink, a progress handle and a cancel token. The engine validates
//! params against [`Stage::params`] before anything runs, so `run` can read them without
//! re-checking types.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::event::{Event, Reporter};
pub use crate::param::{Constraint, ParamError, ParamSpec, Params};

/// The error a stage returns: any error, with its chain.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of [`Stage::run`].
pub type StageResult = Result<(), StageError>;

/// A stage kind: what `uses:` names in a pipeline.
pub trait Stage: Send + Sync {
    /// The name pipelines use, e.g. `shell` or `train.internalize`.
    fn kind(&self) -> &'static str;
    /// Bumped whenever the kind's outputs for the same inputs would change; it enters the
    /// fingerprint, so a bump re-executes every stage of this kind.
    fn version(&self) -> u32;
    /// One line for `kiln stages`.
    fn doc(&self) -> &'static str;
    /// The parameters it accepts under `with:`.
    fn params(&self) -> &'static [ParamSpec];
    /// Whether keys not in [`Stage::params`] are accepted (and passed through).
    fn accepts_extra_params(&self) -> bool {
        false
    }
    /// Checks beyond types, run by `kiln validate` before anything executes. Params have
    /// been type-checked already; values may still hold `${stages.…}` references.
    ///
    /// # Errors
    /// `(param key, message)` for each problem.
    fn validate(&self, _params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        Ok(())
    }
    /// Executes the stage. Write outputs under `ctx.out_dir` only.
    ///
    /// # Errors
    /// Any error; the executor records it with the stage and its log.
    fn run(&self, ctx: &mut StageContext) -> StageResult;
}

/// Cooperative cancellation: set by Ctrl-C or a failing sibling's run ending; stages check it
/// between units of work.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks everything holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether stopping was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One metric point as a stage emits it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metric {
    /// Name, e.g. `loss`.
    pub name: String,
    /// Step (0 for one-off values).
    pub step: i64,
    /// Value.
    pub value: f64,
    /// Seconds since the Unix epoch.
    pub time: f64,
}

/// Where a stage's metrics go: the run's batched store writer, and the stage's own list
/// (kept in the cache entry so a later cache hit can record them for its run too).
#[derive(Clone)]
pub struct MetricSink {
    run_id: Option<i64>,
    stage: String,
    writer: Option<kiln_store::MetricWriter>,
    kept: Arc<Mutex<Vec<Metric>>>,
}

impl std::fmt::Debug for MetricSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricSink")
            .field("stage", &self.stage)
            .finish()
    }
}

impl MetricSink {
    /// A sink for `stage` of run `run_id` writing through `writer` (none: keep only).
    pub fn new(run_id: Option<i64>, stage: &str, writer: Option<kiln_store::MetricWriter>) -> Self {
        Self {
            run_id,
            stage: stage.to_owned(),
            writer,
            kept: Arc::default(),
        }
    }

    /// Records `value` for metric `name` at `step`.
    pub fn record(&self, name: &str, step: i64, value: f64) {
        let metric = Metric {
            name: name.to_owned(),
            step,
            value,
            time: kiln_store::unix_now(),
        };
        self.send(&metric);
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(metric);
    }

    pub(crate) fn send(&self, metric: &Metric) {
        if let (Some(writer), Some(run_id)) = (&self.writer, self.run_id) {
            let point = kiln_store::MetricPoint {
                run_id,
                stage: self.stage.clone(),
                step: metric.step,
                name: metric.name.clone(),
                value: metric.value,
                time: metric.time,
            };
            if let Err(e) = writer.send(point) {
                tracing::error!(stage = %self.stage, error = %e, "metric not recorded");
            }
        }
    }

    /// Everything recorded so far.
    pub fn recorded(&self) -> Vec<Metric> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A stage's own progress: its bar in the display (or lines when not on a terminal).
#[derive(Clone)]
pub struct Progress {
    stage: String,
    reporter: Arc<dyn Reporter>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("stage", &self.stage)
            .finish()
    }
}

impl Progress {
    /// A handle for `stage` that reports to `reporter`.
    pub fn new(stage: &str, reporter: Arc<dyn Reporter>) -> Self {
        Self {
            stage: stage.to_owned(),
            reporter,
        }
    }

    /// Tells the user something they should know about the stage's results.
    pub fn warn(&self, message: &str) {
        self.reporter.event(&Event::StageWarning {
            stage: self.stage.clone(),
            message: message.to_owned(),
        });
    }

    /// Shows `position` of `total` (e.g. steps), with an optional message (e.g. the loss).
    pub fn update(&self, position: u64, total: Option<u64>, message: Option<&str>) {
        self.reporter.event(&Event::StageProgress {
            stage: self.stage.clone(),
            position,
            total,
            message: message.map(str::to_owned),
        });
    }
}

/// Everything a stage gets to run with.
#[derive(Debug)]
pub struct StageContext {
    /// The stage's name in its pipeline.
    pub stage: String,
    /// Resolved `with:` params (all `${…}` substituted).
    pub params: BTreeMap<String, Value>,
    /// Declared `inputs:`, resolved to paths.
    pub inputs: BTreeMap<String, PathBuf>,
    /// The output directories of the stages in `needs`, by stage name.
    pub needs: BTreeMap<String, PathBuf>,
    /// The directory to write outputs into (a temporary directory, renamed into the cache
    /// only if the stage succeeds).
    pub out_dir: PathBuf,
    /// Declared `outputs:`, as paths under `out_dir`.
    pub outputs: BTreeMap<String, PathBuf>,
    /// The project root: relative paths in specs are relative to it.
    pub workdir: PathBuf,
    /// A directory shared by all stages for downloaded sources (`results/downloads`).
    pub downloads: PathBuf,
    /// Resumable state that outlives a failed or killed attempt of this stage (same
    /// fingerprint), e.g. checkpoints to continue training from; created on first use by the
    /// stage, removed by the engine once the stage succeeds.
    pub state_dir: PathBuf,
    /// Metrics go here.
    pub metrics: MetricSink,
    /// The stage's progress display.
    pub progress: Progress,
    /// The indices of the GPUs the stage holds (`resources.gpu`), assigned by the executor.
    pub gpus: Vec<u32>,
    /// Set when the run is stopping; check it between units of work and return early.
    pub cancel: CancelToken,
    /// The stage's log file (`stage.log` in its output directory).
    pub log_path: PathBuf,
    pub(crate) log: Mutex<Option<std::fs::File>>,
}

impl StageContext {
    /// Appends a line to the stage's log.
    pub fn log(&self, line: &str) {
        let mut guard = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(file) = guard.as_mut() {
            let _ = writeln!(file, "{line}");
        }
    }

    /// A param as text (strings as is, other values as JSON), if given.
    pub fn param_str(&self, key: &str) -> Option<String> {
        self.params.get(key).map(crate::value::display)
    }

    /// The params with typed getters (absent → `None`, present but wrong → an error).
    pub fn p(&self) -> Params<'_> {
        Params::new(&self.params, &self.workdir)
    }

    /// Writes a warning to the stage's log and to the run's display.
    pub fn warn(&self, line: &str) {
        self.log(&format!("warning: {line}"));
        self.progress.warn(line);
    }

    /// The stage's log file path.
    pub fn log_file(&self) -> &Path {
        &self.log_path
    }
}

/// The list of stage kinds a run can use. Built once by the CLI (each crate's `register`
/// adds its kinds), then shared.
#[derive(Default, Clone)]
pub struct Registry {
    kinds: Vec<Arc<dyn Stage>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.kinds.iter().map(|k| k.kind()))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the engine's own kinds (`shell`, `echo`).
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        crate::stages::register(&mut registry);
        registry
    }

    /// Adds a kind.
    ///
    /// # Panics
    /// When the name is registered twice: a programming error caught by the first test run.
    pub fn add(&mut self, stage: impl Stage + 'static) {
        assert!(
            self.get(stage.kind()).is_none(),
            "stage kind {} registered twice",
            stage.kind()
        );
        self.kinds.push(Arc::new(stage));
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Stage>> {
        self.kinds.iter().find(|k| k.kind() == name).cloned()
    }

    /// All kinds, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<dyn Stage>> {
        self.kinds.iter()
    }

    /// The registered name closest to `name`, for "did you mean".
    pub fn suggest(&self, name: &str) -> Option<&'static str> {
        crate::spec::closest(name, self.kinds.iter().map(|k| k.kind()))
    }
}
