//! Architectures beyond GPT-2 (issue 14) against transformers: the tiny random models and
//! expectations of tests/fixtures/numerics/generate_archs.py.

use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::TensorData;
use kiln_model::{CausalLm, Flex, bloom, host, llama, phi};
use serde_json::Value;

use crate::support::fixture;

fn expected() -> Value {
    let text =
        std::fs::read_to_string(fixture("numerics/archs/expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn ids<B: Backend>(v: &Value, device: &B::Device) -> Tensor<B, 2, Int> {
    let rows: Vec<Vec<i64>> = serde_json::from_value(v.clone()).expect("rows of ids");
    let shape = [rows.len(), rows[0].len()];
    Tensor::from_data(TensorData::new(rows.concat(), shape), device)
}

type Forward<'a> =
    dyn Fn(Tensor<Flex, 2, Int>, Option<Tensor<Flex, 2, Int>>) -> Tensor<Flex, 3> + 'a;

/// A case's logits for its single row and its padded batch against transformers'.
fn check_logits(case: &str, forward: &Forward<'_>) {
    let exp = expected();
    let device = Default::default();
    for input in ["single", "padded"] {
        let x = &exp["cases"][case]["logits"][input];
        let mask = (!x["mask"].is_null()).then(|| ids::<Flex>(&x["mask"], &device));
        let got = host::read_f32(forward(ids::<Flex>(&x["ids"], &device), mask));
        let want = crate::model::fixture_logits(x);
        assert_eq!(got.len(), want.len(), "{case} {input}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{case} {input}: max |kiln - transformers| = {worst}"
        );
        eprintln!("{case} {input}: max |kiln - transformers| = {worst:e}");
    }
}

#[test]
fn llama_and_qwen2_logits_match_transformers() {
    for case in [
        "llama-tied",
        "llama-untied",
        "qwen2",
        "llama-bf16",
        "qwen2-sharded",
    ] {
        let dir = fixture(&format!("numerics/archs/{case}"));
        let model = llama::load::<Flex>(&dir, &Default::default()).expect("loads");
        check_logits(case, &|ids, mask| model.forward(ids, mask));
    }
}

#[test]
fn bloom_logits_match_transformers_with_6_and_4_heads() {
    for case in ["bloom-6h", "bloom-4h"] {
        let dir = fixture(&format!("numerics/archs/{case}"));
        let model = bloom::load::<Flex>(&dir, &Default::default()).expect("loads");
        check_logits(case, &|ids, mask| model.forward(ids, mask));
    }
    let six =
        bloom::BloomConfig::load(&fixture("numerics/archs/bloom-6h/config.json")).expect("config");
    // transformers' build_alibi_tensor for 6 heads: 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3.
    let want = [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125];
    assert_eq!(six.alibi_slopes(), want);
}

#[test]
fn phi_logits_match_transformers_with_partial_rotary() {
    let dir = fixture("numerics/archs/phi");
    let model = phi::load::<Flex>(&dir, &Default::default()).expect("loads");
    // partial_rotary_factor 0.4 of 16 dimensions: 6 rotate.
    assert_eq!(model.config.rotary_dim(), 6);
    check_logits("phi", &|ids, mask| model.forward(ids, mask));
}

const CASES: &[&str] = &[
    "bloom-6h",
    "bloom-4h",
    "phi",
    "llama-tied",
    "llama-untied",
    "qwen2",
    "llama-bf16",
    "qwen2-sharded",
];

fn load(case: &str) -> kiln_model::Model<Flex> {
    let dir = fixture(&format!("numerics/archs/{case}"));
    kiln_model::load::<Flex>(&dir, &Default::default()).expect("loads")
}

fn rows(v: &Value) -> Vec<Vec<i64>> {
    serde_json::from_value(v.clone()).expect("rows of ids")
}

fn rel_close(got: f64, want: f64, what: &str) {
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        rel < 1e-4,
        "{what}: kiln {got} vs transformers {want} ({rel:e})"
    );
}

#[test]
fn every_architecture_loads_by_model_type_and_its_losses_match_transformers() {
    use kiln_train::loss;
    let exp = expected();
    let device = Default::default();
    for case in CASES {
        let model = load(case);
        let want = &exp["cases"][case];
        // The masked causal-LM loss (labels unshifted, -100 ignored).
        let m = &want["masked_lm"];
        let (input, labels) = (rows(&m["ids"]), rows(&m["labels"]));
        let (b, s) = (input.len(), input[0].len());
        let logits = model.forward(
            ids::<Flex>(&m["ids"], &device),
            Some(ids::<Flex>(&m["mask"], &device)),
        );
        let v = logits.dims()[2];
        let logits = logits.narrow(1, 0, s - 1).reshape([b * (s - 1), v]);
        let targets: Vec<i64> = labels.iter().flat_map(|r| r[1..].to_vec()).collect();
        let targets =
            Tensor::<Flex, 1, Int>::from_data(TensorData::new(targets, [b * (s - 1)]), &device);
        let got = host::read_scalar(loss::masked_cross_entropy(logits, targets));
        rel_close(
            got,
            m["loss"].as_f64().expect("loss"),
            &format!("{case} masked LM"),
        );
        // The internalization loss, the model as student and teacher.
        let c = &want["internalization"];
        let input = rows(&c["rows"]);
        let lengths: Vec<usize> = serde_json::from_value(c["lengths"].clone()).expect("lengths");
        let prompt: Vec<i64> = serde_json::from_value(c["prompt"].clone()).expect("prompt");
        let labels: Vec<i64> = serde_json::from_value(c["labels"].clone()).expect("labels");
        let width = input[0].len();
        let mask: Vec<i64> = lengths
            .iter()
            .flat_map(|&n| (0..width).map(move |j| i64::from(j < n)))
            .collect();
        let t = |v: Vec<i64>, shape: [usize; 2]| {
            Tensor::<Flex, 2, Int>::from_data(TensorData::new(v, shape), &device)
        };
        let at: Vec<usize> = lengths.iter().map(|n| n - 1).collect();
        let student = model.logits_at(
            t(input.concat(), [2, width]),
            Some(t(mask, [2, width])),
            &at,
        );
        let tw = width + prompt.len();
        let (mut teacher_ids, mut teacher_mask, mut teacher_at) =
            (Vec::new(), Vec::new(), Vec::new());
        for (r, &n) in input.iter().zip(&lengths) {
            let row: Vec<i64> = r[..n]
                .iter()
                .copied()
                .chain(prompt.iter().copied())
                .collect();
            teacher_at.push(row.len() - 1);
            teacher_mask.extend((0..tw).map(|j| i64::from(j < row.len())));
            teacher_ids.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, tw - row.len())),
            );
        }
        let teacher = model.logits_at(
            t(teacher_ids, [2, tw]),
            Some(t(teacher_mask, [2, tw])),
            &teacher_at,
        );
        for l in c["losses"].as_array().expect("losses") {
            let (alpha, temperature) = (
                l["alpha"].as_f64().expect("a"),
                l["temperature"].as_f64().expect("t"),
            );
            let labels =
                Tensor::<Flex, 1, Int>::from_data(TensorData::new(labels.clone(), [2]), &device);
            let got = host::read_scalar(loss::internalization(
                student.clone(),
                Some(teacher.clone()),
                labels,
                alpha,
                temperature,
            ));
            let what = format!("{case} internalization alpha {alpha} T {temperature}");
            rel_close(got, l["loss"].as_f64().expect("loss"), &what);
        }
    }
}

