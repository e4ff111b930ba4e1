//! The engine's error types.

use std::fmt;
use std::path::PathBuf;

use crate::yaml::Span;

/// One problem in a spec file, pointing at its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File, line and column.
    pub span: Span,
    /// The stage it concerns, if any.
    pub stage: Option<String>,
    /// One sentence.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.span)?;
        if let Some(stage) = &self.stage {
            write!(f, "stage {stage:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a spec file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<Diagnostic>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted: Vec<&Diagnostic> = self.0.iter().collect();
        sorted.sort_by_key(|d| (d.span.path.clone(), d.span.pos));
        for (i, d) in sorted.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A spec file has problems (each names its place).
    #[error("{0}")]
    Spec(SpecErrors),
    /// A declared input could not be hashed.
    #[error("{span}: stage {stage:?}: input {name:?}: cannot read {path}")]
    Input {
        /// Where the input is declared.
        span: Span,
        /// The stage.
        stage: String,
        /// The input's name.
        name: String,
        /// Its path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stage named on the command line is not in the pipeline.
    #[error("{pipeline}: no stage named {stage:?}{hint}")]
    NoSuchStage {
        /// The pipeline file.
        pipeline: PathBuf,
        /// The name given.
        stage: String,
        /// " (did you mean …?)" or empty.
        hint: String,
    },
    /// The cache directory could not be used.
    #[error("cache: {what} {path}")]
    Cache {
        /// What kiln was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The results store failed.
    #[error(transparent)]
    Store(#[from] kiln_store::Error),
    /// A file kiln writes for itself (e.g. a job script) could not be written.
    #[error("{what} {path}")]
    Write {
        /// What kiln was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A task kiln started (a sweep lane) ended abnormally.
    #[error("a trial's task ended abnormally: {0}")]
    Task(String),
    /// A trial of a sweep cannot be planned.
    #[error("trial {index} ({values})")]
    Trial {
        /// The trial's number.
        index: usize,
        /// Its parameter values.
        values: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The cluster scheduler refused or failed a command.
    #[error("slurm: {what}: {message}")]
    Slurm {
        /// What kiln asked of it (`sbatch`, `scancel`, …).
        what: String,
        /// Its message.
        message: String,
    },
    /// A trial to run is not (or no longer) what was submitted.
    #[error("{0}")]
    TrialMismatch(String),
    /// A stage needs more GPUs than the run has.
    #[error("stage {stage:?} needs {needed} GPU(s) but this run has {available} (set --gpus)")]
    NotEnoughGpus {
        /// The stage.
        stage: String,
        /// GPUs it declares.
        needed: u32,
        /// GPUs the run may use.
        available: u32,
    },
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
