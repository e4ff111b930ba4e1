//! The GPU code path (issue 13) on burn's wgpu backend, on whatever adapter the machine has:
//! in CI that is Mesa's software Vulkan device (lavapipe), so the cubecl kernels a CUDA run
//! uses execute in every CI run. Each test runs the real dispatch (`device: wgpu`), compares
//! with the transformers fixtures or with the CPU, and needs an adapter: without one it says so
//! and passes, unless `KILN_REQUIRE_WGPU` is set (as `.ci/run` sets it), where it fails.

use std::path::Path;

use kiln_eval::decode::{self, GenerateOptions};
use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::TensorData;
use kiln_model::burn::tensor::backend::AutodiffBackend;
use kiln_model::device::{self, Device, InferJob, Job, Precision};
use kiln_model::gpt2::Gpt2Config;
use kiln_model::lora::LoraConfig;
use kiln_model::{hf, host};
use kiln_train::objective::Lm;
use kiln_train::trainer::{self, Data, TrainOptions};
use serde_json::Value;

use crate::model::{fixture_logits, long_context_logits};
use crate::support::{Project, fixture, repo_root};
use crate::train::{
    Collect, expected, fused_and_plain, ids, internalization_losses, lm_options,
    peaked_internalization, rel_close, sample_dataset, tiny_config, vocab_of, weights,
};

/// `wgpu:0` when this machine has a wgpu adapter.
fn wgpu() -> Option<Device> {
    let adapters = device::wgpu_adapters();
    if adapters.is_empty() {
        assert!(
            std::env::var_os("KILN_REQUIRE_WGPU").is_none(),
            "KILN_REQUIRE_WGPU is set but this machine has no wgpu adapter: install \
             mesa-vulkan-drivers and libvulkan1 (Mesa's software Vulkan device)"
        );
        eprintln!("skipping: no wgpu adapter (apt-get install mesa-vulkan-drivers libvulkan1)");
        return None;
    }
    eprintln!("wgpu adapters: {adapters:?}");
    Some(Device::Wgpu(0))
}

const CPU: Device = Device::Cpu(device::DEFAULT_CPU);

fn run<J: Job>(on: Device, job: J) -> J::Output {
    device::dispatch(on, Precision::F32, job).expect("the device is usable")
}

fn infer<J: InferJob>(on: Device, job: J) -> J::Output {
    device::dispatch_infer(on, Precision::F32, job).expect("the device is usable")
}

fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture's logits cases on a backend: (name, kiln's logits, transformers' logits).
struct FixtureLogits;

impl InferJob for FixtureLogits {
    type Output = Vec<(String, Vec<f32>, Vec<f32>)>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let (_, model) = hf::load::<B>(&fixture("numerics/tiny-gpt2"), &device).expect("loads");
        let exp = expected();
        let tensor = |v: &Value| {
            let rows = ids(v);
            let shape = [rows.len(), rows[0].len()];
            Tensor::<B, 2, Int>::from_data(TensorData::new(rows.concat(), shape), &device)
        };
        ["single", "short", "padded"]
            .iter()
            .map(|name| {
                let case = &exp["logits"][name];
                let mask = (!case["mask"].is_null()).then(|| tensor(&case["mask"]));
                let got = host::read_f32(model.forward(tensor(&case["ids"]), mask));
                ((*name).to_owned(), got, fixture_logits(case))
            })
            .collect()
    }
}

/// The masked-LM loss (fused LM head and plain) with gradients, and the internalization
/// losses, on a backend.
struct FixtureLosses;

type Losses = ([(f64, Vec<f32>, Vec<f32>); 2], Vec<(f64, f64, String)>);

impl Job for FixtureLosses {
    type Output = Losses;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Losses {
        let masked = fused_and_plain::<B>(&device);
        let (_, student) = hf::load::<B>(&fixture("numerics/tiny-gpt2"), &device).expect("s");
        let (_, teacher) =
            hf::load::<B::InnerBackend>(&fixture("numerics/tiny-gpt2-teacher"), &device)
                .expect("teacher");
        (
            masked,
            internalization_losses(&student, &teacher, &expected()),
        )
    }
}

