//! `kiln sweep FILE`: an experiment's trials as runs of its pipeline, run here in lanes or
//! submitted to Slurm. The sweep itself (planning, which trials are done, the executors)
//! is `kiln_core::sweep`; the executors' setup, tables and messages are in `sweep_view`.

use std::path::Path;

use anyhow::{Context, Result};
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::experiment::ExecutorSpec;
use kiln_core::sweep::{self, Executor, Sweep};

use super::sweep_view as view;
pub use super::sweep_view::{RunArgs, What};
use crate::Cli;
use crate::args::SetArgs;

pub async fn run(cli: &Cli, file: &Path, set: &SetArgs, what: What) -> Result<()> {
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let experiment = kiln_core::experiment::load(file)?;
    let pipeline = super::load(&workdir.join(&experiment.pipeline))?;
    experiment.check(&pipeline)?;
    let registry = super::registry();
    // Only running writes: a dry run, --status and --cancel read the store if there is one.
    let store = match what {
        What::Run(_) => Some(super::open_store(cli).await?),
        _ => super::readable_store(cli).await?,
    };
    let mut memo = HashMemo::load(&Cache::new(&cli.results), store.as_ref()).await?;
    let extra = super::overrides(set)?;
    let trials = sweep::plan_trials(
        &experiment,
        &pipeline,
        &registry,
        &extra,
        &workdir,
        &mut memo,
    )?;
    let (What::Run(args), Some(store)) = (&what, &store) else {
        return view::inspect(cli, &what, store.as_ref(), &experiment, &pipeline, trials).await;
    };
    memo.save(store).await?;
    let sweep = Sweep::register(store, &experiment, trials).await?;
    let RunArgs {
        lanes,
        jobs,
        gpus,
        executor,
    } = *args;
    let (runner, reporter) = view::runner(cli, store, registry, jobs, &workdir);
    view::announce(&experiment, &sweep);
    let outcome = match view::executor_spec(executor, &experiment) {
        ExecutorSpec::Slurm(config) => {
            let slurm = view::slurm(cli, store, config, &experiment, set, &workdir)?;
            slurm.execute(&sweep, &runner).await?
        }
        ExecutorSpec::Local => {
            let (local, display) = view::local(&reporter, &experiment, &sweep, lanes, gpus)?;
            let outcome = local.execute(&sweep, &runner).await;
            display.finish();
            reporter.finish();
            outcome?
        }
    };
    store.close().await;
    view::outcome(cli, file, &experiment, &sweep, outcome).await
}
