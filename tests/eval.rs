//! Evaluation and decoding (issue 6) against the transformers fixtures
//! (tests/fixtures/numerics/expected_eval.json, made by generate_eval.py).

use kiln_eval::decode::{self, GenerateOptions, Stop};
use kiln_eval::{Lm, score};
use kiln_model::burn::backend::Flex;
use kiln_model::hf;
use serde_json::Value;

use crate::support::{fixture, repo_root};

type B = Flex<f32, i32>;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("numerics/expected_eval.json"))
        .expect("expected_eval.json");
    serde_json::from_str(&text).expect("JSON")
}

pub(crate) fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).expect("ids")
}

fn tiny() -> kiln_model::gpt2::Gpt2<B> {
    hf::load::<B>(&fixture("numerics/tiny-gpt2"), &Default::default())
        .expect("tiny model")
        .1
}

#[test]
fn top_k_probabilities_match_transformers() {
    let model = tiny();
    let exp = expected();
    let case = &exp["topk"];
    let probs = score::next_token_probs(&model, &ids(&case["ids"]));
    let got = score::top_k(&probs, 10).expect("k = 10");
    let want_ids = ids(&case["top_ids"]);
    let want: Vec<f64> = serde_json::from_value(case["top_probs"].clone()).expect("probs");
    assert_eq!(got.iter().map(|(i, _)| *i).collect::<Vec<_>>(), want_ids);
    for ((_, p), w) in got.iter().zip(&want) {
        assert!((f64::from(*p) - w).abs() < 1e-5, "{p} vs {w}");
    }
    let err = score::top_k(&probs, 513).expect_err("k > vocab");
    assert_eq!(
        err.to_string(),
        "k = 513 must be between 1 and the vocabulary size (512)"
    );
}

#[test]
fn nll_and_conditional_nll_match_transformers() {
    let model = tiny();
    let exp = expected();
    let nll = score::nll_from(&model, &ids(&exp["nll"]["ids"]), 1);
    let want = exp["nll"]["nll"].as_f64().expect("nll");
    assert!((nll - want).abs() < 1e-3, "NLL {nll} vs {want}");
    let c = &exp["conditional"];
    let prefix = ids(&c["prefix"]);
    let full = [prefix.clone(), ids(&c["continuation"])].concat();
    let conditional = score::nll_from(&model, &full, prefix.len());
    let joint = score::nll_from(&model, &full, 1);
    let marginal = score::nll_from(&model, &prefix, 1);
    for (name, got) in [
        ("conditional", conditional),
        ("joint", joint),
        ("marginal", marginal),
    ] {
        let want = c[name].as_f64().expect(name);
        assert!((got - want).abs() < 1e-3, "{name}: {got} vs {want}");
    }
    assert!(
        (joint - marginal - conditional).abs() < 1e-3,
        "joint − marginal = {} vs conditional {conditional}",
        joint - marginal
    );
}

pub(crate) fn expected_peaked() -> Value {
    let text = std::fs::read_to_string(fixture("numerics/expected_peaked.json"))
        .expect("expected_peaked.json");
    serde_json::from_str(&text).expect("JSON")
}

/// The GPT-2-vocabulary model whose next-token distributions are peaked (top > 0.9), made by
/// generate_peaked.py.
fn peaked() -> kiln_model::gpt2::Gpt2<B> {
    hf::load::<B>(&fixture("numerics/tiny-gpt2-peaked"), &Default::default())
        .expect("peaked model")
        .1
}

pub(crate) fn floats(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).expect("numbers")
}

/// The largest `|got − want|`.
pub(crate) fn worst(got: impl IntoIterator<Item = f64>, want: &[f64]) -> f64 {
    got.into_iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn peaked_top_k_probabilities_match_transformers_in_float64() {
    let model = peaked();
    let exp = expected_peaked();
    let case = &exp["topk"];
    let probs = score::next_token_probs(&model, &ids(&case["ids"]));
    assert_eq!(probs.len(), 50257);
    let got = score::top_k(&probs, 10).expect("k = 10");
    let want = floats(&case["top_probs"]);
    assert!(want[0] > 0.9, "the fixture is peaked");
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        ids(&case["top_ids"])
    );
    let err = worst(got.iter().map(|(_, p)| f64::from(*p)), &want);
    assert!(
        err < 1e-5,
        "max |kiln − transformers (f64)| = {err:e}; kiln {got:?}"
    );
    // And the whole distribution sums to 1.
    let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
    assert!((total - 1.0).abs() < 1e-5, "sum {total}");
}

