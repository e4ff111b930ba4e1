//! `kiln bench suite`: every benchmark, `--times` times each, recorded in the store with the
//! machine's fingerprint and compared with that machine's history
//! (`kiln_core::regression`). Meant to run nightly; exit 1 flags a regression.

use anyhow::{Context, Result};
use kiln_core::regression::{self, Comparison, Figure, Verdict};
use kiln_model::device;
use kiln_store::{BenchFigure, Cell, Machine, QueryResult, Store};

use super::bench::{GenerateJob, TrainArgs, TrainJob, noop_run, store_benches};
use crate::args::{DeviceArgs, SuiteGroup, TableFormat};
use crate::{Cli, Exit};

/// What `kiln bench suite` runs.
pub struct Options {
    /// Times each benchmark runs.
    pub times: usize,
    /// Only these groups (all when empty).
    pub only: Vec<SuiteGroup>,
    /// The slowdown beyond noise that counts as a regression.
    pub threshold: f64,
    /// Metric rows of the ingest benchmark.
    pub rows: usize,
    /// Timed steps of the training benchmark.
    pub steps: usize,
}

/// Samples of one benchmark: name, unit, higher is better, values.
type Samples = Vec<(&'static str, &'static str, bool, Vec<f64>)>;

pub async fn run(cli: &Cli, options: &Options, on: &DeviceArgs) -> Result<()> {
    let wanted = |g: SuiteGroup| options.only.is_empty() || options.only.contains(&g);
    let mut samples: Samples = Vec::new();
    let mut push =
        |name, unit, higher, value: f64| match samples.iter_mut().find(|(n, ..)| *n == name) {
            Some((.., values)) => values.push(value),
            None => samples.push((name, unit, higher, vec![value])),
        };
    let (dev, precision) = on.parse()?;
    // One round more than asked: the first warms caches and is not kept.
    for round in 0..=options.times.max(1) {
        let mut push = |name, unit, higher, value| {
            if round > 0 {
                push(name, unit, higher, value);
            }
        };
        if wanted(SuiteGroup::Noop) {
            push("noop_run_ms", "ms", false, noop_run(5)?);
        }
        if wanted(SuiteGroup::Ingest) {
            let dir = tempfile::tempdir().context("creating a scratch directory")?;
            let store = Store::open(&dir.path().join("bench.sqlite").to_string_lossy()).await?;
            let (ingest, last_ms) = store_benches(&store, options.rows).await?;
            store.close().await;
            push("ingest_rows_per_s", "rows/s", true, ingest);
            push("last_metric_query_ms", "ms", false, last_ms);
        }
        if wanted(SuiteGroup::Train) {
            let train = TrainArgs {
                steps: options.steps,
                model: None,
                seq: 64,
                batch: 32,
            };
            let out = device::dispatch(dev, precision, TrainJob(train))??;
            push("train_small_tokens_per_s", "tok/s", true, out.tokens_per_s);
        }
        if wanted(SuiteGroup::Generate) {
            let (with, without) = device::dispatch_infer(dev, precision, GenerateJob)??;
            push("generate_kv_cache_tokens_per_s", "tok/s", true, with);
            push("generate_no_cache_tokens_per_s", "tok/s", true, without);
        }
    }
    let figures = figures(samples);
    let store = super::open_store(cli).await?;
    let machine_id = store.machine_id(&machine()).await?;
    let mut compared = Vec::new();
    for f in &figures {
        let history: Vec<Figure> = store
            .bench_history(machine_id, &f.name, regression::WINDOW as i64)
            .await?
            .into_iter()
            .map(|(value, spread)| Figure { value, spread })
            .collect();
        let now = Figure {
            value: f.value,
            spread: f.spread,
        };
        compared.push(regression::compare(
            now,
            &history,
            f.higher_is_better,
            options.threshold,
        ));
    }
    let meta = super::run::run_meta(&std::env::current_dir()?);
    let suite = format!("{} {}", kiln_store::now(), std::process::id());
    store
        .record_bench(
            &suite,
            machine_id,
            &meta.kiln_version,
            meta.git_commit.as_deref(),
            &figures,
        )
        .await?;
    store.close().await;
    print(&figures, &compared)?;
    let slower: Vec<&str> = figures
        .iter()
        .zip(&compared)
        .filter(|(_, c)| c.verdict == Verdict::Slower)
        .map(|(f, _)| f.name.as_str())
        .collect();
    if slower.is_empty() {
        return Ok(());
    }
    Err(Exit {
        code: 1,
        message: format!(
            "kiln: bench suite: slower than this machine's history: {}",
            slower.join(", ")
        ),
    }
    .into())
}

