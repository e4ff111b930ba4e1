//! Rows that go into and come out of the store.

use std::collections::BTreeMap;

/// A run to insert: one execution of a pipeline with one parameter assignment.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The pipeline row (see [`crate::Store::pipeline_id`]).
    pub pipeline_id: i64,
    /// The experiment row, when the run belongs to a sweep.
    pub experiment_id: Option<i64>,
    /// The trial's number within its sweep.
    pub trial: Option<i64>,
    /// blake3 of the Cargo.lock kiln was built from.
    pub cargo_lock_hash: Option<String>,
    /// blake3 of the fully resolved configuration.
    pub config_hash: String,
    /// The fully resolved configuration, as JSON.
    pub config: String,
    /// `git rev-parse HEAD` of the project, when it is a git checkout.
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// kiln's version.
    pub kiln_version: String,
    /// The run's seed, when the pipeline has a `seed` parameter.
    pub seed: Option<i64>,
    /// The host name.
    pub host: String,
    /// Resolved parameters, one row each in `params`.
    pub params: BTreeMap<String, serde_json::Value>,
}

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Still going (or killed without a chance to say so).
    Running,
    /// Every stage succeeded or was cached.
    Succeeded,
    /// A stage failed.
    Failed,
    /// Stopped by the user.
    Interrupted,
}

impl RunStatus {
    /// The value stored in `runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// The state of one stage in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageStatus {
    /// Waiting for its needs.
    Pending,
    /// Executing now.
    Running,
    /// Executed and succeeded.
    Succeeded,
    /// Served from the cache, not executed.
    Cached,
    /// Executed and failed.
    Failed,
    /// Not executed because a need failed or the run stopped.
    Skipped,
    /// Stopped by the user while executing.
    Interrupted,
}

impl StageStatus {
    /// The value stored in `stage_runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Cached => "cached",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
        }
    }
}

/// A stage execution to insert.
#[derive(Debug, Clone)]
pub struct NewStageRun {
    /// The run.
    pub run_id: i64,
    /// The stage's name in its pipeline.
    pub stage: String,
    /// The stage kind (`uses`).
    pub kind: String,
    /// The kind's version.
    pub kind_version: i64,
    /// The stage's fingerprint (hex).
    pub fingerprint: String,
    /// What the fingerprint was computed from, as JSON.
    pub fingerprint_input: String,
    /// Whether the outputs came from the cache.
    pub cache_hit: bool,
    /// The first status.
    pub status: StageStatus,
}

/// A finished execution of a stage, as `kiln status` reads it back.
#[derive(Debug, Clone)]
pub struct StageExecution {
    /// The fingerprint (hex).
    pub fingerprint: String,
    /// What the fingerprint was computed from, as JSON.
    pub fingerprint_input: String,
    /// The run it belonged to.
    pub run_id: i64,
    /// When it ended.
    pub ended_at: Option<String>,
}

/// One metric point.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// The run.
    pub run_id: i64,
    /// The stage that emitted it.
    pub stage: String,
    /// The step (e.g. optimizer step; 0 for one-off values).
    pub step: i64,
    /// The metric's name.
    pub name: String,
    /// The value (NaN is stored as NULL and read back as NaN).
    pub value: f64,
    /// When it was recorded, seconds since the Unix epoch.
    pub time: f64,
}

/// A file a stage produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArtifactRecord {
    /// Its path.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// blake3 of its content (hex).
    pub hash: String,
}

/// What the store recorded about a run: enough to execute it again and to say what changed.
#[derive(Debug, Clone)]
pub struct RecordedRun {
    /// The pipeline file's path as it was run.
    pub pipeline_path: String,
    /// blake3 of the pipeline file's text then.
    pub spec_hash: String,
    /// The resolved configuration (JSON).
    pub config: String,
    /// blake3 of `config`.
    pub config_hash: String,
    /// The experiment it belongs to.
    pub experiment_id: Option<i64>,
    /// Its trial number there.
    pub trial: Option<i64>,
    /// The checkout's commit.
    pub git_commit: Option<String>,
    /// kiln's version.
    pub kiln_version: String,
}

/// One line of `kiln runs`.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// Run id.
    pub id: i64,
    /// Pipeline name.
    pub pipeline: String,
    /// Status.
    pub status: String,
    /// Start time (UTC).
    pub started_at: String,
    /// End time (UTC), if ended.
    pub ended_at: Option<String>,
    /// Stages executed.
    pub executed: i64,
    /// Stages served from the cache.
    pub cached: i64,
    /// Stages failed.
    pub failed: i64,
    /// `key=value` pairs.
    pub params: String,
    /// `stage.metric=value` pairs.
    pub final_metrics: String,
}
