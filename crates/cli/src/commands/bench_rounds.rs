//! One round of `kiln bench suite`: every wanted benchmark once, each followed by its peer
//! when `--peers` asks for them, so that kiln and the peer see the machine in the same state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use kiln_model::device;
use kiln_store::Store;

use super::bench::{GENERATE_BATCH, GenerateJob, noop_run};
use super::bench_peers::{Peers, TrainFigures};
use super::bench_suite::Options;
use crate::args::{DeviceArgs, SuiteGroup};

/// GPT-2 124M's training benchmark: rows × tokens a step, as the PyTorch peer runs it.
const GPT2_BATCH: usize = 16;
const GPT2_SEQ: usize = 64;
/// The small training benchmark's untimed steps (`kiln_train::bench::run`'s).
const SMALL_WARMUP: usize = 3;
/// The pipeline the data benchmark runs (`benches/data/sentiment140.yaml`).
const DATA_PIPELINE: &str = include_str!("../../../../benches/data/sentiment140.yaml");

/// One benchmark's samples, and its peer's.
pub(crate) struct Series {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher: bool,
    pub values: Vec<f64>,
    pub peer: Option<(&'static str, Vec<f64>)>,
}

/// The samples of the kept rounds.
#[derive(Default)]
pub(crate) struct Samples {
    pub series: Vec<Series>,
    /// False during the warm-up round.
    pub keep: bool,
}

impl Samples {
    fn push(&mut self, name: &'static str, unit: &'static str, higher: bool, value: f64) {
        if !self.keep {
            return;
        }
        match self.series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.values.push(value),
            None => self.series.push(Series {
                name,
                unit,
                higher,
                values: vec![value],
                peer: None,
            }),
        }
    }

    /// A peer's sample of benchmark `name` (pushed after kiln's).
    fn peer(&mut self, name: &'static str, peer: &'static str, value: f64) {
        if !self.keep {
            return;
        }
        if let Some(s) = self.series.iter_mut().find(|s| s.name == name) {
            s.peer
                .get_or_insert_with(|| (peer, Vec::new()))
                .1
                .push(value);
        }
    }
}

/// The data benchmark's inputs.
pub(crate) struct DataInputs {
    csv: PathBuf,
    tokenizer: PathBuf,
}

/// The data benchmark's inputs under `--data`, or `None` (said on stderr) when they are
/// missing and the data benchmark was not asked for by name.
///
/// # Errors
/// `--only data` without the data.
pub(crate) fn data_inputs(o: &Options) -> Result<Option<DataInputs>> {
    if !(o.only.is_empty() || o.only.contains(&SuiteGroup::Data)) {
        return Ok(None);
    }
    let csv = o.data.join("sentiment140/training.sample.csv");
    let tokenizer = o.data.join("gpt2-tokenizer");
    if csv.is_file() && tokenizer.is_dir() {
        return Ok(Some(DataInputs {
            csv: csv.canonicalize()?,
            tokenizer: tokenizer.canonicalize()?,
        }));
    }
    let missing = format!(
        "no {} or {} (give --data DIR or KILN_SHARED_DATA)",
        csv.display(),
        tokenizer.display()
    );
    if o.only.contains(&SuiteGroup::Data) {
        bail!("the data benchmark: {missing}");
    }
    eprintln!("bench suite: the data benchmark is left out: {missing}");
    Ok(None)
}

