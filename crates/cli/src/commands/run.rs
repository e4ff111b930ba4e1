//! `kiln run FILE`: plan, execute, summarize.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command as Process;

use anyhow::{Context, Result};
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::{ExecOptions, RunMeta, plan};
use kiln_store::{RunStatus, StageStatus, Store};

use crate::args::SetArgs;
use crate::{Cli, Exit};

pub async fn run(
    cli: &Cli,
    file: &Path,
    set: &SetArgs,
    jobs: usize,
    gpus: u32,
    force: &[String],
) -> Result<()> {
    let pipeline = super::load(file)?;
    let registry = super::registry();
    let cache = Cache::new(&cli.results);
    let workdir = std::env::current_dir().context("reading the current directory")?;
    // Two `git` processes take a few milliseconds (more in a large repository): they run
    // while the pipeline is planned and its inputs hashed.
    let meta = {
        let workdir = workdir.clone();
        std::thread::spawn(move || run_meta(&workdir))
    };
    let overrides = super::overrides(set)?;
    // The store is created only once the pipeline is valid: a bad file leaves nothing behind.
    let existing = super::existing_store(cli).await?;
    let mut memo = HashMemo::load(&cache, existing.as_ref()).await?;
    let plan = plan::plan(&pipeline, &registry, &overrides, &workdir, &mut memo)?;
    let store = match existing {
        Some(store) => store,
        None => Store::open(&cli.store)
            .await
            .with_context(|| format!("opening the results store {}", cli.store_label()))?,
    };
    memo.save(&store).await?;
    for name in force {
        if plan.stage(name).is_none() {
            let hint = kiln_core::spec::closest(name, plan.stages.iter().map(|s| s.name.as_str()))
                .map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"));
            return Err(kiln_core::Error::NoSuchStage {
                pipeline: file.to_owned(),
                stage: name.clone(),
                hint,
            }
            .into());
        }
    }
    let cancel = super::cancel_on_signals("the run");
    let reporter = crate::reporter::for_cli(cli);
    let opts = ExecOptions {
        jobs,
        gpus: (0..gpus).collect(),
        force: force.iter().cloned().collect::<BTreeSet<_>>(),
        workdir: workdir.clone(),
        cache,
        store: Some(store.clone()),
        reporter: reporter.clone(),
        cancel,
        registry,
        meta: meta
            .join()
            .map_err(|_| anyhow::anyhow!("reading the git commit panicked"))?,
    };
    let summary = kiln_core::execute(&plan, &opts).await?;
    reporter.finish();
    store.close().await;
    if !cli.json {
        crate::reporter::print_summary(&summary);
    }
    match summary.status {
        RunStatus::Succeeded => Ok(()),
        RunStatus::Interrupted => Err(Exit {
            code: 130,
            message: "kiln: run interrupted".into(),
        }
        .into()),
        _ => {
            let failed: Vec<&str> = summary
                .stages
                .iter()
                .filter(|s| s.status == StageStatus::Failed)
                .map(|s| s.name.as_str())
                .collect();
            Err(Exit {
                code: 1,
                message: format!("kiln: run failed: stage(s) {} failed", failed.join(", ")),
            }
            .into())
        }
    }
}

/// Git commit, dirty flag, host and version for the run record.
pub(crate) fn run_meta(workdir: &Path) -> RunMeta {
    let git = |args: &[&str]| {
        Process::new("git")
            .args(args)
            .current_dir(workdir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    RunMeta {
        git_commit: commit,
        git_dirty: dirty,
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
        experiment_id: None,
        trial: None,
        // The lock file kiln was built from, embedded at compile time.
        cargo_lock_hash: Some(
            blake3::hash(include_bytes!("../../../../Cargo.lock"))
                .to_hex()
                .to_string(),
        ),
    }
}
