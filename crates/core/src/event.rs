//! What the executor reports while it runs, and the [`Reporter`] trait that displays it.
//!
//! The engine never formats output: the CLI implements [`Reporter`] as a live terminal
//! display, plain lines, or JSON lines.

use std::path::PathBuf;
use std::time::Duration;

/// Something that happened during a run.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The plan is ready and the run is recorded.
    RunStarted {
        /// Store id of the run (none without a store).
        run_id: Option<i64>,
        /// Pipeline name.
        pipeline: String,
        /// Number of stages.
        stages: usize,
    },
    /// A stage began executing.
    StageStarted {
        /// Stage name.
        stage: String,
        /// Its kind.
        kind: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A stage's outputs were found in the cache.
    StageCached {
        /// Stage name.
        stage: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A stage's own progress.
    StageProgress {
        /// Stage name.
        stage: String,
        /// Units done.
        position: u64,
        /// Units in all, when known.
        total: Option<u64>,
        /// A short message (e.g. the loss).
        message: Option<String>,
    },
    /// A stage warns about something the user should know (e.g. rows cut to the context).
    StageWarning {
        /// Stage name.
        stage: String,
        /// One line.
        message: String,
    },
    /// A stage succeeded.
    StageSucceeded {
        /// Stage name.
        stage: String,
        /// How long it took.
        #[serde(with = "secs")]
        elapsed: Duration,
    },
    /// A stage failed.
    StageFailed {
        /// Stage name.
        stage: String,
        /// The error chain, as one line.
        error: String,
        /// Its log.
        log: Option<PathBuf>,
        /// How long it ran.
        #[serde(with = "secs")]
        elapsed: Duration,
    },
    /// A stage did not run because a need failed or the run stopped.
    StageSkipped {
        /// Stage name.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The run ended.
    RunFinished {
        /// Store id of the run.
        run_id: Option<i64>,
        /// `succeeded`, `failed` or `interrupted`.
        status: String,
        /// Stages executed.
        executed: usize,
        /// Stages served from the cache.
        cached: usize,
        /// Stages failed.
        failed: usize,
        /// Stages skipped.
        skipped: usize,
        /// Wall-clock time of the run.
        #[serde(with = "secs")]
        elapsed: Duration,
    },
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Receives [`Event`]s. Called from the executor and from stage threads.
pub trait Reporter: Send + Sync {
    /// Handles one event.
    fn event(&self, event: &Event);
}

/// A reporter that drops everything (tests, benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _event: &Event) {}
}
