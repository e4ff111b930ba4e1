//! `kiln trial EXPERIMENT_ID TRIAL`: one trial of a registered experiment, as a Slurm task
//! runs it. The experiment file must be the one the sweep registered (same text); a trial
//! already done is not rerun, so a requeued task finishes at once.

use anyhow::{Context, Result, bail};
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::sweep::{self, slurm};
use kiln_store::{RunStatus, Store};

use crate::args::SetArgs;
use crate::{Cli, Exit};

pub async fn run(
    cli: &Cli,
    experiment_id: i64,
    trial: usize,
    set: &SetArgs,
    jobs: usize,
) -> Result<()> {
    let store = Store::open(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    let Some(info) = store.experiment(experiment_id).await? else {
        bail!(
            "no experiment {experiment_id} in {}",
            store.location().display()
        );
    };
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let experiment = kiln_core::experiment::load(&workdir.join(&info.path))?;
    if experiment.spec_hash != info.spec_hash {
        return Err(kiln_core::Error::TrialMismatch(format!(
            "{}: the file changed since experiment {experiment_id} was registered (submit the sweep again to run the new version)",
            info.path
        ))
        .into());
    }
    let pipeline = super::load(&workdir.join(&experiment.pipeline))?;
    experiment.check(&pipeline)?;
    let registry = super::registry();
    let mut memo = HashMemo::load(&Cache::new(&cli.results), Some(&store)).await?;
    let trials = sweep::plan_trials(
        &experiment,
        &pipeline,
        &registry,
        &super::overrides(set)?,
        &workdir,
        &mut memo,
    )?;
    let count = trials.len();
    let Some(planned) = trials.into_iter().find(|t| t.trial.index == trial) else {
        bail!(
            "experiment {experiment_id} ({}) has trials 0 to {}, not {trial}",
            experiment.name,
            count.saturating_sub(1)
        );
    };
    memo.save(&store).await?;
    if let Some((hash, run)) = store
        .succeeded_trials(experiment_id)
        .await?
        .get(&(trial as i64))
        && *hash == planned.plan.config_hash
    {
        println!("trial {trial}: done before (run {run}), not rerun");
        return Ok(());
    }
    let (runner, reporter) = super::sweep_view::runner(cli, &store, registry, jobs, &workdir);
    let summary = runner
        .run(experiment_id, &planned, slurm::task_gpus())
        .await;
    reporter.finish();
    store.close().await;
    let summary = summary?;
    println!(
        "trial {trial} ({}): run {} {}",
        planned.label,
        summary.run_id.unwrap_or_default(),
        summary.status.as_str()
    );
    match summary.status {
        RunStatus::Succeeded => Ok(()),
        RunStatus::Interrupted => Err(Exit {
            code: 130,
            message: "kiln: trial interrupted".into(),
        }
        .into()),
        _ => Err(Exit {
            code: 1,
            message: format!("kiln: trial {trial} failed"),
        }
        .into()),
    }
}
