//! Experiments and `kiln sweep` (issue 7): validation before anything runs, trials sharing
//! cached stages, trials linked to their experiment in the store, finished trials not rerun.

use crate::support::Project;

const PIPELINE: &str = r#"name: toy
params:
  alpha: 0.5
  temperature: 1
  seed: 0
stages:
  prep:
    uses: shell
    with:
      run: echo prepared > "$KILN_OUT/data.txt"
    outputs: [data.txt]
  train:
    uses: shell
    needs: [prep]
    with:
      alpha: ${alpha}
      temperature: ${temperature}
      seed: ${seed}
      run: |
        echo "{\"metric\": \"score\", \"value\": $(awk "BEGIN { print $KILN_PARAM_ALPHA * $KILN_PARAM_TEMPERATURE + $KILN_PARAM_SEED }")}"
"#;

fn project(experiment: &str) -> Project {
    let p = Project::new();
    p.write("pipelines/toy.yaml", PIPELINE);
    p.write("experiments/exp.yaml", experiment);
    p
}

const GRID: &str = r#"name: grid
pipeline: pipelines/toy.yaml
sweep:
  method: grid
  params:
    alpha: [0.0, 0.5, 1.0]
    temperature: [1, 2, 4]
"#;

#[test]
fn a_3x3_grid_preprocesses_once_and_is_not_rerun() {
    let p = project(GRID);
    let dry = p.kiln(&["sweep", "experiments/exp.yaml", "--dry-run"]).ok();
    assert!(dry.stdout.contains("9 trial(s)"), "{}", dry.stdout);
    assert!(
        !p.path().join("results/cache").exists(),
        "a dry run runs nothing"
    );

    p.kiln(&["--quiet", "sweep", "experiments/exp.yaml"]).ok();
    assert_eq!(
        p.scalar("SELECT count(*) FROM runs WHERE experiment_id IS NOT NULL"),
        "9"
    );
    assert_eq!(p.scalar("SELECT count(DISTINCT trial) FROM runs"), "9");
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_runs WHERE stage = 'prep' AND status = 'succeeded'"),
        "1",
        "preprocessing executes once"
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_runs WHERE stage = 'prep' AND status = 'cached'"),
        "8"
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_runs WHERE stage = 'train' AND status = 'succeeded'"),
        "9"
    );
    // α = 1, T = 4 → score 4.
    assert_eq!(
        p.scalar(
            "SELECT m.value FROM metrics m JOIN params a ON a.run_id = m.run_id AND a.key = 'alpha'
             JOIN params t ON t.run_id = m.run_id AND t.key = 'temperature'
             WHERE m.name = 'score' AND a.value_num = 1 AND t.value_num = 4"
        ),
        "4"
    );
    // Again: every trial is done; nothing runs.
    let again = p.kiln(&["--quiet", "sweep", "experiments/exp.yaml"]).ok();
    assert!(
        again.stdout.contains("0 trial(s) run now, 9 done before"),
        "{}",
        again.stdout
    );
    assert_eq!(p.scalar("SELECT count(*) FROM runs"), "9");
}

#[test]
fn seeds_repeat_trials_and_random_sweeps_are_seeded() {
    let p = project(
        "name: rnd\npipeline: pipelines/toy.yaml\nsweep:\n  method: random\n  samples: 3\n  seed: 5\n  params:\n    alpha: {min: 0.1, max: 1.0, log: true}\n    temperature: [1, 2]\n  seeds: [1, 2]\nlanes: 2\n",
    );
    let first = p.kiln(&["sweep", "experiments/exp.yaml", "--dry-run"]).ok();
    let second = p.kiln(&["sweep", "experiments/exp.yaml", "--dry-run"]).ok();
    assert_eq!(first.stdout, second.stdout, "the draw is seeded");
    assert!(first.stdout.contains("6 trial(s)"), "{}", first.stdout);
    p.kiln(&["--quiet", "sweep", "experiments/exp.yaml"]).ok();
    assert_eq!(
        p.scalar("SELECT count(*) FROM runs WHERE status = 'succeeded'"),
        "6"
    );
    assert_eq!(p.scalar("SELECT count(DISTINCT seed) FROM runs"), "2");
}

