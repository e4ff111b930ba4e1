//! Corrupted files: every reader of kiln's own files answers truncated, bit-flipped and empty
//! copies with an error, never a panic. The originals are made here with kiln's own writers
//! (a tiny shard, manifest, tokenizer, model and checkpoint); each reader is fed every
//! truncation of its file (0..len bytes) and copies with 1–3 bits flipped at seeded random
//! places.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kiln_data::rng::SplitMix64;
use kiln_data::shard::{self, Example, Kind, LabelToken, Manifest};
use kiln_data::tokenizer::Tok;
use kiln_model::burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use kiln_model::burn::prelude::*;
use kiln_model::burn::tensor::TensorData;
use kiln_model::gpt2::{Gpt2, Gpt2Config};
use kiln_model::{Cpu, hf};
use kiln_train::checkpoint::{self, TrainerState};
use kiln_train::device::FlexBackend as Ad;

/// Bit-flipped copies per file.
const FLIPS: usize = 300;

/// Bit-flipped copies per shard (cheap to read; arrow's decoder trusts the most fields).
const SHARD_FLIPS: usize = 3_000;

/// What feeding one file's corrupted copies to a reader gave.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    errors: usize,
    /// Cases the reader accepted (a flipped value nothing can tell from a real one).
    accepted: Vec<String>,
    /// Cases that panicked: the failures.
    panicked: Vec<String>,
}

/// The corrupted copies of `original`: every truncation, then `flips` copies with 1–3 bits
/// flipped (seeded by `seed`).
fn corruptions(original: &[u8], flips: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = (0..original.len())
        .map(|n| (format!("truncated to {n} bytes"), original[..n].to_vec()))
        .collect();
    let mut rng = SplitMix64::new(seed);
    for _ in 0..flips {
        let mut copy = original.to_vec();
        let mut flipped: Vec<usize> = Vec::new();
        let count = 1 + rng.below(3) as usize;
        while flipped.len() < count {
            let bit = rng.below(original.len() as u64 * 8) as usize;
            if !flipped.contains(&bit) {
                copy[bit / 8] ^= 1 << (bit % 8);
                flipped.push(bit);
            }
        }
        out.push((format!("bits {flipped:?} flipped"), copy));
    }
    out
}

/// Replaces the content of the file at `path` with `bytes` without truncating it to zero
/// first (ext4 flushes a file truncated to zero and rewritten when it is closed: milliseconds
/// per copy).
fn overwrite(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    file.write_all(bytes).expect("write the corrupted copy");
    file.set_len(bytes.len() as u64).expect("set the length");
}

/// Writes each corrupted copy of `path` in place, calls `read`, and restores the original.
fn feed<T, E>(path: &Path, flips: usize, seed: u64, read: impl Fn() -> Result<T, E>) -> Tally {
    let original = std::fs::read(path).expect("the original file");
    let mut tally = Tally::default();
    for (case, bytes) in corruptions(&original, flips, seed) {
        overwrite(path, &bytes);
        tally.cases += 1;
        match catch_unwind(AssertUnwindSafe(&read)) {
            Ok(Err(_)) => tally.errors += 1,
            Ok(Ok(_)) => tally.accepted.push(case),
            Err(_) => tally.panicked.push(case),
        }
    }
    std::fs::write(path, &original).expect("restore the original");
    assert!(
        read().is_ok(),
        "{} reads again once restored",
        path.display()
    );
    tally
}

/// Asserts that no copy of `path` made its reader panic.
fn assert_no_panics(path: &Path, tally: &Tally) {
    eprintln!(
        "{}: {} corrupted copies, {} errors, {} accepted, {} panics",
        path.display(),
        tally.cases,
        tally.errors,
        tally.accepted.len(),
        tally.panicked.len()
    );
    assert!(
        tally.panicked.is_empty(),
        "{}: {} of {} corrupted copies panicked, e.g. {:?}",
        path.display(),
        tally.panicked.len(),
        tally.cases,
        &tally.panicked[..tally.panicked.len().min(10)]
    );
}

/// Asserts that the reader rejected every truncated copy (a shorter file is never whole).
fn assert_truncations_rejected(path: &Path, tally: &Tally) {
    let accepted: Vec<&String> = tally
        .accepted
        .iter()
        .filter(|c| c.starts_with("truncated"))
        .collect();
    assert!(
        accepted.is_empty(),
        "{}: truncated copies accepted: {accepted:?}",
        path.display()
    );
}

fn example(ids: &[u32], labels: &[i32]) -> Example {
    Example {
        input_ids: ids.to_vec(),
        label: None,
        labels: Some(labels.to_vec()),
    }
}

