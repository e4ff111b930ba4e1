//! `kiln bench`: kiln's own overheads, printed and recorded in the store as a `kiln-bench` run.

use std::time::Instant;

use anyhow::{Context, Result};
use kiln_store::{MetricPoint, NewRun, RunStatus, Store};

use kiln_model::burn::tensor::backend::{AutodiffBackend, Backend};
use kiln_model::device::{self, InferJob, Job};

use crate::Cli;
use crate::args::{BenchKind, DeviceArgs};

/// The training benchmark: `steps` timed steps of the small GPT-2 (no `model`), or of a named
/// model on `seq` × `batch` rows.
#[derive(Clone, Copy)]
pub struct TrainArgs<'a> {
    pub steps: usize,
    pub model: Option<&'a str>,
    pub seq: usize,
    pub batch: usize,
}

pub(crate) struct TrainJob<'a>(pub(crate) TrainArgs<'a>);

impl Job for TrainJob<'_> {
    type Output = kiln_train::Result<kiln_train::bench::Throughput>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        use kiln_train::bench;
        let a = self.0;
        match a.model {
            None => bench::run::<B>(bench::Shape::default(), a.steps, 3, &device),
            Some(name) => {
                let (model, vocab) = bench::named_model::<B>(name, &device)?;
                bench::run_model(model, vocab, a.seq, a.batch, a.steps, bench::MODEL_WARMUP)
            }
        }
    }
}

/// Prompt tokens, new tokens and batch rows of the decoding benchmarks (the longest prompt
/// of the batch has `GENERATE_PROMPT` tokens).
pub(crate) const GENERATE_PROMPT: usize = 32;
pub(crate) const GENERATE_NEW: usize = 64;
pub(crate) const GENERATE_BATCH: usize = 8;

/// Decoding tokens/s of the DistilGPT-2 shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decoding {
    /// One prompt, with the KV cache.
    pub kv_cache: f64,
    /// One prompt, re-reading the context every token.
    pub no_cache: f64,
    /// [`GENERATE_BATCH`] left-padded prompts at once, all rows' tokens counted.
    pub batch: f64,
}

/// Decoding tokens/s with and without the KV cache, and batched.
pub(crate) struct GenerateJob;

impl InferJob for GenerateJob {
    type Output = kiln_eval::Result<Decoding>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        use kiln_eval::bench;
        let config = kiln_model::gpt2::Gpt2Config::distilgpt2();
        let (p, n) = (GENERATE_PROMPT, GENERATE_NEW);
        let one = |cache: bool| bench::generate_tokens_per_s::<B>(&config, p, n, cache, &device);
        Ok(Decoding {
            kv_cache: one(true)?,
            no_cache: one(false)?,
            batch: bench::generate_batch_tokens_per_s::<B>(&config, p, n, GENERATE_BATCH, &device)?,
        })
    }
}