#[test]
fn bad_experiments_are_clear_errors_before_anything_runs() {
    let cases = [
        (
            "name: x\npipeline: pipelines/toy.yaml\nsweep:\n  params:\n    alpah: [1, 2]\n",
            "experiments/exp.yaml:5:5: sweep param \"alpah\" is not a param of pipeline",
        ),
        (
            "name: x\npipeline: pipelines/toy.yaml\nsweep:\n  params:\n    alpha: []\n",
            "experiments/exp.yaml:5:5: sweep param \"alpha\": the value list is empty",
        ),
        (
            "name: x\npipeline: pipelines/toy.yaml\nlanes: 0\nsweep:\n  params:\n    alpha: [1]\n",
            "experiments/exp.yaml:3:1: lanes must be a whole number ≥ 1",
        ),
        (
            "name: x\npipeline: pipelines/toy.yaml\nsweep:\n  method: grid\n  params:\n    alpha: {min: 0, max: 1}\n",
            "a range needs method: random",
        ),
        (
            "name: x\npipeline: pipelines/toy.yaml\nsweeep: {}\n",
            "experiments/exp.yaml:3:1: unknown key \"sweeep\" (did you mean \"sweep\"?)",
        ),
    ];
    for (yaml, expected) in cases {
        let p = project(yaml);
        let ran = p.kiln(&["sweep", "experiments/exp.yaml"]);
        assert_eq!(ran.status, 2, "{yaml}\n{}", ran.stderr);
        assert!(
            ran.stderr.contains(expected),
            "{yaml}\nwanted {expected:?}\ngot {}",
            ran.stderr
        );
        assert!(!p.path().join("results/cache").exists(), "nothing ran");
    }
    // The did-you-mean names the pipeline's param.
    let p =
        project("name: x\npipeline: pipelines/toy.yaml\nsweep:\n  params:\n    alpah: [1, 2]\n");
    let ran = p.kiln(&["sweep", "experiments/exp.yaml"]);
    assert!(
        ran.stderr.contains("(did you mean \"alpha\"?)"),
        "{}",
        ran.stderr
    );
}

/// The README's quickstart: `kiln sweep experiments/quickstart.yaml` on the repo's sample
/// data, then the README's "which α, T won?" query exactly as written there.
#[test]
fn the_quickstart_sweep_runs_and_the_readme_query_ranks_its_trials() {
    let root = crate::support::repo_root();
    let p = Project::new();
    for f in [
        "data/samples/sentiment140.sample.csv",
        "pipelines/quickstart.yaml",
        "experiments/quickstart.yaml",
    ] {
        let to = p.path().join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(root.join(f), to).expect("copy");
    }
    let ran = p
        .kiln(&["--quiet", "sweep", "experiments/quickstart.yaml"])
        .ok();
    assert!(ran.stdout.contains("6 trial(s) run now"), "{}", ran.stdout);
    for (stage, executed, cached) in [
        ("tweets", "1", "5"),
        ("prompted", "1", "5"),
        ("teacher", "1", "5"),
        ("teacher_accuracy", "1", "5"),
        ("student", "6", "0"),
    ] {
        assert_eq!(
            p.scalar(&format!(
                "SELECT count(*) FROM stage_runs WHERE stage = '{stage}' AND status = 'succeeded'"
            )),
            executed,
            "{stage}"
        );
        assert_eq!(
            p.scalar(&format!(
                "SELECT count(*) FROM stage_runs WHERE stage = '{stage}' AND status = 'cached'"
            )),
            cached,
            "{stage}"
        );
    }
    the_teacher_knows_the_task_and_the_student_learns_it_from_kl_alone(&p);
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let start = readme
        .find("query \"SELECT r.trial")
        .expect("the README's query")
        + "query \"".len();
    let end = start + readme[start..].find("\"\n").expect("closing quote");
    let sql = &readme[start..end];
    let rows = p.query(sql);
    assert_eq!(rows.len(), 6, "one row per trial:\n{sql}");
    let accuracy: Vec<f64> = rows
        .iter()
        .map(|r| r[3].parse().expect("accuracy"))
        .collect();
    assert!(
        accuracy.windows(2).all(|w| w[0] >= w[1]),
        "ranked best first: {accuracy:?}"
    );

    // The report: one self-contained HTML file and a Markdown summary.
    let id = p.scalar("SELECT max(id) FROM experiments");
    let report = p.kiln(&["report", &id]).ok();
    assert!(
        report.stdout.contains("# Sweep report: quickstart"),
        "{}",
        report.stdout
    );
    // The experiment's own `metric:` ranks the trials; on it the heatmap is not flat.
    assert!(
        report.stdout.contains("Ranked by `accuracy.loss`"),
        "{}",
        report.stdout
    );
    let losses: std::collections::BTreeSet<String> = p
        .query("SELECT value FROM last_metrics WHERE stage = 'accuracy' AND metric = 'loss'")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(
        losses.len() > 1,
        "every trial's test loss is the same: {losses:?}"
    );
    let html_path = p
        .path()
        .join(format!("results/reports/quickstart-{id}.html"));
    let html = std::fs::read_to_string(&html_path).expect("report.html");
    assert!(
        std::fs::read_to_string(p.path().join(format!("results/reports/quickstart-{id}.md")))
            .is_ok()
    );
    for fetch in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "<link",
        "<script src",
    ] {
        assert!(
            !html.contains(fetch),
            "the report fetches something: {fetch}"
        );
    }
    let section = |id: &str| {
        let start = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no {id} section"));
        let end = html[start..].find("</section>").expect("section end") + start;
        html[start..end].to_owned()
    };
    let heatmap = section("heatmap");
    assert!(
        heatmap.matches("<rect").count() >= 6,
        "a cell per (alpha, T)"
    );
    let curves = section("curves");
    assert!(
        curves.contains("<polyline") || curves.contains("<path"),
        "loss curves drawn"
    );
    assert!(html.contains("class=\"trace\""), "the best trial's traces");
    assert_eq!(html.matches("<tr class=\"best\">").count(), 1);
    screenshot(&html_path, &p.path().join("report.png"));
    crate::ui::check_quickstart(&p);
}