/// Runs every wanted benchmark once, each followed by its peer.
pub(crate) async fn one_round(
    o: &Options,
    on: &DeviceArgs,
    data: Option<&DataInputs>,
    mut peers: Option<&mut Peers>,
    s: &mut Samples,
) -> Result<()> {
    let wanted = |g: SuiteGroup| o.only.is_empty() || o.only.contains(&g);
    if wanted(SuiteGroup::Noop) {
        s.push("noop_run_ms", "ms", false, noop_run(5)?);
        if let Some(p) = peers.as_deref_mut() {
            s.peer("noop_run_ms", "dvc-repro", p.dvc_noop(5)?);
        }
    }
    if wanted(SuiteGroup::Ingest) {
        let (ingest, last_ms) = ingest_child(o.rows)?;
        s.push("ingest_rows_per_s", "rows/s", true, ingest);
        s.push("last_metric_query_ms", "ms", false, last_ms);
    }
    if let Some(d) = data {
        s.push("data_rows_per_s", "rows/s", true, data_run(d).await?);
        if let Some(p) = peers.as_deref_mut() {
            s.peer(
                "data_rows_per_s",
                "datasets-map",
                p.data(&d.csv, &d.tokenizer)?,
            );
        }
    }
    if wanted(SuiteGroup::Train) {
        small_training(o, on, peers.as_deref(), s)?;
    }
    if wanted(SuiteGroup::Gpt2) {
        model_training(&GPT2, o, on, peers.as_deref(), s)?;
    }
    if wanted(SuiteGroup::Smollm2) {
        model_training(&SMOLLM2, o, on, peers.as_deref(), s)?;
    }
    if wanted(SuiteGroup::Generate) {
        let (dev, precision) = on.parse()?;
        let d = device::dispatch_infer(dev, precision, GenerateJob)??;
        s.push("generate_kv_cache_tokens_per_s", "tok/s", true, d.kv_cache);
        s.push("generate_no_cache_tokens_per_s", "tok/s", true, d.no_cache);
        s.push("generate_batch8_tokens_per_s", "tok/s", true, d.batch);
        if let Some(p) = peers.as_deref() {
            let hf = "transformers-generate";
            let with = p.generate(true, 1)?;
            s.peer("generate_kv_cache_tokens_per_s", hf, with);
            let without = p.generate(false, 1)?;
            s.peer("generate_no_cache_tokens_per_s", hf, without);
            let batch = p.generate(true, GENERATE_BATCH)?;
            s.peer("generate_batch8_tokens_per_s", hf, batch);
        }
    }
    Ok(())
}

fn small_training(
    o: &Options,
    on: &DeviceArgs,
    peers: Option<&Peers>,
    s: &mut Samples,
) -> Result<()> {
    let k = train_child(on, &["--steps", &o.steps.to_string()])?;
    s.push("train_small_tokens_per_s", "tok/s", true, k.tokens_per_s);
    if let Some(peak) = k.peak_mib {
        s.push("train_small_peak_mib", "MiB", false, peak);
    }
    if let Some(p) = peers {
        let t = p.train(None, 64, 32, o.steps, SMALL_WARMUP)?;
        s.peer("train_small_tokens_per_s", "pytorch-eager", t.tokens_per_s);
        if let Some(peak) = t.peak_mib {
            s.peer("train_small_peak_mib", "pytorch-eager", peak);
        }
    }
    Ok(())
}

/// A named model's training benchmark: the figures' names.
struct ModelBench {
    /// `kiln bench train --model` and `torch_train.py --model`.
    model: &'static str,
    tokens: &'static str,
    peak: &'static str,
    /// GPT-2 only: the achieved GFLOP/s and its fraction of the CPU's FMA peak.
    flops: Option<(&'static str, &'static str)>,
}

const GPT2: ModelBench = ModelBench {
    model: "gpt2",
    tokens: "train_gpt2_tokens_per_s",
    peak: "train_gpt2_peak_mib",
    flops: Some(("train_gpt2_gflops", "train_gpt2_mfu")),
};

const SMOLLM2: ModelBench = ModelBench {
    model: "smollm2-135m",
    tokens: "train_smollm2_135m_tokens_per_s",
    peak: "train_smollm2_135m_peak_mib",
    flops: None,
};

