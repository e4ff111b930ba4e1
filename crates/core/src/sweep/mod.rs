//! Sweeps: an experiment's trials planned up front, registered in the store, and handed to
//! an [`Executor`]: [`local`] runs them here in lanes, [`slurm`] submits them to a cluster
//! as a job array. Either way a trial runs through [`TrialRunner::run`], so it records the
//! same way wherever it executes.
//!
//! - Every trial is planned before anything runs, so a bad value stops the sweep at once.
//! - Trials whose succeeded run is in the store with the same configuration are not rerun.
//! - The first remaining trial runs alone (it executes the stages every trial shares, such
//!   as preprocessing and the teacher, which later trials then find cached).

pub mod local;
pub mod slurm;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_store::{RunStatus, Store};
use serde_json::Value;

use crate::cache::{Cache, HashMemo};
use crate::error::{Error, Result};
use crate::event::Reporter;
use crate::executor::{ExecOptions, RunMeta, RunSummary};
use crate::experiment::{Experiment, Trial};
use crate::plan::{self, Plan};
use crate::spec::Pipeline;
use crate::stage::{CancelToken, Registry};

pub use local::{LaneDisplay, LocalExecutor};
pub use slurm::{SlurmConfig, SlurmExecutor};

/// A trial and its plan.
#[derive(Debug, Clone)]
pub struct PlannedTrial {
    /// The trial.
    pub trial: Trial,
    /// Its plan.
    pub plan: Plan,
    /// `alpha=0.5 temperature=2`: the swept values (and seed), for displays.
    pub label: String,
}

/// Plans every trial of `experiment` (with `extra` overrides on top of each).
///
/// # Errors
/// The first trial that cannot be planned, named with its values.
pub fn plan_trials(
    experiment: &Experiment,
    pipeline: &Pipeline,
    registry: &Registry,
    extra: &BTreeMap<String, Value>,
    workdir: &std::path::Path,
    memo: &mut HashMemo,
) -> Result<Vec<PlannedTrial>> {
    experiment
        .trials()
        .into_iter()
        .map(|trial| {
            let mut params = trial.params.clone();
            params.extend(extra.clone());
            let plan = plan::plan(pipeline, registry, &params, workdir, memo).map_err(|e| {
                Error::Trial {
                    index: trial.index,
                    values: describe(&trial.params),
                    source: Box::new(e),
                }
            })?;
            Ok(PlannedTrial {
                label: label(experiment, &trial),
                trial,
                plan,
            })
        })
        .collect()
}

