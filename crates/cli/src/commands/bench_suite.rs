//! `kiln bench suite`: every benchmark, `--times` times each, recorded in the store with the
//! machine's fingerprint and compared with that machine's history
//! (`kiln_core::regression`). Meant to run nightly; exit 1 flags a regression.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_core::regression::{self, Comparison, Figure, Verdict};
use kiln_model::device::Precision;
use kiln_store::{BenchFigure, Cell, Machine, PeerFigure, QueryResult, Store};

use super::bench_peers::Peers;
use super::bench_rounds::{DataInputs, Samples, Series, data_inputs, figure_suffix, one_round};
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
    /// Timed steps of the small training benchmark.
    pub steps: usize,
    /// Timed steps of the GPT-2 124M training benchmark.
    pub gpt2_steps: usize,
    /// The shared data directory (the data benchmark's input).
    pub data: PathBuf,
    /// Whether to run the peers too.
    pub peers: bool,
}

pub async fn run(cli: &Cli, options: &Options, on: &DeviceArgs) -> Result<()> {
    let (dev, precision) = on.parse()?;
    if options.peers && !figure_suffix(dev, precision).is_empty() {
        anyhow::bail!(
            "--peers runs PyTorch and transformers on the CPU in f32: leave it out with \
             --device {} --precision {}",
            on.device,
            on.precision
        );
    }
    let data = data_inputs(options)?;
    let mut peers = options
        .peers
        .then(|| Peers::find(&std::env::current_dir()?))
        .transpose()?;
    let series = measure(options, on, data.as_ref(), peers.as_mut()).await?;
    let mut figures = figures(series, slowdown(false));
    let store = super::open_store(cli).await?;
    let machine_id = store.machine_id(&machine()).await?;
    let mut compared = compare(&store, machine_id, &figures, options.threshold).await?;
    let doubtful = slower_groups(&figures, &compared);
    if !doubtful.is_empty() {
        eprintln!(
            "bench suite: {} looked slower: measuring again to confirm",
            slower_names(&figures, &compared).join(", ")
        );
        let data = data
            .as_ref()
            .filter(|_| doubtful.contains(&SuiteGroup::Data));
        let again = Options {
            only: doubtful,
            data: options.data.clone(),
            ..*options
        };
        measure_again(&again, on, data, peers.as_mut(), &mut figures).await?;
        compared = compare(&store, machine_id, &figures, options.threshold).await?;
    }
    let slower = slower_names(&figures, &compared).join(", ");
    let meta = super::run::run_meta(&std::env::current_dir()?);
    let suite = format!("{} {}", kiln_store::now(), std::process::id());
    let recorded: Vec<BenchFigure> = figures.into_iter().map(|f| f.figure).collect();
    store
        .record_bench(
            &suite,
            machine_id,
            &meta.kiln_version,
            meta.git_commit.as_deref(),
            &recorded,
        )
        .await?;
    store.close().await;
    print(&recorded, &compared)?;
    if slower.is_empty() {
        return Ok(());
    }
    Err(Exit {
        code: 1,
        message: format!("kiln: bench suite: slower than this machine's history: {slower}"),
    }
    .into())
}

/// The wanted groups' samples: one warm-up round, which is not kept, then `--times` rounds.
async fn measure(
    options: &Options,
    on: &DeviceArgs,
    data: Option<&DataInputs>,
    mut peers: Option<&mut Peers>,
) -> Result<Vec<Series>> {
    let mut samples = Samples::default();
    for round in 0..=options.times.max(1) {
        samples.keep = round > 0;
        let warm = if round == 0 {
            " (warm-up, not kept)"
        } else {
            ""
        };
        eprintln!(
            "bench suite: round {round} of {}{warm}",
            options.times.max(1)
        );
        one_round(options, on, data, peers.as_deref_mut(), &mut samples).await?;
    }
    Ok(samples.series)
}

/// Measures `options.only`'s groups once more and puts their figures in place of the first
/// measurement's. A figure can look slower because something else ran on the machine for a
/// while; the second measurement is the one judged and kept.
async fn measure_again(
    options: &Options,
    on: &DeviceArgs,
    data: Option<&DataInputs>,
    peers: Option<&mut Peers>,
    figures: &mut [Measured],
) -> Result<()> {
    let series = measure(options, on, data, peers).await?;
    for new in self::figures(series, slowdown(true)) {
        let Some(old) = figures
            .iter_mut()
            .find(|old| old.figure.name == new.figure.name)
        else {
            continue;
        };
        eprintln!(
            "bench suite: {}: {:.1} {} measured again (was {:.1})",
            new.figure.name, new.figure.value, new.figure.unit, old.figure.value
        );
        *old = new;
    }
    Ok(())
}

