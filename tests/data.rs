//! Data preparation: tokenization, row accounting, masking, shards, stages.
//!
//! Tests marked "shared data" read `../shared/data` through `KILN_SHARED_DATA` (set by
//! `.ci/run`); when it is unset they say so and pass, unless `KILN_REQUIRE_SHARED_DATA` is
//! set (as `.ci/run` does): then they fail.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_data::alpaca::{self, Labels, Record};
use kiln_data::dataset::{self, BuildOptions, Fractions};
use kiln_data::sentiment::{self, Polarity, ReadOptions};
use kiln_data::shard::{self, Manifest, ShardReader};
use kiln_data::tokenizer::Tok;

use crate::support::{Project, repo_root};

/// `$KILN_SHARED_DATA`, or `None` (with a note) when unset. When set it must exist; when
/// `KILN_REQUIRE_SHARED_DATA` is set, it must be set.
pub fn shared_data() -> Option<PathBuf> {
    match std::env::var_os("KILN_SHARED_DATA") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.is_dir(),
                "KILN_SHARED_DATA={} is not a directory",
                dir.display()
            );
            Some(dir)
        }
        None => {
            assert!(
                std::env::var_os("KILN_REQUIRE_SHARED_DATA").is_none(),
                "KILN_REQUIRE_SHARED_DATA is set but KILN_SHARED_DATA is not: the checks on ../shared/data must run"
            );
            eprintln!("KILN_SHARED_DATA is unset: skipping the checks on ../shared/data");
            None
        }
    }
}

fn gpt2() -> Option<Tok> {
    shared_data().map(|d| Tok::load(&d.join("gpt2-tokenizer")).expect("the GPT-2 tokenizer loads"))
}

fn samples() -> PathBuf {
    repo_root().join("data/samples")
}

/// A small byte-level BPE trained on the repo's sample tweets (fast, always available).
fn sample_tokenizer() -> Tok {
    let rows = sentiment::read(
        &samples().join("sentiment140.sample.csv"),
        &ReadOptions::default(),
    )
    .expect("samples read");
    Tok::train(rows.texts.iter(), 600, 2).expect("trains")
}

#[test]
fn gpt2_tokenization_matches_the_reference_ids() {
    let Some(tok) = gpt2() else { return };
    assert_eq!(tok.vocab_size(), 50_257);
    assert_eq!(tok.encode(" I feel").expect("encode"), [314, 1254]);
    assert_eq!(tok.label_id("good").expect("good"), 11274);
    assert_eq!(tok.label_id("bad").expect("bad"), 14774);
    assert_eq!(tok.label_id(" good").expect("text that is one token"), 922);
    assert_eq!(tok.encode("<|endoftext|>").expect("encode"), [50256]);
    assert_eq!(tok.eos_id(), Some(50256));
    let err = tok.label_id(" very good").expect_err("two tokens");
    assert!(err.to_string().contains("encodes to 2 tokens"), "{err}");
}