#[test]
fn gpt2_logits_and_losses_match_transformers_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    for (name, got, want) in infer(gpu, FixtureLogits) {
        let worst = largest_difference(&got, &want);
        assert!(worst < 1e-4, "{name}: max |wgpu - transformers| = {worst}");
    }
    let want = expected()["masked_lm"]["loss"].as_f64().expect("loss");
    let ([fused, plain], internalization) = run(gpu, FixtureLosses);
    let ([cpu_fused, _], _) = run(CPU, FixtureLosses);
    rel_close(fused.0, want, "fused masked LM loss on wgpu");
    rel_close(plain.0, want, "plain masked LM loss on wgpu");
    for (what, a, b) in [
        ("wte", &fused.1, &cpu_fused.1),
        ("c_fc", &fused.2, &cpu_fused.2),
    ] {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = largest_difference(a, b);
        assert!(
            scale > 0.0 && worst <= 1e-4 * scale,
            "{what} gradient: wgpu vs cpu differ by {worst} (largest {scale})"
        );
    }
    assert_eq!(internalization.len(), 6);
    for (got, want, what) in internalization {
        rel_close(got, want, &format!("internalization loss on wgpu, {what}"));
    }
}

/// A peaked row of GPT-2's width, `[1, 1e-8, 1e-8, …]`, summed by kiln's row sum and its
/// whole-tensor sum, three times each.
struct PeakedRowSums;

impl InferJob for PeakedRowSums {
    type Output = Vec<f32>;
    fn run<B: Backend>(self, device: B::Device) -> Vec<f32> {
        let mut row = vec![1e-8f32; 50257];
        row[0] = 1.0;
        let x = Tensor::<B, 2>::from_data(TensorData::new(row, [1, 50257]), &device);
        (0..3)
            .flat_map(|_| {
                let by_row = host::read_f32(kiln_model::backend::row_sums(x.clone()));
                let whole = host::read_f32(kiln_model::backend::sum(x.clone()));
                by_row.into_iter().chain(whole)
            })
            .collect()
    }
}

#[test]
fn sums_over_a_vocabulary_keep_a_peaked_rows_tail_and_repeat_exactly_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    let want = 1.0 + 50256.0 * 1e-8;
    let got = infer(gpu, PeakedRowSums);
    for v in &got {
        let rel = (f64::from(*v) - want).abs() / want;
        assert!(rel < 1e-6, "sum {v} vs {want} ({rel:e}): {got:?}");
    }
    assert!(
        got.iter().all(|v| v.to_bits() == got[0].to_bits()),
        "sums differ between calls: {got:?}"
    );
}

/// On the peaked GPT-2-vocabulary fixture: the worst logit error at 512 positions, and the
/// internalization losses (the loss runs in f32 on wgpu, whose shaders have no f64 `exp`).
struct Peaked;

impl Job for Peaked {
    type Output = (f32, Vec<(f64, f64, String)>);
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        (
            long_context_logits::<B::InnerBackend>(&device),
            peaked_internalization::<B>(&device),
        )
    }
}

#[test]
fn a_peaked_gpt2_vocabulary_model_matches_transformers_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    let (worst_logit, losses) = run(gpu, Peaked);
    assert!(
        worst_logit < 1e-4,
        "512-position logits: max |wgpu - transformers (f64)| = {worst_logit}"
    );
    let report: Vec<String> = losses
        .iter()
        .map(|(got, want, what)| {
            let rel = (got - want).abs() / want.abs();
            format!("{what}: wgpu {got} vs {want} ({rel:.1e})")
        })
        .collect();
    eprintln!("{}", report.join("\n"));
    let worst = losses
        .iter()
        .map(|(got, want, _)| (got - want).abs() / want.abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "relative errors:\n{}", report.join("\n"));
}

