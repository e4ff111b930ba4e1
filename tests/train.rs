//! Training (issue 5): the objectives against the transformers fixtures, checkpoints, exact
//! resume, bad input, and the train stage kinds in a pipeline on the repo's sample data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_data::dataset::{self, BuildOptions, Fractions};
use kiln_data::sentiment::{Polarity, ReadOptions};
use kiln_data::shard::Example;
use kiln_data::tokenizer::Tok;
use kiln_model::burn::module::{Module, ModuleVisitor, Param};
use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::TensorData;
use kiln_model::burn::tensor::backend::AutodiffBackend;
use kiln_model::gpt2::{Gpt2, Gpt2Config};
use kiln_model::{CausalLm, Cpu, Model, hf};
use kiln_train::device::FlexBackend;
use kiln_train::objective::{Internalize, Lm, Objective, scalar};
use kiln_train::trainer::{self, Data, Observer, TrainOptions};
use kiln_train::{Error, checkpoint, loss};
use serde_json::Value;

use crate::support::{Project, fixture, repo_root};

type Ad = FlexBackend;
type Inner = kiln_model::burn::backend::Flex<f32, i32>;

pub(crate) fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("numerics/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

pub(crate) fn ids(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).expect("rows of ids")
}

pub(crate) fn rel_close(got: f64, want: f64, what: &str) {
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        rel < 1e-4,
        "{what}: kiln {got} vs transformers {want} (relative {rel:e})"
    );
}

/// A fixture's internalization batch: its rows cut to their lengths, with their labels, and
/// the prompt.
fn internalization_batch(case: &Value) -> (Vec<Example>, Vec<u32>) {
    let rows = ids(&case["rows"]);
    let lengths: Vec<usize> = serde_json::from_value(case["lengths"].clone()).expect("lengths");
    let prompt: Vec<u32> = serde_json::from_value(case["prompt"].clone()).expect("prompt");
    let labels: Vec<u32> = serde_json::from_value(case["labels"].clone()).expect("labels");
    let examples = rows
        .iter()
        .zip(&lengths)
        .zip(&labels)
        .map(|((r, &n), &label)| Example {
            input_ids: r[..n].iter().map(|&t| t as u32).collect(),
            label: Some(label),
            labels: None,
        })
        .collect();
    (examples, prompt)
}

#[test]
fn internalization_loss_matches_transformers() {
    let device = Default::default();
    let (_, student) = hf::load::<Ad>(&fixture("numerics/tiny-gpt2"), &device).expect("student");
    let (_, teacher) =
        hf::load::<Inner>(&fixture("numerics/tiny-gpt2-teacher"), &device).expect("teacher");
    let cases = internalization_losses(&student, &teacher, &expected());
    assert_eq!(cases.len(), 6, "alpha in 0, 0.5, 1 times T in 1, 2");
    for (got, want, what) in cases {
        rel_close(got, want, &what);
    }
}

/// The internalization loss of every case of a fixture's `internalization` batch, as
/// `(kiln, transformers, "alpha …, T …")`.
pub(crate) fn internalization_losses<A: AutodiffBackend>(
    student: &Gpt2<A>,
    teacher: &Gpt2<A::InnerBackend>,
    exp: &Value,
) -> Vec<(f64, f64, String)> {
    let case = &exp["internalization"];
    let (examples, prompt) = internalization_batch(case);
    let (student, teacher) = (Model::Gpt2(student.clone()), Model::Gpt2(teacher.clone()));
    case["losses"]
        .as_array()
        .expect("losses")
        .iter()
        .map(|c| {
            let alpha = c["alpha"].as_f64().expect("alpha");
            let temperature = c["temperature"].as_f64().expect("T");
            let mut objective = Internalize::<A> {
                teacher: Some(teacher.clone()),
                prompt: prompt.clone(),
                alpha,
                temperature,
                pad: exp["pad"].as_u64().expect("pad") as u32,
                max_length: None,
                label_pair: None,
            };
            let got = scalar(objective.loss(&student, &examples).expect("loss").loss);
            let want = c["loss"].as_f64().expect("loss");
            (got, want, format!("alpha {alpha}, T {temperature}"))
        })
        .collect()
}

/// The internalization losses of generate_peaked.py's fixture on backend `A`: student and
/// teacher are the same peaked GPT-2-vocabulary model. (got, want, what) per case.
pub(crate) fn peaked_internalization<A: AutodiffBackend>(
    device: &A::Device,
) -> Vec<(f64, f64, String)> {
    let device = device.clone();
    let dir = fixture("numerics/tiny-gpt2-peaked");
    let (_, student) = hf::load::<A>(&dir, &device).expect("student");
    let (_, teacher) = hf::load::<A::InnerBackend>(&dir, &device).expect("teacher");
    let text = std::fs::read_to_string(fixture("numerics/expected_peaked.json")).expect("json");
    let exp: Value = serde_json::from_str(&text).expect("valid JSON");
    let cases = internalization_losses(&student, &teacher, &exp);
    assert_eq!(cases.len(), 4, "alpha in 0, 0.5 times T in 1, 2");
    cases
}

