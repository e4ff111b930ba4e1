//! Golden results per stage kind: "results change ⇒ version changes".
//!
//! One tiny pipeline runs every kind that computes numbers on fixed inputs (the repo's own
//! samples). For each kind, what it produced (its metrics, the blake3 of the files that hold
//! data, a checksum of the weights it wrote) is compared with `tests/fixtures/golden/<kind>.json`,
//! committed next to the kind's version and its stages' fingerprints. When they differ while
//! the version and the fingerprints are the ones recorded (the same kind on the same inputs),
//! the test fails: the kind's results changed without a version bump. After a bump (which also
//! changes the fingerprints of the stages downstream), `KILN_BLESS=1 cargo test --test
//! integration golden` rewrites the goldens whose version or fingerprints changed, and refuses
//! to rewrite any other.
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
  instruct:
    uses: data.instruct
    with: {source: alpaca.json, tokenizer: "${stages.tok.dir}", template: human-assistant, val: 0.2, seed: 3, max_length: 256}
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
  adapted:
    uses: train.lm
    with: {data: "${stages.alpaca.dir}", model: "${stages.init.dir}/model", max_steps: 3, batch_size: 2, lr: 0.01, seed: 2, eval_batches: 1, lora_rank: 2, lora_dropout: 0.2}
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
  iterate:
    uses: eval.iterate
    with: {model: "${stages.sft.dir}/model", texts: ["the day was good"]}
"#;

/// Artifacts compared by exact content; every other file is left to the metrics and the
/// weight checksums.
fn exact(path: &str) -> bool {
    path.ends_with(".arrow")
        || path.ends_with("tokenizer.json")
        || path.ends_with("generations.jsonl")
        || path.ends_with("iterative.jsonl")
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

/// What one stage produced, with what identifies its computation.
struct Observed {
    kind: String,
    version: i64,
    fingerprint: String,
    values: BTreeMap<String, Value>,
}

/// What each stage of run 1 produced.
fn observed(p: &Project) -> BTreeMap<String, Observed> {
    let mut out = BTreeMap::new();
    for row in
        p.query("SELECT stage, kind, kind_version, fingerprint FROM stage_runs WHERE run_id = 1")
    {
        let observed = Observed {
            kind: row[1].clone(),
            version: row[2].parse().expect("version"),
            fingerprint: row[3].clone(),
            values: BTreeMap::new(),
        };
        out.insert(row[0].clone(), observed);
    }
    for row in p.query("SELECT stage, name, step, value FROM metrics WHERE run_id = 1") {
        let (stage, name, step) = (&row[0], &row[1], &row[2]);
        if name.contains("seconds") || name.contains("per_s") {
            continue;
        }
        let value: f64 = row[3].parse().unwrap_or(f64::NAN);
        if let Some(o) = out.get_mut(stage) {
            o.values
                .insert(format!("metric {name}@{step}"), json!(value));
        }
    }
    for row in p.query("SELECT stage, path, hash FROM artifacts WHERE run_id = 1") {
        let (stage, path, hash) = (&row[0], &row[1], &row[2]);
        let rel = path
            .split_once("/cache/")
            .and_then(|(_, r)| r.split_once('/'))
            .map_or(path.as_str(), |(_, r)| r)
            .to_owned();
        let Some(o) = out.get_mut(stage) else {
            continue;
        };
        if rel.ends_with("model.safetensors") && !rel.starts_with("checkpoints/") {
            let sum = weight_checksum(&p.path().join(path));
            o.values.insert(format!("weights {rel}"), json!(sum));
        } else if exact(&rel) {
            o.values.insert(format!("file {rel}"), json!(hash));
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
    // Per kind: its version, its stages' fingerprints, and every value its stages produced.
    type Kind = (i64, BTreeMap<String, String>, BTreeMap<String, Value>);
    let mut by_kind: BTreeMap<String, Kind> = BTreeMap::new();
    for (stage, o) in observed(&p) {
        let entry = by_kind
            .entry(o.kind)
            .or_insert((o.version, BTreeMap::new(), BTreeMap::new()));
        entry.1.insert(stage.clone(), o.fingerprint);
        for (k, v) in o.values {
            entry.2.insert(format!("{stage}: {k}"), v);
        }
    }
    let kinds: Vec<&String> = by_kind.keys().collect();
    assert_eq!(kinds.len(), 14, "every numeric kind ran: {kinds:?}");
    let mut failures = Vec::new();
    for (kind, (version, fingerprints, values)) in &by_kind {
        let path = golden_dir().join(format!("{kind}.json"));
        let golden: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let same_version = golden["version"].as_i64() == Some(*version);
        let same_inputs = golden["fingerprints"] == json!(fingerprints);
        let g_values: BTreeMap<String, Value> =
            serde_json::from_value(golden["values"].clone()).unwrap_or_default();
        let diff = differences(&g_values, values);
        if diff.is_empty() && same_version {
            continue;
        }
        if same_version && same_inputs {
            failures.push(format!(
                "{kind} v{version}: its results changed without a version bump (same version, same inputs); \
                 bump its version (or that of a kind feeding it), then KILN_BLESS=1:\n    {}",
                diff.join("\n    ")
            ));
        } else if bless {
            let text = serde_json::to_string_pretty(&json!({
                "kind": kind,
                "version": version,
                "fingerprints": fingerprints,
                "values": values,
            }))
            .expect("json");
            std::fs::create_dir_all(golden_dir()).expect("mkdir");
            std::fs::write(&path, text + "\n").expect("write golden");
            eprintln!("blessed {kind} v{version}");
        } else {
            failures.push(format!(
                "{kind} v{version}: its golden is for version {} and other inputs; regenerate it with KILN_BLESS=1:\n    {}",
                golden["version"],
                diff.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
