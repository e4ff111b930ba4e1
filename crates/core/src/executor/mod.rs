//! Runs a [`Plan`]: stages in dependency order, independent ones in parallel. The parts:
//! `schedule` decides what may start now, `lifecycle` executes one stage (cache entry
//! committed or kept as failed), `recorder` records what happened in the store and tells
//! the [`Reporter`], and `locks` keeps two runs from executing one fingerprint at once.
//!
//! - At most `jobs` stages execute at once, and the stages holding GPUs never hold more than
//!   the run's GPUs together. A stage learns which GPUs it holds (`StageContext::gpus`, the
//!   lowest free indices); no two running stages hold the same GPU. Cache hits take no slot.
//! - A stage whose fingerprint has a complete cache entry is not executed: its recorded
//!   metrics and artifacts are recorded again for this run, marked as a cache hit.
//! - A failed stage stops its descendants (recorded as skipped); stages that do not depend on
//!   it go on. The run then ends `failed`.
//! - With a store, a stage is executed only under the store's lock on its fingerprint: a run
//!   that finds it held waits, then takes the other run's cache entry.
//! - Cancellation (Ctrl-C) stops launching, lets running stages see the cancel token, and
//!   ends the run `interrupted`.
//!
//! Every stage execution, metric and artifact goes to the store (when there is one).

mod lifecycle;
mod locks;
mod recorder;
mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_store::{RunStatus, StageStatus, Store};
use tokio::task::JoinSet;

use crate::cache::{Cache, LOG_FILE};
use crate::error::{Error, Result};
use crate::event::Reporter;
use crate::plan::Plan;
use crate::stage::{CancelToken, Registry};
use lifecycle::{Executed, Job};
use locks::StageLocks;
use recorder::{Ended, Recorder};
use schedule::{Move, Scheduler, Shape};

pub use locks::STALE_AFTER;

/// Facts about the run that the store keeps beside it.
#[derive(Debug, Clone, Default)]
pub struct RunMeta {
    /// `git rev-parse HEAD`.
    pub git_commit: Option<String>,
    /// Whether the checkout had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// Host name.
    pub host: String,
    /// kiln's version.
    pub kiln_version: String,
    /// The experiment this run belongs to.
    pub experiment_id: Option<i64>,
    /// The run's trial number in that experiment's sweep.
    pub trial: Option<i64>,
    /// blake3 of the Cargo.lock kiln was built from.
    pub cargo_lock_hash: Option<String>,
}

/// How to execute a plan.
#[derive(Clone)]
pub struct ExecOptions {
    /// Most stages executing at once (at least 1).
    pub jobs: usize,
    /// The GPUs (system indices) the run may hold, e.g. `[0, 1]` for `--gpus 2`, or a sweep
    /// lane's share.
    pub gpus: Vec<u32>,
    /// Stages to execute even when cached (their descendants re-execute too).
    pub force: BTreeSet<String>,
    /// The project root: stages run with it as working directory.
    pub workdir: PathBuf,
    /// The stage cache.
    pub cache: Cache,
    /// Where to record the run (none: record nothing).
    pub store: Option<Store>,
    /// Where events go.
    pub reporter: Arc<dyn Reporter>,
    /// Set to stop the run.
    pub cancel: CancelToken,
    /// The stage kinds.
    pub registry: Registry,
    /// Run facts for the store.
    pub meta: RunMeta,
}

/// How one stage ended.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    /// Stage name.
    pub name: String,
    /// Final status.
    pub status: StageStatus,
    /// Its fingerprint.
    pub fingerprint: String,
    /// How long it executed (zero for cache hits and skips).
    pub elapsed: Duration,
    /// The error, for failed stages; the reason, for skipped ones.
    pub error: Option<String>,
    /// Its log (in the cache entry, or under `results/failed/`).
    pub log: Option<PathBuf>,
    /// Its output directory, for executed and cached stages.
    pub out_dir: Option<PathBuf>,
}

/// How the run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run's id in the store.
    pub run_id: Option<i64>,
    /// Final status.
    pub status: RunStatus,
    /// One outcome per stage, in plan order.
    pub stages: Vec<StageOutcome>,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl RunSummary {
    /// Stages with status `status`.
    pub fn count(&self, status: StageStatus) -> usize {
        self.stages.iter().filter(|s| s.status == status).count()
    }
}