#[test]
fn internalization_loss_on_a_peaked_teacher_matches_transformers_in_float64() {
    let flex = peaked_internalization::<Ad>(&Default::default());
    let ndarray =
        peaked_internalization::<kiln_model::burn::backend::Autodiff<Cpu>>(&Default::default());
    let mut report = Vec::new();
    let mut worst = 0f64;
    for (backend, cases) in [("flex", flex), ("ndarray", ndarray)] {
        for (got, want, what) in cases {
            let rel = (got - want).abs() / want.abs();
            worst = worst.max(rel);
            report.push(format!(
                "{backend}, {what}: kiln {got} vs {want} ({rel:.1e})"
            ));
        }
    }
    assert!(worst < 1e-4, "relative errors:\n{}", report.join("\n"));
}

/// The internalization loss's gradient with respect to the student logits on backend `A`,
/// for peaked logits (the loss runs in f64; its gradient comes back through the casts).
fn internalization_grad<A: AutodiffBackend>(
    s: &[f32],
    t: &[f32],
    labels: &[i64],
    alpha: f64,
    temperature: f64,
) -> Vec<f32> {
    let device = Default::default();
    let (batch, vocab) = (labels.len(), s.len() / labels.len());
    let student = Tensor::<A, 2>::from_data(TensorData::new(s.to_vec(), [batch, vocab]), &device)
        .require_grad();
    let teacher = Tensor::<A, 2>::from_data(TensorData::new(t.to_vec(), [batch, vocab]), &device);
    let labels = Tensor::<A, 1, Int>::from_data(TensorData::new(labels.to_vec(), [batch]), &device);
    let loss = loss::internalization(student.clone(), Some(teacher), labels, alpha, temperature);
    let grads = loss.backward();
    student
        .grad(&grads)
        .map(|g| g.into_data().convert::<f32>().to_vec().expect("f32"))
        .expect("a gradient")
}

#[test]
fn internalization_gradients_flow_back_through_the_f64_loss() {
    let (batch, vocab) = (2, 300);
    let s: Vec<f32> = (0..batch * vocab)
        .map(|i| {
            if i % vocab == 7 {
                9.0
            } else {
                (i % 13) as f32 / 10.0
            }
        })
        .collect();
    let t: Vec<f32> = (0..batch * vocab)
        .map(|i| {
            if i % vocab == 7 {
                10.0
            } else {
                (i % 7) as f32 / 10.0
            }
        })
        .collect();
    let labels = [7i64, 3];
    let (alpha, temperature) = (0.5, 2.0);
    // d/ds [α·CE + (1−α)·T²·KL] = (α·(softmax(s) − onehot) + (1−α)·T·(softmax(s/T) − softmax(t/T))) / batch
    let softmax = |row: &[f32], temp: f64| -> Vec<f64> {
        let m = row
            .iter()
            .map(|&v| f64::from(v) / temp)
            .fold(f64::MIN, f64::max);
        let e: Vec<f64> = row
            .iter()
            .map(|&v| (f64::from(v) / temp - m).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    };
    let mut want = Vec::new();
    for b in 0..batch {
        let (sr, tr) = (
            &s[b * vocab..(b + 1) * vocab],
            &t[b * vocab..(b + 1) * vocab],
        );
        let (p1, pt, qt) = (
            softmax(sr, 1.0),
            softmax(sr, temperature),
            softmax(tr, temperature),
        );
        for j in 0..vocab {
            let onehot = if j as i64 == labels[b] { 1.0 } else { 0.0 };
            let g = alpha * (p1[j] - onehot) + (1.0 - alpha) * temperature * (pt[j] - qt[j]);
            want.push(g / batch as f64);
        }
    }
    for (backend, got) in [
        (
            "flex",
            internalization_grad::<Ad>(&s, &t, &labels, alpha, temperature),
        ),
        (
            "ndarray",
            internalization_grad::<kiln_model::burn::backend::Autodiff<Cpu>>(
                &s,
                &t,
                &labels,
                alpha,
                temperature,
            ),
        ),
    ] {
        assert_eq!(got.len(), want.len(), "{backend}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-7, "{backend}: max gradient error {worst:e}");
    }
}

#[test]
fn masked_lm_loss_matches_transformers() {
    let device = Default::default();
    let (_, model) = hf::load::<Cpu>(&fixture("numerics/tiny-gpt2"), &device).expect("model");
    let exp = expected();
    let case = &exp["masked_lm"];
    let input = ids(&case["ids"]);
    let mask = ids(&case["mask"]);
    let labels = ids(&case["labels"]);
    let (b, s) = (input.len(), input[0].len());
    let t = |rows: &[Vec<i64>]| {
        Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(rows.concat(), [rows.len(), rows[0].len()]),
            &device,
        )
    };
    let logits = model.forward(t(&input), Some(t(&mask)));
    let v = logits.dims()[2];
    // Hugging Face shifts inside the model: logits at i predict labels at i + 1.
    let logits = logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]);
    let targets: Vec<i64> = labels.iter().flat_map(|r| r[1..].to_vec()).collect();
    let targets =
        Tensor::<Cpu, 1, Int>::from_data(TensorData::new(targets, [b * (s - 1)]), &device);
    let got = scalar(loss::masked_cross_entropy(logits, targets));
    rel_close(got, case["loss"].as_f64().expect("loss"), "masked LM loss");
}