/// The peaked fixture's top 10 next-token probabilities and its NLL, computed on a backend.
struct PeakedScores;

impl InferJob for PeakedScores {
    type Output = (Vec<(u32, f32)>, f64);
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let dir = fixture("numerics/tiny-gpt2-peaked");
        let (_, model) = hf::load::<B>(&dir, &device).expect("loads");
        let exp = crate::eval::expected_peaked();
        let ids = |v: &Value| crate::eval::ids(v);
        let probs = kiln_eval::score::next_token_probs(&model, &ids(&exp["topk"]["ids"]));
        let top = kiln_eval::score::top_k(&probs, 10).expect("k = 10");
        let nll = kiln_eval::score::nll_from(&model, &ids(&exp["nll"]["ids"]), 1);
        (top, nll)
    }
}

#[test]
fn peaked_top_k_and_nll_on_wgpu_match_transformers_in_float64() {
    let Some(gpu) = wgpu() else { return };
    let (top, nll) = infer(gpu, PeakedScores);
    let exp = crate::eval::expected_peaked();
    let want = crate::eval::floats(&exp["topk"]["top_probs"]);
    assert!(want[0] > 0.9, "the fixture is peaked");
    let order: Vec<u32> = top.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, crate::eval::ids(&exp["topk"]["top_ids"]));
    let err = crate::eval::worst(top.iter().map(|(_, p)| f64::from(*p)), &want);
    assert!(
        err < 1e-5,
        "top-k: max |wgpu − transformers (f64)| = {err:e}"
    );
    let want = exp["nll"]["nll"].as_f64().expect("nll");
    assert!((nll - want).abs() < 1e-3, "NLL {nll} vs {want}");
}

/// Training on a backend from the same starting weights (a saved directory): the per-step
/// losses, the trained model's weights, the device reads the steps made, the outcome's
/// `resumed_from`, and (when `save` is given) the model saved there.
struct Train<'a> {
    start: &'a Path,
    data: &'a Path,
    checkpoints: std::path::PathBuf,
    opts: TrainOptions,
    stop_at: Option<usize>,
    save: Option<&'a Path>,
    lora: Option<LoraConfig>,
}

impl<'a> Train<'a> {
    /// Ten steps from `start` on `data`, checkpointing under `checkpoints`.
    fn new(start: &'a Path, data: &'a Path, checkpoints: std::path::PathBuf) -> Self {
        Self {
            start,
            data,
            checkpoints,
            opts: ten_steps(),
            stop_at: None,
            save: None,
            lora: None,
        }
    }
}

struct Trained {
    losses: Vec<(usize, f64)>,
    metrics: Vec<(String, usize, f64)>,
    weights: Vec<f32>,
    /// Device reads per step (from the second step on: the first also loads the data).
    reads_per_step: Vec<u64>,
    resumed_from: Option<usize>,
}

impl Job for Train<'_> {
    type Output = Trained;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Trained {
        let (_, mut model) = hf::load::<B>(self.start, &device).expect("start loads");
        if let Some(lora) = &self.lora {
            model = kiln_model::seeded::<B, _>(&device, 1, || {
                model.with_lora(lora, &device).map(kiln_model::drawn)
            })
            .expect("adapters attach");
        }
        let mut lm = Lm {
            pad: 0,
            max_length: Some(64),
        };
        let mut seen = Collect {
            stop_at: self.stop_at,
            ..Collect::default()
        };
        let out = trainer::train(
            kiln_model::Model::Gpt2(model),
            &mut lm,
            &Data {
                dir: self.data.to_owned(),
            },
            &self.opts,
            &self.checkpoints,
            &mut seen,
        );
        let reads_per_step = seen.reads_at.windows(2).map(|w| w[1] - w[0]).collect();
        let (weights, resumed_from) = match out {
            Ok(out) => {
                if let Some(dir) = self.save {
                    out.model.save(dir).expect("saves");
                }
                (weights(&out.model), Some(out.resumed_from))
            }
            Err(kiln_train::Error::Interrupted { .. }) => (Vec::new(), None),
            Err(e) => panic!("training failed: {e}"),
        };
        Trained {
            losses: seen.losses,
            metrics: seen.metrics,
            weights,
            reads_per_step,
            resumed_from,
        }
    }
}