#[test]
fn peaked_nll_trace_and_gap_match_transformers_in_float64() {
    let model = peaked();
    let exp = expected_peaked();
    let nll = score::nll_from(&model, &ids(&exp["nll"]["ids"]), 1);
    let want = exp["nll"]["nll"].as_f64().expect("nll");
    assert!((nll - want).abs() < 1e-3, "NLL {nll} vs {want}");

    let t = &exp["trace"];
    // The label pair is irrelevant here: the trace's top token and its probability.
    let trace = score::label_trace(&model, &ids(&t["ids"]), 0, 1);
    let top: Vec<u32> = trace.iter().map(|p| p.top_token).collect();
    assert_eq!(top, ids(&t["top_ids"]));
    let err = worst(
        trace.iter().map(|p| f64::from(p.top_prob)),
        &floats(&t["top_probs"]),
    );
    // f32 row sums were off by 6e-6 here.
    assert!(err < 1e-6, "trace top probabilities: max error {err:e}");

    let g = &exp["gap"];
    let gap = score::internalization_gap(&model, &model, &ids(&g["ids"]), &ids(&g["prompt"]));
    for (name, got, tol) in [
        ("max", gap.max, 1e-6),
        ("mean", gap.mean, 1e-10),
        ("sum", gap.sum, 1e-6),
    ] {
        let want = g[name].as_f64().expect(name);
        assert!((got - want).abs() < tol, "gap {name}: {got} vs {want}");
    }
}

#[test]
fn long_context_nll_matches_transformers_in_float64() {
    let model = peaked();
    let exp = expected_peaked();
    let long = &exp["long"];
    let row = ids(&long["ids"]);
    assert!(row.len() >= 512);
    let nll = score::nll_from(&model, &row, 1);
    let want = long["nll"].as_f64().expect("nll");
    assert!((nll - want).abs() < 1e-3, "NLL {nll} vs {want}");
}

fn greedy(max: usize, stop: Option<u32>, kv_cache: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: max,
        temperature: 0.0,
        top_k: None,
        seed: 0,
        stop,
        kv_cache,
    }
}

#[test]
fn greedy_and_product_of_experts_decoding_match_transformers() {
    let model = tiny();
    let exp = expected();
    let g = &exp["greedy"];
    let want = ids(&g["tokens"]);
    for kv_cache in [true, false] {
        let out = decode::generate(&model, &ids(&g["prompt"]), &greedy(12, Some(511), kv_cache))
            .expect("generates");
        assert_eq!(out.tokens, want, "kv cache {kv_cache}");
    }
    let p = &exp["poe_greedy"];
    let contexts: Vec<Vec<u32>> = serde_json::from_value(p["contexts"].clone()).expect("contexts");
    for kv_cache in [true, false] {
        let out =
            decode::generate_poe(&model, &contexts, &greedy(10, None, kv_cache)).expect("poe");
        assert_eq!(out.tokens, ids(&p["tokens"]), "kv cache {kv_cache}");
        assert_eq!(out.stop, Stop::MaxTokens);
    }
}

#[test]
fn sampling_is_reproducible_and_cold_sampling_is_greedy() {
    let model = tiny();
    let prompt = [5, 17, 300];
    let sample = |seed: u64, temperature: f64, kv_cache: bool| {
        decode::generate(
            &model,
            &prompt,
            &GenerateOptions {
                max_new_tokens: 20,
                temperature,
                top_k: Some(50),
                seed,
                stop: None,
                kv_cache,
            },
        )
        .expect("samples")
        .tokens
    };
    assert_eq!(sample(7, 1.0, true), sample(7, 1.0, true));
    assert_eq!(
        sample(7, 1.0, true),
        sample(7, 1.0, false),
        "cache changes nothing"
    );
    assert_ne!(sample(7, 1.0, true), sample(8, 1.0, true), "seeds differ");
    let greedy_tokens = decode::generate(&model, &prompt, &greedy(20, None, true))
        .expect("greedy")
        .tokens;
    assert_eq!(sample(7, 1e-6, true), greedy_tokens);
}