fn describe(params: &BTreeMap<String, Value>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::value::display(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The swept values (and seed) of a trial, as `k=v` pairs.
fn label(experiment: &Experiment, trial: &Trial) -> String {
    experiment
        .sweep
        .iter()
        .map(|(k, _, _)| k)
        .chain(experiment.seeds.first().map(|_| &experiment.seed_param.0))
        .filter_map(|k| {
            trial
                .params
                .get(k)
                .map(|v| format!("{k}={}", crate::value::display(v)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sweep registered in the store: which trials still need a run.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The experiment's row.
    pub experiment_id: i64,
    /// Every trial, in order.
    pub trials: Vec<PlannedTrial>,
    /// Trials with a succeeded run of the same configuration: trial → run.
    pub done: BTreeMap<usize, i64>,
}

impl Sweep {
    /// Records the experiment (and its ranking metric) and finds the trials already done.
    ///
    /// # Errors
    /// Store failures.
    pub async fn register(
        store: &Store,
        experiment: &Experiment,
        trials: Vec<PlannedTrial>,
    ) -> Result<Self> {
        let experiment_id = store
            .experiment_id(
                &experiment.name,
                &experiment.path.to_string_lossy(),
                &experiment.spec_hash,
            )
            .await?;
        store
            .set_experiment_metric(experiment_id, experiment.metric.as_deref())
            .await?;
        Self::with_id(store, experiment_id, trials).await
    }

    /// The sweep of this version of the experiment file, if the store has it (writes
    /// nothing).
    ///
    /// # Errors
    /// Store failures.
    pub async fn find(
        store: &Store,
        experiment: &Experiment,
        trials: Vec<PlannedTrial>,
    ) -> Result<Option<Self>> {
        let id = store
            .find_experiment(
                &experiment.name,
                &experiment.path.to_string_lossy(),
                &experiment.spec_hash,
            )
            .await?;
        match id {
            Some(id) => Ok(Some(Self::with_id(store, id, trials).await?)),
            None => Ok(None),
        }
    }

    async fn with_id(store: &Store, experiment_id: i64, trials: Vec<PlannedTrial>) -> Result<Self> {
        let succeeded = store.succeeded_trials(experiment_id).await?;
        let done = trials
            .iter()
            .filter_map(|t| {
                let (hash, run) = succeeded.get(&(t.trial.index as i64))?;
                (*hash == t.plan.config_hash).then_some((t.trial.index, *run))
            })
            .collect();
        Ok(Self {
            experiment_id,
            trials,
            done,
        })
    }

    /// The trials without a succeeded run, in order.
    pub fn pending(&self) -> Vec<&PlannedTrial> {
        self.trials
            .iter()
            .filter(|t| !self.done.contains_key(&t.trial.index))
            .collect()
    }

    /// The most GPUs a stage of a pending trial holds.
    pub fn gpus_per_trial(&self) -> u32 {
        self.pending()
            .iter()
            .flat_map(|t| t.plan.stages.iter().map(|s| s.gpu))
            .max()
            .unwrap_or(0)
    }
}

/// What a trial run needs besides its plan: the same for a local lane and a Slurm task.
#[derive(Clone)]
pub struct TrialRunner {
    /// Most stages executing at once within the trial.
    pub jobs: usize,
    /// The project root.
    pub workdir: PathBuf,
    /// The results directory (its cache is shared by every trial).
    pub results: PathBuf,
    /// The store every trial records into.
    pub store: Store,
    /// Where events go.
    pub reporter: Arc<dyn Reporter>,
    /// Set to stop.
    pub cancel: CancelToken,
    /// The stage kinds.
    pub registry: Registry,
    /// Run facts (git, host, version) for the store.
    pub meta: RunMeta,
}

impl TrialRunner {
    /// Runs one trial as a run of experiment `experiment_id`, holding `gpus`.
    ///
    /// # Errors
    /// Store or cache failures.
    pub async fn run(
        &self,
        experiment_id: i64,
        trial: &PlannedTrial,
        gpus: Vec<u32>,
    ) -> Result<RunSummary> {
        let mut meta = self.meta.clone();
        meta.experiment_id = Some(experiment_id);
        meta.trial = Some(trial.trial.index as i64);
        let opts = ExecOptions {
            jobs: self.jobs,
            gpus,
            force: Default::default(),
            workdir: self.workdir.clone(),
            cache: Cache::new(&self.results),
            store: Some(self.store.clone()),
            reporter: self.reporter.clone(),
            cancel: self.cancel.clone(),
            registry: self.registry.clone(),
            meta,
        };
        crate::executor::execute(&trial.plan, &opts).await
    }
}

/// How a sweep went.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The trials ran here.
    Ran {
        /// Each trial run now: its status and run.
        results: BTreeMap<usize, (RunStatus, Option<i64>)>,
        /// Whether it was stopped before every trial ran.
        interrupted: bool,
    },
    /// The trials were handed to a scheduler; they run after this process exits.
    Submitted(slurm::Submission),
}

/// Where a sweep's pending trials execute.
pub trait Executor {
    /// Runs (or submits) `sweep`'s pending trials.
    fn execute(&self, sweep: &Sweep, runner: &TrialRunner)
    -> impl Future<Output = Result<Outcome>>;
}