/// The masked-LM case through the model's hidden states: the loss, and the gradients of the
/// embedding and of a first-block weight (through every layer), once with the fused LM-head
/// loss and once with `masked_cross_entropy` of the full logits.
pub(crate) fn fused_and_plain<B: AutodiffBackend>(
    device: &B::Device,
) -> [(f64, Vec<f32>, Vec<f32>); 2] {
    let device = device.clone();
    let (_, model) = hf::load::<B>(&fixture("numerics/tiny-gpt2"), &device).expect("model");
    let exp = expected();
    let case = &exp["masked_lm"];
    let (input, mask, labels) = (ids(&case["ids"]), ids(&case["mask"]), ids(&case["labels"]));
    let (b, s) = (input.len(), input[0].len());
    let t = |rows: &[Vec<i64>]| {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(rows.concat(), [rows.len(), rows[0].len()]),
            &device,
        )
    };
    let targets: Vec<i64> = labels.iter().flat_map(|r| r[1..].to_vec()).collect();
    let run = |fused: bool| {
        let h = model.hidden(t(&input), Some(t(&mask)));
        let d = h.dims()[2];
        let h = h.narrow(1, 0, s - 1).reshape([b * (s - 1), d]);
        let l = if fused {
            loss::linear_cross_entropy(h, model.wte.weight.val(), &targets)
        } else {
            let tt = Tensor::<B, 1, Int>::from_data(
                TensorData::new(targets.clone(), [targets.len()]),
                &device,
            );
            loss::masked_cross_entropy(model.project(h), tt)
        };
        let value = l.clone().into_scalar().elem::<f64>();
        let grads = l.backward();
        let flat = |g: Option<Tensor<B::InnerBackend, 2>>| {
            g.expect("a gradient")
                .into_data()
                .to_vec::<f32>()
                .expect("f32")
        };
        (
            value,
            flat(model.wte.weight.grad(&grads)),
            flat(model.blocks[0].mlp.c_fc.weight.grad(&grads)),
        )
    };
    [run(true), run(false)]
}

#[test]
fn the_fused_lm_head_loss_matches_transformers_and_the_plain_gradients() {
    let want = expected()["masked_lm"]["loss"].as_f64().expect("loss");
    let flex = fused_and_plain::<Ad>(&Default::default());
    let ndarray = fused_and_plain::<kiln_model::burn::backend::Autodiff<Cpu>>(&Default::default());
    for (backend, [fused, plain]) in [("flex", flex), ("ndarray", ndarray)] {
        rel_close(fused.0, want, &format!("fused masked LM loss on {backend}"));
        rel_close(plain.0, want, &format!("plain masked LM loss on {backend}"));
        for (what, a, b) in [("wte", &fused.1, &plain.1), ("c_fc", &fused.2, &plain.2)] {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{what} has a gradient");
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-4 * scale,
                    "{backend} {what} gradient: fused {x} vs plain {y} (largest {scale})"
                );
            }
        }
    }
}

#[test]
fn a_batch_with_every_target_ignored_has_zero_loss_and_zero_gradients() {
    let device = Default::default();
    let (_, model) = hf::load::<Ad>(&fixture("numerics/tiny-gpt2"), &device).expect("model");
    let ids =
        Tensor::<Ad, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [1, 4]), &device);
    let h = model.hidden(ids, None);
    let d = h.dims()[2];
    let l = loss::linear_cross_entropy(
        h.reshape([4, d]),
        model.wte.weight.val(),
        &[loss::IGNORE; 4],
    );
    assert_eq!(l.clone().into_scalar().elem::<f64>(), 0.0);
    let grads = l.backward();
    let g = model.wte.weight.grad(&grads).expect("a gradient");
    assert!(
        g.into_data()
            .to_vec::<f32>()
            .expect("f32")
            .iter()
            .all(|&v| v == 0.0)
    );
}

#[test]
fn a_label_outside_the_vocabulary_is_an_error() {
    let device = Default::default();
    let (_, student) = hf::load::<Ad>(&fixture("numerics/tiny-gpt2"), &device).expect("student");
    let mut objective = Internalize::<Ad> {
        teacher: None,
        prompt: vec![1],
        alpha: 1.0,
        temperature: 1.0,
        pad: 511,
        max_length: None,
        label_pair: None,
    };
    let rows = [Example {
        input_ids: vec![1, 2, 3],
        label: Some(70_000),
        labels: None,
    }];
    let err = objective
        .loss(&Model::Gpt2(student), &rows)
        .err()
        .expect("label 70000 of 512");
    assert_eq!(
        err.to_string(),
        "label id 70000 is outside the model's vocabulary (512)"
    );
}

/// A classification dataset from the repo's sample tweets with a small trained tokenizer.
pub(crate) fn sample_dataset(root: &Path) -> PathBuf {
    let csv = repo_root().join("data/samples/sentiment140.sample.csv");
    let rows = kiln_data::sentiment::read(&csv, &ReadOptions::default()).expect("samples read");
    let tok = Tok::train(rows.texts.iter(), 400, 2).expect("tokenizer trains");
    let labels = BTreeMap::from([
        (Polarity::Negative, " bad".to_owned()),
        (Polarity::Positive, " good".to_owned()),
    ]);
    let out = root.join("tweets");
    let opts = BuildOptions {
        source_name: "sample".into(),
        fractions: Fractions {
            val: 0.1,
            test: 0.1,
        },
        seed: 1,
        rows_per_shard: 200,
        ..BuildOptions::default()
    };
    dataset::build_sentiment(&csv, &ReadOptions::default(), tok, &labels, &opts, &out)
        .expect("dataset builds");
    out
}