/// Batched decoding equals one prompt at a time: sampled rows (each its own sampler) that stop
/// at different steps (one at the stop token, the others at the count), an empty and a
/// one-row batch, and the fallbacks (no KV cache; prompts whose padded length and new tokens
/// overrun the context).
#[test]
fn a_batch_decodes_each_prompt_as_alone() {
    let model = tiny();
    let prompts: Vec<Vec<u32>> = vec![vec![5, 17, 300], vec![9], vec![44, 2, 81, 7, 19, 250]];
    let sampled = |stop: Option<u32>, kv_cache: bool, max: usize| GenerateOptions {
        max_new_tokens: max,
        temperature: 1.0,
        top_k: Some(50),
        seed: 3,
        stop,
        kv_cache,
    };
    let alone = |opts: &GenerateOptions| -> Vec<decode::Generated> {
        prompts
            .iter()
            .map(|p| decode::generate(&model, p, opts).expect("generates"))
            .collect()
    };
    // The stop token: row 0's third sampled token, so that row stops early.
    let free = alone(&sampled(None, true, 12));
    let stop = free[0].tokens[2];
    for (kv_cache, max) in [(true, 12), (false, 12), (true, 60)] {
        let opts = sampled(Some(stop), kv_cache, max);
        let want = alone(&opts);
        assert_eq!(want[0].stop, Stop::Eos);
        assert!(
            want.iter().any(|g| g.tokens.len() > 3),
            "rows stop at different steps"
        );
        let got = decode::generate_batch(&model, &prompts, &opts).expect("batch");
        assert_eq!(got, want, "kv cache {kv_cache}, {max} new tokens");
    }
    let opts = sampled(None, true, 5);
    assert!(
        decode::generate_batch(&model, &[], &opts)
            .expect("empty")
            .is_empty()
    );
    let one = decode::generate_batch(&model, &prompts[..1], &opts).expect("one");
    assert_eq!(one, alone(&opts)[..1].to_vec());
    let err = decode::generate_batch(&model, &[vec![1], vec![]], &opts).expect_err("empty row");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let model = tiny();
    let err = score::check_input(&[], 64, 512).expect_err("empty");
    assert_eq!(err.to_string(), "the text is empty (no tokens to read)");
    let long: Vec<u32> = (0..65).collect();
    let err = decode::generate(&model, &long, &greedy(1, None, true)).expect_err("too long");
    assert!(
        err.to_string()
            .starts_with("the text is 65 tokens, longer than the model's context of 64"),
        "{err}"
    );
    // Generation stops when the context is full.
    let near: Vec<u32> = (1..63).collect();
    let out = decode::generate(&model, &near, &greedy(10, None, true)).expect("fits");
    assert_eq!(out.stop, Stop::ContextFull);
    assert_eq!(out.tokens.len(), 3);

    // A model directory with a tokenizer: text-level errors.
    let dir = tempfile::tempdir().expect("tmp");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("numerics/tiny-gpt2").join(f), dir.path().join(f)).expect("copy");
    }
    let rows = kiln_data::sentiment::read(
        &repo_root().join("data/samples/sentiment140.sample.csv"),
        &kiln_data::sentiment::ReadOptions::default(),
    )
    .expect("samples");
    let tok = kiln_data::tokenizer::Tok::train(rows.texts.iter(), 400, 2).expect("tokenizer");
    tok.save(&dir.path().join("tokenizer.json")).expect("save");
    let lm = Lm::<B>::load(dir.path(), &Default::default()).expect("loads");
    assert_eq!(
        lm.top_k("", 5).expect_err("empty").to_string(),
        "the text is empty"
    );
    let err = lm
        .trace("I love it", " not one token at all", " good")
        .expect_err("label");
    assert!(err.to_string().contains("must be one token"), "{err}");
    let trace = lm.trace("I love it", " bad", " good").expect("trace");
    assert!(!trace.is_empty());
    for point in &trace {
        assert!((point.positive + point.negative - 1.0).abs() < 1e-5);
    }
    let joint = lm.nll("I love it so much").expect("nll");
    let marginal = lm.nll("I love it").expect("nll");
    let conditional = lm.conditional_nll("I love it", "so much").expect("cond");
    assert!((joint - marginal - conditional).abs() < 1e-3);
}