/// A dataset directory with an LM split (two shards) and a classification split, and its
/// manifest.
fn tiny_dataset(dir: &Path) {
    let lm = [
        example(&[1, 2, 3, 4], &[-100, -100, 3, 4]),
        example(&[5, 6], &[5, 6]),
        example(&[7, 8, 9], &[-100, 8, 9]),
    ];
    let train = shard::write_split(dir, "train", Kind::Lm, 2, &lm).expect("writes");
    let rows: Vec<Example> = (0..3u32)
        .map(|i| Example {
            input_ids: vec![i + 1, i + 2],
            label: Some(10 + i % 2),
            labels: None,
        })
        .collect();
    let test = shard::write_split(dir, "test", Kind::Classification, 8, &rows).expect("writes");
    let manifest = Manifest {
        schema_version: shard::SCHEMA_VERSION,
        kind: Kind::Lm,
        tokenizer_hash: "0".repeat(64),
        vocab_size: 16,
        added_tokens: 1,
        sources: Vec::new(),
        rows_read: 6,
        rejected: BTreeMap::from([("empty".to_owned(), 1)]),
        truncated: 0,
        label_map: BTreeMap::from([(
            "positive".to_owned(),
            LabelToken {
                token: " good".into(),
                id: 11,
            },
        )]),
        splits: BTreeMap::from([("train".to_owned(), train), ("test".to_owned(), test)]),
        params: serde_json::json!({"seed": 1}),
    };
    manifest.save(dir).expect("saves");
}

/// Every row of every shard of `split`, through the manifest.
fn read_split(dir: &Path, split: &str) -> kiln_data::Result<usize> {
    let mut rows = 0;
    for batch in shard::ShardReader::open(dir, split, 2, Some(1))? {
        rows += batch?.len();
    }
    Ok(rows)
}

/// Reads one shard file and its examples.
fn read_one_shard(path: &Path) -> kiln_data::Result<Vec<Example>> {
    let mut out = Vec::new();
    for batch in shard::read_shard(path)? {
        out.extend(shard::examples(&batch, path)?);
    }
    Ok(out)
}

#[test]
fn shards_and_manifests_never_panic_on_corrupted_copies() {
    let dir = tempfile::tempdir().expect("tmp");
    tiny_dataset(dir.path());
    assert_eq!(read_split(dir.path(), "train").expect("reads"), 3);
    for (name, seed) in [("train-00000.arrow", 1), ("test-00000.arrow", 2)] {
        let path = dir.path().join(name);
        let tally = feed(&path, SHARD_FLIPS, seed, || read_one_shard(&path));
        assert_no_panics(&path, &tally);
        assert_truncations_rejected(&path, &tally);
    }
    let path = dir.path().join("manifest.json");
    let tally = feed(&path, FLIPS, 3, || read_split(dir.path(), "train"));
    assert_no_panics(&path, &tally);
}

#[test]
fn tokenizer_json_never_panics_on_corrupted_copies() {
    let dir = tempfile::tempdir().expect("tmp");
    let texts = ["I love it", "this is bad", "so good, so \"good\"\n"];
    let tok = Tok::train(texts.iter(), 270, 1).expect("trains");
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).expect("saves");
    // A tokenizer that loads is also used: encoding and decoding must not panic either.
    let tally = feed(&path, FLIPS, 4, || {
        let tok = Tok::from_json(&path)?;
        let ids = tok.encode("so good, I love it")?;
        tok.decode(&ids)
    });
    assert_no_panics(&path, &tally);
}

/// A GPT-2 of 300 parameters: its files are small enough to try every truncation.
fn tiny_config() -> Gpt2Config {
    Gpt2Config::new(8, 4, 4, 1, 1)
}

#[test]
fn model_files_never_panic_on_corrupted_copies() {
    let dir = tempfile::tempdir().expect("tmp");
    let device = Default::default();
    let config = tiny_config();
    let model: Gpt2<Cpu> =
        kiln_model::seeded::<Cpu, _>(&device, 1, || kiln_model::drawn(config.init(&device)));
    hf::save(&model, &config, dir.path()).expect("saves");
    for (name, seed) in [("model.safetensors", 5), ("config.json", 6)] {
        let path = dir.path().join(name);
        let tally = feed(&path, FLIPS, seed, || hf::load::<Cpu>(dir.path(), &device));
        assert_no_panics(&path, &tally);
        if name == "model.safetensors" {
            assert_truncations_rejected(&path, &tally);
        }
    }
}