pub(crate) fn tiny_config(vocab: usize) -> Gpt2Config {
    Gpt2Config::new(vocab, 64, 32, 2, 4).with_eos_token_id(Some(0))
}

fn tiny_model(vocab: usize, seed: u64) -> (Gpt2Config, Gpt2<Ad>) {
    let device = Default::default();
    let config = tiny_config(vocab);
    let model = kiln_model::seeded::<Ad, _>(&device, seed, || {
        kiln_model::drawn(config.init::<Ad>(&device))
    });
    (config, model)
}

#[derive(Default)]
pub(crate) struct Collect {
    pub(crate) losses: Vec<(usize, f64)>,
    pub(crate) metrics: Vec<(String, usize, f64)>,
    pub(crate) stop_at: Option<usize>,
    /// `kiln_model::host::reads()` when each step's loss was reported.
    pub(crate) reads_at: Vec<u64>,
}

impl Observer for Collect {
    fn metric(&mut self, name: &str, step: usize, value: f64) {
        if name == "loss" {
            self.losses.push((step, value));
            self.reads_at.push(kiln_model::host::reads());
        }
        self.metrics.push((name.to_owned(), step, value));
    }
    fn should_stop(&mut self, step: usize) -> bool {
        self.stop_at == Some(step)
    }
}

struct Weights(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Weights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.extend(
            param
                .val()
                .into_data()
                .to_vec::<f32>()
                .expect("f32 weights"),
        );
    }
}

pub(crate) fn weights<B: Backend, M: Module<B>>(model: &M) -> Vec<f32> {
    let mut w = Weights(Vec::new());
    model.visit(&mut w);
    w.0
}

pub(crate) fn lm_options(steps: usize) -> TrainOptions {
    TrainOptions {
        seed: 7,
        batch_size: 4,
        max_steps: Some(steps),
        lr: 3e-3,
        warmup_steps: 5,
        decay: kiln_train::schedule::Decay::Cosine,
        clip_grad_norm: Some(1.0),
        grad_accum: 2,
        eval_every: Some(20),
        eval_batches: Some(2),
        checkpoint_every: Some(25),
        ..TrainOptions::default()
    }
}

pub(crate) fn vocab_of(data: &Path) -> usize {
    kiln_data::shard::Manifest::load(data)
        .expect("manifest")
        .vocab_size
}

#[test]
fn resuming_at_step_50_of_100_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let vocab = vocab_of(&data);
    let opts = lm_options(100);
    let lm = || Lm {
        pad: 0,
        max_length: Some(64),
    };
    let data = Data { dir: data };

    let (_, model) = tiny_model(vocab, 3);
    let mut whole = Collect::default();
    let straight = trainer::train(
        Model::Gpt2(model),
        &mut lm(),
        &data,
        &opts,
        &tmp.path().join("straight"),
        &mut whole,
    )
    .expect("trains");
    assert_eq!(straight.steps, 100);

    let (_, model) = tiny_model(vocab, 3);
    let ck = tmp.path().join("resumed");
    let mut first = Collect {
        stop_at: Some(50),
        ..Collect::default()
    };
    let err = trainer::train(Model::Gpt2(model), &mut lm(), &data, &opts, &ck, &mut first)
        .err()
        .expect("stopped at 50");
    assert!(matches!(err, Error::Interrupted { step: 50 }), "{err}");
    // A fresh model object: everything must come from the checkpoint.
    let (_, model) = tiny_model(vocab, 99);
    let mut second = Collect::default();
    let resumed = trainer::train(
        Model::Gpt2(model),
        &mut lm(),
        &data,
        &opts,
        &ck,
        &mut second,
    )
    .expect("resumes");
    assert_eq!(resumed.resumed_from, 50);
    assert_eq!(resumed.steps, 100);

    // The resumed attempt reports every step: 1..50 again from the checkpoint (as the first
    // attempt reported them), 51..100 newly computed; all equal the uninterrupted run's.
    assert_eq!(first.losses.len(), 50);
    assert_eq!(second.losses.len(), 100);
    assert_eq!(second.losses[..50], first.losses[..]);
    assert_eq!(
        second.losses, whole.losses,
        "per-step losses differ after resuming"
    );
    // Every metric, not only the loss: same names and steps, same values (tokens/s is a
    // timing and differs).
    let comparable = |m: &[(String, usize, f64)]| -> Vec<(String, usize, Option<u64>)> {
        m.iter()
            .map(|(n, s, v)| (n.clone(), *s, (n != "tokens_per_s").then(|| v.to_bits())))
            .collect()
    };
    let (a, b) = (comparable(&second.metrics), comparable(&whole.metrics));
    let first_difference = a.iter().zip(&b).position(|(x, y)| x != y);
    assert!(
        a.len() == b.len() && first_difference.is_none(),
        "resumed {} metrics vs {}; first difference at {first_difference:?}: {:?} vs {:?}",
        a.len(),
        b.len(),
        first_difference.map(|i| &a[i]),
        first_difference.map(|i| &b[i]),
    );
    let (a, b) = (weights(&straight.model), weights(&resumed.model));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "weights differ after resuming");
    // Learning happened, and the loss went down.
    let early: f64 = whole.losses[..10].iter().map(|(_, l)| l).sum::<f64>() / 10.0;
    let late: f64 = whole.losses[90..].iter().map(|(_, l)| l).sum::<f64>() / 10.0;
    assert!(late < early * 0.9, "loss {early} -> {late}");
    // Keep 2 + the best.
    let kept = checkpoint::list(&ck);
    assert!(kept.len() <= 3 && kept.len() >= 2, "{kept:?}");
}