/// A tiny GPT-2 for the sample dataset, saved as the starting point of every run.
fn start(root: &Path, data: &Path) -> std::path::PathBuf {
    let config: Gpt2Config = tiny_config(vocab_of(data));
    let cpu = Default::default();
    let model = kiln_model::seeded::<kiln_model::Flex, _>(&cpu, 3, || {
        kiln_model::drawn(config.init::<kiln_model::Flex>(&cpu))
    });
    let dir = root.join("start");
    hf::save(&model, &config, &dir).expect("saves");
    dir
}

fn ten_steps() -> TrainOptions {
    TrainOptions {
        eval_every: None,
        checkpoint_every: Some(5),
        log_every: 1,
        ..lm_options(10)
    }
}

#[test]
fn ten_training_steps_on_wgpu_match_the_cpu_reading_the_device_once_per_step() {
    let Some(gpu) = wgpu() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let start = start(tmp.path(), &data);
    let train = |on: Device, name: &str| run(on, Train::new(&start, &data, tmp.path().join(name)));
    let cpu = train(CPU, "cpu");
    let gpu = train(gpu, "wgpu");
    assert_eq!(cpu.losses.len(), 10);
    assert_eq!(gpu.losses.len(), 10);
    let mut worst = 0f64;
    for ((step, a), (_, b)) in cpu.losses.iter().zip(&gpu.losses) {
        let rel = (a - b).abs() / a.abs();
        worst = worst.max(rel);
        assert!(
            rel < 1e-3,
            "step {step}: cpu loss {a} vs wgpu {b} (relative {rel:e})"
        );
    }
    eprintln!("10 steps: largest relative loss difference, wgpu vs cpu: {worst:e}");
    assert!(gpu.losses[9].1 < gpu.losses[0].1, "{:?}", gpu.losses);
    // One read per step (the step's losses and gradient norms together) and none elsewhere in
    // the loop, checkpoint steps (5) included: a checkpoint copies the weights out, but
    // through burn-store's record, not inside the step.
    assert_eq!(gpu.reads_per_step, [1; 9], "device-to-host reads per step");
    assert_eq!(cpu.reads_per_step, [1; 9]);
}

#[test]
fn resuming_on_wgpu_at_step_5_of_10_matches_an_uninterrupted_wgpu_run_and_saves_round_trip() {
    let Some(gpu) = wgpu() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let start = start(tmp.path(), &data);
    let saved = tmp.path().join("saved");
    let job = |name: &str, stop_at: Option<usize>, save: Option<&'static str>| Train {
        stop_at,
        save: save.map(|_| saved.as_path()),
        ..Train::new(&start, &data, tmp.path().join(name))
    };
    let whole = run(gpu, job("whole", None, Some("save")));
    let first = run(gpu, job("resumed", Some(5), None));
    assert_eq!(first.resumed_from, None, "stopped at step 5");
    assert_eq!(first.losses.len(), 5);
    let second = run(gpu, job("resumed", None, None));
    assert_eq!(second.resumed_from, Some(5));
    assert_eq!(
        second.losses, whole.losses,
        "per-step losses after resuming"
    );
    let timing = |m: &[(String, usize, f64)]| -> Vec<(String, usize, u64)> {
        m.iter()
            .filter(|(n, _, _)| n != "tokens_per_s")
            .map(|(n, s, v)| (n.clone(), *s, v.to_bits()))
            .collect()
    };
    assert_eq!(timing(&second.metrics), timing(&whole.metrics));
    assert!(
        second.weights == whole.weights,
        "weights differ after resuming"
    );

    // Save on wgpu, load on wgpu: the same weights and the same logits.
    struct Reload<'a>(&'a Path);
    impl InferJob for Reload<'_> {
        type Output = (Vec<f32>, Vec<f32>);
        fn run<B: Backend>(self, device: B::Device) -> Self::Output {
            let (_, model) = hf::load::<B>(self.0, &device).expect("loads back");
            let ids = Tensor::<B, 2, Int>::from_data(
                TensorData::new(vec![1i64, 5, 9, 20, 33, 2, 7, 8], [2, 4]),
                &device,
            );
            (weights(&model), host::read_f32(model.forward(ids, None)))
        }
    }
    let (reloaded, logits) = infer(gpu, Reload(&saved));
    assert!(
        reloaded == whole.weights,
        "weights differ after save and load"
    );
    let (_, logits_again) = infer(gpu, Reload(&saved));
    assert!(logits == logits_again && !logits.is_empty());
}

