//! Tokenizers beyond GPT-2's (issue 14): a SentencePiece-style BPE with byte fallback and a
//! Metaspace pre-tokenizer, special tokens from `tokenizer_config.json`, and
//! `add_prefix_space` on every command and data stage. Expected values come from
//! transformers (`tests/fixtures/numerics/generate_tokenizers.py`).

use std::path::PathBuf;

use kiln_data::shard::ShardReader;
use kiln_data::tokenizer::Tok;
use serde_json::Value;

use crate::support::{Project, fixture, repo_root};

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("numerics/tokenizers/expected.json"))
        .expect("expected.json is committed");
    serde_json::from_str(&text).expect("expected.json parses")
}

fn sp_dir() -> PathBuf {
    fixture("numerics/tokenizers/sp-llama")
}

fn texts(v: &Value) -> Vec<String> {
    serde_json::from_value(v["texts"].clone()).expect("texts")
}

fn id_rows(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).expect("id rows")
}

fn id(v: &Value) -> Option<u32> {
    v.as_u64().map(|i| u32::try_from(i).expect("small id"))
}

#[test]
fn a_sentencepiece_style_tokenizer_encodes_decodes_and_names_its_specials_as_transformers() {
    let want = &expected()["sp-llama"];
    let tok = Tok::load(&sp_dir()).expect("the fixture loads");
    let texts = texts(want);
    let ids = id_rows(&want["ids"]);
    assert_eq!(
        tok.vocab_size() as u64,
        want["vocab_size"].as_u64().expect("n")
    );
    for (text, want_ids) in texts.iter().zip(&ids) {
        assert_eq!(&tok.encode(text).expect("encodes"), want_ids, "{text:?}");
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(tok.encode_batch(&refs).expect("batch"), ids);
    let decoded: Vec<String> = serde_json::from_value(want["decoded"].clone()).expect("decoded");
    for (row, text) in ids.iter().zip(&decoded) {
        assert_eq!(&tok.decode(row).expect("decodes"), text);
    }
    // Byte fallback: the emoji is bytes, not <unk>.
    let unk = id(&want["unk_id"]).expect("unk");
    assert!(ids.iter().flatten().all(|&i| i != unk));
    assert_eq!(tok.bos_id(), id(&want["bos_id"]));
    assert_eq!(tok.eos_id(), id(&want["eos_id"]));
    assert_eq!(tok.pad_id(), id(&want["pad_id"]));
    assert_eq!(tok.eos_token(), Some("</s>"));
    // add_prefix_space: false is the Metaspace prefix turned off.
    let off = Tok::load_with(&sp_dir(), Some(false)).expect("loads");
    for (text, want_ids) in texts.iter().zip(id_rows(&want["no_prefix_ids"])) {
        assert_eq!(off.encode(text).expect("encodes"), want_ids, "{text:?}");
    }
    assert_eq!(
        off.eos_id(),
        tok.eos_id(),
        "the specials survive the option"
    );
}

#[test]
fn add_prefix_space_on_gpt2s_tokenizer_matches_transformers() {
    let Some(data) = crate::data::shared_data() else {
        return;
    };
    let dir = data.join("gpt2-tokenizer");
    let want = &expected()["gpt2"];
    let texts = texts(want);
    let plain = Tok::load(&dir).expect("loads");
    let prefixed = Tok::load_with(&dir, Some(true)).expect("loads");
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(
        plain.encode_batch(&refs).expect("batch"),
        id_rows(&want["ids"])
    );
    let want_prefixed = id_rows(&want["add_prefix_space_ids"]);
    for (text, want_ids) in texts.iter().zip(&want_prefixed) {
        assert_eq!(
            &prefixed.encode(text).expect("encodes"),
            want_ids,
            "{text:?}"
        );
    }
    assert_eq!(prefixed.encode_batch(&refs).expect("batch"), want_prefixed);
    // The command line takes the same option.
    let p = Project::new();
    let dir_s = dir.to_string_lossy().into_owned();
    let out = p
        .kiln(&[
            "tokenize",
            "--tokenizer",
            &dir_s,
            "--add-prefix-space",
            "--json",
            "good",
        ])
        .ok();
    let json: Value = serde_json::from_str(out.stdout.trim()).expect("json");
    assert_eq!(json["ids"], serde_json::json!(want_prefixed[0]));
}

#[test]
fn a_tokenizer_option_that_cannot_apply_or_a_special_token_outside_the_vocabulary_is_refused() {
    let p = Project::new();
    let dir = p.path().join("tok");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut json: Value = serde_json::from_str(
        &std::fs::read_to_string(sp_dir().join("tokenizer.json")).expect("fixture"),
    )
    .expect("json");
    json["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).expect("write");
    let err = Tok::load_with(&dir, Some(true)).expect_err("no place for the option");
    assert!(err.to_string().contains("add_prefix_space"), "{err}");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<eot>"}"#,
    )
    .expect("write");
    let err = Tok::load(&dir).expect_err("unknown eos").to_string();
    assert!(err.contains("\"<eot>\"") && err.contains("eos"), "{err}");
}

/// The SentencePiece-style tokenizer through the data stages: `data.tokenizer` keeps its
/// special tokens, `data.alpaca` ends each example with its `</s>`, not GPT-2's token; and
/// `data.sentiment140` with `add_prefix_space` starts every row with a word token.
#[test]
fn data_stages_use_the_tokenizers_specials_and_take_add_prefix_space() {
    let p = Project::new();
    let samples = repo_root().join("data/samples");
    let sp = sp_dir();
    p.write(
        "pipelines/tok.yaml",
        &format!(
            r#"name: tok
stages:
  tok:
    uses: data.tokenizer
    with: {{from: "{sp}"}}
  chat:
    uses: data.alpaca
    with: {{source: "{alpaca}", tokenizer: "${{stages.tok.dir}}", val: 0.2}}
  tweets:
    uses: data.sentiment140
    with: {{source: "{csv}", tokenizer: "${{stages.tok.dir}}", add_prefix_space: false, labels: {{negative: "▁bad", positive: "▁good"}}}}
"#,
            sp = sp.display(),
            alpaca = samples.join("alpaca.sample.json").display(),
            csv = samples.join("sentiment140.sample.csv").display(),
        ),
    );
    p.run("pipelines/tok.yaml", &[]).ok();
    let dir = |stage: &str| {
        let fp = p.scalar(&format!(
            "SELECT fingerprint FROM stage_runs WHERE stage = '{stage}'"
        ));
        p.path().join(format!("results/cache/{fp}"))
    };
    let want = &expected()["sp-llama"];
    let eos = id(&want["eos_id"]).expect("eos");
    let tok = Tok::load(&dir("tok")).expect("the stage's tokenizer loads");
    assert_eq!(tok.eos_id(), Some(eos), "data.tokenizer keeps the specials");
    let rows: Vec<_> = ShardReader::open(&dir("chat"), "train", 4096, None)
        .expect("opens")
        .flat_map(|b| b.expect("batch"))
        .collect();
    assert!(!rows.is_empty());
    for row in &rows {
        assert_eq!(row.input_ids.last(), Some(&eos), "ends with </s>");
        let labels = row.labels.as_ref().expect("an LM dataset has labels");
        assert_eq!(
            labels.last(),
            Some(&i32::try_from(eos).expect("small id")),
            "the closing </s> is trained"
        );
    }
    // Without the Metaspace prefix no row starts with a "▁word" token.
    let tok = Tok::load(&dir("tweets")).expect("the dataset's tokenizer");
    let tweets: Vec<_> = ShardReader::open(&dir("tweets"), "train", 4096, None)
        .expect("opens")
        .flat_map(|b| b.expect("batch"))
        .collect();
    assert!(tweets.len() > 100);
    for row in &tweets {
        let first = tok.id_token(row.input_ids[0]).expect("a token");
        assert!(!first.starts_with('▁'), "{first:?}");
    }
}

/// `model.init` sizes on a named shape, with the tokenizer's special ids; sizes an
/// architecture has no place for are refused at validation.
#[test]
fn model_init_takes_custom_sizes_for_every_architecture() {
    let p = Project::new();
    let sp = sp_dir();
    p.write(
        "pipelines/init.yaml",
        &format!(
            r#"name: init
stages:
  small:
    uses: model.init
    with: {{config: smollm2-135m, tokenizer: "{sp}", n_embd: 64, n_layer: 2, n_head: 4, n_kv_head: 2, intermediate_size: 96, n_positions: 256}}
  gpt2:
    uses: model.init
    with: {{config: distilgpt2, vocab_size: 50257, n_layer: 1, n_embd: 32, n_head: 2, n_positions: 16}}
"#,
            sp = sp.display()
        ),
    );
    p.run("pipelines/init.yaml", &[]).ok();
    let dir = |stage: &str| {
        let fp = p.scalar(&format!(
            "SELECT fingerprint FROM stage_runs WHERE stage = '{stage}'"
        ));
        p.path().join(format!("results/cache/{fp}/model"))
    };
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir("small").join("config.json")).expect("config"),
    )
    .expect("json");
    let want = &expected()["sp-llama"];
    for (key, field) in [
        ("bos_token_id", "bos_id"),
        ("eos_token_id", "eos_id"),
        ("pad_token_id", "pad_id"),
    ] {
        assert_eq!(config[key], want[field], "{key}");
    }
    assert_eq!(config["max_position_embeddings"], 256);
    let model =
        kiln_model::load::<kiln_model::Flex>(&dir("small"), &Default::default()).expect("loads");
    // Llama with tied embeddings: V·d + per layer (q, o: d²; k, v: d·d/4·2 heads of 16;
    // gate, up, down: 3·d·i; two norms) + the final norm.
    let v = usize::try_from(want["vocab_size"].as_u64().expect("n")).expect("small");
    let (d, i, kv) = (64, 96, 2 * 16);
    let per_layer = 2 * d * d + 2 * d * kv + 3 * d * i + 2 * d;
    let want_params = v * d + 2 * per_layer + d;
    assert_eq!(
        kiln_model::burn::module::Module::num_params(&model),
        want_params
    );
    let gpt2: Value = serde_json::from_str(
        &std::fs::read_to_string(dir("gpt2").join("config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(
        (
            &gpt2["n_layer"],
            &gpt2["n_embd"],
            &gpt2["n_head"],
            &gpt2["n_positions"]
        ),
        (&1.into(), &32.into(), &2.into(), &16.into()),
        "a named GPT-2's sizes are replaced, not ignored"
    );
    p.write(
        "pipelines/bad.yaml",
        "name: bad\nstages:\n  m:\n    uses: model.init\n    with: {config: bloom-560m, vocab_size: 300, n_positions: 64}\n  g:\n    uses: model.init\n    with: {vocab_size: 300, n_kv_head: 2}\n",
    );
    let out = p.kiln(&["validate", "pipelines/bad.yaml"]);
    assert_ne!(out.status, 0);
    assert!(
        out.stderr.contains("n_positions") && out.stderr.contains("n_kv_head"),
        "{}",
        out.stderr
    );
}