/// `kiln bench report`: `bench.html` in `out` (default `results/reports`).
///
/// # Errors
/// An unreadable store or an unwritable directory.
pub async fn report(cli: &Cli, out: Option<&std::path::Path>) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    let rows = store.bench_rows().await?;
    store.close().await;
    let dir = out.map_or_else(|| cli.results.join("reports"), std::path::Path::to_path_buf);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bench.html");
    std::fs::write(&path, kiln_report::bench_html(&rows))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{} figure(s): {}", rows.len(), path.display());
    Ok(())
}

/// Each benchmark's median and spread. `KILN_BENCH_SLOWDOWN=F` (for tests of the
/// regression check only) makes every figure F times worse.
fn figures(samples: Samples) -> Vec<BenchFigure> {
    let slowdown: f64 = std::env::var("KILN_BENCH_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|f: &f64| *f > 0.0)
        .unwrap_or(1.0);
    samples
        .into_iter()
        .filter_map(|(name, unit, higher, values)| {
            let worse = |v: f64| if higher { v / slowdown } else { v * slowdown };
            let values: Vec<f64> = values.into_iter().map(worse).collect();
            let s = regression::summarize(&values)?;
            Some(BenchFigure {
                name: name.to_owned(),
                value: s.value,
                unit: unit.to_owned(),
                spread: s.spread,
                repeats: values.len() as i64,
                higher_is_better: higher,
            })
        })
        .collect()
}

fn print(figures: &[BenchFigure], compared: &[Comparison]) -> Result<()> {
    let num = |v: Option<f64>| v.map_or(Cell::Null, |v| Cell::Text(format!("{v:.4}")));
    let rows = figures
        .iter()
        .zip(compared)
        .map(|(f, c)| {
            vec![
                Cell::Text(f.name.clone()),
                Cell::Text(format!("{:.1} ± {:.1}", f.value, f.spread)),
                Cell::Text(f.unit.clone()),
                num(c.baseline),
                num(c.ratio),
                Cell::Text(format!("{:.1}%", c.noise * 100.0)),
                Cell::Text(c.verdict.as_str().to_owned()),
            ]
        })
        .collect();
    let columns = [
        "benchmark",
        "now",
        "unit",
        "baseline",
        "ratio",
        "noise",
        "verdict",
    ]
    .map(String::from)
    .to_vec();
    crate::output::print(&QueryResult { columns, rows }, TableFormat::Table)
}

/// This machine as benchmarks see it: CPU model and SIMD flags, cores, memory, GPUs.
fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    let cpu_model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let flags = field("flags").unwrap_or_default();
    let cpu_flags = [
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_bf16",
        "amx_tile",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .collect::<Vec<_>>()
    .join(" ");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i64);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| (kb + (1 << 19)) >> 20);
    let gpu = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', ", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".to_owned());
    let fingerprint =
        blake3::hash(format!("{cpu_model}|{cpu_flags}|{cores}|{memory_gib}|{gpu}").as_bytes())
            .to_hex()
            .to_string();
    Machine {
        fingerprint,
        cpu_model,
        cpu_flags,
        cores,
        memory_gib,
        gpu,
    }
}
