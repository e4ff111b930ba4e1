//! Golden results per stage kind: "results change ⇒ version changes".
//!
//! One tiny pipeline runs every kind that computes numbers on fixed inputs (the repo's own
//! samples). For each kind, what it produced (its metrics, the blake3 of the files that hold
//! data, a checksum of the weights it wrote) is compared with `tests/fixtures/golden/<kind>.json`,
//! committed next to the kind's version. When they differ and the kind's version is the one
//! recorded there, the test fails: the kind's results changed without a version bump. After a
//! bump, `KILN_BLESS=1 cargo test --test main golden` rewrites the goldens of the bumped kinds
//! (and refuses to rewrite one whose version did not change).
//!
//! Numbers compare within 1e-5 relative (the same CPU kind can pick other SIMD paths); files
//! that hold data (shards, tokenizers, generations) compare exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::{Project, repo_root};

const PIPELINE: &str = r#"name: golden
stages:
  tok:
    uses: data.tokenizer
    with: {train_on: tweets.csv, vocab_size: 1000}
  tweets:
    uses: data.sentiment140
    with: {source: tweets.csv, tokenizer: "${stages.tok.dir}", val: 0.2, test: 0.1, seed: 3, labels: {negative: " bad", positive: " good"}}
  alpaca:
    uses: data.alpaca
    with: {source: alpaca.json, tokenizer: "${stages.tok.dir}", val: 0.2, seed: 3, max_length: 256}
  init:
    uses: model.init
    with: {tokenizer: "${stages.tweets.dir}", n_positions: 512, n_embd: 16, n_layer: 1, n_head: 2, seed: 5}
  hf:
    uses: model.hf
    with: {source: "${stages.init.dir}/model"}
  lm:
    uses: train.lm
    with: {data: "${stages.tweets.dir}", model: "${stages.hf.dir}/model", max_steps: 6, batch_size: 4, lr: 0.01, seed: 2, eval_every: 3, eval_batches: 2}
  sft:
    uses: train.lm
    with: {data: "${stages.alpaca.dir}", model: "${stages.init.dir}/model", max_steps: 3, batch_size: 2, lr: 0.01, seed: 2, eval_batches: 1}
  student:
    uses: train.internalize
    with: {data: "${stages.tweets.dir}", model: "${stages.init.dir}/model", teacher: "${stages.lm.dir}/model", prompt: " I feel", alpha: 0.5, temperature: 2.0, max_steps: 6, batch_size: 4, lr: 0.01, seed: 2, eval_batches: 2}
  accuracy:
    uses: eval.sentiment
    with: {model: "${stages.student.dir}/model", data: "${stages.tweets.dir}", split: val}
  gap:
    uses: eval.gap
    with: {model: "${stages.student.dir}/model", teacher: "${stages.lm.dir}/model", data: "${stages.tweets.dir}", prompt: " I feel", split: val, max_rows: 8}
  trace:
    uses: eval.trace
    with: {model: "${stages.student.dir}/model", texts: ["the day was good but sad", "what a \"great\", happy day"]}
  score:
    uses: eval.score
    with: {model: "${stages.lm.dir}/model", source: lines.txt, given: "today"}
  generate:
    uses: eval.generate
    with: {model: "${stages.sft.dir}/model", source: alpaca.json, max_new_tokens: 4, limit: 3}
"#;

/// Artifacts compared by exact content; every other file is left to the metrics and the
/// weight checksums.
fn exact(path: &str) -> bool {
    path.ends_with(".arrow")
        || path.ends_with("tokenizer.json")
        || path.ends_with("generations.jsonl")
        || path.ends_with("scores.csv")
        || path.ends_with(".csv") && path.contains("trace-")
}

/// Sum of squares of every f32 in a safetensors file: a checksum of the weights that
/// tolerates the last bits (SIMD paths) but not a changed computation.
fn weight_checksum(path: &Path) -> f64 {
    let bytes = std::fs::read(path).expect("weights");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let data = &bytes[8 + n..];
    let mut sum = 0.0f64;
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(info["dtype"], "F32", "{name}");
        let off = &info["data_offsets"];
        let (a, b) = (
            off[0].as_u64().expect("offset") as usize,
            off[1].as_u64().expect("offset") as usize,
        );
        for c in data[a..b].chunks_exact(4) {
            let v = f64::from(f32::from_le_bytes(c.try_into().expect("4 bytes")));
            sum += v * v;
        }
    }
    sum
}