#[test]
fn lora_and_half_precision_train_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let start = start(tmp.path(), &data);
    let job = |name: &str, lora: Option<LoraConfig>| Train {
        opts: TrainOptions {
            checkpoint_every: None,
            ..ten_steps()
        },
        lora,
        ..Train::new(&start, &data, tmp.path().join(name))
    };
    // LoRA: the adapters' random start comes from each backend's own generator, so the run
    // is compared with itself: it learns, and still reads the device once per step.
    let lora = run(gpu, job("lora", Some(LoraConfig::new(4).with_c_proj(true))));
    assert_eq!(lora.losses.len(), 10);
    assert!(lora.losses.iter().all(|(_, l)| l.is_finite()));
    assert!(lora.losses[9].1 < lora.losses[0].1, "{:?}", lora.losses);
    assert_eq!(lora.reads_per_step, [1; 9]);

    // f16 where the adapter supports it (lavapipe does); else a clear error, before training.
    let full = run(gpu, job("f32", None));
    match device::dispatch(gpu, Precision::F16, job("f16", None)) {
        Ok(half) => {
            for ((step, a), (_, b)) in full.losses.iter().zip(&half.losses) {
                let rel = (a - b).abs() / a.abs();
                assert!(rel < 1e-2, "step {step}: f32 loss {a} vs f16 {b} ({rel:e})");
            }
        }
        Err(e) => assert!(
            e.to_string().contains("does not support precision f16"),
            "{e}"
        ),
    }
}

/// Greedy decoding of the fixture model from a prompt, with and without the KV cache, and a
/// product of two experts.
struct Greedy;

impl InferJob for Greedy {
    type Output = [Vec<u32>; 3];
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let (_, model) = hf::load::<B>(&fixture("numerics/tiny-gpt2"), &device).expect("loads");
        let opts = |kv_cache| GenerateOptions {
            max_new_tokens: 24,
            temperature: 0.0,
            top_k: None,
            seed: 0,
            stop: None,
            kv_cache,
        };
        let prompt = [11u32, 200, 37, 5, 401];
        let cached = decode::generate(&model, &prompt, &opts(true)).expect("generates");
        let plain = decode::generate(&model, &prompt, &opts(false)).expect("generates");
        let poe = decode::generate_poe(&model, &[prompt.to_vec(), vec![7, 8, 9]], &opts(true))
            .expect("generates");
        [cached.tokens, plain.tokens, poe.tokens]
    }
}

#[test]
fn greedy_generation_with_the_kv_cache_on_wgpu_gives_the_cpus_tokens() {
    let Some(gpu) = wgpu() else { return };
    let cpu = infer(CPU, Greedy);
    let got = infer(gpu, Greedy);
    assert_eq!(cpu[0].len(), 24);
    assert_eq!(got[0], cpu[0], "greedy tokens with the KV cache");
    assert_eq!(got[1], cpu[0], "greedy tokens without the cache");
    assert_eq!(got[2], cpu[2], "product-of-experts tokens");
}