/// Issue 15's quickstart checks: the prompt-trained teacher's prompted two-way accuracy on
/// the test split is far above chance, and at alpha = 0 (KL to the teacher only, no label)
/// the student's two-way accuracy is within 0.1 of it, while where it started (the teacher
/// reading the tweet without the prompt) never put the label token first.
fn the_teacher_knows_the_task_and_the_student_learns_it_from_kl_alone(p: &Project) {
    let metric = |run: &str, stage: &str, name: &str| -> f64 {
        p.scalar(&format!(
            "SELECT value FROM last_metrics WHERE run_id = {run} AND stage = '{stage}' AND metric = '{name}'"
        ))
        .parse()
        .expect("a number")
    };
    let runs = p.query(
        "SELECT r.id FROM runs r JOIN params a ON a.run_id = r.id AND a.key = 'alpha'
         WHERE CAST(a.value AS REAL) = 0 AND r.status = 'succeeded'",
    );
    assert_eq!(runs.len(), 2, "alpha = 0 at two temperatures");
    for run in runs.iter().map(|r| r[0].as_str()) {
        let teacher = metric(run, "teacher_accuracy", "accuracy_2way");
        assert!(teacher >= 0.9, "the prompted teacher's accuracy {teacher}");
        let student = metric(run, "accuracy", "accuracy_2way");
        assert!(
            (student - teacher).abs() <= 0.1,
            "alpha = 0: student {student} against teacher {teacher}"
        );
        let start = metric(run, "start_accuracy", "accuracy");
        let end = metric(run, "accuracy", "accuracy");
        assert!(
            start < 0.2 && end > 0.9,
            "the label token first over the whole vocabulary: {start} at the start, {end} after KL alone"
        );
    }
}

/// Renders `html` with headless Chromium and checks the picture holds a drawing, not a
/// blank page.
fn screenshot(html: &std::path::Path, png: &std::path::Path) {
    let Some(chromium) = crate::support::chromium() else {
        return;
    };
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,2000",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", html.display()),
        ])
        .output()
        .expect("chromium runs");
    assert!(
        png.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(png).expect("png");
    assert_eq!(&bytes[..4], b"\x89PNG");
    // A blank 1200×2000 page compresses to a few kilobytes; tables, a heatmap and curves don't.
    assert!(
        bytes.len() > 40_000,
        "the screenshot looks empty: {} bytes",
        bytes.len()
    );
    if let Some(dir) = std::env::var_os("KILN_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(png, std::path::Path::new(&dir).join("report.png"));
    }
}

const TRAINING: &str = r#"name: training
params:
  lr: 0.003