/// What each stage produced: kind, version, and name → value.
fn observed(p: &Project) -> BTreeMap<String, (String, i64, BTreeMap<String, Value>)> {
    let mut out = BTreeMap::new();
    for row in p.query("SELECT stage, kind, kind_version FROM stage_runs WHERE run_id = 1") {
        let version: i64 = row[2].parse().expect("version");
        out.insert(row[0].clone(), (row[1].clone(), version, BTreeMap::new()));
    }
    for row in p.query("SELECT stage, name, step, value FROM metrics WHERE run_id = 1") {
        let (stage, name, step) = (&row[0], &row[1], &row[2]);
        if name.contains("seconds") || name.contains("per_s") {
            continue;
        }
        let value: f64 = row[3].parse().unwrap_or(f64::NAN);
        if let Some((_, _, values)) = out.get_mut(stage) {
            values.insert(format!("metric {name}@{step}"), json!(value));
        }
    }
    for row in p.query("SELECT stage, path, hash FROM artifacts WHERE run_id = 1") {
        let (stage, path, hash) = (&row[0], &row[1], &row[2]);
        let rel = path
            .split_once("/cache/")
            .and_then(|(_, r)| r.split_once('/'))
            .map_or(path.as_str(), |(_, r)| r)
            .to_owned();
        let Some((_, _, values)) = out.get_mut(stage) else {
            continue;
        };
        if rel.ends_with("model.safetensors") && !rel.starts_with("checkpoints/") {
            values.insert(
                format!("weights {rel}"),
                json!(weight_checksum(&p.path().join(path))),
            );
        } else if exact(&rel) {
            values.insert(format!("file {rel}"), json!(hash));
        }
    }
    out
}

/// The differences between a golden and what was observed.
fn differences(golden: &BTreeMap<String, Value>, now: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for key in golden
        .keys()
        .chain(now.keys().filter(|k| !golden.contains_key(*k)))
    {
        let (g, n) = (golden.get(key), now.get(key));
        let same = match (g, n) {
            (Some(Value::Number(a)), Some(Value::Number(b))) => {
                let (a, b) = (
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                );
                (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-7
            }
            (a, b) => a == b,
        };
        if !same {
            out.push(format!("{key}: golden {g:?}, now {n:?}"));
        }
    }
    out
}

fn golden_dir() -> PathBuf {
    repo_root().join("tests/fixtures/golden")
}

#[test]
fn every_numeric_kind_matches_its_golden_or_bumped_its_version() {
    let p = Project::new();
    let samples = repo_root().join("data/samples");
    std::fs::copy(
        samples.join("sentiment140.sample.csv"),
        p.path().join("tweets.csv"),
    )
    .expect("copy");
    std::fs::copy(
        samples.join("alpaca.sample.json"),
        p.path().join("alpaca.json"),
    )
    .expect("copy");
    p.write("lines.txt", "was a good day\nwas an awful day\n");
    p.write("golden.yaml", PIPELINE);
    p.run("golden.yaml", &[]).ok();
    let bless = std::env::var_os("KILN_BLESS").is_some();
    let mut by_kind: BTreeMap<String, (i64, BTreeMap<String, Value>)> = BTreeMap::new();
    for (stage, (kind, version, values)) in observed(&p) {
        let entry = by_kind.entry(kind).or_insert((version, BTreeMap::new()));
        for (k, v) in values {
            entry.1.insert(format!("{stage}: {k}"), v);
        }
    }
    assert_eq!(
        by_kind.len(),
        12,
        "every numeric kind ran: {:?}",
        by_kind.keys()
    );
    let mut failures = Vec::new();
    for (kind, (version, values)) in &by_kind {
        let path = golden_dir().join(format!("{kind}.json"));
        let golden: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let g_version = golden.as_ref().and_then(|g| g["version"].as_i64());
        let g_values: BTreeMap<String, Value> = golden
            .as_ref()
            .and_then(|g| serde_json::from_value(g["values"].clone()).ok())
            .unwrap_or_default();
        let diff = differences(&g_values, values);
        match (g_version == Some(*version), diff.is_empty(), bless) {
            (true, true, _) => {}
            (true, false, _) => failures.push(format!(
                "{kind} v{version}: its results changed without a version bump; bump its version, then KILN_BLESS=1:\n    {}",
                diff.join("\n    ")
            )),
            (false, _, true) => {
                let text = serde_json::to_string_pretty(&json!({
                    "kind": kind,
                    "version": version,
                    "values": values,
                }))
                .expect("json");
                std::fs::create_dir_all(golden_dir()).expect("mkdir");
                std::fs::write(&path, text + "\n").expect("write golden");
                eprintln!("blessed {kind} v{version}");
            }
            (false, _, false) => failures.push(format!(
                "{kind} is version {version} but its golden is for {g_version:?}: regenerate it with KILN_BLESS=1"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