#[test]
fn every_architecture_decodes_greedily_as_transformers_with_and_without_the_kv_cache() {
    use kiln_eval::decode::{self, GenerateOptions};
    let exp = expected();
    for case in CASES {
        let model = load(case);
        let want = &exp["cases"][case];
        let prompt: Vec<u32> = serde_json::from_value(want["greedy"]["prompt"].clone()).expect("p");
        let tokens: Vec<u32> = serde_json::from_value(want["greedy"]["tokens"].clone()).expect("t");
        for kv_cache in [true, false] {
            let opts = GenerateOptions {
                max_new_tokens: tokens.len(),
                temperature: 0.0,
                top_k: None,
                seed: 0,
                stop: None,
                kv_cache,
            };
            let got = decode::generate(&model, &prompt, &opts).expect("generates");
            assert_eq!(got.tokens, tokens, "{case}, KV cache {kv_cache}");
        }
        let nll_ids: Vec<u32> = serde_json::from_value(want["nll"]["ids"].clone()).expect("ids");
        let nll = kiln_eval::score::nll_from(&model, &nll_ids, 1);
        let target = want["nll"]["nll"].as_f64().expect("nll");
        assert!((nll - target).abs() < 1e-3, "{case}: NLL {nll} vs {target}");
    }
}

/// A left-padded batch decodes each prompt as it decodes alone: the transformers prompt's
/// tokens among shorter prompts (padded by 1 and 3 positions), on every architecture
/// (absolute positions shifted for GPT-2, rotary ones relative, BLOOM's ALiBi from the mask).
#[test]
fn every_architecture_decodes_a_left_padded_batch_as_each_prompt_alone() {
    use kiln_eval::decode::{self, GenerateOptions};
    let exp = expected();
    for case in CASES {
        let model = load(case);
        let want = &exp["cases"][case];
        let prompt: Vec<u32> = serde_json::from_value(want["greedy"]["prompt"].clone()).expect("p");
        let tokens: Vec<u32> = serde_json::from_value(want["greedy"]["tokens"].clone()).expect("t");
        assert!(prompt.len() > 3, "{case}: a prompt long enough to shorten");
        let prompts = vec![
            prompt[1..].to_vec(),
            prompt.clone(),
            prompt[..prompt.len() - 3].to_vec(),
        ];
        let opts = GenerateOptions {
            max_new_tokens: tokens.len(),
            temperature: 0.0,
            top_k: None,
            seed: 0,
            stop: None,
            kv_cache: true,
        };
        let batch = decode::generate_batch(&model, &prompts, &opts).expect("generates");
        assert_eq!(batch[1].tokens, tokens, "{case}: the transformers prompt");
        for (row, p) in prompts.iter().enumerate() {
            let alone = decode::generate(&model, p, &opts).expect("generates");
            assert_eq!(batch[row], alone, "{case}: row {row}");
        }
    }
}

