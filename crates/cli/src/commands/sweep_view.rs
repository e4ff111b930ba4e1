//! The parts of `kiln sweep` around `kiln_core::sweep`: the executors as the command line
//! sets them up, and every table and message the command prints.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use kiln_core::cache::Cache;
use kiln_core::experiment::{ExecutorSpec, Experiment};
use kiln_core::sweep::slurm::{self, Invocation, Submission};
use kiln_core::sweep::{
    LocalExecutor, Outcome, PlannedTrial, SlurmConfig, SlurmExecutor, Sweep, TrialRunner,
};
use kiln_core::{Pipeline, Registry};
use kiln_store::{Cell, QueryResult, RunStatus, Store};

use crate::args::{ExecutorKind, SetArgs, TableFormat};
use crate::reporter::{CliReporter, SweepDisplay};
use crate::{Cli, Exit};

/// What `kiln sweep` was asked to do.
pub enum What {
    /// Print the trial table.
    DryRun,
    /// Show each trial's state.
    Status,
    /// Cancel the Slurm jobs.
    Cancel,
    /// Run (or submit) the pending trials.
    Run(RunArgs),
}

/// How to run the pending trials.
#[derive(Clone, Copy)]
pub struct RunArgs {
    /// Trials at once (local).
    pub lanes: Option<usize>,
    /// Stages at once within a trial.
    pub jobs: usize,
    /// GPUs the sweep may use (local).
    pub gpus: u32,
    /// `--executor`.
    pub executor: Option<ExecutorKind>,
}

/// The executor to use: `--executor`, else the experiment's `executor:`, else local. A
/// `--executor slurm` takes the experiment's Slurm options when it has them.
pub fn executor_spec(flag: Option<ExecutorKind>, experiment: &Experiment) -> ExecutorSpec {
    match (flag, &experiment.executor) {
        (Some(ExecutorKind::Slurm), Some(ExecutorSpec::Slurm(config))) => {
            ExecutorSpec::Slurm(config.clone())
        }
        (Some(ExecutorKind::Slurm), _) => ExecutorSpec::Slurm(SlurmConfig::default()),
        (Some(ExecutorKind::Local), _) => ExecutorSpec::Local,
        (None, spec) => spec.clone().unwrap_or(ExecutorSpec::Local),
    }
}

/// What every trial run needs, with the command line's reporter.
pub fn runner(
    cli: &Cli,
    store: &Store,
    registry: Registry,
    jobs: usize,
    workdir: &Path,
) -> (TrialRunner, Arc<CliReporter>) {
    let reporter = crate::reporter::for_cli(cli);
    let runner = TrialRunner {
        jobs,
        workdir: workdir.to_owned(),
        results: cli.results.clone(),
        store: store.clone(),
        reporter: reporter.clone(),
        cancel: super::cancel_on_signals("the sweep"),
        registry,
        meta: super::run::run_meta(workdir),
    };
    (runner, reporter)
}

/// The local executor, with its lane display.
///
/// # Errors
/// `--lanes 0`.
pub fn local(
    reporter: &Arc<CliReporter>,
    experiment: &Experiment,
    sweep: &Sweep,
    lanes: Option<usize>,
    gpus: u32,
) -> Result<(LocalExecutor, Arc<SweepDisplay>)> {
    let lanes = lanes.unwrap_or(experiment.lanes);
    if lanes == 0 {
        return Err(Exit {
            code: 2,
            message: "kiln: --lanes must be at least 1".into(),
        }
        .into());
    }
    let mut local = LocalExecutor {
        lanes,
        gpus,
        display: Arc::new(kiln_core::sweep::local::NoDisplay),
    };
    let need = sweep.gpus_per_trial();
    let (fit, _) = local.fit(need);
    if fit < lanes {
        eprintln!(
            "{lanes} lane(s) asked for, but trials need {need} GPU(s) each of {gpus}: running {fit} at once"
        );
    }
    let display = Arc::new(reporter.sweep_display(sweep.pending().len(), fit));
    local.display = display.clone();
    Ok((local, display))
}