pub async fn run(
    cli: &Cli,
    which: BenchKind,
    rows: usize,
    repeat: usize,
    train: &TrainArgs<'_>,
    on: &DeviceArgs,
    ingest_into: Option<&str>,
) -> Result<()> {
    let mut results: Vec<(&str, f64, &str, &str)> = Vec::new();
    if which == BenchKind::Train {
        let (dev, precision) = on.parse()?;
        let out = device::dispatch(dev, precision, TrainJob(*train))??;
        eprintln!(
            "train {}: {} steps in {:.2} s on {dev} ({precision})",
            train.model.unwrap_or("small gpt2"),
            out.steps,
            out.seconds
        );
        results.push((
            "train_tokens_per_s",
            out.tokens_per_s,
            "tok/s",
            "≥ 1.0× PyTorch eager",
        ));
    }
    if which == BenchKind::Generate {
        let (dev, precision) = on.parse()?;
        let d = device::dispatch_infer(dev, precision, GenerateJob)??;
        eprintln!("generate: on {dev} ({precision})");
        results.push((
            "generate_kv_cache_tokens_per_s",
            d.kv_cache,
            "tok/s",
            "faster than without",
        ));
        results.push((
            "generate_no_cache_tokens_per_s",
            d.no_cache,
            "tok/s",
            "the baseline",
        ));
        results.push(("kv_cache_speedup", d.kv_cache / d.no_cache, "x", "> 1"));
        results.push((
            "generate_batch8_tokens_per_s",
            d.batch,
            "tok/s",
            "faster than one prompt",
        ));
    }
    if matches!(which, BenchKind::All | BenchKind::Noop) {
        let ms = noop_run(repeat)?;
        results.push(("noop_run_ms", ms, "ms", "≤ 50 ms"));
    }
    if matches!(
        which,
        BenchKind::All | BenchKind::Ingest | BenchKind::LastMetric
    ) {
        let dir = tempfile::tempdir().context("creating a scratch directory")?;
        let url = match ingest_into {
            Some(url) => url.to_owned(),
            None => dir
                .path()
                .join("bench.sqlite")
                .to_string_lossy()
                .into_owned(),
        };
        let store = Store::open(&url)
            .await
            .with_context(|| format!("opening the benchmark's store {url}"))?;
        eprintln!("ingest: into a {} store", store.backend());
        let (ingest, last_ms) = store_benches(&store, rows).await?;
        if matches!(which, BenchKind::All | BenchKind::Ingest) {
            results.push(("ingest_rows_per_s", ingest, "rows/s", "≥ 100,000 rows/s"));
        }
        if matches!(which, BenchKind::All | BenchKind::LastMetric) {
            results.push(("last_metric_query_ms", last_ms, "ms", "≤ 100 ms"));
        }
        store.close().await;
    }
    for (name, value, unit, goal) in &results {
        println!("{name:<24} {value:>14.1} {unit:<7} (goal {goal})");
    }
    // Record into the results store, like any other run.
    let store = Store::open(&cli.store).await?;
    let pipeline_id = store
        .pipeline_id("kiln-bench", "kiln bench", env!("CARGO_PKG_VERSION"))
        .await?;
    let run_id = store
        .begin_run(&NewRun {
            pipeline_id,
            config_hash: format!("rows={rows} repeat={repeat}"),
            config: serde_json::json!({"rows": rows, "repeat": repeat}).to_string(),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            params: [
                ("rows".to_owned(), serde_json::json!(rows)),
                ("repeat".to_owned(), serde_json::json!(repeat)),
                ("device".to_owned(), serde_json::json!(on.device)),
                ("precision".to_owned(), serde_json::json!(on.precision)),
                (
                    "model".to_owned(),
                    serde_json::json!(train.model.unwrap_or("small-gpt2")),
                ),
            ]
            .into_iter()
            .collect(),
            ..NewRun::default()
        })
        .await?;
    let writer = store.metric_writer();
    for (name, value, _, _) in &results {
        writer.send(MetricPoint {
            run_id,
            stage: "bench".into(),
            step: 0,
            name: (*name).to_owned(),
            value: *value,
            time: kiln_store::unix_now(),
        })?;
    }
    writer.close().await?;
    store.finish_run(run_id, RunStatus::Succeeded).await?;
    println!("recorded as run {run_id} in {}", cli.store_label());
    Ok(())
}

/// `kiln bench train --json`: the training benchmark's figures and this process's peak
/// memory as one JSON line, nothing recorded. `kiln bench suite` runs each training benchmark
/// this way, in a process of its own, so that the peak memory is that benchmark's alone.
pub fn train_json(train: &TrainArgs<'_>, on: &DeviceArgs) -> Result<()> {
    let (dev, precision) = on.parse()?;
    let out = device::dispatch(dev, precision, TrainJob(*train))??;
    let line = serde_json::json!({
        "steps": out.steps,
        "seconds": out.seconds,
        "tokens_per_s": out.tokens_per_s,
        "peak_rss_mib": peak_rss_mib(),
    });
    println!("{line}");
    Ok(())
}