#[test]
fn an_unknown_model_type_lists_the_supported_ones_and_a_wrong_shape_names_the_tensor() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = fixture("numerics/archs/llama-tied");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), tmp.path().join(file)).expect("copies");
    }
    let config = std::fs::read_to_string(src.join("config.json")).expect("config");
    let write =
        |text: String| std::fs::write(tmp.path().join("config.json"), text).expect("writes");
    write(config.replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\""));
    let err = kiln_model::load::<Flex>(tmp.path(), &Default::default()).expect_err("mamba");
    let text = err.to_string();
    assert!(
        text.contains(
            "model_type \"mamba\" is not supported: kiln loads gpt2, bloom, phi, llama, qwen2"
        ),
        "{text}"
    );
    write(config.replace("\"intermediate_size\": 96", "\"intermediate_size\": 100"));
    let err = kiln_model::load::<Flex>(tmp.path(), &Default::default()).expect_err("shape");
    let text = err.to_string();
    assert!(
        text.contains("model.layers.0.mlp.gate_proj.weight has shape [96, 64], the configuration needs [100, 64]"),
        "{text}"
    );
    std::fs::remove_file(tmp.path().join("model.safetensors")).expect("rm");
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"not read").expect("writes");
    write(config);
    let err = kiln_model::load::<Flex>(tmp.path(), &Default::default()).expect_err("bin");
    assert!(err.to_string().contains("save_pretrained"), "{err}");
}