/// A named model's training (batch 16 × seq 64, as for GPT-2 124M): tokens/s, peak memory,
/// and for GPT-2 the achieved GFLOP/s at 6·N FLOPs a token and its fraction of the CPU's
/// nominal FMA peak.
fn model_training(
    m: &ModelBench,
    o: &Options,
    on: &DeviceArgs,
    peers: Option<&Peers>,
    s: &mut Samples,
) -> Result<()> {
    let (seq, batch, steps) = (
        GPT2_SEQ.to_string(),
        GPT2_BATCH.to_string(),
        o.gpt2_steps.to_string(),
    );
    let args = [
        "--model", m.model, "--seq", &seq, "--batch", &batch, "--steps", &steps,
    ];
    let flops_per_token = 6.0 * kiln_model::gpt2::Gpt2Config::gpt2().parameters() as f64;
    let gflops = |tokens_per_s: f64| tokens_per_s * flops_per_token / 1e9;
    let peak = (on.device == "cpu")
        .then(super::bench_suite::cpu_fma_peak_gflops)
        .flatten();
    let record = |s: &mut Samples, who: Option<&'static str>, t: &TrainFigures| {
        let put = |s: &mut Samples, name, unit, higher, value| match who {
            None => s.push(name, unit, higher, value),
            Some(peer) => s.peer(name, peer, value),
        };
        put(s, m.tokens, "tok/s", true, t.tokens_per_s);
        if let Some((gflops_name, mfu_name)) = m.flops {
            put(s, gflops_name, "GFLOP/s", true, gflops(t.tokens_per_s));
            if let Some(peak) = peak {
                put(
                    s,
                    mfu_name,
                    "of FMA peak",
                    true,
                    gflops(t.tokens_per_s) / peak,
                );
            }
        }
        if let Some(peak) = t.peak_mib {
            put(s, m.peak, "MiB", false, peak);
        }
    };
    record(s, None, &train_child(on, &args)?);
    if let Some(p) = peers {
        let warmup = kiln_train::bench::MODEL_WARMUP;
        let t = p.train(Some(m.model), GPT2_SEQ, GPT2_BATCH, o.gpt2_steps, warmup)?;
        record(s, Some("pytorch-eager"), &t);
    }
    Ok(())
}

/// Runs `kiln bench <args> --json` (a process of its own) and parses the JSON line it prints.
fn kiln_json(args: &[&str]) -> Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let what = format!("kiln bench {}", args.join(" "));
    let out = Command::new(&exe)
        .arg("bench")
        .args(args)
        .arg("--json")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {what} ({})", exe.display()))?;
    ensure!(out.status.success(), "{what} failed ({})", out.status);
    super::bench_peers::last_json_line(&out.stdout, &what)
}

/// The number `key` of a `--json` line.
fn json_number(v: &serde_json::Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("kiln bench --json: no number {key:?} in {v}"))
}

/// The ingest and last-value figures from a `kiln bench ingest --json` process of its own.
fn ingest_child(rows: usize) -> Result<(f64, f64)> {
    let v = kiln_json(&["ingest", "--rows", &rows.to_string()])?;
    Ok((
        json_number(&v, "ingest_rows_per_s")?,
        json_number(&v, "last_metric_query_ms")?,
    ))
}

/// A training benchmark's figures from a `kiln bench train --json` process of its own.
fn train_child(on: &DeviceArgs, args: &[&str]) -> Result<TrainFigures> {
    let mut all = vec![
        "train",
        "--device",
        &on.device,
        "--precision",
        &on.precision,
    ];
    all.extend_from_slice(args);
    let v = kiln_json(&all)?;
    Ok(TrainFigures {
        tokens_per_s: json_number(&v, "tokens_per_s")?,
        peak_mib: v["peak_rss_mib"].as_f64(),
    })
}

/// Rows/s of `kiln run` on the data pipeline as a whole process, in a fresh directory (so
/// nothing is cached): read, clean, tokenize, split, write the shards, record.
async fn data_run(d: &DataInputs) -> Result<f64> {
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let pipeline = dir.path().join("bench-data.yaml");
    std::fs::write(&pipeline, DATA_PIPELINE)?;
    let store = dir.path().join("store.sqlite");
    let exe = std::env::current_exe()?;
    let set = |k: &str, p: &Path| format!("{k}={}", p.display());
    let start = Instant::now();
    let status = Command::new(&exe)
        .arg("--quiet")
        .arg("--store")
        .arg(&store)
        .arg("--results")
        .arg(dir.path().join("results"))
        .arg("run")
        .arg(&pipeline)
        .args(["--set", &set("source", &d.csv)])
        .args(["--set", &set("tokenizer", &d.tokenizer)])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .status()?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        status.success(),
        "the data benchmark's kiln run failed ({status})"
    );
    let store = Store::open_read_only(&store.to_string_lossy()).await?;
    let run = store.recent_runs(1).await?;
    let rows = match run.first() {
        Some(r) => store.final_metrics(r.id).await?,
        None => Vec::new(),
    };
    store.close().await;
    let read = rows
        .iter()
        .find(|m| m.name == "rows_read")
        .and_then(|m| m.value)
        .context("the data benchmark's run recorded no rows_read")?;
    Ok(read / seconds)
}