/// LoRA dropout draws its masks from burn's shared generator. They must come from the seed
/// and the step alone: not from what another thread draws meanwhile (a second stage, `--jobs
/// 2`), nor from where a run resumed.
#[test]
fn lora_dropout_masks_come_from_the_seed_and_the_step_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = Data {
        dir: sample_dataset(tmp.path()),
    };
    let vocab = vocab_of(&data.dir);
    let opts = TrainOptions {
        eval_every: None,
        checkpoint_every: Some(10),
        ..lm_options(20)
    };
    let device = Default::default();
    let train = |dropout: f64, dir: &str, stop_at: Option<usize>| {
        let (_, model) = tiny_model(vocab, 3);
        let lora = kiln_model::lora::LoraConfig::new(4).with_dropout(dropout);
        let model = kiln_model::seeded::<Ad, _>(&device, 4, || {
            Model::Gpt2(model)
                .with_lora(&lora, &device)
                .map(kiln_model::drawn)
        })
        .expect("adapters");
        let lm = &mut Lm {
            pad: 0,
            max_length: Some(64),
        };
        let mut seen = Collect {
            stop_at,
            ..Collect::default()
        };
        let outcome = trainer::train(model, lm, &data, &opts, &tmp.path().join(dir), &mut seen);
        (outcome.err(), seen.losses)
    };

    // Two runs at once, while a third thread keeps reseeding the generator and drawing.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (alone, beside, draws) = std::thread::scope(|s| {
        let noise = s.spawn(|| {
            let mut draws = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                kiln_model::seeded::<Ad, _>(&device, 77, || {
                    Tensor::<Ad, 2>::random(
                        [64, 64],
                        kiln_model::burn::tensor::Distribution::Default,
                        &device,
                    )
                });
                draws += 1;
            }
            draws
        });
        let twin = s.spawn(|| train(0.3, "twin", None));
        let alone = train(0.3, "alone", None);
        let beside = twin.join().expect("twin");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (alone, beside, noise.join().expect("noise"))
    });
    assert!(draws > 0, "the noise thread never drew");
    assert!(alone.0.is_none() && beside.0.is_none());
    assert_eq!(alone.1.len(), 20);
    assert_eq!(
        alone.1, beside.1,
        "dropout masks depend on the other threads"
    );

    let (stopped, first) = train(0.3, "resumed", Some(10));
    assert!(
        matches!(stopped, Some(Error::Interrupted { step: 10 })),
        "{stopped:?}"
    );
    assert_eq!(first[..], alone.1[..10]);
    let (_, resumed) = train(0.3, "resumed", None);
    assert_eq!(resumed, alone.1, "dropout masks differ after resuming");

    // The dropout is in effect: without it the run is another.
    let (_, without) = train(0.0, "without", None);
    assert_eq!(without.len(), 20);
    assert_ne!(without, alone.1);
}

#[test]
fn a_checkpoint_round_trips_with_identical_logits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let (config, model) = tiny_model(vocab_of(&data), 5);
    let opts = TrainOptions {
        eval_every: None,
        checkpoint_every: None,
        ..lm_options(10)
    };
    let mut lm = Lm {
        pad: 0,
        max_length: Some(64),
    };
    let out = trainer::train(
        Model::Gpt2(model),
        &mut lm,
        &Data { dir: data },
        &opts,
        &tmp.path().join("ck"),
        &mut Collect::default(),
    )
    .expect("trains");
    let dir = tmp.path().join("saved");
    out.model.save(&dir).expect("saves");
    let device = Default::default();
    let (loaded_config, loaded) = hf::load::<Ad>(&dir, &device).expect("loads back");
    assert_eq!(loaded_config.vocab_size, config.vocab_size);
    let input = Tensor::<Ad, 2, Int>::from_data(
        TensorData::new(vec![1i64, 5, 9, 20, 33, 2, 7, 8], [2, 4]),
        &device,
    );
    let a: Vec<f32> = out
        .model
        .forward(input.clone(), None)
        .into_data()
        .to_vec()
        .expect("f32");
    let b: Vec<f32> = loaded
        .forward(input, None)
        .into_data()
        .to_vec()
        .expect("f32");
    assert!(a == b, "logits differ after save and load");
    assert_eq!(weights(&out.model), weights(&loaded));
}

#[test]
fn a_non_finite_loss_fails_naming_the_step_and_keeps_checkpoints() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let (_, model) = tiny_model(vocab_of(&data), 5);
    let opts = TrainOptions {
        lr: 1e30,
        warmup_steps: 0,
        decay: kiln_train::schedule::Decay::Constant,
        clip_grad_norm: None,
        grad_accum: 1,
        checkpoint_every: Some(1),
        eval_every: None,
        ..lm_options(20)
    };
    let ck = tmp.path().join("ck");
    let err = trainer::train(
        Model::Gpt2(model),
        &mut Lm {
            pad: 0,
            max_length: Some(64),
        },
        &Data { dir: data },
        &opts,
        &ck,
        &mut Collect::default(),
    )
    .err()
    .expect("diverges");
    let Error::NonFinite { step, .. } = err else {
        panic!("expected a non-finite loss, got {err}")
    };
    assert!(
        err.to_string()
            .starts_with(&format!("step {step}: the loss is")),
        "{err}"
    );
    let kept = checkpoint::list(&ck);
    assert_eq!(kept.last().map(|(s, _)| *s), Some(step - 1), "{kept:?}");
    for (_, dir) in kept {
        hf::load::<Cpu>(&dir, &Default::default()).expect("checkpoints stay loadable");
    }
}