/// The Slurm executor: jobs call this very kiln binary, in this project, on this store.
///
/// # Errors
/// When kiln cannot find its own binary.
pub fn slurm(
    cli: &Cli,
    store: &Store,
    config: SlurmConfig,
    experiment: &Experiment,
    set: &SetArgs,
    workdir: &Path,
) -> Result<SlurmExecutor> {
    if store.backend() == "sqlite" {
        eprintln!(
            "note: the store is a SQLite file ({}): fine on one machine, but nodes of a cluster should share a postgres:// store (--store / KILN_STORE)",
            store.location().display()
        );
    }
    let store_url = match store.location() {
        kiln_store::Location::Sqlite(path) => workdir.join(path).to_string_lossy().into_owned(),
        kiln_store::Location::Postgres(url) => url.clone(),
    };
    Ok(SlurmExecutor {
        config,
        invocation: Invocation {
            kiln: std::env::current_exe().context("finding the kiln binary for the jobs")?,
            workdir: workdir.to_owned(),
            store: store_url,
            results: workdir.join(&cli.results),
            sets: set.set.clone(),
        },
        name: experiment.name.clone(),
    })
}

/// What `kiln sweep` does without running anything: the dry run's table, `--status`,
/// `--cancel`. It writes nothing to the store.
///
/// # Errors
/// `--status` or `--cancel` on a sweep the store has no record of.
pub async fn inspect(
    cli: &Cli,
    what: &What,
    store: Option<&Store>,
    experiment: &Experiment,
    pipeline: &Pipeline,
    trials: Vec<PlannedTrial>,
) -> Result<()> {
    if matches!(what, What::DryRun) {
        return dry_run(cli, experiment, pipeline, &trials);
    }
    let never = || {
        anyhow::anyhow!(
            "{} has not been swept in this version (no record in {}): run kiln sweep {} first",
            experiment.path.display(),
            cli.store_label(),
            experiment.path.display()
        )
    };
    let store = store.ok_or_else(never)?;
    let sweep = Sweep::find(store, experiment, trials)
        .await?
        .ok_or_else(never)?;
    match what {
        What::Status => status(store, experiment, &sweep).await,
        _ => cancel(store, &sweep).await,
    }
}

/// `kiln sweep --dry-run`: the trial table.
///
/// # Errors
/// When the table cannot be printed.
fn dry_run(
    cli: &Cli,
    experiment: &Experiment,
    pipeline: &Pipeline,
    trials: &[PlannedTrial],
) -> Result<()> {
    let cache = Cache::new(&cli.results);
    let mut columns = vec!["trial".to_owned()];
    columns.extend(experiment.sweep.iter().map(|(k, _, _)| k.clone()));
    if !experiment.seeds.is_empty() {
        columns.push(experiment.seed_param.0.clone());
    }
    columns.push("stages to execute".into());
    let rows = trials
        .iter()
        .map(|t| {
            let mut row = vec![Cell::Int(t.trial.index as i64)];
            for c in &columns[1..columns.len() - 1] {
                row.push(Cell::Text(
                    t.trial
                        .params
                        .get(c)
                        .map(kiln_core::value::display)
                        .unwrap_or_default(),
                ));
            }
            let fresh = t
                .plan
                .stages
                .iter()
                .filter(|s| cache.lookup(&s.fingerprint).is_none())
                .count();
            row.push(Cell::Int(fresh as i64));
            row
        })
        .collect();
    println!(
        "{}: {} trial(s) of {} ({} lane(s))",
        experiment.name,
        trials.len(),
        pipeline.path.display(),
        experiment.lanes
    );
    crate::output::print(&QueryResult { columns, rows }, TableFormat::Table)
}

/// Says which trials are done and how many will run.
pub fn announce(experiment: &Experiment, sweep: &Sweep) {
    for (trial, run) in &sweep.done {
        eprintln!("trial {trial}: done before (run {run}), not rerun");
    }
    eprintln!(
        "{} (experiment {}): {} trial(s), {} to run",
        experiment.name,
        sweep.experiment_id,
        sweep.trials.len(),
        sweep.pending().len(),
    );
}