const EVAL_PIPELINE: &str = r#"name: eval
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
    with: {tokenizer: "${stages.tweets.dir}", n_embd: 32, n_layer: 2, n_head: 4, n_positions: 512, seed: 1}
  pretrain:
    uses: train.lm
    with: {data: "${stages.tweets.dir}", model: "${stages.init.dir}/model", max_steps: 4, batch_size: 8, lr: 0.003}
  accuracy:
    uses: eval.sentiment
    with: {model: "${stages.pretrain.dir}/model", data: "${stages.tweets.dir}", split: test}
  traces:
    uses: eval.trace
    with:
      model: ${stages.pretrain.dir}/model
      texts: ["The food was good but the service was terrible.", "I love it", "She said \"no, thanks\"\nand left"]
  gap:
    uses: eval.gap
    with: {model: "${stages.init.dir}/model", teacher: "${stages.pretrain.dir}/model", data: "${stages.tweets.dir}", prompt: " I feel", max_rows: 10}
  scores:
    uses: eval.score
    inputs: {source: texts.txt}
    with: {model: "${stages.pretrain.dir}/model", source: texts.txt}
  answers:
    uses: eval.generate
    inputs: {source: data/samples/alpaca.sample.json}
    with: {model: "${stages.pretrain.dir}/model", source: data/samples/alpaca.sample.json, limit: 3, max_new_tokens: 4}
  answers_one_by_one:
    uses: eval.generate
    inputs: {source: data/samples/alpaca.sample.json}
    with: {model: "${stages.pretrain.dir}/model", source: data/samples/alpaca.sample.json, limit: 3, max_new_tokens: 4, batch_size: 1}
"#;

#[test]
fn eval_stages_record_metrics_tables_and_plots() {
    let p = crate::support::Project::new();
    std::fs::create_dir_all(p.path().join("data/samples")).expect("mkdir");
    for f in ["sentiment140.sample.csv", "alpaca.sample.json"] {
        std::fs::copy(
            repo_root().join("data/samples").join(f),
            p.path().join("data/samples").join(f),
        )
        .expect("copy");
    }
    p.write(
        "texts.txt",
        "I love it\n\nthis is bad\nshe said \"no, thanks\", twice\n",
    );
    p.write("eval.yaml", EVAL_PIPELINE);
    p.run("eval.yaml", &[]).ok();
    let metric = |stage: &str, name: &str| -> f64 {
        p.scalar(&format!(
            "SELECT value FROM metrics WHERE stage = '{stage}' AND name = '{name}'"
        ))
        .parse()
        .expect("a number")
    };
    let rows = metric("accuracy", "rows");
    assert!(rows > 0.0);
    let confusion: f64 = [
        "positive_as_positive",
        "positive_as_negative",
        "negative_as_positive",
        "negative_as_negative",
    ]
    .iter()
    .map(|c| {
        p.query(&format!(
            "SELECT value FROM metrics WHERE stage = 'accuracy' AND name = 'confusion_{c}'"
        ))
        .first()
        .map_or(0.0, |r| r[0].parse::<f64>().expect("number"))
    })
    .sum();
    assert_eq!(confusion, rows, "the confusion matrix counts every row");
    for (stage, name) in [
        ("accuracy", "accuracy"),
        ("accuracy", "accuracy_2way"),
        ("gap", "gap_max"),
        ("gap", "gap_sum"),
    ] {
        let v = metric(stage, name);
        assert!((0.0..=2.0).contains(&v), "{stage}.{name} = {v}");
    }
    assert_eq!(metric("scores", "texts"), 3.0);
    assert!(metric("scores", "mean_nll") > 0.0);
    assert_eq!(metric("answers", "generated"), 3.0);
    // Batched (the default, 8) and one at a time: the same answers.
    let generations: Vec<String> = p
        .cache_entries()
        .into_iter()
        .map(|e| {
            p.path()
                .join("results/cache")
                .join(e)
                .join("generations.jsonl")
        })
        .filter(|f| f.is_file())
        .map(|f| std::fs::read_to_string(f).expect("generations"))
        .collect();
    assert_eq!(generations.len(), 2, "two eval.generate stages");
    assert_eq!(generations[0].lines().count(), 3);
    assert_eq!(generations[0], generations[1]);
    // Plots: an SVG with the trace drawn, and a PNG.
    let dir = p
        .cache_entries()
        .into_iter()
        .map(|e| p.path().join("results/cache").join(e))
        .find(|d| d.join("traces.json").is_file())
        .expect("traces entry");
    let svg = std::fs::read_to_string(dir.join("trace-0.svg")).expect("svg");
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "no line drawn"
    );
    assert!(svg.contains("service"), "tokens are the x ticks");
    let png = std::fs::read(dir.join("trace-1.png")).expect("png");
    assert_eq!(&png[..4], b"\x89PNG");
    let csv = std::fs::read_to_string(dir.join("trace-0.csv")).expect("csv");
    assert!(csv.lines().count() > 5);
    // The tables are real CSV: tokens and texts with quotes, commas and a newline read back
    // exactly.
    let mut trace = csv::Reader::from_path(dir.join("trace-2.csv")).expect("trace-2.csv");
    assert_eq!(
        trace.headers().expect("header"),
        vec![
            "position",
            "token",
            "positive",
            "negative",
            "top_token",
            "top_prob"
        ]
    );
    let tokens: String = trace
        .records()
        .map(|r| r.expect("a record")[1].to_owned())
        .collect();
    assert_eq!(tokens, "She said \"no, thanks\"\nand left");
    let scores_dir = p
        .cache_entries()
        .into_iter()
        .map(|e| p.path().join("results/cache").join(e))
        .find(|d| d.join("scores.csv").is_file())
        .expect("scores entry");
    let mut scores = csv::Reader::from_path(scores_dir.join("scores.csv")).expect("scores.csv");
    assert_eq!(
        scores.headers().expect("header"),
        vec!["line", "tokens", "nll", "nll_per_token", "text"]
    );
    let lines: Vec<(String, String)> = scores
        .records()
        .map(|r| {
            let r = r.expect("a record");
            (r[0].to_owned(), r[4].to_owned())
        })
        .collect();
    let want = [
        ("1", "I love it"),
        ("3", "this is bad"),
        ("4", "she said \"no, thanks\", twice"),
    ];
    assert_eq!(
        lines,
        want.map(|(n, t)| (n.to_owned(), t.to_owned())).to_vec()
    );
}