/// `kiln bench ingest --json`: the ingest and last-value figures on a scratch SQLite store as
/// one JSON line, nothing recorded. `kiln bench suite` runs them this way so that SQLite's
/// closing work on a million rows, and the memory they took, end with this process instead of
/// running into the next benchmark (measured in-process: the data benchmark right after it
/// at 240K rows/s, 380K alone).
pub async fn ingest_json(rows: usize) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let url = dir.path().join("bench.sqlite");
    let store = Store::open(&url.to_string_lossy())
        .await
        .with_context(|| format!("opening the benchmark's store {}", url.display()))?;
    let (ingest, last_ms) = store_benches(&store, rows).await?;
    store.close().await;
    let line = serde_json::json!({
        "ingest_rows_per_s": ingest,
        "last_metric_query_ms": last_ms,
    });
    println!("{line}");
    Ok(())
}

/// This process's peak resident memory so far (MiB), from `/proc/self/status` (`VmHWM`);
/// `None` where there is no such file.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Median wall time (ms) of `kiln run` as a whole process on an up-to-date 10-stage pipeline.
pub(crate) fn noop_run(repeat: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut yaml = String::from("name: bench-noop\nparams:\n  n: 1\nstages:\n");
    for i in 0..10 {
        yaml.push_str(&format!(
            "  s{i}:\n    uses: echo\n    with: {{message: \"${{n}}-{i}\"}}\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    let file = dir.path().join("noop.yaml");
    std::fs::write(&file, yaml)?;
    let exe = std::env::current_exe()?;
    let run = || -> Result<f64> {
        let start = Instant::now();
        let status = std::process::Command::new(&exe)
            .args(["--quiet", "run"])
            .arg(&file)
            .current_dir(dir.path())
            .env_remove("KILN_STORE")
            .env_remove("KILN_RESULTS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "kiln run failed during the benchmark");
        Ok(start.elapsed().as_secs_f64() * 1000.0)
    };
    run()?; // executes all 10 stages once
    let mut times = (0..repeat.max(1))
        .map(|_| run())
        .collect::<Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Timings of the last-value query: a query of a few ms varies by 20% from one to the next, so
/// a suite's figure is the median of this many.
const QUERY_REPEATS: usize = 15;

/// Ingest `rows` metric rows through the batched writer (rows/s), then time the
/// last-value-per-(run, metric) query (ms, median of [`QUERY_REPEATS`]).
pub(crate) async fn store_benches(store: &Store, rows: usize) -> Result<(f64, f64)> {
    let pipeline_id = store.pipeline_id("bench", "bench", "x").await?;
    let runs = 100;
    let mut run_ids = Vec::new();
    for _ in 0..runs {
        run_ids.push(
            store
                .begin_run(&NewRun {
                    pipeline_id,
                    kiln_version: "bench".into(),
                    host: "bench".into(),
                    ..NewRun::default()
                })
                .await?,
        );
    }
    let names = [
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "val_loss",
        "acc",
        "kl",
        "ce",
        "mem",
        "step_time",
    ];
    let per_run = rows / runs;
    let points: Vec<MetricPoint> = run_ids
        .iter()
        .flat_map(|&run_id| {
            (0..per_run).map(move |i| MetricPoint {
                run_id,
                stage: "train".into(),
                step: (i / names.len()) as i64,
                name: names[i % names.len()].into(),
                value: i as f64 * 0.001,
                time: 0.0,
            })
        })
        .collect();
    let writer = store.metric_writer();
    let start = Instant::now();
    let n = points.len();
    for p in points {
        writer.send(p)?;
    }
    writer.close().await?;
    let ingest = n as f64 / start.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..QUERY_REPEATS {
        let start = Instant::now();
        let result = store.final_metrics_of(&run_ids).await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            result.len() == runs * names.len(),
            "the last-value query returned {} rows",
            result.len()
        );
    }
    times.sort_by(f64::total_cmp);
    Ok((ingest, times[QUERY_REPEATS / 2]))
}
