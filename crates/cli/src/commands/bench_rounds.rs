//! One round of `kiln bench suite`: every wanted benchmark once, each followed by its peer
//! when `--peers` asks for them, so that kiln and the peer see the machine in the same state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use kiln_model::device::{self, CpuBackendKind, DEFAULT_CPU, Device, Precision};
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
    /// The group that measures it (what `--only` names).
    pub group: SuiteGroup,
    pub name: String,
    pub unit: &'static str,
    pub higher: bool,
    pub values: Vec<f64>,
    pub peer: Option<(&'static str, Vec<f64>)>,
}

/// The samples of the kept rounds.
pub(crate) struct Samples {
    pub series: Vec<Series>,
    /// False during the warm-up round.
    pub keep: bool,
    /// The group whose benchmarks run now.
    group: SuiteGroup,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            series: Vec::new(),
            keep: false,
            group: SuiteGroup::Noop,
        }
    }
}

impl Samples {
    fn push(&mut self, name: &str, unit: &'static str, higher: bool, value: f64) {
        if !self.keep {
            return;
        }
        match self.series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.values.push(value),
            None => self.series.push(Series {
                group: self.group,
                name: name.to_owned(),
                unit,
                higher,
                values: vec![value],
                peer: None,
            }),
        }
    }

    /// A peer's sample of benchmark `name` (pushed after kiln's).
    fn peer(&mut self, name: &str, peer: &'static str, value: f64) {
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
    let wanted = |s: &mut Samples, g: SuiteGroup| {
        s.group = g;
        o.only.is_empty() || o.only.contains(&g)
    };
    if wanted(s, SuiteGroup::Noop) {
        s.push("noop_run_ms", "ms", false, noop_run(5)?);
        if let Some(p) = peers.as_deref_mut() {
            s.peer("noop_run_ms", "dvc-repro", p.dvc_noop(5)?);
        }
    }
    if wanted(s, SuiteGroup::Ingest) {
        let (ingest, last_ms) = ingest_child(o.rows)?;
        s.push("ingest_rows_per_s", "rows/s", true, ingest);
        s.push("last_metric_query_ms", "ms", false, last_ms);
    }
    s.group = SuiteGroup::Data;
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
    let (dev, precision) = on.parse()?;
    let tag = figure_suffix(dev, precision);
    if wanted(s, SuiteGroup::Train) {
        small_training(o, on, &tag, peers.as_deref(), s)?;
    }
    if wanted(s, SuiteGroup::Gpt2) {
        model_training(&GPT2, o, on, &tag, peers.as_deref(), s)?;
    }
    if wanted(s, SuiteGroup::Smollm2) {
        model_training(&SMOLLM2, o, on, &tag, peers.as_deref(), s)?;
    }
    if wanted(s, SuiteGroup::Generate) {
        let d = device::dispatch_infer(dev, precision, GenerateJob)??;
        let kv = format!("generate_kv_cache_tokens_per_s{tag}");
        let none = format!("generate_no_cache_tokens_per_s{tag}");
        let batch = format!("generate_batch8_tokens_per_s{tag}");
        s.push(&kv, "tok/s", true, d.kv_cache);
        s.push(&none, "tok/s", true, d.no_cache);
        s.push(&batch, "tok/s", true, d.batch);
        if let Some(p) = peers.as_deref() {
            let hf = "transformers-generate";
            s.peer(&kv, hf, p.generate(true, 1)?);
            s.peer(&none, hf, p.generate(false, 1)?);
            s.peer(&batch, hf, p.generate(true, GENERATE_BATCH)?);
        }
    }
    Ok(())
}

/// The suffix of the figures measured on `--device` in `--precision`: none on the default CPU
/// in f32 (the names their history has), else the device kind and the precision
/// (`train_gpt2_tokens_per_s_cuda_bf16`), so that each device keeps a history of its own and a
/// GPU's figure is never compared with the CPU's.
pub(crate) fn figure_suffix(device: Device, precision: Precision) -> String {
    match device {
        Device::Cpu(kind) if kind == DEFAULT_CPU && precision == Precision::F32 => String::new(),
        Device::Cpu(CpuBackendKind::Flex) => format!("_cpu_flex_{precision}"),
        Device::Cpu(CpuBackendKind::NdArray) => format!("_cpu_ndarray_{precision}"),
        Device::Cuda(_) => format!("_cuda_{precision}"),
        Device::Wgpu(_) => format!("_wgpu_{precision}"),
    }
}