#[test]
fn resized_embeddings_start_at_the_mean() {
    let (_, model) = tiny_model(50, 1);
    let before = model.wte.weight.val();
    let mean: Vec<f32> = before
        .clone()
        .mean_dim(0)
        .into_data()
        .to_vec()
        .expect("f32");
    let resized = model.resize_token_embeddings(53);
    assert_eq!(resized.vocab_size(), 53);
    let rows: Vec<f32> = resized
        .wte
        .weight
        .val()
        .narrow(0, 50, 3)
        .into_data()
        .to_vec()
        .expect("f32");
    for row in rows.chunks(32) {
        assert_eq!(row, mean.as_slice());
    }
    let kept: Vec<f32> = resized
        .wte
        .weight
        .val()
        .narrow(0, 0, 50)
        .into_data()
        .to_vec()
        .expect("f32");
    assert_eq!(kept, before.into_data().to_vec::<f32>().expect("f32"));
}

const TRAIN_PIPELINE: &str = r#"name: train
params:
  device: cpu
stages:
  tokenizer:
    uses: data.tokenizer
    inputs: {train_on: data/samples/sentiment140.sample.csv}
    with: {vocab_size: 400}
  tweets:
    uses: data.sentiment140
    inputs: {source: data/samples/sentiment140.sample.csv}
    with:
      tokenizer: ${stages.tokenizer.dir}
      labels: {negative: " bad", positive: " good"}
      val: 0.1
      test: 0.1
  init:
    uses: model.init
    with: {tokenizer: "${stages.tweets.dir}", n_embd: 32, n_layer: 2, n_head: 4, n_positions: 64, seed: 1}
  pretrain:
    uses: train.lm
    with:
      data: ${stages.tweets.dir}
      model: ${stages.init.dir}/model
      max_steps: 12
      batch_size: 8
      lr: 0.003
      eval_every: 6
      eval_batches: 2
      device: ${device}
  student:
    uses: train.internalize
    with:
      data: ${stages.tweets.dir}
      model: ${stages.pretrain.dir}/model
      teacher: ${stages.pretrain.dir}/model
      prompt: " I feel"
      alpha: 0.5
      temperature: 2
      max_steps: 8
      batch_size: 8
      lr: 0.001
      eval_every: 4
      best_metric: val_accuracy
      test_data: ${stages.tweets.dir}
      device: ${device}
"#;

#[test]
fn train_stages_run_in_a_pipeline_and_record_metrics() {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("data/samples")).expect("mkdir");
    std::fs::copy(
        repo_root().join("data/samples/sentiment140.sample.csv"),
        p.path().join("data/samples/sentiment140.sample.csv"),
    )
    .expect("copy");
    p.write("train.yaml", TRAIN_PIPELINE);
    p.run("train.yaml", &[]).ok();
    let count = |stage: &str, name: &str| {
        p.scalar(&format!(
            "SELECT count(*) FROM metrics WHERE stage = '{stage}' AND name = '{name}'"
        ))
    };
    assert_eq!(count("pretrain", "loss"), "12");
    assert_eq!(count("pretrain", "val_loss"), "2");
    assert_eq!(count("student", "loss"), "8");
    assert_eq!(count("student", "val_accuracy"), "2");
    for name in [
        "test_accuracy",
        "test_accuracy_2way",
        "test_loss",
        "train_seconds",
    ] {
        assert_eq!(count("student", name), "1", "{name}");
    }
    let acc: f64 = p
        .scalar("SELECT value FROM metrics WHERE stage = 'student' AND name = 'test_accuracy_2way'")
        .parse()
        .expect("number");
    assert!((0.0..=1.0).contains(&acc), "{acc}");
    // The trained model is a Hugging Face directory with its tokenizer, and it loads.
    let dir = p.scalar("SELECT path FROM artifacts WHERE stage = 'student' AND path LIKE '%model.safetensors' LIMIT 1");
    assert!(!dir.is_empty(), "model.safetensors recorded as an artifact");
    let entries = p.cache_entries();
    let student_model = entries
        .iter()
        .map(|e| p.path().join("results/cache").join(e).join("model"))
        .find(|m| {
            m.join("tokenizer.json").is_file()
                && m.parent().is_some_and(|d| d.join("train.json").is_file())
        })
        .expect("a trained model dir");
    hf::load::<Cpu>(&student_model, &Default::default()).expect("loads");
    // Finished stages leave no resumable state behind.
    let state = p.path().join("results/state");
    assert!(!state.exists() || std::fs::read_dir(&state).expect("ls").next().is_none());

    // CUDA in a build without the feature: a clear error, non-zero exit.
    let ran = p.run("train.yaml", &["--set", "device=cuda:0"]);
    assert_ne!(ran.status, 0);
    assert!(
        ran.stderr.contains("built without CUDA support"),
        "{}",
        ran.stderr
    );
}