/// `model` after `steps` AdamW steps (lr 1e-2) of next-token loss on a fixed row.
fn train_steps(
    mut model: kiln_model::Model<kiln_model::device::FlexBackend>,
    steps: usize,
) -> kiln_model::Model<kiln_model::device::FlexBackend> {
    use kiln_model::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use kiln_model::device::FlexBackend as Ad;
    let device = Default::default();
    let mut optim = AdamWConfig::new().init::<Ad, kiln_model::Model<Ad>>();
    let ids = || {
        Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(vec![1i64, 9, 33, 7, 100, 5], [1, 6]),
            &device,
        )
    };
    let targets = || {
        Tensor::<Ad, 1, Int>::from_data(TensorData::new(vec![9i64, 33, 7, 100, 5], [5]), &device)
    };
    for _ in 0..steps {
        let vocab = model.vocab_size();
        let logits = model
            .forward(ids(), None)
            .narrow(1, 0, 5)
            .reshape([5, vocab]);
        let loss = kiln_train::loss::masked_cross_entropy(logits, targets());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    model
}

/// Every architecture, trained 10 steps and saved by kiln, loads back with identical logits.
/// With
/// `KILN_SAVE_ARCHS_TO=DIR`, the saved directories are also kept there, for
/// tests/fixtures/numerics/check_archs_saved.py (transformers loads them).
#[test]
fn every_architecture_saves_and_loads_back_with_identical_logits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keep = std::env::var_os("KILN_SAVE_ARCHS_TO").map(std::path::PathBuf::from);
    let device = Default::default();
    let input = || {
        Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 9, 20, 33, 2, 7, 8], [2, 4]),
            &device,
        )
    };
    for case in CASES {
        use kiln_model::burn::module::AutodiffModule;
        let dir = fixture(&format!("numerics/archs/{case}"));
        let trained =
            kiln_model::load::<kiln_model::device::FlexBackend>(&dir, &device).expect("loads");
        let model = train_steps(trained, 10).valid();
        assert!(
            host::read_f32(model.forward(input(), None))
                != host::read_f32(load(case).forward(input(), None)),
            "{case}: training changed nothing"
        );
        let dir = tmp.path().join(case);
        model.save(&dir).expect("saves");
        if let Some(root) = &keep {
            model.save(&root.join(case)).expect("saves");
            // What kiln computes, for check_archs_saved.py to compare transformers with.
            let logits = host::read_f32(model.forward(input(), None));
            let record =
                serde_json::json!({"ids": [[1, 5, 9, 20], [33, 2, 7, 8]], "logits": logits});
            std::fs::write(root.join(case).join("kiln_logits.json"), record.to_string())
                .expect("writes");
        }
        let again = kiln_model::load::<Flex>(&dir, &device).expect("loads back");
        let (a, b) = (
            host::read_f32(model.forward(input(), None)),
            host::read_f32(again.forward(input(), None)),
        );
        assert!(
            a == b && !a.is_empty(),
            "{case}: logits differ after save and load"
        );
        let text = std::fs::read_to_string(dir.join("config.json")).expect("config");
        assert!(
            !text.contains("bfloat16"),
            "{case}: saved as float32: {text}"
        );
    }
}

/// A pipeline on the repo's sample tweets with a tiny model of another architecture:
/// `model.hf` (the embeddings grow to the dataset's tokenizer), `train.lm` (also with LoRA on
/// the architecture's default projections), `train.internalize`, and the eval stages.
const PIPELINE: &str = r#"name: arch
params:
  base: models/x
