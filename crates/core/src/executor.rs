//! Runs a [`Plan`]: stages in dependency order, independent ones in parallel.
//!
//! - At most `jobs` stages execute at once, and the stages holding GPUs never hold more than
//!   the run's GPUs together. A stage learns which GPUs it holds (`StageContext::gpus`, the
//!   lowest free indices); no two running stages hold the same GPU. Cache hits take no slot.
//! - A stage whose fingerprint has a complete cache entry is not executed: its recorded
//!   metrics and artifacts are recorded again for this run, marked as a cache hit.
//! - A failed stage stops its descendants (recorded as skipped); stages that do not depend on
//!   it go on. The run then ends `failed`.
//! - Cancellation (Ctrl-C) stops launching, lets running stages see the cancel token, and
//!   ends the run `interrupted`.
//!
//! Every stage execution, metric and artifact goes to the store (when there is one).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_store::{NewRun, NewStageRun, RunStatus, StageStatus, Store};
use tokio::task::JoinSet;

use crate::cache::{Cache, EntryRecord, LOG_FILE};
use crate::error::{Error, Result};
use crate::event::{Event, Reporter};
use crate::interp;
use crate::plan::{Plan, PlannedStage};
use crate::stage::{CancelToken, MetricSink, Progress, Registry, StageContext};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Failed,
    Skipped,
}

/// What a stage thread hands back.
struct Executed {
    index: usize,
    ok: std::result::Result<PathBuf, String>,
    log: PathBuf,
    elapsed: Duration,
    artifacts: Vec<kiln_store::ArtifactRecord>,
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
    let n = plan.stages.len();
    let mut forced: BTreeSet<String> = BTreeSet::new();
    for name in &opts.force {
        forced.insert(name.clone());
        forced.extend(plan.descendants(name));
    }

    let (run_id, writer) = match &opts.store {
        Some(store) => {
            let pipeline = &plan.pipeline;
            let pipeline_id = store
                .pipeline_id(
                    &pipeline.name,
                    &pipeline.path.to_string_lossy(),
                    &pipeline.source_hash,
                )
                .await?;
            let run = NewRun {
                pipeline_id,
                experiment_id: opts.meta.experiment_id,
                trial: opts.meta.trial,
                cargo_lock_hash: opts.meta.cargo_lock_hash.clone(),
                config_hash: plan.config_hash.clone(),
                config: plan.config.to_string(),
                git_commit: opts.meta.git_commit.clone(),
                git_dirty: opts.meta.git_dirty,
                kiln_version: opts.meta.kiln_version.clone(),
                seed: plan.params.get("seed").and_then(serde_json::Value::as_i64),
                host: opts.meta.host.clone(),
                params: plan.params.clone(),
            };
            (
                Some(store.begin_run(&run).await?),
                Some(store.metric_writer()),
            )
        }
        None => (None, None),
    };
    opts.reporter.event(&Event::RunStarted {
        run_id,
        pipeline: plan.pipeline.name.clone(),
        stages: n,
    });