/// Trains the fixtures' tiny GPT-2 10 steps on the sample tweets and saves it with `hf::save`
/// into `out`: deterministic, so the same code writes the same bytes.
fn save_kiln_trained(out: &Path) {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let device = Default::default();
    let (_, model) = hf::load::<Ad>(&fixture("numerics/tiny-gpt2"), &device).expect("loads");
    let opts = TrainOptions {
        eval_every: None,
        checkpoint_every: None,
        ..lm_options(10)
    };
    let out_model = train_fixture_lm(model, data, &opts, &tmp.path().join("ck"));
    out_model.model.save(out).expect("saves");
}

/// Regenerates `tests/fixtures/numerics/kiln-saved/`: the fixtures' tiny GPT-2 trained 10 steps
/// by kiln and saved by kiln. `check_kiln_saved.py` then loads it with transformers and writes
/// the logits that [`transformers_reads_what_kiln_saves`] compares against.
///   cargo test --test integration -- --ignored regenerate_kiln_saved_fixture
#[test]
#[ignore = "regenerates a committed fixture"]
fn regenerate_kiln_saved_fixture() {
    save_kiln_trained(&fixture("numerics/kiln-saved"));
}

#[test]
fn transformers_reads_what_kiln_saves() {
    // The snapshot transformers read is what today's `hf::save` writes, byte for byte.
    let today = tempfile::tempdir().expect("tmp");
    save_kiln_trained(today.path());
    let dir = fixture("numerics/kiln-saved");
    for f in ["config.json", "model.safetensors"] {
        let now = std::fs::read(today.path().join(f)).expect("today's save");
        let snapshot = std::fs::read(dir.join(f)).expect("the committed snapshot");
        assert!(
            now == snapshot,
            "today's hf::save writes a different {f} than tests/fixtures/numerics/kiln-saved/ \
             holds: regenerate the snapshot (cargo test --test integration -- --ignored \
             regenerate_kiln_saved_fixture) and re-verify it with transformers \
             (tests/fixtures/numerics/check_kiln_saved.py)"
        );
    }
    let text = std::fs::read_to_string(dir.join("transformers_logits.json"))
        .expect("transformers_logits.json (run check_kiln_saved.py)");
    let exp: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(exp["missing_keys"], serde_json::json!([]));
    assert_eq!(exp["unexpected_keys"], serde_json::json!([]));
    let device = Default::default();
    let (_, model) = hf::load::<Cpu>(&dir, &device).expect("kiln loads its own save");
    let input = ids(&exp["ids"]);
    let t = Tensor::<Cpu, 2, Int>::from_data(
        TensorData::new(input.concat(), [input.len(), input[0].len()]),
        &device,
    );
    let got: Vec<f32> = model.forward(t, None).into_data().to_vec().expect("f32");
    let want: Vec<f32> = serde_json::from_value::<Vec<Vec<Vec<f32>>>>(exp["logits"].clone())
        .expect("logits")
        .concat()
        .concat();
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "max |kiln - transformers| = {worst}");
    // And training changed the weights: this is not the untrained fixture.
    let (_, untrained) = hf::load::<Cpu>(&fixture("numerics/tiny-gpt2"), &device).expect("fixture");
    assert_ne!(weights(&model), weights(&untrained));
}

/// A loopback stand-in for the Hugging Face hub: serves `files` (URL path → bytes), 404 for
/// anything else; returns its base URL and the paths it was asked for.
fn hub(files: Vec<(String, Vec<u8>)>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
            log.lock().expect("log").push(path.clone());
            let body = files
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, b)| b.clone());
            let (status, body) = body.map_or((404, Vec::new()), |b| (200, b));
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (base, asked)
}

