//! The trust rules: everything a stage reads is in its fingerprint, parameters are used as
//! written or refused, GPUs are really assigned, reruns execute what was recorded, and CI
//! cannot pass without the data its tests need.

use std::collections::BTreeSet;

use crate::support::{Project, repo_root};

/// Tweets in sentiment140's layout: `n` rows alternating negative and positive.
fn tweets(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (label, text) = if i % 2 == 0 {
                ("0", "this was a bad day")
            } else {
                ("4", "this was a good day")
            };
            format!("\"{label}\",\"{i}\",\"Mon Apr 06 22:19:45 PDT 2009\",\"NO_QUERY\",\"u{i}\",\"{text} {i}\"\n")
        })
        .collect()
}

/// A tokenizer and a tiny model made by kiln, copied out of the cache as a plain local
/// Hugging Face directory (`local-model/`), as a researcher's own checkpoint would be.
fn local_model(p: &Project) {
    std::fs::copy(
        repo_root().join("data/samples/sentiment140.sample.csv"),
        p.path().join("corpus.csv"),
    )
    .expect("copy");
    p.write(
        "init.yaml",
        r#"name: init
stages:
  tok:
    uses: data.tokenizer
    with: {train_on: corpus.csv, vocab_size: 1000}
  init:
    uses: model.init
    with: {tokenizer: "${stages.tok.dir}/tokenizer.json", n_positions: 32, n_embd: 16, n_layer: 1, n_head: 2}
"#,
    );
    p.run("init.yaml", &[]).ok();
    let made = p.scalar(
        "SELECT a.path FROM artifacts a WHERE a.stage = 'init' AND a.path LIKE '%model/config.json'",
    );
    let made = p.path().join(made);
    let from = made.parent().expect("model dir");
    let to = p.path().join("local-model");
    std::fs::create_dir_all(&to).expect("mkdir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(f), to.join(f)).expect("copy");
    }
}

const READS: &str = r#"name: reads
stages:
  tok:
    uses: data.tokenizer
    with: {train_on: corpus.csv, vocab_size: 1000}
  tweets:
    uses: data.sentiment140
    with: {source: s2.csv, tokenizer: "${stages.tok.dir}", val: 0, test: 0, labels: {negative: " bad", positive: " good"}}
  after_tweets:
    uses: echo
    needs: [tweets]
  model:
    uses: model.hf
    with: {source: local-model}
  score:
    uses: eval.score
    with: {model: "${stages.model.dir}/model", source: lines.txt}
"#;

/// Which stages of `run` executed (rather than came from the cache).
fn executed(p: &Project, run: i64) -> Vec<String> {
    p.query(&format!(
        "SELECT stage FROM stage_runs WHERE run_id = {run} AND status = 'succeeded' ORDER BY stage"
    ))
    .into_iter()
    .map(|r| r[0].clone())
    .collect()
}

fn last_run(p: &Project) -> i64 {
    p.scalar("SELECT max(id) FROM runs").parse().expect("an id")
}

#[test]
fn a_changed_file_behind_a_with_path_reruns_exactly_its_readers() {
    let p = Project::new();
    local_model(&p);
    p.write("s2.csv", &tweets(200));
    p.write("lines.txt", "a great day\n");
    p.write("reads.yaml", READS);
    p.run("reads.yaml", &[]).ok();
    let rows = |p: &Project| -> f64 {
        p.scalar(&format!(
            "SELECT value FROM metrics WHERE run_id = {} AND stage = 'tweets' AND name = 'rows_read'",
            last_run(p)
        ))
        .parse()
        .expect("a number")
    };
    assert_eq!(rows(&p), 200.0);
    p.run("reads.yaml", &[]).ok();
    assert_eq!(executed(&p, last_run(&p)), Vec::<String>::new());

    // with.source of data.sentiment140: a file that grew.
    p.write("s2.csv", &tweets(400));
    let status = p.kiln(&["status", "reads.yaml"]).ok();
    assert!(
        status.stdout.contains("with.source s2.csv changed"),
        "{}",
        status.stdout
    );
    p.run("reads.yaml", &[]).ok();
    assert_eq!(executed(&p, last_run(&p)), ["after_tweets", "tweets"]);
    assert_eq!(rows(&p), 400.0);

    // model.hf's local directory: a file added to it.
    p.write("local-model/README.md", "my checkpoint\n");
    let status = p.kiln(&["status", "reads.yaml"]).ok();
    assert!(
        status
            .stdout
            .contains("with.source local-model changed (README.md added)"),
        "{}",
        status.stdout
    );
    p.run("reads.yaml", &[]).ok();
    assert_eq!(executed(&p, last_run(&p)), ["model", "score"]);

    // eval.score's source file.
    p.write("lines.txt", "a great day\nan awful day\n");
    p.run("reads.yaml", &[]).ok();
    assert_eq!(executed(&p, last_run(&p)), ["score"]);
    let scored = p.scalar(&format!(
        "SELECT value FROM metrics WHERE run_id = {} AND stage = 'score' AND name = 'texts'",
        last_run(&p)
    ));
    assert_eq!(scored.parse::<f64>().ok(), Some(2.0));
}

