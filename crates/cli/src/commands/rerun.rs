//! `kiln rerun RUN_ID`: executes a recorded run again (every stage, nothing from the cache)
//! with the parameters the store kept, and compares the new metrics with the old ones.
//! Timings (metrics whose name holds `seconds` or `per_s`) are left out of the comparison.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::{CancelToken, ExecOptions, plan};
use kiln_store::{Cell, RunStatus, Store};

use crate::{Cli, Exit};

type Metrics = BTreeMap<(String, String, i64), Option<f64>>;

/// Whether a metric is a timing (differs between identical runs).
pub fn is_timing(name: &str) -> bool {
    name.contains("seconds") || name.contains("per_s")
}

/// A run's metrics, timings left out: (stage, name, step) → value.
pub async fn metrics(store: &Store, run: i64) -> Result<Metrics> {
    let rows = store
        .query_read_only(&format!(
            "SELECT stage, name, step, value FROM metrics WHERE run_id = {run} ORDER BY id"
        ))
        .await?;
    let mut out = BTreeMap::new();
    for r in rows.rows {
        let text = |c: &Cell| match c {
            Cell::Text(s) => s.clone(),
            other => format!("{other:?}"),
        };
        let (stage, name) = (text(&r[0]), text(&r[1]));
        if is_timing(&name) {
            continue;
        }
        let step = match r[2] {
            Cell::Int(i) => i,
            _ => 0,
        };
        let value = match r[3] {
            Cell::Real(v) => Some(v),
            Cell::Int(i) => Some(i as f64),
            _ => None,
        };
        out.insert((stage, name, step), value);
    }
    Ok(out)
}

pub async fn run(cli: &Cli, run_id: i64, jobs: usize, expect_identical: bool) -> Result<()> {
    let store = Store::open(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store))?;
    let found = store
        .query_read_only(&format!(
            "SELECT p.path, r.config, r.config_hash, r.experiment_id, r.trial FROM runs r
             JOIN pipelines p ON p.id = r.pipeline_id WHERE r.id = {run_id}"
        ))
        .await?;
    let Some(row) = found.rows.first() else {
        bail!("no run {run_id} in {}", cli.store);
    };
    let (Cell::Text(path), Cell::Text(config), Cell::Text(old_hash)) = (&row[0], &row[1], &row[2])
    else {
        bail!("run {run_id} has no recorded configuration");
    };
    let config: serde_json::Value = serde_json::from_str(config)
        .with_context(|| format!("run {run_id}: its recorded configuration"))?;
    let params: BTreeMap<String, serde_json::Value> = config
        .get("params")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default();
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let pipeline = super::load(&PathBuf::from(path))?;
    let registry = super::registry();
    let cache = Cache::new(&cli.results);
    let plan = plan::plan(
        &pipeline,
        &registry,
        &params,
        &workdir,
        &mut HashMemo::load(&cache),
    )?;
    if plan.config_hash != *old_hash {
        eprintln!(
            "warning: run {run_id}'s configuration differs from what {path} gives now (the pipeline, a stage kind's version or an input changed); rerunning with today's"
        );
    }
    let mut meta = super::run::run_meta(&workdir);
    meta.experiment_id = match row[3] {
        Cell::Int(i) => Some(i),
        _ => None,
    };
    meta.trial = match row[4] {
        Cell::Int(i) => Some(i),
        _ => None,
    };
    let reporter = crate::reporter::for_cli(cli);
    let opts = ExecOptions {
        jobs,
        gpus: 0,
        // Everything again: a rerun reproduces, it does not reuse.
        force: plan.stages.iter().map(|s| s.name.clone()).collect(),
        workdir,
        cache,
        store: Some(store.clone()),
        reporter: reporter.clone(),
        cancel: CancelToken::new(),
        registry,
        meta,
    };
    let summary = kiln_core::execute(&plan, &opts).await?;
    reporter.finish();
    let Some(new_id) = summary.run_id else {
        bail!("the rerun was not recorded");
    };
    if summary.status != RunStatus::Succeeded {
        return Err(Exit {
            code: 1,
            message: format!("kiln: rerun {new_id} of run {run_id} did not succeed"),
        }
        .into());
    }
    let (old, new) = (
        metrics(&store, run_id).await?,
        metrics(&store, new_id).await?,
    );
    store.close().await;
    let differing: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|((stage, name, step), v)| {
            format!(
                "{stage}.{name}@{step}: {v:?} then {:?}",
                new.get(&(stage.clone(), name.clone(), *step))
                    .copied()
                    .flatten()
            )
        })
        .chain(
            new.keys()
                .filter(|k| !old.contains_key(*k))
                .map(|(s, n, st)| format!("{s}.{n}@{st}: only in the rerun")),
        )
        .collect();
    if differing.is_empty() {
        println!(
            "run {new_id} reran run {run_id}: {} metric values, all identical (timings left out)",
            old.len()
        );
        return Ok(());
    }
    println!(
        "run {new_id} reran run {run_id}: {} of {} metric values differ, e.g.:",
        differing.len(),
        old.len().max(new.len())
    );
    for d in differing.iter().take(10) {
        println!("  {d}");
    }
    if expect_identical {
        return Err(Exit {
            code: 1,
            message: "kiln: the rerun's metrics differ".into(),
        }
        .into());
    }
    Ok(())
}