#[test]
fn the_quickstart_pipeline_runs_end_to_end_on_wgpu() {
    if wgpu().is_none() {
        return;
    }
    let p = quickstart_project();
    p.run(
        "pipelines/quickstart.yaml",
        &["--set", "device=wgpu", "--set", "student_steps=20"],
    )
    .ok();
    let accuracy: f64 = p
        .scalar("SELECT value FROM metrics WHERE stage = 'accuracy' AND name = 'accuracy_2way'")
        .parse()
        .expect("a number");
    assert!((0.0..=1.0).contains(&accuracy), "{accuracy}");
    let params = p.query("SELECT value FROM params WHERE key = 'device'");
    assert_eq!(params, [["wgpu".to_owned()]], "the run records its device");
    // The training stages say where they ran.
    let logs = p.cache_entries();
    let ran_on_wgpu = logs.iter().any(|fp| {
        std::fs::read_to_string(p.path().join("results/cache").join(fp).join("stage.log"))
            .is_ok_and(|log| log.contains("on wgpu:0"))
    });
    assert!(ran_on_wgpu, "no stage log says it ran on wgpu:0");
}

/// The quickstart files in a scratch project.
fn quickstart_project() -> Project {
    let p = Project::new();
    for file in [
        "pipelines/quickstart.yaml",
        "data/samples/sentiment140.sample.csv",
    ] {
        let to = p.path().join(file);
        std::fs::create_dir_all(to.parent().expect("a folder")).expect("mkdir");
        std::fs::copy(repo_root().join(file), to).expect("copies");
    }
    p
}