/// `kiln sweep --status`: each trial's run in the store and job in Slurm.
///
/// # Errors
/// Store failures.
async fn status(store: &Store, experiment: &Experiment, sweep: &Sweep) -> Result<()> {
    let rows = slurm::status(store, sweep.experiment_id, &sweep.trials).await?;
    let text = |s: Option<String>| Cell::Text(s.unwrap_or_else(|| "-".into()));
    let table = QueryResult {
        columns: ["trial", "values", "run", "status", "job", "slurm"]
            .map(String::from)
            .to_vec(),
        rows: rows
            .into_iter()
            .map(|r| {
                vec![
                    Cell::Int(r.trial as i64),
                    Cell::Text(r.label),
                    text(r.run.as_ref().map(|(id, _)| id.to_string())),
                    text(r.run.map(|(_, s)| s)),
                    text(r.job.as_ref().map(|(id, _)| id.clone())),
                    text(r.job.map(|(_, s)| s)),
                ]
            })
            .collect(),
    };
    println!(
        "{} (experiment {}): {} of {} trial(s) done",
        experiment.name,
        sweep.experiment_id,
        sweep.done.len(),
        sweep.trials.len()
    );
    crate::output::print(&table, TableFormat::Table)?;
    let counts = store.stage_counts(sweep.experiment_id).await?;
    let counts: Vec<String> = counts
        .iter()
        .map(|(stage, (executed, cached))| format!("{stage} {executed}/{cached}"))
        .collect();
    if !counts.is_empty() {
        println!("stages executed/cached: {}", counts.join(", "));
    }
    Ok(())
}

/// `kiln sweep --cancel`.
///
/// # Errors
/// Store failures, or `scancel` failing.
async fn cancel(store: &Store, sweep: &Sweep) -> Result<()> {
    let cancelled = slurm::cancel(store, sweep.experiment_id).await?;
    if cancelled.is_empty() {
        println!(
            "no queued or running job of experiment {}",
            sweep.experiment_id
        );
    } else {
        println!("cancelled job(s) {}", cancelled.join(" "));
    }
    Ok(())
}

/// What the sweep did, its exit code, and (when every trial succeeded here) its report.
///
/// # Errors
/// [`Exit`] 130 when interrupted, 1 when a trial failed.
pub async fn outcome(
    cli: &Cli,
    file: &Path,
    experiment: &Experiment,
    sweep: &Sweep,
    outcome: Outcome,
) -> Result<()> {
    let id = sweep.experiment_id;
    let (results, interrupted) = match outcome {
        Outcome::Submitted(submission) => {
            submitted(file, experiment, sweep, &submission);
            return Ok(());
        }
        Outcome::Ran {
            results,
            interrupted,
        } => (results, interrupted),
    };
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, (s, _))| *s == RunStatus::Failed)
        .map(|(i, _)| i.to_string())
        .collect();
    println!(
        "sweep {}: experiment {id}: {} trial(s) run now, {} done before, {} failed (kiln report {id})",
        experiment.name,
        results.len(),
        sweep.done.len(),
        failed.len(),
    );
    if interrupted {
        return Err(Exit {
            code: 130,
            message: "kiln: sweep interrupted; run it again to continue".into(),
        }
        .into());
    }
    if !failed.is_empty() {
        return Err(Exit {
            code: 1,
            message: format!("kiln: sweep failed: trial(s) {} failed", failed.join(", ")),
        }
        .into());
    }
    // Every trial has a succeeded run: the report comes with the sweep.
    if let Err(e) = super::report::run(cli, id, None, None).await {
        eprintln!("warning: the sweep's report could not be written: {e:#}");
    }
    Ok(())
}

fn submitted(file: &Path, experiment: &Experiment, sweep: &Sweep, s: &Submission) {
    let id = sweep.experiment_id;
    for (trial, job, state) in &s.live {
        println!("trial {trial}: job {job} is {state}: not submitted again");
    }
    let trials = |jobs: &[(usize, String)]| {
        jobs.iter()
            .map(|(t, _)| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match (&s.first, &s.array) {
        (Some(first), array) => {
            println!(
                "sweep {}: experiment {id}: submitted {} trial(s) to Slurm: job {first} (trial {}, the shared stages first){}",
                experiment.name,
                s.jobs.len(),
                s.jobs[0].0,
                array.as_ref().map_or_else(String::new, |a| format!(
                    ", array job {a} (trials {}, once {first} succeeded)",
                    trials(&s.jobs[1..])
                )),
            );
            if let Some(dir) = s.scripts.first().and_then(|p| p.parent()) {
                println!("job scripts and logs: {}", dir.display());
            }
            println!(
                "follow it with: kiln sweep {} --status (the report: kiln report {id})",
                file.display()
            );
        }
        (None, _) => println!(
            "sweep {}: experiment {id}: nothing to submit ({} of {} trial(s) done, {} queued or running)",
            experiment.name,
            sweep.done.len(),
            sweep.trials.len(),
            s.live.len()
        ),
    }
}