/// Each figure against this machine's history of it.
async fn compare(
    store: &Store,
    machine_id: i64,
    figures: &[Measured],
    threshold: f64,
) -> Result<Vec<Comparison>> {
    let mut compared = Vec::new();
    for Measured { figure: f, .. } in figures {
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
            threshold,
        ));
    }
    Ok(compared)
}

/// The figures judged slower.
fn slower_names<'a>(figures: &'a [Measured], compared: &[Comparison]) -> Vec<&'a str> {
    figures
        .iter()
        .zip(compared)
        .filter(|(_, c)| c.verdict == Verdict::Slower)
        .map(|(f, _)| f.figure.name.as_str())
        .collect()
}

/// The groups that measure the figures judged slower, each once.
fn slower_groups(figures: &[Measured], compared: &[Comparison]) -> Vec<SuiteGroup> {
    let mut groups = Vec::new();
    for (f, c) in figures.iter().zip(compared) {
        if c.verdict == Verdict::Slower && !groups.contains(&f.group) {
            groups.push(f.group);
        }
    }
    groups
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

/// A figure and the group that measures it.
struct Measured {
    group: SuiteGroup,
    figure: BenchFigure,
}

/// How many times worse the figures are made, for tests of the regression check only:
/// `KILN_BENCH_SLOWDOWN=F` every measurement, `KILN_BENCH_SLOWDOWN_ONCE=F` the first one only
/// (as if the machine had been busy while it ran), not the measurement that confirms it.
fn slowdown(confirming: bool) -> f64 {
    let factor = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|f: &f64| *f > 0.0)
            .unwrap_or(1.0)
    };
    let once = if confirming {
        1.0
    } else {
        factor("KILN_BENCH_SLOWDOWN_ONCE")
    };
    factor("KILN_BENCH_SLOWDOWN") * once
}

