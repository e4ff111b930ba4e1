//! `kiln bench ui`: `kiln ui` at scale. A store of `runs` runs × 20 params × 50 metrics ×
//! 100 steps (in 50 experiments) is generated once (kept with `--out`), then the real server
//! answers over HTTP, timed from request to last byte: the runs page's first page, the
//! same filtered and sorted by a metric, and the compare page of 20 runs.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kiln_store::{MetricPoint, NewRun, RunStatus, Store};

const PARAMS: usize = 20;
const METRICS: usize = 50;
const STEPS: i64 = 100;
const EXPERIMENTS: usize = 50;

/// What to generate and how often to ask.
pub struct Options {
    /// Runs in the generated store.
    pub runs: usize,
    /// Requests per page (the median is reported).
    pub repeat: usize,
    /// Keep (and reuse) the generated store in this directory.
    pub keep: Option<PathBuf>,
}

pub async fn run(opts: &Options) -> Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let dir = opts
        .keep
        .clone()
        .unwrap_or_else(|| scratch.path().to_owned());
    let results = dir.join("results");
    let url = results.join("kiln.sqlite");
    if url.exists() {
        eprintln!("reusing the store {}", url.display());
    } else {
        std::fs::create_dir_all(&results)
            .with_context(|| format!("creating {}", results.display()))?;
        let started = Instant::now();
        generate(&url, opts.runs).await?;
        eprintln!(
            "generated {} runs × {PARAMS} params × {METRICS} metrics × {STEPS} steps in {:.0} s",
            opts.runs,
            started.elapsed().as_secs_f64()
        );
    }
    let store = Store::open_read_only(&url.to_string_lossy())
        .await
        .with_context(|| format!("opening {}", url.display()))?;
    let runs = store
        .run_page(&kiln_store::browse::RunQuery::default())
        .await?
        .total;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let router = kiln_ui::router(
        store,
        &kiln_ui::Options {
            results,
            project: dir.clone(),
        },
    );
    let server = tokio::spawn(kiln_ui::serve(listener, router));
    let step = (runs / 20).max(1);
    let ids: Vec<String> = (0..20).map(|i| (1 + i * step).to_string()).collect();
    let pages = [
        ("runs_page_ms", "/".to_owned()),
        (
            "runs_filtered_sorted_ms",
            "/?filter=p00+%3E%3D+0.5+and+m00+%3C+0.5&sort=metric%3Atrain.m01&desc=1".to_owned(),
        ),
        ("compare_20_ms", format!("/compare?runs={}", ids.join(","))),
    ];
    let repeat = opts.repeat.max(1);
    let mut figures = serde_json::Map::new();
    figures.insert("runs".into(), runs.into());
    for (name, path) in pages {
        let times = tokio::task::spawn_blocking(move || time_get(addr, &path, repeat)).await??;
        println!(
            "{name:<24} median {:>7.1} ms   min {:>7.1}   max {:>7.1}   ({repeat} requests)",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
        figures.insert(name.into(), times[times.len() / 2].into());
    }
    println!("{}", serde_json::Value::Object(figures));
    server.abort();
    Ok(())
}

/// Sorted wall times (ms) of `repeat` GETs of `path`, after one untimed warm-up.
fn time_get(addr: SocketAddr, path: &str, repeat: usize) -> Result<Vec<f64>> {
    get(addr, path)?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        get(addr, path)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// One HTTP/1.1 GET, read to the end; an error unless the answer is 200.
fn get(addr: SocketAddr, path: &str) -> Result<usize> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        bail!("GET {path}: {head}");
    }
    Ok(body.len())
}

/// A deterministic value in [0, 1) for (run, slot).
fn unit(run: usize, slot: usize) -> f64 {
    let mut x = (run as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (slot as u64 + 1);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes `runs` runs into a new store at `path`: 20 params (19 numbers, one optimizer
/// name), 50 metrics of 100 steps each, spread over 50 experiments.
async fn generate(path: &Path, runs: usize) -> Result<()> {
    let store = Store::open(&path.to_string_lossy()).await?;
    let pipeline = store
        .pipeline_id("scale", "pipelines/scale.yaml", "h")
        .await?;
    let mut experiments = Vec::new();
    for e in 0..EXPERIMENTS {
        let id = store
            .experiment_id(
                &format!("sweep-{e:02}"),
                "experiments/scale.yaml",
                &e.to_string(),
            )
            .await?;
        store.set_experiment_metric(id, Some("train.m00")).await?;
        experiments.push(id);
    }
    let writer = store.metric_writer();
    for r in 0..runs {
        let mut params: std::collections::BTreeMap<String, serde_json::Value> = (0..PARAMS - 1)
            .map(|k| (format!("p{k:02}"), serde_json::json!(unit(r, k))))
            .collect();
        params.insert(
            "optimizer".into(),
            serde_json::json!(["adamw", "sgd", "lion"][r % 3]),
        );
        let id = store
            .begin_run(&NewRun {
                pipeline_id: pipeline,
                experiment_id: Some(experiments[r % EXPERIMENTS]),
                trial: Some(i64::try_from(r / EXPERIMENTS)?),
                kiln_version: env!("CARGO_PKG_VERSION").into(),
                host: "bench".into(),
                params,
                ..NewRun::default()
            })
            .await?;
        for m in 0..METRICS {
            let end = unit(r, 100 + m);
            for step in 0..STEPS {
                let t = step as f64 / STEPS as f64;
                writer.send(MetricPoint {
                    run_id: id,
                    stage: "train".into(),
                    step,
                    name: format!("m{m:02}"),
                    value: end + (1.0 - t) * (1.0 - end),
                    time: t,
                })?;
            }
        }
        // One run's points at a time: the channel never holds the whole store.
        writer.flush().await?;
        store.finish_run(id, RunStatus::Succeeded).await?;
        if r % 1000 == 999 {
            eprintln!("{} runs written", r + 1);
        }
    }
    writer.close().await?;
    store.close().await;
    Ok(())
}