#[test]
fn model_hf_downloads_from_the_hub_once_and_explains_offline() {
    let tiny = fixture("numerics/tiny-gpt2");
    let read = |f: &str| std::fs::read(tiny.join(f)).expect("fixture file");
    let (base, asked) = hub(vec![
        (
            "/acme/tiny/resolve/main/config.json".into(),
            read("config.json"),
        ),
        (
            "/acme/tiny/resolve/main/model.safetensors".into(),
            read("model.safetensors"),
        ),
    ]);
    let p = Project::new();
    p.write(
        "hub.yaml",
        "name: hub\nstages:\n  base:\n    uses: model.hf\n    with: {source: \"hf://acme/tiny\"}\n",
    );
    let run = |endpoint: &str, extra: &[&str]| {
        let mut args = vec!["--quiet", "run", "hub.yaml"];
        args.extend_from_slice(extra);
        let out = p
            .cmd(&args)
            .env("HF_ENDPOINT", endpoint)
            .output()
            .expect("kiln runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&base, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let entry = p
        .cache_entries()
        .into_iter()
        .map(|e| p.path().join("results/cache").join(e).join("model"))
        .find(|m| m.join("model.safetensors").is_file())
        .expect("model/ written");
    let (config, _) = hf::load::<Cpu>(&entry, &Default::default()).expect("loads");
    assert_eq!(config.vocab_size, 512);
    let weights_asked = |a: &[String]| {
        a.iter()
            .filter(|x| x.ends_with("model.safetensors"))
            .count()
    };
    assert_eq!(weights_asked(&asked.lock().expect("log")), 1);
    // Forced again: the download cache answers, the hub is not asked for the weights again.
    let (code, stderr) = run(&base, &["--force", "base"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(weights_asked(&asked.lock().expect("log")), 1);

    // Offline (nothing listens): the error names what to download and where to put it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    p.write(
        "hub.yaml",
        "name: hub\nstages:\n  base:\n    uses: model.hf\n    with: {source: \"acme/other\"}\n",
    );
    let (code, stderr) = run(&format!("http://127.0.0.1:{port}"), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot get config.json of acme/other")
            && stderr.contains("put config.json, model.safetensors"),
        "{stderr}"
    );
}

#[test]
fn lora_trains_only_adapters_and_merges_on_export() {
    use kiln_model::lora::LoraConfig;
    let tmp = tempfile::tempdir().expect("tmp");
    let data = sample_dataset(tmp.path());
    let device = Default::default();
    let (_, base) = hf::load::<Ad>(&fixture("numerics/tiny-gpt2"), &device).expect("loads");
    let base_weights = weights(&base);
    let lora = LoraConfig::new(4).with_c_proj(true);
    let model = kiln_model::seeded::<Ad, _>(&device, 1, || {
        base.with_lora(&lora, &device).map(kiln_model::drawn)
    })
    .expect("adapters");
    assert!(model.has_lora());
    let opts = TrainOptions {
        eval_every: None,
        checkpoint_every: Some(3),
        ..lm_options(6)
    };
    let out = train_fixture_lm(model, data, &opts, &tmp.path().join("ck"));
    let Model::Gpt2(trained) = out.model.clone() else {
        unreachable!("trained a GPT-2")
    };
    // The base weights did not move; the adapters did.
    let merged_free = trained.clone().merge_lora();
    let block = &trained.blocks[0].attn;
    let b: Vec<f32> = block
        .lora_attn
        .as_ref()
        .expect("adapter")
        .b
        .val()
        .into_data()
        .to_vec()
        .expect("f32");
    assert!(b.iter().any(|x| *x != 0.0), "B stayed at zero");
    let mut unmerged = trained.clone();
    for block in &mut unmerged.blocks {
        block.attn.lora_attn = None;
        block.attn.lora_proj = None;
    }
    assert_eq!(weights(&unmerged), base_weights, "a frozen weight changed");
    // Merged and exported, the model computes what the adapted one does.
    let input = Tensor::<Ad, 2, Int>::from_data(
        TensorData::new(vec![1i64, 5, 9, 20, 33, 2, 7, 8], [2, 4]),
        &device,
    );
    let adapted: Vec<f32> = out
        .model
        .forward(input.clone(), None)
        .into_data()
        .to_vec()
        .expect("f32");
    let dir = tmp.path().join("export");
    out.model.save(&dir).expect("saves");
    let (_, exported) = hf::load::<Ad>(&dir, &device).expect("loads");
    for other in [merged_free, exported] {
        let got: Vec<f32> = other
            .forward(input.clone(), None)
            .into_data()
            .to_vec()
            .expect("f32");
        let worst = got
            .iter()
            .zip(&adapted)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "merged differs by {worst}");
    }
}

/// Trains an LM on `data` with the fixture's pad id (511), checkpoints under `ck`.
fn train_fixture_lm(
    model: Gpt2<Ad>,
    data: PathBuf,
    opts: &TrainOptions,
    ck: &Path,
) -> trainer::Outcome<Ad> {
    let mut lm = Lm {
        pad: 511,
        max_length: Some(64),
    };
    trainer::train(
        Model::Gpt2(model),
        &mut lm,
        &Data { dir: data },
        opts,
        ck,
        &mut Collect::default(),
    )
    .expect("trains")
}

/// After the token embedding grows for added tokens, it is still a trained parameter: the
/// fused LM-head loss and the full-logits loss give it the same gradient (before, the resized
/// embedding was an intermediate of the graph and got none, so training never moved it).
#[test]
fn a_resized_embedding_gets_the_lm_heads_gradient() {
    let device = Default::default();
    let dir = fixture("numerics/tiny-gpt2");
    let grad = |fused: bool| {
        let model = kiln_model::load::<Ad>(&dir, &device)
            .expect("loads")
            .resize_token_embeddings(520);
        let ids = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 9, 515], [1, 4]),
            &device,
        );
        let h = model.hidden(ids, None).reshape([4, 64]);
        let targets = [5i64, 9, 515, 30];
        let loss = if fused {
            loss::linear_cross_entropy(h, model.head_weight().expect("tied"), &targets)
        } else {
            let t =
                Tensor::<Ad, 1, Int>::from_data(TensorData::new(targets.to_vec(), [4]), &device);
            loss::masked_cross_entropy(model.project(h), t)
        };
        let grads = loss.backward();
        let Model::Gpt2(m) = &model else {
            unreachable!("a GPT-2 fixture")
        };
        m.wte
            .weight
            .grad(&grads)
            .expect("the embedding has a gradient")
            .into_data()
            .to_vec::<f32>()
            .expect("f32")
    };
    let (fused, plain) = (grad(true), grad(false));
    assert_eq!(fused.len(), 520 * 64);
    // The added row 515 is an input and a target: it gets a gradient of its own.
    assert!(fused[515 * 64..516 * 64].iter().any(|g| *g != 0.0));
    let worst = fused
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "fused vs plain embedding gradient: {worst}");
}
