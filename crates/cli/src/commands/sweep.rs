//! `kiln sweep FILE`: an experiment's trials as runs of its pipeline.
//!
//! Every trial is planned before anything runs (so a bad value stops the sweep at once),
//! trials whose succeeded run is in the store with the same configuration are not rerun,
//! the first remaining trial runs alone (it executes the stages every trial shares, such as
//! preprocessing, which later trials then find cached), and the rest run `lanes` at a time.
//! GPUs are split between lanes, so together they never use more than `--gpus`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::{CancelToken, ExecOptions, plan};
use kiln_store::{Cell, QueryResult, RunStatus, Store};

use crate::args::{SetArgs, TableFormat};
use crate::{Cli, Exit};

pub async fn run(
    cli: &Cli,
    file: &Path,
    set: &SetArgs,
    dry_run: bool,
    lanes: Option<usize>,
    jobs: usize,
    gpus: u32,
) -> Result<()> {
    let experiment = kiln_core::experiment::load(file)?;
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let pipeline = super::load(&workdir.join(&experiment.pipeline))?;
    experiment.check(&pipeline)?;
    let lanes = lanes.unwrap_or(experiment.lanes);
    if lanes == 0 {
        return Err(Exit {
            code: 2,
            message: "kiln: --lanes must be at least 1".into(),
        }
        .into());
    }
    let extra = super::overrides(set)?;
    let registry = super::registry();
    let cache = Cache::new(&cli.results);
    // A dry run writes nothing: it reads the store's hash memo only if there is a store.
    let store = if dry_run {
        match kiln_store::location(&cli.store) {
            Ok(l) if l.may_exist() => Some(Store::open_read_only(&cli.store).await?),
            _ => None,
        }
    } else {
        super::existing_store(cli).await?
    };
    let mut memo = HashMemo::load(&cache, store.as_ref()).await?;
    let trials = experiment.trials();
    let mut plans = Vec::with_capacity(trials.len());
    for t in &trials {
        let mut params = t.params.clone();
        params.extend(extra.clone());
        let p = plan::plan(&pipeline, &registry, &params, &workdir, &mut memo)
            .with_context(|| format!("trial {} ({})", t.index, describe(&t.params)))?;
        plans.push(p);
    }

    let swept: Vec<String> = experiment.sweep.iter().map(|(k, _, _)| k.clone()).collect();
    if dry_run {
        let mut columns = vec!["trial".to_owned()];
        columns.extend(swept.iter().cloned());
        if !experiment.seeds.is_empty() {
            columns.push(experiment.seed_param.0.clone());
        }
        columns.push("stages to execute".into());
        let rows = trials
            .iter()
            .zip(&plans)
            .map(|(t, p)| {
                let mut row = vec![Cell::Int(t.index as i64)];
                for c in &columns[1..columns.len() - 1] {
                    row.push(Cell::Text(
                        t.params
                            .get(c)
                            .map(kiln_core::value::display)
                            .unwrap_or_default(),
                    ));
                }
                let fresh = p
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
            lanes
        );
        return crate::output::print(&QueryResult { columns, rows }, TableFormat::Table);
    }

    let store = match store {
        Some(store) => store,
        None => Store::open(&cli.store)
            .await
            .with_context(|| format!("opening the results store {}", cli.store))?,
    };
    memo.save(&store).await?;
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
    let done = store.succeeded_trials(experiment_id).await?;
    let cancel = CancelToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("kiln: interrupting the sweep: waiting for running stages to stop");
            on_signal.cancel();
        }
    });
    let mut pending = Vec::new();
    for (t, p) in trials.iter().zip(plans) {
        match done.get(&(t.index as i64)) {
            Some((hash, run)) if *hash == p.config_hash => {
                eprintln!("trial {}: done before (run {run}), not rerun", t.index);
            }
            _ => pending.push((t.clone(), p)),
        }
    }
    eprintln!(
        "{} (experiment {experiment_id}): {} trial(s), {} to run, {} lane(s)",
        experiment.name,
        trials.len(),
        pending.len(),
        lanes
    );
    // GPUs are split between lanes; when a trial needs more GPUs than its share, fewer lanes
    // run at once, so that together they never use more than --gpus.
    let need = pending
        .iter()
        .flat_map(|(_, p)| p.stages.iter().map(|s| s.gpu))
        .max()
        .unwrap_or(0);
    let lanes = match gpus.checked_div(need) {
        Some(fit) if (fit.max(1) as usize) < lanes => {
            let fit = fit.max(1) as usize;
            eprintln!(
                "{lanes} lane(s) asked for, but trials need {need} GPU(s) each of {gpus}: running {fit} at once"
            );
            fit
        }
        _ => lanes,
    };
    let lane_gpus = if need > 0 { gpus / lanes as u32 } else { 0 };
    let meta = super::run::run_meta(&workdir);
    let reporter = crate::reporter::for_cli(cli);
    let mut results: BTreeMap<usize, (RunStatus, Option<i64>)> = BTreeMap::new();
    let results_dir = cli.results.clone();
    let display = reporter.sweep_display(pending.len(), lanes);
    let label = |t: &kiln_core::experiment::Trial| {
        experiment
            .sweep
            .iter()
            .map(|(k, _, _)| k)
            .chain(experiment.seeds.first().map(|_| &experiment.seed_param.0))
            .filter_map(|k| {
                t.params
                    .get(k)
                    .map(|v| format!("{k}={}", kiln_core::value::display(v)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let run_trial = |t: kiln_core::experiment::Trial, p: kiln_core::Plan, gpus: Vec<u32>| {
        let mut meta = meta.clone();
        meta.experiment_id = Some(experiment_id);
        meta.trial = Some(t.index as i64);
        let opts = ExecOptions {
            jobs,
            gpus,
            force: Default::default(),
            workdir: workdir.clone(),
            cache: Cache::new(&results_dir),
            store: Some(store.clone()),
            reporter: reporter.clone(),
            cancel: cancel.clone(),
            registry: registry.clone(),
            meta,
        };
        async move {
            let summary = kiln_core::execute(&p, &opts).await;
            (t, summary)
        }
    };
    let done_before = trials.len() - pending.len();
    let mut queue = pending.into_iter();
    // The first trial alone: it makes the shared stages that the others then find cached.
    if let Some((t, p)) = queue.next() {
        display.started(0, t.index, &label(&t));
        let (t, summary) = run_trial(t, p, (0..gpus).collect()).await;
        let summary = summary?;
        display.finished(0, t.index, summary.status.as_str());
        results.insert(t.index, (summary.status, summary.run_id));
    }
    type Done = (
        usize,
        kiln_core::experiment::Trial,
        kiln_core::Result<kiln_core::RunSummary>,
    );
    let mut running: tokio::task::JoinSet<Done> = tokio::task::JoinSet::new();
    let mut free: Vec<usize> = (0..lanes).rev().collect();
    let mut record = |joined: std::result::Result<Done, tokio::task::JoinError>,
                      free: &mut Vec<usize>|
     -> Result<()> {
        let (lane, t, summary) = joined.context("a trial task ended abnormally")?;
        free.push(lane);
        let summary = summary?;
        display.finished(lane, t.index, summary.status.as_str());
        results.insert(t.index, (summary.status, summary.run_id));
        Ok(())
    };
    for (t, p) in queue {
        while free.is_empty() {
            if let Some(joined) = running.join_next().await {
                record(joined, &mut free)?;
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        let lane = free.pop().unwrap_or(0);
        display.started(lane, t.index, &label(&t));
        // Each lane has its own GPUs: lane L holds [L·share, (L+1)·share).
        let first = lane as u32 * lane_gpus;
        let fut = run_trial(t, p, (first..first + lane_gpus).collect());
        running.spawn(async move {
            let (t, summary) = fut.await;
            (lane, t, summary)
        });
    }
    while let Some(joined) = running.join_next().await {
        record(joined, &mut free)?;
    }
    display.finish();
    reporter.finish();
    store.close().await;
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, (s, _))| *s == RunStatus::Failed)
        .map(|(i, _)| i.to_string())
        .collect();
    let interrupted =
        cancel.is_cancelled() || results.values().any(|(s, _)| *s == RunStatus::Interrupted);
    println!(
        "sweep {}: experiment {experiment_id}: {} trial(s) run now, {} done before, {} failed (SELECT * FROM runs WHERE experiment_id = {experiment_id})",
        experiment.name,
        results.len(),
        done_before,
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
    if let Err(e) = super::report::run(cli, experiment_id, None, None).await {
        eprintln!("warning: the sweep's report could not be written: {e:#}");
    }
    Ok(())
}

fn describe(params: &BTreeMap<String, serde_json::Value>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", kiln_core::value::display(v)))
        .collect::<Vec<_>>()
        .join(", ")
}