/// One train.lm stage with `key: value` (everything else valid).
fn train_with(key: &str, value: &str) -> String {
    format!(
        "name: bad\nparams:\n  v: 1\nstages:\n  fit:\n    uses: train.lm\n    with:\n      data: d\n      model: m\n      {key}: {value}\n"
    )
}

#[test]
fn out_of_range_numbers_are_refused_at_validation_never_replaced() {
    let p = Project::new();
    for (key, value, rule) in [
        ("batch_size", "-4", "-4 is below the minimum 1"),
        ("seed", "-1", "-1 is below the minimum 0"),
        ("max_steps", "-3", "-3 is below the minimum 1"),
        ("warmup_steps", "-5", "-5 is below the minimum 0"),
        ("lr", "0", "0.0 must be a positive number"),
    ] {
        p.write("bad.yaml", &train_with(key, value));
        let ran = p.kiln(&["validate", "bad.yaml"]);
        assert_eq!(ran.status, 2, "{key}: {}", ran.stderr);
        // The value's line and column: `      {key}: {value}`.
        let want = format!(
            "bad.yaml:10:{}: stage \"fit\": with.{key}: {rule}",
            9 + key.len()
        );
        assert!(ran.stderr.contains(&want), "{key}: {}", ran.stderr);
        // The same value through a parameter and --set: refused before anything runs.
        p.write("bad.yaml", &train_with(key, "${v}"));
        let ran = p.run("bad.yaml", &["--set", &format!("v={value}")]);
        assert_eq!(ran.status, 2, "{key} via --set: {}", ran.stderr);
        let want = format!("with.{key}: {rule} (from ${{v}})");
        assert!(ran.stderr.contains(&want), "{key}: {}", ran.stderr);
    }
    assert!(
        !p.path().join("results/cache").exists(),
        "nothing ran: {:?}",
        p.cache_entries()
    );

    // Devices and precisions, in training and eval stages alike.
    for (key, value, rule) in [
        (
            "device",
            "tpu",
            "with.device: \"tpu\" is not a device: write cpu",
        ),
        (
            "device",
            "wgpu:x",
            "with.device: \"wgpu:x\" is not a device",
        ),
        (
            "precision",
            "f8",
            "with.precision: \"f8\" is not a precision",
        ),
    ] {
        p.write("bad.yaml", &train_with(key, value));
        let ran = p.kiln(&["validate", "bad.yaml"]);
        assert_eq!(ran.status, 2, "{key}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("bad.yaml:10:") && ran.stderr.contains(rule),
            "{key}: {}",
            ran.stderr
        );
        p.write(
            "eval.yaml",
            &format!(
                "name: e\nstages:\n  score:\n    uses: eval.score\n    with: {{model: m, source: s.txt, {key}: \"{value}\"}}\n"
            ),
        );
        let ran = p.kiln(&["validate", "eval.yaml"]);
        assert_eq!(ran.status, 2, "{key}: {}", ran.stderr);
        assert!(ran.stderr.contains(rule), "{key}: {}", ran.stderr);
    }

    p.write(
        "split.yaml",
        "name: split\nstages:\n  tweets:\n    uses: data.sentiment140\n    with: {source: s.csv, tokenizer: t, val: 1.5}\n",
    );
    let ran = p.kiln(&["validate", "split.yaml"]);
    assert_eq!(ran.status, 2);
    assert!(
        ran.stderr.contains("split.yaml:5:")
            && ran
                .stderr
                .contains("stage \"tweets\": with.val: 1.5 is outside [0, 1)"),
        "{}",
        ran.stderr
    );
    p.write(
        "alpha.yaml",
        "name: alpha\nstages:\n  student:\n    uses: train.internalize\n    with: {data: d, model: m, teacher: t, prompt: \" I feel\", alpha: 2}\n",
    );
    let ran = p.kiln(&["validate", "alpha.yaml"]);
    assert_eq!(ran.status, 2);
    assert!(
        ran.stderr
            .contains("stage \"student\": with.alpha: 2.0 is outside [0, 1]"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_parameter_without_a_value_is_not_held_to_a_constraint_by_validate() {
    let p = Project::new();
    p.write(
        "open.yaml",
        "name: open\nparams:\n  bs: {type: int}\nstages:\n  fit:\n    uses: train.lm\n    with: {data: d, model: m, batch_size: \"${bs}\"}\n",
    );
    p.kiln(&["validate", "open.yaml"]).ok();
    let ran = p.kiln(&["validate", "open.yaml", "--set", "bs=0"]);
    assert_eq!(ran.status, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("with.batch_size: 0 is below the minimum 1 (from ${bs})"),
        "{}",
        ran.stderr
    );
}

#[test]
fn two_lanes_on_two_gpus_use_gpus_0_and_1() {
    let p = Project::new();
    p.write(
        "pipelines/gpu.yaml",
        r#"name: gpu
params:
  x: 1
stages:
  fit:
    uses: shell
    resources: {gpu: 1}
    with:
      x: ${x}
      run: |
        sleep 0.5
        echo "{\"metric\": \"gpu\", \"value\": $CUDA_VISIBLE_DEVICES}"
"#,
    );
    p.write(
        "experiments/exp.yaml",
        "name: exp\npipeline: pipelines/gpu.yaml\nsweep:\n  method: grid\n  params:\n    x: [1, 2, 3]\nlanes: 2\n",
    );
    p.kiln(&["--quiet", "sweep", "experiments/exp.yaml", "--gpus", "2"])
        .ok();
    let gpus: Vec<i64> = p
        .query("SELECT CAST(m.value AS INTEGER) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE m.name = 'gpu' ORDER BY r.trial")
        .into_iter()
        .map(|r| r[0].parse().expect("an index"))
        .collect();
    assert_eq!(gpus.len(), 3, "{gpus:?}");
    // Trial 0 runs alone and takes the first GPU; trials 1 and 2 run at once, one per lane.
    assert_eq!(gpus[0], 0, "{gpus:?}");
    let pair: BTreeSet<i64> = gpus[1..].iter().copied().collect();
    assert_eq!(pair, BTreeSet::from([0, 1]), "{gpus:?}");
}

#[test]
fn rerun_executes_the_record_or_names_what_changed() {
    let p = Project::new();
    let pipeline = |run: &str| {
        format!(
            "name: re\nparams:\n  n: 3\nstages:\n  g:\n    uses: shell\n    resources: {{gpu: 1}}\n    with:\n      run: |\n        {run}\n"
        )
    };
    p.write(
        "re.yaml",
        &pipeline(r#"echo "{\"metric\": \"n\", \"value\": ${n}}""#),
    );
    p.run("re.yaml", &["--gpus", "1", "--set", "n=4"]).ok();
    // A GPU run reruns with --gpus, with its recorded params (n = 4, not the default 3).
    let ran = p
        .kiln(&["--quiet", "rerun", "1", "--gpus", "1", "--expect-identical"])
        .ok();
    assert!(ran.stdout.contains("all identical"), "{}", ran.stdout);
    let n = |run: i64| -> f64 {
        p.scalar(&format!(
            "SELECT value FROM metrics WHERE run_id = {run} AND name = 'n'"
        ))
        .parse()
        .expect("a number")
    };
    assert_eq!(n(2), 4.0);
    let without = p.kiln(&["--quiet", "rerun", "1"]);
    assert_eq!(without.status, 1, "{}", without.stderr);
    assert!(
        without.stderr.contains("needs 1 GPU(s)"),
        "{}",
        without.stderr
    );

    p.write(
        "re.yaml",
        &pipeline(r#"echo "{\"metric\": \"n\", \"value\": $((${n} + 1))}""#),
    );
    let refused = p.kiln(&["--quiet", "rerun", "1", "--gpus", "1"]);
    assert_eq!(refused.status, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("the pipeline file re.yaml changed since the run"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("stage g: param run changed"),
        "{}",
        refused.stderr
    );
    let runs = p.scalar("SELECT count(*) FROM runs");
    assert_eq!(runs, "2", "a refused rerun records nothing");
    let allowed = p.kiln(&["--quiet", "rerun", "1", "--gpus", "1", "--allow-changed"]);
    assert_eq!(allowed.status, 0, "{}", allowed.stderr);
    assert_eq!(n(3), 5.0);
}

#[test]
fn ci_fails_without_the_shared_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join(".ci")).expect("mkdir");
    std::fs::copy(repo_root().join(".ci/run"), repo.join(".ci/run")).expect("copy");
    let out = std::process::Command::new("bash")
        .arg(".ci/run")
        .current_dir(&repo)
        .env("CI", "true")
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CI needs ../shared/data") && stderr.contains("it is missing"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it stops before any step"
    );
}

#[test]
fn every_checked_in_pipeline_and_experiment_validates_without_data() {
    let root = repo_root();
    let mut files: Vec<String> = Vec::new();
    for dir in ["pipelines", "experiments"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("listing") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(format!(
                    "{dir}/{}",
                    path.file_name().expect("name").to_string_lossy()
                ));
            }
        }
    }
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(&root)
        // No data: a data_dir that does not exist must not matter to validation.
        .env_remove("KILN_SHARED_DATA")
        .output()
        .expect("kiln runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("ok: ").count(), files.len(), "{stdout}");
    assert!(
        stdout.contains("ok: experiments/quickstart.yaml (experiment over"),
        "{stdout}"
    );
}
