//! One file per command; each maps arguments to library calls and prints the result.

mod bench;
mod bench_peers;
mod bench_rounds;
mod bench_suite;
mod bench_ui;
mod compare;
mod dag;
mod data;
mod gc;
mod lm;
mod query;
mod report;
mod rerun;
mod run;
mod runs;
mod stages;
mod status;
mod store;
mod sweep;
mod sweep_view;
mod tokenize;
mod trial;
mod ui;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_core::{Pipeline, Registry, spec};
use serde_json::Value;

use crate::args::{Cli, Command, SetArgs};

/// Runs the chosen command.
pub async fn execute(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Validate { files, set } => validate::run(files, set),
        Command::Run {
            file,
            set,
            jobs,
            gpus,
            force,
        } => run::run(&cli, file, set, *jobs, *gpus, force).await,
        Command::Status { file, set } => status::run(&cli, file, set).await,
        Command::Dag { file, format } => dag::run(file, *format),
        Command::Query { sql, format } => query::run(&cli, sql, *format).await,
        Command::Runs { limit, format } => runs::run(&cli, *limit, *format).await,
        Command::Ui { host, port, open } => ui::run(&cli, *host, *port, *open).await,
        Command::Gc {
            dry_run,
            keep_last,
            older_than,
        } => gc::run(&cli, *dry_run, *keep_last, *older_than).await,
        Command::Store(command) => store::run(&cli, command).await,
        Command::Stages => {
            stages::run(&registry());
            Ok(())
        }
        Command::Devices => {
            for (device, what) in kiln_model::device::available() {
                println!("{device:<12} {what}");
            }
            Ok(())
        }
        Command::Bench {
            which,
            rows,
            repeat,
            steps,
            model,
            seq,
            batch,
            on,
            ingest_into,
            times,
            only,
            threshold,
            out,
            ui_runs,
            json,
            data,
            peers,
            gpt2_steps,
        } => {
            if *which == crate::args::BenchKind::Ui {
                let options = bench_ui::Options {
                    runs: *ui_runs,
                    repeat: *repeat,
                    keep: out.clone(),
                };
                return bench_ui::run(&options).await;
            }
            if *which == crate::args::BenchKind::Report {
                return bench_suite::report(&cli, out.as_deref()).await;
            }
            if *which == crate::args::BenchKind::Suite {
                let suite = bench_suite::Options {
                    times: *times,
                    only: only.clone(),
                    threshold: *threshold,
                    rows: *rows,
                    steps: *steps,
                    gpt2_steps: *gpt2_steps,
                    data: data.clone(),
                    peers: *peers,
                };
                return bench_suite::run(&cli, &suite, on).await;
            }
            let train = bench::TrainArgs {
                steps: *steps,
                model: model.as_deref(),
                seq: *seq,
                batch: *batch,
            };
            if *json {
                return match which {
                    crate::args::BenchKind::Train => bench::train_json(&train, on),
                    crate::args::BenchKind::Ingest => bench::ingest_json(*rows).await,
                    _ => anyhow::bail!("--json is for `kiln bench train` and `kiln bench ingest`"),
                };
            }
            bench::run(
                &cli,
                *which,
                *rows,
                *repeat,
                &train,
                on,
                ingest_into.as_deref(),
            )
            .await
        }
        Command::Sweep {
            file,
            set,
            dry_run,
            lanes,
            jobs,
            gpus,
            executor,
            status,
            cancel,
        } => {
            let what = if *dry_run {
                sweep::What::DryRun
            } else if *status {
                sweep::What::Status
            } else if *cancel {
                sweep::What::Cancel
            } else {
                sweep::What::Run(sweep::RunArgs {
                    lanes: *lanes,
                    jobs: *jobs,
                    gpus: *gpus,
                    executor: *executor,
                })
            };
            sweep::run(&cli, file, set, what).await
        }
        Command::Trial {
            experiment,
            trial,
            set,
            jobs,
        } => trial::run(&cli, *experiment, *trial, set, *jobs).await,
        Command::Rerun {
            run,
            jobs,
            expect_identical,
            gpus,
            allow_changed,
        } => {
            let options = rerun::RerunOptions {
                jobs: *jobs,
                gpus: *gpus,
                expect_identical: *expect_identical,
                allow_changed: *allow_changed,
            };
            rerun::run(&cli, *run, &options).await
        }
        Command::Compare { a, b, format } => compare::run(&cli, *a, *b, *format).await,
        Command::Report {
            experiment,
            metric,
            out,
        } => report::run(&cli, *experiment, metric.as_deref(), out.as_deref()).await,
        Command::Data { command } => data::run(command),
        Command::Topk { .. }
        | Command::Nll { .. }
        | Command::Generate { .. }
        | Command::Trace { .. }
        | Command::Iterate { .. }
        | Command::Sentiment { .. }
        | Command::Gap { .. } => lm::run(&cli.command, cli.json),
        Command::Tokenize {
            tokenizer,
            tok,
            text,
            json,
        } => tokenize::run(tokenizer, tok.add_prefix_space, text, *json || cli.json),
    }
}

/// Every stage kind kiln knows: the engine's own, then each ML crate's.
pub fn registry() -> Registry {
    let mut registry = Registry::with_builtins();
    kiln_data::stages::register(&mut registry);
    kiln_train::stages::register(&mut registry);
    kiln_eval::stages::register(&mut registry);
    registry
}

/// Reads a pipeline file (errors name the file and place).
fn load(file: &Path) -> Result<Pipeline> {
    Ok(spec::load(file)?)
}

/// Parses `--set key=value` arguments.
pub(crate) fn overrides(set: &SetArgs) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for item in &set.set {
        let (key, value) = item
            .split_once('=')
            .with_context(|| format!("--set {item}: expected KEY=VALUE"))?;
        let value = kiln_core::value::parse_cli_value(value)
            .map_err(|e| anyhow::anyhow!("--set {item}: {e}"))?;
        out.insert(key.trim().to_owned(), value);
    }
    Ok(out)
}

/// A token that is cancelled on Ctrl-C (SIGINT) or SIGTERM (what `scancel` and `kill`
/// send): running stages see it and stop, the run ends `interrupted`, and training stages
/// leave a checkpoint to resume from.
pub(crate) fn cancel_on_signals(what: &'static str) -> kiln_core::CancelToken {
    let cancel = kiln_core::CancelToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        #[cfg(unix)]
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminated = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        eprintln!("kiln: interrupting {what}: waiting for running stages to stop");
        on_signal.cancel();
    });
    cancel
}

/// The results store, opened for writing (created and migrated as needed).
pub(crate) async fn open_store(cli: &Cli) -> Result<kiln_store::Store> {
    kiln_store::Store::open(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))
}

/// The results store, opened read-only, when it exists (none: nothing is created).
pub(crate) async fn readable_store(cli: &Cli) -> Result<Option<kiln_store::Store>> {
    match kiln_store::location(&cli.store) {
        Ok(l) if l.may_exist() => Ok(Some(
            kiln_store::Store::open_read_only(&cli.store)
                .await
                .with_context(|| format!("opening the results store {}", cli.store_label()))?,
        )),
        _ => Ok(None),
    }
}

/// The results store, opened for writing, when it exists already (none: it is not created).
pub(crate) async fn existing_store(cli: &Cli) -> Result<Option<kiln_store::Store>> {
    match kiln_store::location(&cli.store) {
        Ok(l) if l.may_exist() => Ok(Some(
            kiln_store::Store::open(&cli.store)
                .await
                .with_context(|| format!("opening the results store {}", cli.store_label()))?,
        )),
        _ => Ok(None),
    }
}