stages:
  tokenizer:
    uses: data.tokenizer
    inputs: {train_on: data/samples/sentiment140.sample.csv}
    with: {vocab_size: 1000}
  tweets:
    uses: data.sentiment140
    inputs: {source: data/samples/sentiment140.sample.csv}
    with: {tokenizer: "${stages.tokenizer.dir}", labels: {negative: " bad", positive: " good"}, val: 0.1, test: 0.1}
  base:
    uses: model.hf
    with: {source: "${base}"}
  lm:
    uses: train.lm
    with: {data: "${stages.tweets.dir}", model: "${stages.base.dir}/model", max_steps: 4, batch_size: 8, max_length: 32, eval_batches: 2}
  adapted:
    uses: train.lm
    with: {data: "${stages.tweets.dir}", model: "${stages.base.dir}/model", max_steps: 2, batch_size: 8, max_length: 32, eval_batches: 1, lora_rank: 4}
  student:
    uses: train.internalize
    with: {data: "${stages.tweets.dir}", model: "${stages.lm.dir}/model", teacher: "${stages.lm.dir}/model", prompt: " I feel", alpha: 0.5, temperature: 2.0, max_steps: 3, batch_size: 8, max_length: 32, eval_batches: 2}
  accuracy:
    uses: eval.sentiment
    with: {model: "${stages.student.dir}/model", data: "${stages.tweets.dir}", split: test, max_length: 32}
  gap:
    uses: eval.gap
    with: {model: "${stages.student.dir}/model", teacher: "${stages.lm.dir}/model", data: "${stages.tweets.dir}", prompt: " I feel", split: test, max_rows: 8}
  traces:
    uses: eval.trace
    with: {model: "${stages.student.dir}/model", texts: ["The food was good", "I hate this"]}
"#;

#[test]
fn a_pipeline_trains_and_evaluates_each_new_architecture() {
    for (case, model_type) in [
        ("bloom-6h", "bloom"),
        ("phi", "phi"),
        ("llama-untied", "llama"),
        ("qwen2-sharded", "qwen2"),
    ] {
        let p = crate::support::Project::new();
        let csv = "data/samples/sentiment140.sample.csv";
        std::fs::create_dir_all(p.path().join("data/samples")).expect("mkdir");
        std::fs::copy(crate::support::repo_root().join(csv), p.path().join(csv)).expect("csv");
        let src = fixture(&format!("numerics/archs/{case}"));
        let dst = p.path().join("models").join(case);
        std::fs::create_dir_all(&dst).expect("mkdir");
        for entry in std::fs::read_dir(&src).expect("fixture") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copies");
        }
        p.write("pipelines/arch.yaml", PIPELINE);
        p.run(
            "pipelines/arch.yaml",
            &["--set", &format!("base=models/{case}")],
        )
        .ok();
        for (stage, metric) in [
            ("lm", "val_loss"),
            ("adapted", "val_loss"),
            ("student", "val_accuracy_2way"),
            ("accuracy", "accuracy_2way"),
            ("gap", "gap_mean"),
        ] {
            let n = p.scalar(&format!(
                "SELECT count(*) FROM metrics WHERE stage = '{stage}' AND name = '{metric}'"
            ));
            assert_ne!(n, "0", "{case}: no {stage} {metric}");
        }
        let fp = p.scalar("SELECT fingerprint FROM stage_runs WHERE stage = 'student'");
        let dir = p.path().join(format!("results/cache/{fp}/model"));
        let config = std::fs::read_to_string(dir.join("config.json")).expect("config");
        assert!(
            config.contains(&format!("\"model_type\": \"{model_type}\"")),
            "{case}: {config}"
        );
        let model = kiln_model::load::<Flex>(&dir, &Default::default()).expect("the student loads");
        let tok = kiln_data::tokenizer::Tok::load(&dir).expect("the tokenizer is beside it");
        assert!(
            tok.vocab_size() > 256,
            "the sample tokenizer outgrows the fixture's 256"
        );
        assert_eq!(
            model.vocab_size(),
            tok.vocab_size(),
            "{case}: embeddings grown to the tokenizer"
        );
    }
}

/// Every float parameter of `model` by id.
fn params_by_id<B: Backend, M: kiln_model::burn::module::Module<B>>(
    model: &M,
) -> std::collections::HashMap<kiln_model::burn::module::ParamId, Vec<f32>> {
    use kiln_model::burn::module::{ModuleVisitor, Param, ParamId};
    struct Collect(std::collections::HashMap<ParamId, Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.insert(param.id, host::read_f32(param.val()));
        }
    }
    let mut c = Collect(Default::default());
    model.visit(&mut c);
    c.0
}