/// Executes `plan`. Returns the summary even when stages fail; an `Err` means kiln itself
/// could not go on (the store or the cache failed).
///
/// # Errors
/// Store or cache failures, and [`Error::NotEnoughGpus`] before anything runs.
pub async fn execute(plan: &Plan, opts: &ExecOptions) -> Result<RunSummary> {
    let started = Instant::now();
    for s in &plan.stages {
        if s.gpu as usize > opts.gpus.len() {
            return Err(Error::NotEnoughGpus {
                stage: s.name.clone(),
                needed: s.gpu,
                available: opts.gpus.len() as u32,
            });
        }
    }
    opts.cache.sweep_tmp();
    let mut forced: BTreeSet<String> = BTreeSet::new();
    for name in &opts.force {
        forced.insert(name.clone());
        forced.extend(plan.descendants(name));
    }
    let mut recorder = Recorder::begin(plan, opts).await?;
    let locks = StageLocks::new(opts.store.clone(), &opts.meta.host, recorder.run_id());
    let mut run = Run {
        plan,
        opts,
        forced,
        sched: Scheduler::new(
            plan.stages.iter().map(Shape::of).collect(),
            opts.jobs,
            &opts.gpus,
        ),
        outcomes: vec![None; plan.stages.len()],
        tasks: JoinSet::new(),
        waiting_on: BTreeMap::new(),
    };
    loop {
        run.advance(&mut recorder, &locks).await?;
        if opts.cancel.is_cancelled() {
            // A stage waiting for another run's lock will not start now.
            run.waiting_on.clear();
        }
        if run.sched.running() == 0 && run.waiting_on.is_empty() {
            break;
        }
        if run.sched.running() == 0 {
            // Only stages another run is executing remain: look again shortly.
            tokio::time::sleep(LOCK_POLL).await;
            continue;
        }
        let joined = tokio::select! {
            joined = run.tasks.join_next() => joined,
            () = tokio::time::sleep(LOCK_POLL), if !run.waiting_on.is_empty() => continue,
        };
        let Some(joined) = joined else { break };
        let done = joined.map_err(|e| Error::Cache {
            what: "a stage thread ended abnormally in",
            path: opts.cache.root().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        run.finished(done, &recorder, &locks).await?;
    }
    // Whatever never started was cut off by cancellation.
    for i in run.sched.unstarted() {
        run.skip(i, "the run was interrupted", &recorder).await?;
    }
    let stages: Vec<StageOutcome> = run.outcomes.into_iter().flatten().collect();
    let summary = RunSummary {
        run_id: recorder.run_id(),
        status: recorder::run_status(opts.cancel.is_cancelled(), &stages),
        stages,
        elapsed: started.elapsed(),
    };
    recorder.finish(&summary).await?;
    Ok(summary)
}

/// How often a stage waiting for another run's lock looks again.
const LOCK_POLL: Duration = Duration::from_millis(500);

/// One execution of a plan in progress.
struct Run<'a> {
    plan: &'a Plan,
    opts: &'a ExecOptions,
    forced: BTreeSet<String>,
    sched: Scheduler,
    outcomes: Vec<Option<StageOutcome>>,
    tasks: JoinSet<Executed>,
    /// Ready stages whose fingerprint another run holds: stage → that run's holder.
    waiting_on: BTreeMap<usize, String>,
}

impl Run<'_> {
    /// Skips, serves from the cache and launches everything that can move now.
    async fn advance(&mut self, recorder: &mut Recorder, locks: &StageLocks) -> Result<()> {
        let mut progressed = true;
        while progressed {
            progressed = false;
            for step in self.sched.moves(self.opts.cancel.is_cancelled()) {
                progressed |= match step {
                    Move::Skip(i, reason) => {
                        self.skip(i, &reason, recorder).await?;
                        true
                    }
                    Move::Ready(i) => self.ready(i, recorder, locks).await?,
                };
            }
        }
        Ok(())
    }

    /// A stage whose needs are done: a cache hit, a launch, or (no slot, another run holds
    /// its fingerprint) nothing yet. Whether it moved.
    async fn ready(
        &mut self,
        i: usize,
        recorder: &mut Recorder,
        locks: &StageLocks,
    ) -> Result<bool> {
        let stage = &self.plan.stages[i];
        if self.cache_hit(i, recorder).await? {
            return Ok(true);
        }
        if !self.sched.can_launch(i) {
            return Ok(false);
        }
        if let Some(holder) = locks.acquire(&stage.fingerprint).await? {
            if self.waiting_on.insert(i, holder.holder.clone()).is_none() {
                recorder.warn(
                    &stage.name,
                    format!(
                        "waiting: run {} ({}) is executing the same stage",
                        holder
                            .run_id
                            .map_or_else(|| "?".to_owned(), |r| r.to_string()),
                        holder.holder
                    ),
                );
            }
            return Ok(false);
        }
        self.waiting_on.remove(&i);
        // The lock's last holder may have just committed this very entry.
        if self.cache_hit(i, recorder).await? {
            locks.release(&stage.fingerprint).await?;
            return Ok(true);
        }
        recorder.started(i, stage).await?;
        let gpus = self.sched.launch(i);
        let job = Job {
            index: i,
            stage: stage.clone(),
            metrics: recorder.sink(&stage.name),
            needs: stage
                .needs
                .iter()
                .filter_map(|n| self.sched.out_dirs.get(n).map(|d| (n.clone(), d.clone())))
                .collect(),
            outputs_of: self
                .plan
                .stages
                .iter()
                .map(|s| (s.name.clone(), s.outputs.clone()))
                .collect(),
            gpus,
        };
        self.tasks
            .spawn_blocking(lifecycle::prepare(job, self.opts));
        Ok(true)
    }

    /// Serves stage `i` from the cache if it has a complete entry (and is not forced).
    async fn cache_hit(&mut self, i: usize, recorder: &Recorder) -> Result<bool> {
        let stage = &self.plan.stages[i];
        if self.forced.contains(&stage.name) {
            return Ok(false);
        }
        let Some(entry) = self.opts.cache.lookup(&stage.fingerprint) else {
            return Ok(false);
        };
        recorder.cached(stage, &self.opts.cache, &entry).await?;
        let dir = self.opts.cache.entry_dir(&stage.fingerprint);
        self.sched.cached(i, dir.clone());
        self.waiting_on.remove(&i);
        self.outcomes[i] = Some(StageOutcome {
            name: stage.name.clone(),
            status: StageStatus::Cached,
            fingerprint: stage.fingerprint.clone(),
            elapsed: Duration::ZERO,
            error: None,
            log: Some(dir.join(LOG_FILE)),
            out_dir: Some(dir),
        });
        Ok(true)
    }

    /// A stage thread ended: record it, free its slot and its lock.
    async fn finished(
        &mut self,
        done: Executed,
        recorder: &Recorder,
        locks: &StageLocks,
    ) -> Result<()> {
        let i = done.index;
        let stage = &self.plan.stages[i];
        let (status, error, out_dir) = match &done.ok {
            Ok(dir) => (StageStatus::Succeeded, None, Some(dir.clone())),
            Err(e) if self.opts.cancel.is_cancelled() => {
                (StageStatus::Interrupted, Some(e.clone()), None)
            }
            Err(e) => (StageStatus::Failed, Some(e.clone()), None),
        };
        locks.release(&stage.fingerprint).await?;
        recorder
            .ended(
                i,
                stage,
                &Ended {
                    status,
                    elapsed: done.elapsed,
                    error: error.as_deref(),
                    log: &done.log,
                    out: out_dir.as_deref().map(|d| (d, done.artifacts.as_slice())),
                },
            )
            .await?;
        self.sched.finished(i, out_dir.clone());
        self.outcomes[i] = Some(StageOutcome {
            name: stage.name.clone(),
            status,
            fingerprint: stage.fingerprint.clone(),
            elapsed: done.elapsed,
            error,
            log: Some(done.log),
            out_dir,
        });
        Ok(())
    }

    async fn skip(&mut self, i: usize, reason: &str, recorder: &Recorder) -> Result<()> {
        let stage = &self.plan.stages[i];
        self.sched.skipped(i);
        self.waiting_on.remove(&i);
        recorder.skipped(stage, reason).await?;
        self.outcomes[i] = Some(StageOutcome {
            name: stage.name.clone(),
            status: StageStatus::Skipped,
            fingerprint: stage.fingerprint.clone(),
            elapsed: Duration::ZERO,
            error: Some(reason.to_owned()),
            log: None,
            out_dir: None,
        });
        Ok(())
    }
}

/// An error and its sources on one line, joined with ": ".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
