//! kiln's pipeline engine. It knows no machine learning: stage kinds plug in behind the
//! [`Stage`] trait and the engine plans, caches and runs them.
//!
//! The flow, as data:
//!
//! - [`spec::load`] reads a pipeline file into a [`Pipeline`] (what the user wrote, with
//!   positions); [`spec::validate`] checks it against a [`Registry`] of stage kinds.
//! - [`plan::plan`] resolves parameters, orders stages and fingerprints each one
//!   ([`fingerprint`]), giving a [`Plan`]. Nothing runs before a plan exists.
//! - [`executor::execute`] runs the plan: cache hits are skipped ([`cache`]), the rest run in
//!   parallel within `--jobs` and GPU limits, and everything is recorded in the results
//!   store (`kiln-store`). Progress goes to a [`Reporter`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_core::{Registry, spec, plan, cache::{Cache, HashMemo}};
//! let registry = Registry::with_builtins();
//! let pipeline = spec::load("pipelines/demo.yaml".as_ref())?;
//! let cache = Cache::new("results".as_ref());
//! let plan = plan::plan(&pipeline, &registry, &Default::default(), ".".as_ref(), &mut HashMemo::new(&cache))?;
//! println!("{} stages", plan.stages.len());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod cache;
pub mod error;
pub mod event;
pub mod executor;
pub mod experiment;
pub mod fingerprint;
pub mod gc;
pub mod interp;
pub mod metric;
pub mod param;
pub mod plan;
pub mod regression;
pub mod spec;
pub mod stage;
pub mod stages;
pub mod sweep;
pub mod value;
pub mod yaml;

pub use error::{Diagnostic, Error, Result, SpecErrors};
pub use event::{Event, Reporter, Silent};
pub use executor::{ExecOptions, RunMeta, RunSummary, StageOutcome, execute};
pub use metric::MetricDirection;
pub use plan::{Plan, PlannedStage};
pub use spec::Pipeline;
pub use stage::{
    CancelToken, Constraint, Metric, MetricSink, ParamError, ParamSpec, Params, Progress, Registry,
    Stage, StageContext, StageError, StageResult,
};
pub use value::ParamType;