/// The tiny fixture model with a small tokenizer trained on the sample tweets, in `dir`.
fn model_dir(dir: &std::path::Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("numerics/tiny-gpt2").join(f), dir.join(f)).expect("copy");
    }
    let rows = kiln_data::sentiment::read(
        &repo_root().join("data/samples/sentiment140.sample.csv"),
        &kiln_data::sentiment::ReadOptions::default(),
    )
    .expect("samples");
    let tok = kiln_data::tokenizer::Tok::train(rows.texts.iter(), 400, 2).expect("tokenizer");
    tok.save(&dir.join("tokenizer.json")).expect("save");
}

#[test]
fn lm_commands_print_tables_generate_and_explain_bad_input() {
    let p = crate::support::Project::new();
    model_dir(p.path());
    let m = p.path().to_string_lossy().into_owned();
    let ran = p
        .kiln(&[
            "topk",
            "--model",
            &m,
            "I love it",
            "-k",
            "3",
            "--format",
            "json",
        ])
        .ok();
    let rows: Vec<Value> = serde_json::from_str(&ran.stdout).expect("JSON rows");
    assert_eq!(rows.len(), 3);
    let probs: Vec<f64> = rows
        .iter()
        .map(|r| r["prob"].as_f64().expect("prob"))
        .collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");

    let nll: f64 = p
        .kiln(&["nll", "--model", &m, "I love it"])
        .ok()
        .stdout
        .trim()
        .parse()
        .expect("number");
    assert!(nll > 0.0);
    let given: f64 = p
        .kiln(&["nll", "--model", &m, "--given", "I love", "it"])
        .ok()
        .stdout
        .trim()
        .parse()
        .expect("number");
    assert!(given > 0.0 && given < nll);

    let generate = |extra: &[&str]| {
        let mut args = vec!["--json", "generate", "--model", &m, "-t", "0", "-n", "6"];
        args.extend_from_slice(extra);
        let out: Value = serde_json::from_str(&p.kiln(&args).ok().stdout).expect("JSON");
        out["tokens"].clone()
    };
    let cached = generate(&["--prompt", "I love"]);
    assert_eq!(cached, generate(&["--prompt", "I love", "--no-cache"]));
    let poe = generate(&["--poe", "I love", "--poe", "so bad"]);
    assert!(poe.as_array().is_some_and(|a| !a.is_empty()));

    let svg = p.path().join("trace.svg");
    p.kiln(&[
        "trace",
        "--model",
        &m,
        "I love it",
        "--plot",
        &svg.to_string_lossy(),
    ])
    .ok();
    assert!(std::fs::read_to_string(&svg).expect("svg").contains("<svg"));

    let bad = p.kiln(&["topk", "--model", &m, "I love it", "-k", "0"]);
    assert_ne!(bad.status, 0);
    assert!(
        bad.stderr
            .contains("k = 0 must be between 1 and the vocabulary size"),
        "{}",
        bad.stderr
    );
    let empty = p.kiln(&["nll", "--model", &m, ""]);
    assert_ne!(empty.status, 0);
    assert!(
        empty.stderr.contains("the text is empty"),
        "{}",
        empty.stderr
    );
}