#[test]
fn gpt2_round_trips_every_training_text() {
    let Some(tok) = gpt2() else { return };
    let path = shared_data()
        .expect("set")
        .join("sentiment140/training.sample.csv");
    let opts = ReadOptions {
        unescape_html: false,
        keep_neutral: true,
        ..ReadOptions::default()
    };
    let rows = sentiment::read(&path, &opts).expect("reads");
    assert_eq!(rows.texts.len(), 53_820);
    let texts: Vec<&str> = rows.texts.iter().map(String::as_str).collect();
    let ids = tok.encode_batch(&texts).expect("encodes");
    let mut bad = 0;
    for (text, ids) in texts.iter().zip(&ids) {
        if tok.decode(ids).expect("decodes") != *text {
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{bad} texts did not survive encode/decode");
    // latin-1 decoding gives real characters, not replacement marks.
    assert!(
        texts
            .iter()
            .any(|t| t.contains('é') || t.contains('ü') || t.contains('ñ'))
    );
    assert!(!texts.iter().any(|t| t.contains('\u{FFFD}')));
}

fn read_back(dir: &std::path::Path, split: &str) -> Vec<shard::Example> {
    ShardReader::open(dir, split, 4096, None)
        .expect("opens")
        .flat_map(|b| b.expect("batch"))
        .collect()
}

#[test]
fn sentiment140_rows_are_all_accounted_for() {
    let (Some(data), Some(tok)) = (shared_data(), gpt2()) else {
        return;
    };
    let out = tempfile::tempdir().expect("tmp");
    let labels = BTreeMap::from([
        (Polarity::Negative, "bad".to_owned()),
        (Polarity::Positive, "good".to_owned()),
    ]);
    let opts = BuildOptions {
        rows_per_shard: 10_000,
        seed: 33,
        fractions: Fractions {
            val: 0.05,
            test: 0.05,
        },
        ..BuildOptions::default()
    };
    let m = dataset::build_sentiment(
        &data.join("sentiment140/training.sample.csv"),
        &ReadOptions::default(),
        tok,
        &labels,
        &opts,
        out.path(),
    )
    .expect("builds");
    let rejected: usize = m.rejected.values().sum();
    let in_splits: usize = m.splits.values().map(|s| s.rows).sum();
    assert_eq!(m.rows_read, 53_820);
    assert_eq!(in_splits, 53_820 - rejected, "rejected: {:?}", m.rejected);
    let count = |label: &str| {
        m.splits
            .values()
            .map(|s| s.label_counts.get(label).copied().unwrap_or(0))
            .sum::<usize>()
    };
    assert_eq!((count("negative"), count("positive")), (25_319, 28_501));
    assert_eq!(m.label_map["positive"].id, 11274);
    assert_eq!(m.label_map["negative"].id, 14774);
    for (name, split) in &m.splits {
        let rows = read_back(out.path(), name);
        assert_eq!(rows.len(), split.rows, "split {name}");
        assert_eq!(
            rows.iter().map(|r| r.input_ids.len()).sum::<usize>(),
            split.tokens
        );
        let pos = rows.iter().filter(|r| r.label == Some(11274)).count();
        assert_eq!(pos, split.label_counts["positive"], "split {name}");
    }
    assert_eq!(
        m.splits["train"].shards.len(),
        5,
        "48,438 rows in shards of 10,000"
    );
}

#[test]
fn alpaca_records_are_all_accounted_for() {
    let (Some(data), Some(tok)) = (shared_data(), gpt2()) else {
        return;
    };
    let out = tempfile::tempdir().expect("tmp");
    let opts = BuildOptions {
        max_length: Some(512),
        fractions: Fractions {
            val: 0.05,
            test: 0.0,
        },
        ..BuildOptions::default()
    };
    let m = dataset::build_alpaca(
        &data.join("alpaca/alpaca_data.json"),
        tok,
        Labels::Completion,
        false,
        &opts,
        out.path(),
    )
    .expect("builds");
    assert_eq!(m.rows_read, 9_229);
    let total: usize = m.splits.values().map(|s| s.rows).sum();
    assert_eq!(total, 9_229);
    for (name, split) in &m.splits {
        assert_eq!(read_back(out.path(), name).len(), split.rows);
    }
}

/// Checks that labels are −100 exactly over the prompt and equal the ids over the response:
/// decoding the masked tokens gives the prompt, decoding the trained ones the response + EOS.
fn assert_masking(tok: &Tok, record: &Record) {
    let segments = alpaca::segments(record, "<|endoftext|>");
    let t = alpaca::tokenize(tok, &segments, Labels::Completion, None).expect("tokenizes");
    let masked: Vec<u32> = t
        .input_ids
        .iter()
        .zip(&t.labels)
        .filter(|(_, l)| **l == -100)
        .map(|(i, _)| *i)
        .collect();
    let trained: Vec<u32> = t
        .input_ids
        .iter()
        .zip(&t.labels)
        .filter(|(_, l)| **l != -100)
        .map(|(i, _)| *i)
        .collect();
    for (id, l) in t.input_ids.iter().zip(&t.labels) {
        assert!(
            *l == -100 || i64::from(*l) == i64::from(*id),
            "a trained label must equal its input id"
        );
    }
    let prompt: String = segments
        .iter()
        .filter(|s| !s.trained)
        .map(|s| s.text.as_str())
        .collect();
    let response: String = segments
        .iter()
        .filter(|s| s.trained)
        .map(|s| s.text.as_str())
        .collect();
    if let Record::Single { .. } = record {
        assert_eq!(tok.decode(&masked).expect("decode"), prompt);
        assert_eq!(tok.decode(&trained).expect("decode"), response);
        assert_eq!(trained.last(), tok.eos_id().as_ref(), "EOS is trained");
        // Masked tokens come first, then only trained ones.
        let first_trained = t
            .labels
            .iter()
            .position(|l| *l != -100)
            .expect("something is trained");
        assert!(t.labels[first_trained..].iter().all(|l| *l != -100));
    }
}

#[test]
fn completion_masking_with_gpt2_including_the_merged_marker() {
    let Some(tok) = gpt2() else { return };
    // The instruction ends in "?", so the text holds exactly "?\n\n### Response:".
    let record = Record::Single {
        instruction: "What is the capital of France?".into(),
        input: String::new(),
        output: "Paris.".into(),
    };
    let segments = alpaca::segments(&record, "<|endoftext|>");
    assert!(segments[0].text.ends_with("?\n\n### Response:"));
    // Masking works on character spans, so however BPE splits or merges the text around the
    // marker, the boundary is found.
    assert_masking(&tok, &record);
    assert_masking(
        &tok,
        &Record::Single {
            instruction: "Add the numbers.".into(),
            input: "2 and 3".into(),
            output: "5".into(),
        },
    );
}

#[test]
fn completion_masking_on_the_sample_data() {
    let tok = sample_tokenizer();
    let records = alpaca::read(&samples().join("alpaca.sample.json")).expect("samples read");
    assert!(records.len() >= 150);
    let multi = records
        .iter()
        .filter(|r| matches!(r, Record::Multi(_)))
        .count();
    assert!(multi > 0);
    let mut tok = tok;
    tok.add_special_tokens(&["<|endoftext|>".to_owned()]);
    for r in &records {
        assert_masking(&tok, r);
    }
}

#[test]
fn multi_turn_masks_every_human_turn() {
    let mut tok = sample_tokenizer();
    tok.add_special_tokens(&["<|endoftext|>".to_owned()]);
    let record = Record::Multi(vec![
        alpaca::Turn {
            role: "human".into(),
            content: "What is 2 plus 2?".into(),
        },
        alpaca::Turn {
            role: "assistant".into(),
            content: "4.".into(),
        },
        alpaca::Turn {
            role: "human".into(),
            content: "And doubled?".into(),
        },
        alpaca::Turn {
            role: "assistant".into(),
            content: "8.".into(),
        },
    ]);
    let segments = alpaca::segments(&record, "<|endoftext|>");
    let t = alpaca::tokenize(&tok, &segments, Labels::Completion, None).expect("tokenizes");
    // Group tokens into runs of masked / trained and decode each run.
    let mut runs: Vec<(bool, Vec<u32>)> = Vec::new();
    for (id, l) in t.input_ids.iter().zip(&t.labels) {
        let trained = *l != -100;
        match runs.last_mut() {
            Some((k, ids)) if *k == trained => ids.push(*id),
            _ => runs.push((trained, vec![*id])),
        }
    }
    let decoded: Vec<(bool, String)> = runs
        .iter()
        .map(|(k, ids)| (*k, tok.decode(ids).expect("decode")))
        .collect();
    // Stated literally, not derived from `segments()`, which decides the masking under test.
    let expected: Vec<(bool, String)> = [
        (
            false,
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nWhat is 2 plus 2?\n\n### Response:",
        ),
        (true, "4.<|endoftext|>"),
        (false, "\n\n### Instruction:\nAnd doubled?\n\n### Response:"),
        (true, "8.<|endoftext|>"),
    ]
    .into_iter()
    .map(|(trained, text)| (trained, text.to_owned()))
    .collect();
    assert_eq!(decoded, expected);
}

#[test]
fn marker_tokens_become_single_tokens() {
    let mut tok = sample_tokenizer();
    tok.add_special_tokens(&["<|endoftext|>".to_owned()]);
    let before = tok.vocab_size();
    let added =
        tok.add_special_tokens(&[alpaca::RESPONSE.to_owned(), alpaca::INSTRUCTION.to_owned()]);
    assert_eq!(added, 2);
    assert_eq!(tok.vocab_size(), before + 2);
    let id = tok.token_id(alpaca::RESPONSE).expect("added");
    let ids = tok.encode("Why?\n\n### Response:").expect("encode");
    assert_eq!(ids.last(), Some(&id));
}

#[test]
fn shards_read_back_with_arrow_and_polars() {
    use polars::prelude::*;
    let tok = sample_tokenizer();
    let out = tempfile::tempdir().expect("tmp");
    let labels = BTreeMap::from([
        (Polarity::Negative, " bad".to_owned()),
        (Polarity::Positive, " good".to_owned()),
    ]);
    let opts = BuildOptions {
        rows_per_shard: 100,
        fractions: Fractions {
            val: 0.1,
            test: 0.1,
        },
        seed: 5,
        ..BuildOptions::default()
    };
    let m = dataset::build_sentiment(
        &samples().join("sentiment140.sample.csv"),
        &ReadOptions::default(),
        tok,
        &labels,
        &opts,
        out.path(),
    )
    .expect("builds");
    assert_eq!(m.rows_read, 600);
    assert_eq!(m.splits.values().map(|s| s.rows).sum::<usize>(), 600);
    assert_eq!(m.splits["train"].rows, 480);
    let arrow_rows = read_back(out.path(), "train");
    assert_eq!(arrow_rows.len(), 480);
    // polars reads the same files.
    let mut polars_rows = 0;
    let mut polars_tokens = 0u64;
    for name in &m.splits["train"].shards {
        let file = std::fs::File::open(out.path().join(name)).expect("open");
        let df = IpcReader::new(file)
            .finish()
            .expect("polars reads the shard");
        assert_eq!(
            df.get_column_names()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>(),
            ["input_ids", "length", "label"]
        );
        polars_rows += df.height();
        polars_tokens += df
            .column("length")
            .expect("length")
            .cast(&DataType::UInt64)
            .expect("cast")
            .u64()
            .expect("u64")
            .sum()
            .unwrap_or(0);
    }
    assert_eq!(polars_rows, 480);
    assert_eq!(polars_tokens as usize, m.splits["train"].tokens);
    // A seeded reader shuffles deterministically and still yields every row once.
    let shuffled: Vec<_> = ShardReader::open(out.path(), "train", 64, Some(9))
        .expect("open")
        .flat_map(|b| b.expect("batch"))
        .collect();
    let again: Vec<_> = ShardReader::open(out.path(), "train", 64, Some(9))
        .expect("open")
        .flat_map(|b| b.expect("batch"))
        .collect();
    assert_eq!(shuffled, again);
    assert_ne!(shuffled, arrow_rows);
    let mut a: Vec<Vec<u32>> = shuffled.iter().map(|r| r.input_ids.clone()).collect();
    let mut b: Vec<Vec<u32>> = arrow_rows.iter().map(|r| r.input_ids.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    let reloaded = Manifest::load(out.path()).expect("manifest");
    assert_eq!(reloaded, m);
}

#[test]
fn a_missing_tokenizer_names_the_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = Tok::load(dir.path()).expect_err("empty dir");
    assert_eq!(
        err.to_string(),
        format!(
            "tokenizer file not found: {}",
            dir.path().join("vocab.json").display()
        )
    );
    let err = Tok::load(&dir.path().join("tokenizer.json")).expect_err("no file");
    assert!(err.to_string().ends_with("tokenizer.json"), "{err}");
}

const DATA_PIPELINE: &str = r#"name: data
params:
  seed: 1
stages:
  tokenizer:
    uses: data.tokenizer
    inputs: {train_on: data/samples/sentiment140.sample.csv}
    with: {vocab_size: 600}
  tweets:
    uses: data.sentiment140
    inputs: {source: data/samples/sentiment140.sample.csv}
    with:
      tokenizer: ${stages.tokenizer.dir}
      labels: {negative: " bad", positive: " good"}
      seed: ${seed}
      shard_rows: 200
      val: 0.1
      test: 0.1
  instructions:
    uses: data.alpaca
    inputs: {source: data/samples/alpaca.sample.json}
    with:
      tokenizer: ${stages.tokenizer.dir}
      max_length: 256
"#;

#[test]
fn data_stages_run_in_a_pipeline_and_inspect_shows_masks() {
    let p = Project::new();
    for f in ["sentiment140.sample.csv", "alpaca.sample.json"] {
        std::fs::create_dir_all(p.path().join("data/samples")).expect("mkdir");
        std::fs::copy(samples().join(f), p.path().join("data/samples").join(f)).expect("copy");
    }
    p.write("data.yaml", DATA_PIPELINE);
    p.run("data.yaml", &[]).ok();
    assert_eq!(
        p.scalar("SELECT value FROM metrics WHERE stage = 'tweets' AND name = 'rows_read'"),
        "600"
    );
    assert_eq!(
        p.scalar("SELECT value FROM metrics WHERE stage = 'instructions' AND name = 'rows_read'"),
        "163"
    );
    let dir = p.scalar(
        "SELECT path FROM artifacts WHERE stage = 'instructions' AND path LIKE '%manifest.json'",
    );
    let dir = std::path::Path::new(&dir)
        .parent()
        .expect("dir")
        .to_string_lossy()
        .into_owned();
    let shown = p.kiln(&["data", "inspect", &dir, "-n", "2"]).ok();
    assert!(
        shown.stdout.contains("split train:")
            && shown.stdout.contains("masked tokens in [brackets]"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("\"[Below is an instruction")
            && shown.stdout.contains("### Response:]"),
        "{}",
        shown.stdout
    );
    // Re-running is fully cached; changing the seed re-splits only the tweets.
    p.run("data.yaml", &[]).ok();
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_runs WHERE run_id = 2 AND status = 'cached'"),
        "3"
    );
    p.run("data.yaml", &["--set", "seed=2"]).ok();
    assert_eq!(
        p.scalar(
            "SELECT group_concat(stage) FROM stage_runs WHERE run_id = 3 AND status = 'succeeded'"
        ),
        "tweets"
    );
}

#[test]
fn tokenize_command_shows_ids() {
    let Some(data) = shared_data() else { return };
    let p = Project::new();
    let tok = data.join("gpt2-tokenizer");
    let ran = p
        .kiln(&[
            "tokenize",
            "--json",
            "--tokenizer",
            &tok.to_string_lossy(),
            " I feel",
        ])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(v["ids"], serde_json::json!([314, 1254]));
    assert_eq!(v["tokens"], serde_json::json!(["ĠI", "Ġfeel"]));
    let missing = p.kiln(&["tokenize", "--tokenizer", "nope", "x"]);
    assert_eq!(missing.status, 1);
    assert!(
        missing.stderr.contains("tokenizer file not found: nope"),
        "{}",
        missing.stderr
    );
}

/// The fast batch path gives exactly the library's ids.
#[test]
fn fast_batch_encoding_equals_the_library() {
    let mut texts: Vec<String> = vec![
        "it's 42!! ".into(),
        "a  b\n\n\nc".into(),
        "  \tfoo".into(),
        "x   ".into(),
        "café\u{a0}\u{a0}ok".into(),
        "I'LL they're we've o'clock 'd ''s".into(),
        "mixed ١٢٣ numbers Ⅻ ½ and 漢字 text".into(),
        "emoji 😀😀 !? ...\r\n\r\nnext".into(),
        "tab\t\tand\u{2028}sep\u{3000}x".into(),
        String::new(),
        " ".into(),
        "combining e\u{301}\u{301} marks क्षत्रिय".into(),
        "hello<|endoftext|>world".into(),
    ];
    let sample = sentiment::read(
        &samples().join("sentiment140.sample.csv"),
        &ReadOptions::default(),
    )
    .expect("samples");
    texts.extend(sample.texts);
    if let Some(data) = shared_data() {
        let opts = ReadOptions {
            unescape_html: false,
            keep_neutral: true,
            ..ReadOptions::default()
        };
        texts.extend(
            sentiment::read(&data.join("sentiment140/training.sample.csv"), &opts)
                .expect("reads")
                .texts,
        );
        let tok = gpt2().expect("shared data");
        check_fast_path(&tok, &texts);
    }
    let mut trained = sample_tokenizer();
    trained.add_special_tokens(&["<|endoftext|>".to_owned()]);
    check_fast_path(&trained, &texts);
}

fn check_fast_path(tok: &Tok, texts: &[String]) {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = tok.encode_batch(&refs).expect("batch");
    let mut differing = Vec::new();
    for (text, ids) in refs.iter().zip(&batch) {
        let single = tok.encode(text).expect("encode");
        if &single != ids {
            differing.push(*text);
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} texts differ, e.g. {:?}",
        differing.len(),
        refs.len(),
        &differing[..differing.len().min(5)]
    );
}

#[test]
fn hugging_face_parquet_layout() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("train.parquet");
    let mut df = df!(
        "text" => ["what a lovely day", "the worst service ever", "it is what it is"],
        "sentiment" => ["positive", "negative", "neutral"],
    )
    .expect("frame");
    ParquetWriter::new(std::fs::File::create(&path).expect("create"))
        .finish(&mut df)
        .expect("write parquet");
    let opts = ReadOptions {
        layout: sentiment::Layout::HfParquet,
        encoding: sentiment::Encoding::Utf8,
        ..ReadOptions::default()
    };
    let rows = sentiment::read(&path, &opts).expect("reads parquet");
    assert_eq!(rows.texts, ["what a lovely day", "the worst service ever"]);
    assert_eq!(rows.labels, [Polarity::Positive, Polarity::Negative]);
    assert_eq!(rows.read, 3);
    assert_eq!(rows.rejected.values().sum::<usize>(), 1);
}