fn small_training(
    o: &Options,
    on: &DeviceArgs,
    tag: &str,
    peers: Option<&Peers>,
    s: &mut Samples,
) -> Result<()> {
    let tokens = format!("train_small_tokens_per_s{tag}");
    let memory = format!("train_small_peak_mib{tag}");
    let k = train_child(on, &["--steps", &o.steps.to_string()])?;
    s.push(&tokens, "tok/s", true, k.tokens_per_s);
    if let Some(peak) = k.peak_mib {
        s.push(&memory, "MiB", false, peak);
    }
    if let Some(p) = peers {
        let t = p.train(None, 64, 32, o.steps, SMALL_WARMUP)?;
        s.peer(&tokens, "pytorch-eager", t.tokens_per_s);
        if let Some(peak) = t.peak_mib {
            s.peer(&memory, "pytorch-eager", peak);
        }
    }
    Ok(())
}

/// A named model's training benchmark: the figures' names (before the device suffix).
struct ModelBench {
    /// `kiln bench train --model` and `torch_train.py --model`.
    model: &'static str,
    tokens: &'static str,
    peak: &'static str,
    /// GPT-2 only: the achieved GFLOP/s and its fraction of the device's peak.
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
/// and for GPT-2 the achieved GFLOP/s at 6·N FLOPs a token and its fraction of the device's
/// peak ([`device_peak`]).
fn model_training(
    m: &ModelBench,
    o: &Options,
    on: &DeviceArgs,
    tag: &str,
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
    let (dev, precision) = on.parse()?;
    let peak = device_peak(dev, precision);
    let named = |name: &str| format!("{name}{tag}");
    let record = |s: &mut Samples, who: Option<&'static str>, t: &TrainFigures| {
        let put = |s: &mut Samples, name: &str, unit, higher, value| match who {
            None => s.push(&named(name), unit, higher, value),
            Some(peer) => s.peer(&named(name), peer, value),
        };
        put(s, m.tokens, "tok/s", true, t.tokens_per_s);
        if let Some((gflops_name, mfu_name)) = m.flops {
            put(s, gflops_name, "GFLOP/s", true, gflops(t.tokens_per_s));
            if let Some((peak, unit)) = peak {
                put(s, mfu_name, unit, true, gflops(t.tokens_per_s) / peak);
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

/// The device's peak GFLOP/s in `precision` and the unit of the fraction of it: the CPU's
/// nominal FMA peak, or an NVIDIA GPU's datasheet peak ([`super::bench_suite::gpu_peak_tflops`]).
/// `None` (said on stderr for a GPU) where kiln does not know it.
fn device_peak(dev: Device, precision: Precision) -> Option<(f64, &'static str)> {
    match dev {
        Device::Cpu(_) => super::bench_suite::cpu_fma_peak_gflops().map(|g| (g, "of FMA peak")),
        Device::Cuda(n) => {
            let name = super::bench_suite::gpu_names().into_iter().nth(n);
            let peak = name
                .as_deref()
                .and_then(|name| super::bench_suite::gpu_peak_tflops(name, precision));
            if peak.is_none() {
                eprintln!(
                    "bench suite: no MFU: kiln does not know the {precision} peak of {}",
                    name.as_deref().unwrap_or("this GPU")
                );
            }
            let unit = match precision {
                Precision::F32 => "of GPU FP32 peak",
                Precision::F16 | Precision::Bf16 => "of GPU tensor peak",
            };
            peak.map(|t| (t * 1000.0, unit))
        }
        Device::Wgpu(_) => None,
    }
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

#[cfg(test)]
mod tests {
    use super::{CpuBackendKind, Device, Precision, figure_suffix};

    #[test]
    fn each_device_and_precision_keeps_a_history_of_its_own() {
        let suffix = |d: &str, p: &str| {
            figure_suffix(
                d.parse().expect("a device"),
                p.parse().expect("a precision"),
            )
        };
        // `cpu` and `cpu:flex` are the same backend: the names the CPU history has.
        assert_eq!(suffix("cpu", "f32"), "");
        assert_eq!(suffix("cpu:flex", "f32"), "");
        assert_eq!(suffix("cpu:ndarray", "f32"), "_cpu_ndarray_f32");
        // Every GPU index of a kind shares one history (the machine fingerprint names the GPUs).
        assert_eq!(suffix("cuda", "f32"), "_cuda_f32");
        assert_eq!(suffix("cuda:1", "bf16"), "_cuda_bf16");
        assert_eq!(suffix("wgpu", "f16"), "_wgpu_f16");
        assert_eq!(
            figure_suffix(Device::Cpu(CpuBackendKind::Flex), Precision::Bf16),
            "_cpu_flex_bf16"
        );
    }
}