/// The lowest id of the largest logit (NaN never winning), as decoding's scan picks it.
fn first_max(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0 as u32
}

/// Greedy decoding through the head's int8 copy picks, at every step, the token a scan of all
/// the f32 logits picks: GPT-2 with a peaked 50,257-token head, on burn-flex. Other backends
/// decline without reading anything.
#[test]
fn greedy_through_the_int8_head_equals_the_scan_of_every_logit() {
    use kiln_model::CausalLm;
    use kiln_model::burn::prelude::*;
    let device = Default::default();
    let dir = fixture("numerics/tiny-gpt2-peaked");
    let (_, model) = hf::load::<Flex>(&dir, &device).expect("loads");
    let ids = |read: &[u32]| {
        let v: Vec<i64> = read.iter().map(|&t| i64::from(t)).collect();
        let n = v.len();
        Tensor::<Flex, 2, Int>::from_data(TensorData::new(v, [1, n]), &device)
    };
    let mut distinct = std::collections::BTreeSet::new();
    for prompt in [
        &[464u32, 3290, 318, 257][..],
        &[50256],
        &[1000, 2000, 3000],
        &[31373, 995],
    ] {
        let (mut fast_cache, mut full_cache) = (model.new_cache(), model.new_cache());
        let mut context = prompt.to_vec();
        for step in 0..20 {
            let read = if step == 0 {
                context.clone()
            } else {
                context[context.len() - 1..].to_vec()
            };
            let fast = model
                .greedy_cached(ids(&read), &mut fast_cache)
                .expect("GPT-2 on burn-flex");
            let logits =
                kiln_model::host::read_f32(model.forward_cached(ids(&read), &mut full_cache));
            assert_eq!(logits.len(), 50257);
            let scan = first_max(&logits);
            assert_eq!(fast, scan, "prompt {prompt:?}, step {step}");
            distinct.insert(fast);
            context.push(fast);
        }
        // Decoding itself takes this path for 16 tokens or more, and gives the same tokens.
        let opts = GenerateOptions {
            max_new_tokens: 20,
            temperature: 0.0,
            stop: None,
            ..GenerateOptions::default()
        };
        let out = decode::generate(&model, prompt, &opts).expect("generates");
        assert_eq!(out.tokens, context[prompt.len()..], "prompt {prompt:?}");
    }
    assert!(distinct.len() > 1, "one token over and over: {distinct:?}");

    // A clone shares the model's index cache; given another head it must not use the first
    // head's index: each model's pick is the scan of its own logits, and the two differ.
    let mut other = model.clone();
    other.wte.weight = other.wte.weight.map(|w| w.neg());
    let first_pick = |m: &kiln_model::gpt2::Gpt2<Flex>| {
        let read = [464u32, 3290, 318, 257];
        let fast = m.greedy_cached(ids(&read), &mut m.new_cache());
        let logits = kiln_model::host::read_f32(m.forward_cached(ids(&read), &mut m.new_cache()));
        let scan = first_max(&logits);
        assert_eq!(fast, Some(scan));
        scan
    };
    let picks = [first_pick(&model), first_pick(&other), first_pick(&model)];
    assert_ne!(picks[0], picks[1], "the negated head picks another token");
    assert_eq!(picks[0], picks[2]);

    let cpu_device = Default::default();
    let (_, cpu) = hf::load::<kiln_model::Cpu>(&dir, &cpu_device).expect("loads");
    let mut cache = cpu.new_cache();
    let read = Tensor::<kiln_model::Cpu, 2, Int>::from_data(
        TensorData::new(vec![464i64], [1, 1]),
        &cpu_device,
    );
    assert_eq!(cpu.greedy_cached(read, &mut cache), None);
    assert!(cache.is_empty(), "declining read nothing");
}