    let mut state = vec![State::Waiting; n];
    let mut outcomes: Vec<Option<StageOutcome>> = vec![None; n];
    let mut row_ids: Vec<Option<i64>> = vec![None; n];
    let mut out_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let index: BTreeMap<&str, usize> = plan
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let outputs_of: BTreeMap<String, BTreeMap<String, String>> = plan
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.outputs.clone()))
        .collect();
    let mut tasks: JoinSet<Executed> = JoinSet::new();
    let mut running = 0usize;
    let mut gpus_free: BTreeSet<u32> = opts.gpus.iter().copied().collect();
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); n];
    let jobs = opts.jobs.max(1);

    loop {
        // Launch, cache-hit and skip everything that can move now.
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                if state[i] != State::Waiting {
                    continue;
                }
                let stage = &plan.stages[i];
                let need_states: Vec<State> = stage
                    .needs
                    .iter()
                    .filter_map(|need| index.get(need.as_str()).map(|&j| state[j]))
                    .collect();
                if let Some(bad) = stage.needs.iter().find(|need| {
                    index
                        .get(need.as_str())
                        .is_some_and(|&j| matches!(state[j], State::Failed | State::Skipped))
                }) {
                    let reason = format!("need {bad:?} did not succeed");
                    skip(plan, opts, run_id, i, &reason, &mut state, &mut outcomes).await?;
                    progressed = true;
                    continue;
                }
                if opts.cancel.is_cancelled() || !need_states.iter().all(|s| *s == State::Done) {
                    continue;
                }
                if !forced.contains(&stage.name)
                    && let Some(entry) = opts.cache.lookup(&stage.fingerprint)
                {
                    record_hit(plan, opts, run_id, writer.as_ref(), i, &entry).await?;
                    let dir = opts.cache.entry_dir(&stage.fingerprint);
                    out_dirs.insert(stage.name.clone(), dir.clone());
                    state[i] = State::Done;
                    outcomes[i] = Some(StageOutcome {
                        name: stage.name.clone(),
                        status: StageStatus::Cached,
                        fingerprint: stage.fingerprint.clone(),
                        elapsed: Duration::ZERO,
                        error: None,
                        log: Some(dir.join(LOG_FILE)),
                        out_dir: Some(dir),
                    });
                    progressed = true;
                    continue;
                }
                if running >= jobs || stage.gpu as usize > gpus_free.len() {
                    continue;
                }
                // A stage with the same fingerprint is executing: wait for it and take its
                // entry from the cache instead of computing the same outputs twice.
                if (0..n).any(|j| {
                    state[j] == State::Running && plan.stages[j].fingerprint == stage.fingerprint
                }) {
                    continue;
                }
                // Launch.
                if let Some(store) = &opts.store {
                    row_ids[i] = Some(
                        store
                            .begin_stage(&new_stage_row(run_id, stage, false, StageStatus::Running))
                            .await?,
                    );
                }
                opts.reporter.event(&Event::StageStarted {
                    stage: stage.name.clone(),
                    kind: stage.kind.clone(),
                    fingerprint: stage.fingerprint.clone(),
                });
                held[i] = gpus_free.iter().take(stage.gpu as usize).copied().collect();
                for g in &held[i] {
                    gpus_free.remove(g);
                }
                let job = prepare(
                    stage,
                    i,
                    opts,
                    MetricSink::new(run_id, &stage.name, writer.clone()),
                    &out_dirs,
                    &outputs_of,
                    held[i].clone(),
                );
                tasks.spawn_blocking(job);
                state[i] = State::Running;
                running += 1;
                progressed = true;
            }
        }
        if running == 0 {
            break;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let done = joined.map_err(|e| Error::Cache {
            what: "a stage thread ended abnormally in",
            path: opts.cache.root().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let i = done.index;
        let stage = &plan.stages[i];
        running -= 1;
        gpus_free.extend(std::mem::take(&mut held[i]));
        let (status, error, out_dir) = match &done.ok {
            Ok(dir) => (StageStatus::Succeeded, None, Some(dir.clone())),
            Err(e) if opts.cancel.is_cancelled() => {
                (StageStatus::Interrupted, Some(e.clone()), None)
            }
            Err(e) => (StageStatus::Failed, Some(e.clone()), None),
        };
        if let Some(store) = &opts.store {
            if let Some(row) = row_ids[i] {
                store
                    .finish_stage(
                        row,
                        status,
                        Some(done.elapsed),
                        error.as_deref(),
                        Some(&done.log.to_string_lossy()),
                    )
                    .await?;
            }
            if let (Some(run), true) = (run_id, status == StageStatus::Succeeded) {
                let recorded = absolute_artifacts(out_dir.as_deref(), &done.artifacts);
                store.record_artifacts(run, &stage.name, &recorded).await?;
            }
        }
        match status {
            StageStatus::Succeeded => {
                state[i] = State::Done;
                if let Some(dir) = &out_dir {
                    out_dirs.insert(stage.name.clone(), dir.clone());
                }
                opts.reporter.event(&Event::StageSucceeded {
                    stage: stage.name.clone(),
                    elapsed: done.elapsed,
                });
            }
            _ => {
                state[i] = State::Failed;
                opts.reporter.event(&Event::StageFailed {
                    stage: stage.name.clone(),
                    error: error.clone().unwrap_or_default(),
                    log: Some(done.log.clone()),
                    elapsed: done.elapsed,
                });
            }
        }
        outcomes[i] = Some(StageOutcome {
            name: stage.name.clone(),
            status,
            fingerprint: stage.fingerprint.clone(),
            elapsed: done.elapsed,
            error,
            log: Some(done.log),
            out_dir,
        });
    }

    // Whatever never started was cut off by cancellation.
    for i in 0..n {
        if state[i] == State::Waiting {
            skip(
                plan,
                opts,
                run_id,
                i,
                "the run was interrupted",
                &mut state,
                &mut outcomes,
            )
            .await?;
        }
    }
    if let Some(w) = &writer {
        w.close().await?;
    }
    let stages: Vec<StageOutcome> = outcomes.into_iter().flatten().collect();
    let status = if opts.cancel.is_cancelled() {
        RunStatus::Interrupted
    } else if stages
        .iter()
        .all(|s| matches!(s.status, StageStatus::Succeeded | StageStatus::Cached))
    {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    };
    if let (Some(store), Some(id)) = (&opts.store, run_id) {
        store.finish_run(id, status).await?;
    }
    let summary = RunSummary {
        run_id,
        status,
        stages,
        elapsed: started.elapsed(),
    };
    opts.reporter.event(&Event::RunFinished {
        run_id,
        status: status.as_str().to_owned(),
        executed: summary.count(StageStatus::Succeeded) + summary.count(StageStatus::Failed),
        cached: summary.count(StageStatus::Cached),
        failed: summary.count(StageStatus::Failed) + summary.count(StageStatus::Interrupted),
        skipped: summary.count(StageStatus::Skipped),
        elapsed: summary.elapsed,
    });
    Ok(summary)
}

fn new_stage_row(
    run_id: Option<i64>,
    stage: &PlannedStage,
    cache_hit: bool,
    status: StageStatus,
) -> NewStageRun {
    NewStageRun {
        run_id: run_id.unwrap_or_default(),
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        kind_version: i64::from(stage.kind_version),
        fingerprint: stage.fingerprint.clone(),
        fingerprint_input: serde_json::to_string(&stage.fingerprint_input).expect("serializable"),
        cache_hit,
        status,
    }
}

fn absolute_artifacts(
    dir: Option<&Path>,
    artifacts: &[kiln_store::ArtifactRecord],
) -> Vec<kiln_store::ArtifactRecord> {
    artifacts
        .iter()
        .map(|a| kiln_store::ArtifactRecord {
            path: dir.map_or_else(
                || a.path.clone(),
                |d| d.join(&a.path).to_string_lossy().into_owned(),
            ),
            ..a.clone()
        })
        .collect()
}

async fn skip(
    plan: &Plan,
    opts: &ExecOptions,
    run_id: Option<i64>,
    i: usize,
    reason: &str,
    state: &mut [State],
    outcomes: &mut [Option<StageOutcome>],
) -> Result<()> {
    let stage = &plan.stages[i];
    state[i] = State::Skipped;
    if let Some(store) = &opts.store {
        let row = store
            .begin_stage(&new_stage_row(run_id, stage, false, StageStatus::Skipped))
            .await?;
        store
            .finish_stage(row, StageStatus::Skipped, None, Some(reason), None)
            .await?;
    }
    opts.reporter.event(&Event::StageSkipped {
        stage: stage.name.clone(),
        reason: reason.to_owned(),
    });
    outcomes[i] = Some(StageOutcome {
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

async fn record_hit(
    plan: &Plan,
    opts: &ExecOptions,
    run_id: Option<i64>,
    writer: Option<&kiln_store::MetricWriter>,
    i: usize,
    entry: &EntryRecord,
) -> Result<()> {
    let stage = &plan.stages[i];
    let dir = opts.cache.entry_dir(&stage.fingerprint);
    if let Some(store) = &opts.store {
        let row = store
            .begin_stage(&new_stage_row(run_id, stage, true, StageStatus::Cached))
            .await?;
        store
            .finish_stage(
                row,
                StageStatus::Cached,
                Some(Duration::ZERO),
                None,
                Some(&dir.join(LOG_FILE).to_string_lossy()),
            )
            .await?;
        let sink = MetricSink::new(run_id, &stage.name, writer.cloned());
        for m in opts.cache.metrics(&stage.fingerprint) {
            sink.send(&m);
        }
        if let Some(run) = run_id {
            store
                .record_artifacts(
                    run,
                    &stage.name,
                    &absolute_artifacts(Some(&dir), &entry.artifacts),
                )
                .await?;
        }
    }
    opts.reporter.event(&Event::StageCached {
        stage: stage.name.clone(),
        fingerprint: stage.fingerprint.clone(),
    });
    Ok(())
}

/// Builds the closure that executes stage `i` on a blocking thread.
fn prepare(
    stage: &PlannedStage,
    index: usize,
    opts: &ExecOptions,
    metrics: MetricSink,
    out_dirs: &BTreeMap<String, PathBuf>,
    outputs_of: &BTreeMap<String, BTreeMap<String, String>>,
    gpus: Vec<u32>,
) -> impl FnOnce() -> Executed + Send + 'static {
    let stage = stage.clone();
    let cache = opts.cache.clone();
    let kind = opts.registry.get(&stage.kind);
    let reporter = opts.reporter.clone();
    let cancel = opts.cancel.clone();
    let workdir = opts.workdir.clone();
    let needs: BTreeMap<String, PathBuf> = stage
        .needs
        .iter()
        .filter_map(|n| out_dirs.get(n).map(|d| (n.clone(), d.clone())))
        .collect();
    let outputs_of = outputs_of.clone();
    move || {
        let started = Instant::now();
        let fail = |log: PathBuf, message: String| Executed {
            index,
            ok: Err(message),
            log,
            elapsed: started.elapsed(),
            artifacts: Vec::new(),
        };
        let tmp = match cache.begin(&stage.fingerprint) {
            Ok(t) => t,
            Err(e) => return fail(PathBuf::new(), error_chain(&e)),
        };
        let log_path = tmp.join(LOG_FILE);
        let log = std::fs::File::create(&log_path).ok();
        let Some(kind) = kind else {
            let kept = cache.keep_failed(&tmp, &stage.name, &stage.fingerprint);
            return fail(
                kept.join(LOG_FILE),
                format!("unknown stage kind {:?}", stage.kind),
            );
        };
        // Stage references become real paths now that the needs have run.
        let mut params = BTreeMap::new();
        let mut resolve_error = None;
        for (k, v) in &stage.params {
            match interp::substitute_stages(v, &needs, &outputs_of) {
                Ok(v) => {
                    params.insert(k.clone(), v);
                }
                Err(m) => resolve_error = Some(format!("with.{k}: {m}")),
            }
        }
        let mut inputs = BTreeMap::new();
        for (k, text) in &stage.inputs {
            match interp::substitute_stages(
                &serde_json::Value::String(text.clone()),
                &needs,
                &outputs_of,
            ) {
                Ok(v) => {
                    inputs.insert(k.clone(), workdir.join(crate::value::display(&v)));
                }
                Err(m) => resolve_error = Some(format!("inputs.{k}: {m}")),
            }
        }
        if let Some(message) = resolve_error {
            let kept = cache.keep_failed(&tmp, &stage.name, &stage.fingerprint);
            return fail(kept.join(LOG_FILE), message);
        }
        let outputs = stage
            .outputs
            .iter()
            .map(|(k, rel)| (k.clone(), tmp.join(rel)))
            .collect();
        let mut ctx = StageContext {
            stage: stage.name.clone(),
            params,
            inputs,
            needs,
            out_dir: tmp.clone(),
            outputs,
            downloads: cache.downloads_dir(),
            state_dir: cache.state_dir(&stage.fingerprint),
            workdir,
            metrics: metrics.clone(),
            progress: Progress::new(&stage.name, reporter),
            gpus,
            cancel,
            log_path: log_path.clone(),
            log: Mutex::new(log),
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| kind.run(&mut ctx)));
        drop(ctx);
        let outcome: std::result::Result<(), String> = match result {
            Ok(Ok(())) => stage
                .outputs
                .iter()
                .find(|(_, rel)| !tmp.join(rel).exists())
                .map_or(Ok(()), |(name, rel)| {
                    Err(format!("declared output {name:?} ({rel}) was not written"))
                }),
            Ok(Err(e)) => Err(error_chain(e.as_ref())),
            Err(panic) => Err(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)")
            )),
        };
        if let Err(message) = outcome {
            append_log(&log_path, &format!("kiln: stage failed: {message}"));
            let kept = cache.keep_failed(&tmp, &stage.name, &stage.fingerprint);
            return fail(kept.join(LOG_FILE), message);
        }
        let elapsed = started.elapsed();
        let committed = Cache::artifacts(&tmp).and_then(|artifacts| {
            let record = EntryRecord {
                stage: stage.name.clone(),
                fingerprint_input: stage.fingerprint_input.clone(),
                created_at: kiln_store::now(),
                seconds: elapsed.as_secs_f64(),
                artifacts: artifacts.clone(),
            };
            cache
                .commit(&tmp, &stage.fingerprint, &record, &metrics.recorded())
                .map(|dir| (dir, artifacts))
        });
        match committed {
            Ok((dir, artifacts)) => {
                // Done: nothing to resume any more.
                let state = cache.state_dir(&stage.fingerprint);
                if state.exists() {
                    let _ = std::fs::remove_dir_all(&state);
                }
                Executed {
                    index,
                    log: dir.join(LOG_FILE),
                    ok: Ok(dir),
                    elapsed,
                    artifacts,
                }
            }
            Err(e) => {
                let kept = cache.keep_failed(&tmp, &stage.name, &stage.fingerprint);
                fail(kept.join(LOG_FILE), error_chain(&e))
            }
        }
    }
}

fn append_log(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
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