#[test]
fn lora_on_every_new_architecture_trains_only_the_adapters_and_merges_exactly() {
    use kiln_model::device::FlexBackend as Ad;
    use kiln_model::lora::LoraConfig;
    let device = Default::default();
    for case in ["bloom-6h", "phi", "llama-untied", "qwen2"] {
        let dir = fixture(&format!("numerics/archs/{case}"));
        let base = kiln_model::load::<Ad>(&dir, &device).expect("loads");
        let before = params_by_id(&base);
        let model = kiln_model::seeded::<Ad, _>(&device, 1, || {
            base.with_lora(&LoraConfig::new(4), &device)
                .map(kiln_model::drawn)
        })
        .expect("adapters attach");
        assert!(model.has_lora(), "{case}");
        let model = train_steps(model, 3);
        let ids = || {
            Tensor::<Ad, 2, Int>::from_data(
                TensorData::new(vec![1i64, 9, 33, 7, 100, 5], [1, 6]),
                &device,
            )
        };
        let after = params_by_id(&model);
        let mut adapters_moved = false;
        for (id, values) in &after {
            match before.get(id) {
                Some(old) => assert!(old == values, "{case}: a base weight changed"),
                None => adapters_moved |= values.iter().any(|v| *v != 0.0),
            }
        }
        assert!(adapters_moved, "{case}: the adapters did not train");
        // The merged model (and its saved export) computes what base + adapters compute.
        let adapted = host::read_f32(model.forward(ids(), None));
        let merged = model.clone().merge_lora();
        assert!(!merged.has_lora());
        let tmp = tempfile::tempdir().expect("tmp");
        model.save(tmp.path()).expect("saves merged");
        let exported = kiln_model::load::<Ad>(tmp.path(), &device).expect("loads");
        for (what, other) in [("merged", merged), ("exported", exported)] {
            let got = host::read_f32(other.forward(ids(), None));
            let worst = got
                .iter()
                .zip(&adapted)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "{case} {what}: {worst}");
        }
        // A projection the architecture lacks is refused, naming those it has.
        let base = kiln_model::load::<Ad>(&dir, &device).expect("loads");
        let err = base
            .with_lora(
                &LoraConfig::new(4).with_targets(vec!["c_attn".into()]),
                &device,
            )
            .expect_err("no c_attn");
        assert!(
            err.contains("\"c_attn\" is not a projection of"),
            "{case}: {err}"
        );
    }
}

#[test]
fn named_shapes_parse_and_smollm2_135m_has_its_published_size() {
    use kiln_model::burn::module::Module;
    for name in kiln_model::named::NAMES {
        let shape = kiln_model::named::config(name).expect("named");
        let device = Default::default();
        // Parsing checks the sizes fit together; a 1-layer, 1000-token copy keeps it light.
        let mut small = shape.clone();
        small["vocab_size"] = 1000.into();
        for key in ["num_hidden_layers", "n_layer"] {
            if small.get(key).is_some() {
                small[key] = 1.into();
            }
        }
        let model = kiln_model::unseeded(|| kiln_model::named::init::<Flex>(&small, &device))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(model.num_params() > 0, "{name}");
    }
    // SmolLM2-135M as released: 134,515,008 parameters (tied embedding, GQA 9/3).
    let shape = kiln_model::named::config("smollm2-135m").expect("named");
    let device = Default::default();
    let model = kiln_model::seeded::<Flex, _>(&device, 0, || {
        kiln_model::named::init::<Flex>(&shape, &device).map(kiln_model::drawn)
    })
    .expect("initializes");
    assert_eq!(model.num_params(), 134_515_008);
    let kiln_model::Model::Llama(llama) = &model else {
        unreachable!("a llama")
    };
    let w = host::read_f32(llama.layers[0].q_proj.weight.val());
    let std = (w.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    assert!(
        (std - 0.02).abs() < 0.001,
        "weights drawn from N(0, 0.02): std {std}"
    );
    let norm = host::read_f32(llama.norm.gamma.val());
    assert!(norm.iter().all(|v| *v == 1.0), "norm scales start at 1");
}