#[test]
fn wgpu_without_an_adapter_is_a_clear_error_naming_what_to_install() {
    // No Vulkan driver is visible to this process: the loader finds no ICD.
    let p = Project::new();
    let out = p
        .cmd(&["bench", "train", "--device", "wgpu", "--steps", "1"])
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .expect("kiln runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("no Vulkan or Metal adapter found")
            && stderr.contains("mesa-vulkan-drivers"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_adapter_index_and_bf16_on_wgpu_fail_before_training_starts() {
    let Some(_) = wgpu() else { return };
    let n = device::wgpu_adapters().len();
    let p = quickstart_project();
    let ran = p.run(
        "pipelines/quickstart.yaml",
        &["--set", &format!("device=wgpu:{}", n + 6)],
    );
    assert_eq!(ran.status, 1, "{}", ran.stderr);
    let message = format!(
        "wgpu:{} asked for, but this machine has {n} wgpu adapter(s)",
        n + 6
    );
    assert!(ran.stderr.contains(&message), "{}", ran.stderr);
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    let trained = p.scalar("SELECT count(*) FROM metrics WHERE stage = 'teacher'");
    assert_eq!(
        trained, "0",
        "the teacher recorded metrics: training started"
    );

    let ran = p.kiln(&["bench", "train", "--device", "wgpu", "--precision", "bf16"]);
    assert_eq!(ran.status, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("precision bf16 is not available on device wgpu:0")
            && ran.stderr.contains("bf16 is CUDA only"),
        "{}",
        ran.stderr
    );
    assert!(
        !ran.stderr.contains("train:"),
        "the benchmark ran: {}",
        ran.stderr
    );
}

/// Every device-to-host read in the model, training and evaluation code goes through
/// `kiln_model::host` (which counts them, as the training test above checks per step): no
/// other read call appears outside the test modules.
#[test]
fn kiln_reads_tensors_back_only_through_the_counted_host_module() {
    let reads = [
        ".into_data()",
        ".to_data()",
        ".into_scalar()",
        "into_data_async",
        "into_scalar_async",
    ];
    let mut found = Vec::new();
    let mut scanned = 0;
    for dir in ["crates/model/src", "crates/train/src", "crates/eval/src"] {
        let mut stack = vec![repo_root().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).expect("source folder") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("host.rs") {
                    continue;
                }
                scanned += 1;
                let text = std::fs::read_to_string(&path).expect("source");
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (i, line) in code.lines().enumerate() {
                    if reads.iter().any(|r| line.contains(r)) {
                        found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(scanned > 30, "only {scanned} files scanned");
    assert!(
        found.is_empty(),
        "reads outside kiln_model::host:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_stage_holding_a_gpu_slot_trains_on_that_wgpu_adapter() {
    if wgpu().is_none() {
        return;
    }
    let p = quickstart_project();
    p.write(
        "pipelines/slots.yaml",
        r#"name: slots
params:
  device: wgpu
stages:
  tokenizer:
    uses: data.tokenizer
    inputs: {train_on: data/samples/sentiment140.sample.csv}
    with: {vocab_size: 1000}
  tweets:
    uses: data.sentiment140
    inputs: {source: data/samples/sentiment140.sample.csv}
    with: {tokenizer: "${stages.tokenizer.dir}", labels: {negative: " bad", positive: " good"}}
  init:
    uses: model.init
    with: {tokenizer: "${stages.tweets.dir}", n_positions: 64, n_embd: 32, n_layer: 1, n_head: 2}
  train:
    uses: train.lm
    resources: {gpu: 1}
    with: {data: "${stages.tweets.dir}", model: "${stages.init.dir}/model", max_steps: 2, device: "${device}"}
"#,
    );
    p.run("pipelines/slots.yaml", &["--gpus", "1"]).ok();
    let fp = p.scalar("SELECT fingerprint FROM stage_runs WHERE stage = 'train'");
    let log = std::fs::read_to_string(p.path().join(format!("results/cache/{fp}/stage.log")))
        .expect("the stage's log");
    assert!(log.contains("training on wgpu:0"), "{log}");
    // The stage holds one GPU: its second is not there.
    let ran = p.run(
        "pipelines/slots.yaml",
        &["--gpus", "1", "--set", "device=wgpu:1"],
    );
    assert_eq!(ran.status, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("device wgpu:1: the stage holds 1 GPU(s) (0)"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_model_larger_than_the_adapter_binds_is_an_error_not_a_gpu_panic() {
    if wgpu().is_none() {
        return;
    }
    // DistilGPT-2's token embedding is 147 MiB in f32; Mesa's software device binds 128 MiB.
    let p = Project::new();
    let devices = p.kiln(&["devices"]).ok().stdout;
    let limit: u64 = devices
        .lines()
        .find(|l| l.starts_with("wgpu:0"))
        .and_then(|l| l.split("tensors up to ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("kiln devices gives wgpu:0's limit");
    if limit >= 148 {
        eprintln!("skipping: wgpu:0 binds {limit} MiB, DistilGPT-2 fits");
        return;
    }
    let ran = p.kiln(&["bench", "generate", "--device", "wgpu"]);
    assert_eq!(ran.status, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("the token embedding (50257 × 768) takes 147.2 MiB, more than device wgpu:0"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
}

/// The fixture cases of the other architectures, their logits on a backend.
struct ArchLogits;

impl InferJob for ArchLogits {
    type Output = Vec<(String, Vec<f32>)>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        use kiln_model::CausalLm;
        ["bloom-6h", "phi", "llama-untied", "qwen2"]
            .iter()
            .map(|case| {
                let dir = fixture(&format!("numerics/archs/{case}"));
                let model = kiln_model::load::<B>(&dir, &device).expect("loads");
                let ids = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(vec![10i64, 20, 30, 40, 50, 60, 70, 80, 0, 0], [2, 5]),
                    &device,
                );
                let mask = Tensor::<B, 2, Int>::from_data(
                    TensorData::new(vec![1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 5]),
                    &device,
                );
                (
                    (*case).to_owned(),
                    host::read_f32(model.forward(ids, Some(mask))),
                )
            })
            .collect()
    }
}

#[test]
fn bloom_phi_llama_and_qwen2_give_the_cpus_logits_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    let cpu = infer(CPU, ArchLogits);
    let got = infer(gpu, ArchLogits);
    for ((case, a), (_, b)) in cpu.iter().zip(&got) {
        let worst = largest_difference(a, b);
        assert!(worst < 1e-4, "{case}: max |wgpu - cpu| = {worst}");
    }
}