stages:
  tokenizer:
    uses: data.tokenizer
    inputs: {train_on: data/samples/sentiment140.sample.csv}
    with: {vocab_size: 400}
  tweets:
    uses: data.sentiment140
    inputs: {source: data/samples/sentiment140.sample.csv}
    with: {tokenizer: "${stages.tokenizer.dir}", labels: {negative: " bad", positive: " good"}}
  init:
    uses: model.init
    with: {tokenizer: "${stages.tweets.dir}", n_positions: 64, n_embd: 32, n_layer: 2, n_head: 4}
  lm:
    uses: train.lm
    with:
      data: ${stages.tweets.dir}
      model: ${stages.init.dir}/model
      max_steps: 400
      batch_size: 8
      lr: ${lr}
      checkpoint_every: 20
      eval_every: 100
      eval_batches: 2
"#;

#[test]
fn a_sweep_killed_mid_trial_completes_when_run_again_without_lost_or_doubled_metrics() {
    let root = crate::support::repo_root();
    let p = Project::new();
    let csv = p.path().join("data/samples/sentiment140.sample.csv");
    std::fs::create_dir_all(csv.parent().expect("parent")).expect("mkdir");
    std::fs::copy(root.join("data/samples/sentiment140.sample.csv"), &csv).expect("copy");
    p.write("pipelines/training.yaml", TRAINING);
    p.write(
        "experiments/exp.yaml",
        "name: kill\npipeline: pipelines/training.yaml\nsweep:\n  params:\n    lr: [0.003, 0.001]\n",
    );
    let mut child = p
        .cmd(&["--quiet", "sweep", "experiments/exp.yaml"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("kiln starts");
    // Wait until the second trial's training is well under way, then kill -9.
    let store = p.path().join("results/kiln.sqlite");
    let started = std::time::Instant::now();
    let steps_of_trial_1 = || -> i64 {
        if !store.exists() {
            return 0;
        }
        let out = p
            .cmd(&[
                "query",
                "--format",
                "csv",
                "SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE r.trial = 1 AND m.name = 'loss'",
            ])
            .output()
            .expect("query");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    };
    loop {
        let n = steps_of_trial_1();
        if n >= 50 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 120 && child.try_wait().expect("wait").is_none(),
            "the second trial never got going (or finished before it could be killed): {n} steps"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let before = steps_of_trial_1();
    assert!(
        before < 400,
        "killed mid-trial: {before} of 400 steps recorded"
    );

    let again = p.kiln(&["--quiet", "sweep", "experiments/exp.yaml"]).ok();
    assert!(
        again.stdout.contains("1 trial(s) run now, 1 done before"),
        "{}",
        again.stdout
    );
    // Trial 0 ran once; trial 1 has the killed run and the completed one.
    assert_eq!(p.scalar("SELECT count(*) FROM runs WHERE trial = 0"), "1");
    assert_eq!(p.scalar("SELECT count(*) FROM runs WHERE trial = 1"), "2");
    let done = p.scalar("SELECT id FROM runs WHERE trial = 1 AND status = 'succeeded'");
    for name in ["loss", "lr", "grad_norm"] {
        let rows = p.scalar(&format!(
            "SELECT count(*) FROM metrics WHERE run_id = {done} AND stage = 'lm' AND name = '{name}'"
        ));
        let steps = p.scalar(&format!(
            "SELECT count(DISTINCT step) FROM metrics WHERE run_id = {done} AND stage = 'lm' AND name = '{name}'"
        ));
        assert_eq!(
            (rows.as_str(), steps.as_str()),
            ("400", "400"),
            "{name}: rows, distinct steps"
        );
    }
    // It continued from a checkpoint rather than starting over.
    let log = p.scalar(&format!(
        "SELECT log_path FROM stage_runs WHERE run_id = {done} AND stage = 'lm'"
    ));
    let log = std::fs::read_to_string(p.path().join(&log)).expect("stage log");
    assert!(
        log.contains("resuming from the checkpoint at step"),
        "{log}"
    );
    // The killed run keeps what it recorded: nothing is lost from the store.
    let killed = p.scalar("SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id WHERE r.trial = 1 AND r.status != 'succeeded' AND m.name = 'loss'");
    assert!(killed.parse::<i64>().expect("count") >= before);
}

#[test]
fn rerun_reproduces_a_cpu_run_and_compare_shows_two_runs() {
    let root = crate::support::repo_root();
    let p = Project::new();
    let csv = p.path().join("data/samples/sentiment140.sample.csv");
    std::fs::create_dir_all(csv.parent().expect("parent")).expect("mkdir");
    std::fs::copy(root.join("data/samples/sentiment140.sample.csv"), &csv).expect("copy");
    p.write(
        "pipelines/training.yaml",
        &TRAINING.replace("max_steps: 400", "max_steps: 60"),
    );
    p.run("pipelines/training.yaml", &[]).ok();
    // What makes the run reproducible is recorded with it.
    let lock = p.scalar("SELECT cargo_lock_hash FROM runs WHERE id = 1");
    assert_eq!(lock.len(), 64, "blake3 of Cargo.lock: {lock}");
    assert!(
        p.scalar("SELECT config FROM runs WHERE id = 1")
            .contains("\"lr\":0.003")
    );

    let rerun = p
        .kiln(&["--quiet", "rerun", "1", "--expect-identical"])
        .ok();
    assert!(rerun.stdout.contains("all identical"), "{}", rerun.stdout);
    let compared: usize = p
        .scalar("SELECT count(*) FROM metrics WHERE run_id = 2 AND name NOT LIKE '%seconds%' AND name NOT LIKE '%per_s%'")
        .parse()
        .expect("count");
    assert!(
        compared > 60 * 3,
        "the rerun recorded its metrics ({compared})"
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_runs WHERE run_id = 2 AND status = 'succeeded'"),
        "4",
        "a rerun executes every stage"
    );

    let compare = p.kiln(&["compare", "1", "2", "--format", "csv"]).ok();
    assert!(
        compare
            .stdout
            .lines()
            .any(|l| l.starts_with("param,lr,0.003,0.003,")),
        "{}",
        compare.stdout
    );
    assert!(
        compare
            .stdout
            .lines()
            .any(|l| l.starts_with("metric,lm.loss,")),
        "{}",
        compare.stdout
    );
    let missing = p.kiln(&["compare", "1", "99"]);
    assert_ne!(missing.status, 0);
    assert!(missing.stderr.contains("no run 99"), "{}", missing.stderr);
}

/// The checked-in research experiments plan every trial (nothing runs: `--dry-run`) against
/// the real data in `KILN_SHARED_DATA`.
#[test]
fn the_checked_in_experiments_plan() {
    let Some(data) = crate::data::shared_data() else {
        return;
    };
    let root = crate::support::repo_root();
    let data = data.to_string_lossy().into_owned();
    for (file, trials) in [
        ("experiments/sentiment140-from-scratch.yaml", 6),
        ("experiments/internalize-gpt2.yaml", 3),
        ("experiments/alpaca-sft.yaml", 2),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "sweep",
                file,
                "--dry-run",
                "--set",
                &format!("data_dir={data}"),
            ])
            .current_dir(&root)
            .env(
                "KILN_RESULTS",
                std::env::temp_dir().join("kiln-dry-run-results"),
            )
            .output()
            .expect("kiln runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("{trials} trial(s)")),
            "{file}: {stdout}"
        );
    }
}

#[test]
fn lanes_never_use_more_gpus_than_the_sweep_has() {
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
        echo "{\"metric\": \"x\", \"value\": $KILN_PARAM_X}"
"#,
    );
    p.write(
        "experiments/exp.yaml",
        "name: gpu\npipeline: pipelines/gpu.yaml\nsweep:\n  params:\n    x: [1, 2, 3, 4]\nlanes: 3\n",
    );
    let ran = p
        .kiln(&["--quiet", "sweep", "experiments/exp.yaml", "--gpus", "1"])
        .ok();
    assert!(
        ran.stderr
            .contains("3 lane(s) asked for, but trials need 1 GPU(s) each of 1: running 1 at once"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM runs WHERE status = 'succeeded'"),
        "4"
    );
}

#[test]
fn status_reads_a_local_sweep_and_refuses_one_never_run_without_writing() {
    let p = project(GRID);
    let never = p.kiln(&["sweep", "experiments/exp.yaml", "--status"]);
    assert_eq!(never.status, 1, "{}", never.stderr);
    assert!(
        never.stderr.contains("has not been swept"),
        "{}",
        never.stderr
    );
    assert!(
        !p.path().join("results/kiln.sqlite").exists(),
        "--status created no store"
    );
    p.kiln(&["--quiet", "sweep", "experiments/exp.yaml"]).ok();
    let status = p.kiln(&["sweep", "experiments/exp.yaml", "--status"]).ok();
    assert!(
        status.stdout.contains("9 of 9 trial(s) done"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("prep 1/8"), "{}", status.stdout);
    let cancel = p.kiln(&["sweep", "experiments/exp.yaml", "--cancel"]).ok();
    assert!(
        cancel.stdout.contains("no queued or running job"),
        "{}",
        cancel.stdout
    );
}