/// Each benchmark's median and spread, made `slowdown` times worse.
fn figures(series: Vec<Series>, slowdown: f64) -> Vec<Measured> {
    series
        .into_iter()
        .filter_map(|s| {
            let higher = s.higher;
            let worse = |v: f64| if higher { v / slowdown } else { v * slowdown };
            let values: Vec<f64> = s.values.into_iter().map(worse).collect();
            let summary = regression::summarize(&values)?;
            let peer = s.peer.and_then(|(name, values)| {
                let p = regression::summarize(&values)?;
                Some(PeerFigure {
                    name: name.to_owned(),
                    value: p.value,
                    spread: p.spread,
                })
            });
            Some(Measured {
                group: s.group,
                figure: BenchFigure {
                    name: s.name,
                    value: summary.value,
                    unit: s.unit.to_owned(),
                    spread: summary.spread,
                    repeats: values.len() as i64,
                    higher_is_better: higher,
                    peer,
                },
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
                f.peer.as_ref().map_or(Cell::Null, |p| {
                    Cell::Text(format!("{} {:.1} ± {:.1}", p.name, p.value, p.spread))
                }),
                f.ratio()
                    .map_or(Cell::Null, |r| Cell::Text(format!("{r:.2}x"))),
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
        "peer, same run",
        "kiln vs peer",
    ]
    .map(String::from)
    .to_vec();
    crate::output::print(&QueryResult { columns, rows }, TableFormat::Table)
}

/// The CPU's nominal fp32 FMA peak, GFLOP/s: cores × the clock `/proc/cpuinfo` reports ×
/// [`fma_flops_per_cycle`]. `None` without FMA or that file.
pub(crate) fn cpu_fma_peak_gflops() -> Option<f64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| cpuinfo_field(&cpuinfo, key);
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    let per_cycle = fma_flops_per_cycle(
        &field("vendor_id").unwrap_or_default(),
        field("cpu family").and_then(|f| f.parse().ok()),
        &field("flags")?,
    )?;
    let cores = std::thread::available_parallelism().ok()?.get() as f64;
    Some(cores * mhz * per_cycle / 1000.0)
}

/// fp32 FLOPs a core retires a cycle at most: 2 FMA units × 2 FLOPs × the lanes of their
/// datapath: 8 with AVX2 and FMA, 16 with AVX-512, except on AMD before Zen 5 (family 26),
/// whose Zen 4 runs AVX-512 through 256-bit units (8). `None` without FMA.
fn fma_flops_per_cycle(vendor: &str, family: Option<u32>, flags: &str) -> Option<f64> {
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let half_width_avx512 = vendor == "AuthenticAMD" && family.is_some_and(|f| f < 26);
    if has("avx512f") && !half_width_avx512 {
        Some(64.0)
    } else if has("avx2") && has("fma") {
        Some(32.0)
    } else {
        None
    }
}

/// The first `key: value` line of `/proc/cpuinfo` text whose key starts with `key`: its value.
fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The NVIDIA GPUs `nvidia-smi` lists, by name, in its order (none without it).
pub(crate) fn gpu_names() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// An NVIDIA GPU's datasheet peak in TFLOP/s, dense (without 2:4 sparsity), by the name
/// `nvidia-smi` gives it: f32 on the CUDA cores, f16 and bf16 on the tensor cores. `None`
/// for a GPU not in the table.
pub(crate) fn gpu_peak_tflops(name: &str, precision: Precision) -> Option<f64> {
    let words: Vec<&str> = name.split([' ', '-']).collect();
    let has = |w: &str| words.iter().any(|x| x.eq_ignore_ascii_case(w));
    // (fp32, bf16 and fp16 dense), from NVIDIA's datasheets.
    let (f32_peak, half_peak) = if has("H100") || has("H200") {
        if has("NVL") {
            (60.0, 835.0)
        } else if has("PCIe") {
            (51.0, 756.0)
        } else {
            (67.0, 989.0)
        }
    } else if has("A100") {
        (19.5, 312.0)
    } else if has("L40S") {
        (91.6, 362.0)
    } else if has("L4") {
        (30.3, 121.0)
    } else if has("A10") {
        (31.2, 125.0)
    } else {
        return None;
    };
    Some(match precision {
        Precision::F32 => f32_peak,
        Precision::F16 | Precision::Bf16 => half_peak,
    })
}

/// This machine as benchmarks see it: CPU model and SIMD flags, cores, memory, GPUs.
fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| cpuinfo_field(&cpuinfo, key);
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
    let gpus = gpu_names();
    let gpu = if gpus.is_empty() {
        "none".to_owned()
    } else {
        gpus.join(", ")
    };
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

#[cfg(test)]
mod tests {
    use super::{Precision, fma_flops_per_cycle, gpu_peak_tflops};

    #[test]
    fn gpu_peaks_follow_the_datasheet_of_the_named_variant() {
        let peak = |name, p| gpu_peak_tflops(name, p);
        assert_eq!(peak("NVIDIA H200", Precision::Bf16), Some(989.0));
        assert_eq!(peak("NVIDIA H200", Precision::F32), Some(67.0));
        assert_eq!(peak("NVIDIA H100 80GB HBM3", Precision::Bf16), Some(989.0));
        assert_eq!(peak("NVIDIA H100 PCIe", Precision::Bf16), Some(756.0));
        assert_eq!(peak("NVIDIA H200 NVL", Precision::F32), Some(60.0));
        assert_eq!(peak("NVIDIA A100-SXM4-80GB", Precision::F16), Some(312.0));
        // A10 is not A100, nor A10G (a different chip kiln has no datasheet figure for).
        assert_eq!(peak("NVIDIA A10", Precision::F32), Some(31.2));
        assert_eq!(peak("NVIDIA A10G", Precision::F32), None);
        assert_eq!(peak("NVIDIA GeForce GTX 1080", Precision::F32), None);
    }

    #[test]
    fn fma_width_follows_the_datapath_not_only_the_flags() {
        let avx2 = "fpu sse2 avx avx2 fma";
        let avx512 = "fpu sse2 avx avx2 fma avx512f avx512bw";
        // Zen 2 (family 23): AVX2 only; Zen 4 (25): AVX-512 on 256-bit units; Zen 5 (26): full width.
        assert_eq!(
            fma_flops_per_cycle("AuthenticAMD", Some(23), avx2),
            Some(32.0)
        );
        assert_eq!(
            fma_flops_per_cycle("AuthenticAMD", Some(25), avx512),
            Some(32.0)
        );
        assert_eq!(
            fma_flops_per_cycle("AuthenticAMD", Some(26), avx512),
            Some(64.0)
        );
        assert_eq!(
            fma_flops_per_cycle("GenuineIntel", Some(6), avx512),
            Some(64.0)
        );
        assert_eq!(
            fma_flops_per_cycle("GenuineIntel", Some(6), "fpu sse2 avx"),
            None
        );
    }
}