/// A checkpoint of the tiny model after one AdamW step (so the optimizer has moments).
fn tiny_checkpoint(root: &Path) -> PathBuf {
    let device = Default::default();
    let config = tiny_config();
    let model: Gpt2<Ad> =
        kiln_model::seeded::<Ad, _>(&device, 1, || kiln_model::drawn(config.init(&device)));
    let model = kiln_model::Model::Gpt2(model);
    let mut optim = AdamWConfig::new().init::<Ad, kiln_model::Model<Ad>>();
    let ids = Tensor::<Ad, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3], [1, 3]), &device);
    let loss = kiln_model::CausalLm::forward(&model, ids, None)
        .powi_scalar(2)
        .mean();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optim.step(1e-3, model, grads);
    let state = TrainerState {
        step: 1,
        tokens: 3,
        options_hash: "h".into(),
        ..TrainerState::default()
    };
    let history = [("loss".to_owned(), 1, 0.5)];
    checkpoint::save(root, &model, &optim, &state, &history).expect("saves")
}

#[test]
fn checkpoints_never_panic_and_refuse_every_corrupted_copy() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = tiny_checkpoint(root.path());
    let device = Default::default();
    let template: Gpt2<Ad> = kiln_model::unseeded(|| tiny_config().init(&device));
    let template = kiln_model::Model::Gpt2(template);
    let load = || {
        let optim = AdamWConfig::new().init::<Ad, kiln_model::Model<Ad>>();
        checkpoint::load::<Ad, _>(&dir, &template, optim, &device).map(|l| l.state)
    };
    assert_eq!(load().expect("loads").step, 1);
    for (i, name) in [
        "optimizer.bin",
        "trainer.json",
        "param_ids.json",
        "metrics.json",
        "model.safetensors",
        "config.json",
        "checksums.json",
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(name);
        let tally = feed(&path, FLIPS, 10 + i as u64, load);
        assert_no_panics(&path, &tally);
        assert!(
            tally.accepted.is_empty(),
            "{name}: corrupted copies loaded: {:?}",
            &tally.accepted[..tally.accepted.len().min(10)]
        );
    }
    // A checkpoint without its checksums is refused too, naming the file.
    std::fs::remove_file(dir.join("checksums.json")).expect("rm");
    let err = load().expect_err("no checksums").to_string();
    assert!(err.contains("checksums.json"), "{err}");
}

/// Rewrites the safetensors file at `path` with tensor `target` stored as `dtype` (`size`
/// bytes per element, all zero) instead of float32, keeping every other tensor.
fn store_as(path: &Path, target: &str, dtype: &str, size: usize) {
    let bytes = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let data = &bytes[8 + n..];
    let (mut out_header, mut out_data) = (serde_json::Map::new(), Vec::new());
    for (name, entry) in header {
        let mut entry = entry.clone();
        if name != "__metadata__" {
            let range: Vec<usize> =
                serde_json::from_value(entry["data_offsets"].clone()).expect("offsets");
            let start = out_data.len();
            if name == target {
                out_data.resize(start + (range[1] - range[0]) / 4 * size, 0);
                entry["dtype"] = dtype.into();
            } else {
                out_data.extend_from_slice(&data[range[0]..range[1]]);
            }
            entry["data_offsets"] = serde_json::json!([start, out_data.len()]);
        }
        out_header.insert(name, entry);
    }
    let mut header = serde_json::to_vec(&out_header).expect("JSON");
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(out_data);
    std::fs::write(path, file).expect("write");
}

#[test]
fn weights_stored_in_another_dtype_are_refused_naming_the_tensor() {
    let device = Default::default();
    let config = tiny_config();
    for (dtype, size) in [
        ("F16", 2),
        ("BF16", 2),
        ("F64", 8),
        ("I64", 8),
        ("U8", 1),
        ("BOOL", 1),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let model: Gpt2<Cpu> = kiln_model::unseeded(|| config.init(&device));
        hf::save(&model, &config, dir.path()).expect("saves");
        let file = dir.path().join("model.safetensors");
        store_as(&file, "transformer.h.0.attn.c_attn.weight", dtype, size);
        let err = catch_unwind(AssertUnwindSafe(|| hf::load::<Cpu>(dir.path(), &device)))
            .unwrap_or_else(|_| panic!("{dtype}: panicked"))
            .map(|_| ())
            .expect_err(dtype)
            .to_string();
        assert!(
            err.contains("blocks.0.attn.c_attn.weight is stored as") && err.contains("float32"),
            "{dtype}: {err}"
        );
    }
}

#[test]
fn a_bad_precompiled_normalizer_is_an_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let tok = Tok::train(["I love it", "this is bad"].iter(), 260, 1).expect("trains");
    let mut json: serde_json::Value =
        serde_json::from_str(&tok.to_json().expect("JSON")).expect("JSON");
    let bad = serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"});
    for normalizer in [
        bad.clone(),
        serde_json::json!({"type": "Sequence", "normalizers": [{"type": "NFC"}, bad]}),
    ] {
        json["normalizer"] = normalizer;
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).expect("write");
        let err = catch_unwind(|| Tok::from_json(&path))
            .expect("no panic")
            .expect_err("a bad normalizer")
            .to_string();
        assert!(err.contains("bad Precompiled normalizer"), "{err}");
    }
}
