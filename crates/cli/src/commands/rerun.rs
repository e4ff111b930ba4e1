//! `kiln rerun RUN_ID`: executes a recorded run again (every stage, nothing from the cache)
//! with the parameters the store kept, and compares the new metrics with the old ones. When
//! today's plan is not what the run executed (the pipeline file, a stage kind's version, an
//! input or the commit changed), it names each difference and refuses unless
//! `--allow-changed`.
//! Timings (metrics whose name holds `seconds` or `per_s`) are left out of the comparison.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::fingerprint::FingerprintInput;
use kiln_core::{CancelToken, ExecOptions, plan};
use kiln_store::{RecordedRun, RunStatus, Store};

use crate::{Cli, Exit};

type Metrics = BTreeMap<(String, String, i64), Option<f64>>;

/// Whether a metric is a timing (differs between identical runs).
pub fn is_timing(name: &str) -> bool {
    name.contains("seconds") || name.contains("per_s")
}

/// A run's metrics, timings left out: (stage, name, step) → value.
pub async fn metrics(store: &Store, run: i64) -> Result<Metrics> {
    let mut out = BTreeMap::new();
    for point in store.metrics(run).await? {
        if is_timing(&point.name) {
            continue;
        }
        let value = (!point.value.is_nan()).then_some(point.value);
        out.insert((point.stage, point.name, point.step), value);
    }
    Ok(out)
}

/// How to rerun.
pub struct RerunOptions {
    /// Most stages executing at once.
    pub jobs: usize,
    /// GPUs the rerun may hold.
    pub gpus: u32,
    /// Exit 1 when a metric differs.
    pub expect_identical: bool,
    /// Run today's configuration even when it differs from the record.
    pub allow_changed: bool,
}

pub async fn run(cli: &Cli, run_id: i64, options: &RerunOptions) -> Result<()> {
    let store = Store::open(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    let Some(recorded) = store.recorded_run(run_id).await? else {
        bail!("no run {run_id} in {}", cli.store_label());
    };
    let config: serde_json::Value = serde_json::from_str(&recorded.config)
        .with_context(|| format!("run {run_id}: its recorded configuration"))?;
    let params: BTreeMap<String, serde_json::Value> = config
        .get("params")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default();
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let pipeline = super::load(&PathBuf::from(&recorded.pipeline_path))?;
    let registry = super::registry();
    let cache = Cache::new(&cli.results);
    let mut memo = HashMemo::load(&cache, Some(&store)).await?;
    let plan = plan::plan(&pipeline, &registry, &params, &workdir, &mut memo)?;
    memo.save(&store).await?;
    let mut meta = super::run::run_meta(&workdir);
    let changed = changes(&recorded, &config, &pipeline, &plan, &meta);
    if !changed.is_empty() {
        let list = changed.join("\n  ");
        if !options.allow_changed {
            return Err(Exit {
                code: 2,
                message: format!(
                    "kiln: run {run_id} cannot be rerun as recorded:\n  {list}\n\
                     (--allow-changed reruns it with today's configuration)"
                ),
            }
            .into());
        }
        eprintln!("warning: rerunning run {run_id} with today's configuration:\n  {list}");
    }
    meta.experiment_id = recorded.experiment_id;
    meta.trial = recorded.trial;
    let reporter = crate::reporter::for_cli(cli);
    let opts = ExecOptions {
        jobs: options.jobs,
        gpus: (0..options.gpus).collect(),
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
    if options.expect_identical {
        return Err(Exit {
            code: 1,
            message: "kiln: the rerun's metrics differ".into(),
        }
        .into());
    }
    Ok(())
}

/// Every way today's plan differs from what run `recorded` executed: the pipeline file, a
/// stage's kind version or inputs, the stages themselves, and the checkout's commit.
fn changes(
    recorded: &RecordedRun,
    config: &serde_json::Value,
    pipeline: &kiln_core::Pipeline,
    plan: &kiln_core::Plan,
    meta: &kiln_core::RunMeta,
) -> Vec<String> {
    let mut out = Vec::new();
    if recorded.spec_hash != pipeline.source_hash {
        out.push(format!(
            "the pipeline file {} changed since the run",
            recorded.pipeline_path
        ));
    }
    let old_stages: BTreeMap<String, FingerprintInput> = config
        .get("stages")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .unwrap_or_default();
    for stage in &plan.stages {
        let Some(old) = old_stages.get(&stage.name) else {
            out.push(format!("stage {}: not in the recorded run", stage.name));
            continue;
        };
        let new = &stage.fingerprint_input;
        if old.kind == new.kind && old.kind_version != new.kind_version {
            out.push(format!(
                "stage {}: kind {} is version {} now, {} then",
                stage.name, new.kind, new.kind_version, old.kind_version
            ));
        }
        for reason in kiln_core::fingerprint::stale_reasons(old, new) {
            use kiln_core::fingerprint::StaleReason;
            match reason {
                StaleReason::KindVersion { .. } | StaleReason::NeedRerun { .. } => {}
                other => out.push(format!("stage {}: {other}", stage.name)),
            }
        }
    }
    for name in old_stages.keys() {
        if plan.stage(name).is_none() {
            out.push(format!("stage {name}: in the recorded run, gone now"));
        }
    }
    if recorded.git_commit != meta.git_commit {
        let show = |c: &Option<String>| c.clone().unwrap_or_else(|| "(none)".into());
        out.push(format!(
            "the commit is {} now, {} then",
            show(&meta.git_commit),
            show(&recorded.git_commit)
        ));
    }
    if out.is_empty() && plan.config_hash != recorded.config_hash {
        out.push("the resolved configuration differs".into());
    }
    out
}
