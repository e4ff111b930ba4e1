//! Executing pipelines: order, parallelism, GPU slots, caching, kills, failures.

use std::time::{Duration, Instant};

use crate::support::Project;

/// A diamond: a → (b, c) → d. Only c reads `scale`; `words` feeds a.
const DIAMOND: &str = r#"name: diamond
params:
  words: 5
  scale: 2
stages:
  a:
    uses: shell
    outputs: [a.txt]
    with:
      run: seq ${words} > "$KILN_OUT/a.txt"; echo a >> "$KILN_WORKDIR/order.txt"
  b:
    uses: shell
    outputs: [b.txt]
    with:
      run: wc -l < "${stages.a.outputs.a.txt}" > "$KILN_OUT/b.txt"; echo b >> "$KILN_WORKDIR/order.txt"
  c:
    uses: shell
    needs: [a]
    outputs: [c.txt]
    with:
      run: |
        echo '{"metric": "scale", "value": ${scale}}'
        echo ${scale} > "$KILN_OUT/c.txt"; echo c >> "$KILN_WORKDIR/order.txt"
  d:
    uses: shell
    needs: [b, c]
    with:
      run: |
        for i in 1 2 3; do echo "{\"metric\": \"loss\", \"value\": $i, \"step\": $i}"; done
        cat "${stages.b.outputs.b.txt}" "${stages.c.outputs.c.txt}" > "$KILN_OUT/d.txt"; echo d >> "$KILN_WORKDIR/order.txt"
"#;

fn statuses(p: &Project, run: &str) -> Vec<(String, String)> {
    p.query(&format!(
        "SELECT stage, status FROM stage_runs WHERE run_id = {run} ORDER BY stage"
    ))
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn stages_run_after_their_needs() {
    let p = Project::new();
    p.write("diamond.yaml", DIAMOND);
    p.run("diamond.yaml", &["--jobs", "2"]).ok();
    let order = std::fs::read_to_string(p.path().join("order.txt")).expect("order written");
    let order: Vec<&str> = order.lines().collect();
    let pos = |s: &str| order.iter().position(|x| *x == s).expect("stage ran");
    assert_eq!(order.len(), 4, "{order:?}");
    assert!(pos("a") < pos("b") && pos("a") < pos("c"), "{order:?}");
    assert!(pos("b") < pos("d") && pos("c") < pos("d"), "{order:?}");
}

#[test]
fn second_run_executes_nothing_and_one_param_reruns_exactly_its_stages() {
    let p = Project::new();
    p.write("diamond.yaml", DIAMOND);
    p.run("diamond.yaml", &[]).ok();
    assert_eq!(
        statuses(&p, "1"),
        pairs(&[
            ("a", "succeeded"),
            ("b", "succeeded"),
            ("c", "succeeded"),
            ("d", "succeeded")
        ])
    );

    let ran = p.run("diamond.yaml", &[]).ok();
    assert!(
        ran.stderr.contains("0 executed, 4 cached"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        statuses(&p, "2"),
        pairs(&[
            ("a", "cached"),
            ("b", "cached"),
            ("c", "cached"),
            ("d", "cached")
        ])
    );
    assert_eq!(
        p.scalar("SELECT count(*) FROM stage_runs WHERE run_id = 2 AND cache_hit = 1"),
        "4"
    );

    // `scale` feeds only c, so exactly c and its descendant d execute.
    p.run("diamond.yaml", &["--set", "scale=3"]).ok();
    assert_eq!(
        statuses(&p, "3"),
        pairs(&[
            ("a", "cached"),
            ("b", "cached"),
            ("c", "succeeded"),
            ("d", "succeeded")
        ])
    );
    // `words` feeds a, so everything executes.
    p.run("diamond.yaml", &["--set", "words=6"]).ok();
    assert_eq!(
        statuses(&p, "4"),
        pairs(&[
            ("a", "succeeded"),
            ("b", "succeeded"),
            ("c", "succeeded"),
            ("d", "succeeded")
        ])
    );
    // Cached runs still carry every metric of their stages.
    assert_eq!(
        p.scalar("SELECT count(*) FROM metrics WHERE run_id = 2"),
        "4"
    );
    assert_eq!(
        p.scalar("SELECT value FROM metrics WHERE run_id = 3 AND name = 'scale'"),
        "3"
    );
    assert_eq!(
        p.scalar("SELECT value FROM last_metrics WHERE run_id = 2 AND metric = 'loss'"),
        "3"
    );
}

#[test]
fn status_explains_what_is_stale() {
    let p = Project::new();
    p.write("diamond.yaml", DIAMOND);
    let before = p.kiln(&["status", "diamond.yaml"]).ok();
    assert_eq!(
        before.stdout.matches("never run").count(),
        4,
        "{}",
        before.stdout
    );
    p.run("diamond.yaml", &[]).ok();
    let after = p.kiln(&["status", "diamond.yaml"]).ok();
    assert_eq!(
        after.stdout.matches("cached").count(),
        4,
        "{}",
        after.stdout
    );
    let changed = p.kiln(&["status", "diamond.yaml", "--set", "scale=7"]).ok();
    let line = |s: &str| {
        changed
            .stdout
            .lines()
            .find(|l| l.starts_with(s))
            .map(str::to_owned)
            .expect("a line per stage")
    };
    assert!(line("a ").contains("cached"), "{}", changed.stdout);
    assert!(
        line("c ").contains("stale") && line("c ").contains("param run changed"),
        "{}",
        changed.stdout
    );
    assert!(line("d ").contains("need c changed"), "{}", changed.stdout);
}

#[test]
fn changed_input_file_reruns_its_stage() {
    let p = Project::new();
    p.write("data/in.txt", "one\n");
    p.write(
        "in.yaml",
        "name: inputs\nstages:\n  read:\n    uses: shell\n    inputs: {text: data/in.txt}\n    with:\n      run: cat \"$KILN_INPUT_TEXT\" > \"$KILN_OUT/copy.txt\"\n  after:\n    uses: echo\n    needs: [read]\n",
    );
    p.run("in.yaml", &[]).ok();
    p.run("in.yaml", &[]).ok();
    assert_eq!(
        statuses(&p, "2"),
        pairs(&[("after", "cached"), ("read", "cached")])
    );
    p.write("data/in.txt", "two\n");
    p.run("in.yaml", &[]).ok();
    assert_eq!(
        statuses(&p, "3"),
        pairs(&[("after", "succeeded"), ("read", "succeeded")])
    );
    let status = p.kiln(&["status", "in.yaml"]).ok();
    assert!(status.stdout.contains("cached"), "{}", status.stdout);
}

#[test]
fn independent_stages_run_in_parallel() {
    let p = Project::new();
    p.write(
        "sleep.yaml",
        "name: sleepers\nstages:\n  one:\n    uses: shell\n    with: {run: sleep 1; echo one}\n  two:\n    uses: shell\n    with: {run: sleep 1; echo two}\n",
    );
    let ran = p.run("sleep.yaml", &["--jobs", "2"]).ok();
    assert!(
        ran.elapsed < Duration::from_millis(1600),
        "two 1 s sleeps with --jobs 2 took {:?}",
        ran.elapsed
    );
    // Serially they cannot be that fast (forced so the cache does not answer).
    let ran = p
        .run(
            "sleep.yaml",
            &["--jobs", "1", "--force", "one", "--force", "two"],
        )
        .ok();
    assert!(
        ran.elapsed >= Duration::from_secs(2),
        "--jobs 1 took {:?}",
        ran.elapsed
    );
}

#[test]
fn identical_stages_execute_once() {
    let p = Project::new();
    // Same kind, params and needs: one fingerprint, one execution, one cache entry.
    p.write(
        "twins.yaml",
        "name: twins\nstages:\n  a:\n    uses: shell\n    with: {run: sleep 0.3; echo x > \"$KILN_OUT/x\"}\n  b:\n    uses: shell\n    with: {run: sleep 0.3; echo x > \"$KILN_OUT/x\"}\n",
    );
    p.run("twins.yaml", &["--jobs", "2"]).ok();
    assert_eq!(
        statuses(&p, "1"),
        pairs(&[("a", "succeeded"), ("b", "cached")])
    );
    assert_eq!(p.cache_entries().len(), 1);
}

#[test]
fn gpu_stages_never_exceed_the_gpu_count() {
    let p = Project::new();
    let stage = |name: &str| {
        format!(
            "  {name}:\n    uses: shell\n    resources: {{gpu: 1}}\n    with:\n      run: date +%s.%N > \"$KILN_WORKDIR/{name}.start\"; sleep 0.5; date +%s.%N > \"$KILN_WORKDIR/{name}.end\"\n"
        )
    };
    p.write(
        "gpu.yaml",
        &format!(
            "name: gpu\nstages:\n{}{}  cpu:\n    uses: shell\n    with: {{run: sleep 0.5}}\n",
            stage("g1"),
            stage("g2")
        ),
    );
    let started = Instant::now();
    p.run("gpu.yaml", &["--jobs", "3", "--gpus", "1"]).ok();
    let read = |f: &str| -> f64 {
        std::fs::read_to_string(p.path().join(f))
            .expect("timestamp")
            .trim()
            .parse()
            .expect("a number")
    };
    let (s1, e1, s2, e2) = (
        read("g1.start"),
        read("g1.end"),
        read("g2.start"),
        read("g2.end"),
    );
    assert!(
        e1 <= s2 || e2 <= s1,
        "GPU stages overlapped: g1 {s1}..{e1}, g2 {s2}..{e2}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the CPU stage should run beside them"
    );
    let ran = p.run("gpu.yaml", &["--gpus", "0", "--force", "g1"]);
    assert_eq!(ran.status, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("stage \"g1\" needs 1 GPU(s) but this run has 0 (set --gpus)"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_failure_stops_descendants_and_siblings_finish() {
    let p = Project::new();
    p.write(
        "fail.yaml",
        "name: fail\nstages:\n  bad:\n    uses: shell\n    with: {run: echo about to fail >&2; exit 3}\n  after:\n    uses: echo\n    needs: [bad]\n  sibling:\n    uses: shell\n    with: {run: sleep 0.3; echo ok > \"$KILN_OUT/ok.txt\"}\n",
    );
    let ran = p.run("fail.yaml", &["--jobs", "2"]);
    assert_eq!(ran.status, 1, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("failed bad: command exited with status 3"),
        "{}",
        ran.stderr
    );
    let log_line = ran
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("log: "))
        .expect("summary names the log");
    let log = log_line.trim_start().trim_start_matches("log: ");
    let text = std::fs::read_to_string(p.path().join(log)).expect("the log exists");
    assert!(text.contains("about to fail"), "{text}");
    assert!(
        ran.stderr.contains("kiln: run failed: stage(s) bad failed"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        statuses(&p, "1"),
        pairs(&[
            ("after", "skipped"),
            ("bad", "failed"),
            ("sibling", "succeeded")
        ])
    );
    assert_eq!(p.scalar("SELECT status FROM runs WHERE id = 1"), "failed");
    assert_eq!(p.cache_entries().len(), 1, "only the sibling is cached");
}

#[test]
fn a_killed_stage_leaves_no_cache_entry() {
    let p = Project::new();
    p.write(
        "gate.yaml",
        "name: gate\nstages:\n  wait:\n    uses: shell\n    outputs: [out.txt]\n    with:\n      run: i=0; while [ ! -f gate ] && [ -d \"$KILN_WORKDIR\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; test -f gate && echo done > \"$KILN_OUT/out.txt\"\n",
    );
    let mut child = p
        .cmd(&["--quiet", "run", "gate.yaml"])
        .spawn()
        .expect("kiln starts");
    // Wait until the stage is executing (its temporary directory exists), then kill -9.
    let tmp = p.path().join("results/cache/.tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        p.cache_entries().is_empty(),
        "a killed stage must not leave an entry: {:?}",
        p.cache_entries()
    );
    p.write("gate", "");
    let ran = p.run("gate.yaml", &[]).ok();
    assert!(
        ran.stderr.contains("1 executed, 0 cached"),
        "the stage must execute again: {}",
        ran.stderr
    );
    assert_eq!(p.cache_entries().len(), 1);
    assert_eq!(
        p.scalar("SELECT status FROM runs WHERE id = 1"),
        "running",
        "the killed run stays as it was"
    );
}

#[test]
fn ctrl_c_interrupts_the_run() {
    let p = Project::new();
    p.write("slow.yaml", "name: slow\nstages:\n  nap:\n    uses: shell\n    with: {run: sleep 30}\n  later:\n    uses: echo\n    needs: [nap]\n");
    let child = p
        .cmd(&["--quiet", "run", "slow.yaml"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let tmp = p.path().join("results/cache/.tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let pid = child.id().to_string();
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    let out = child.wait_with_output().expect("kiln ends");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "interrupting took {:?}",
        started.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        p.scalar("SELECT status FROM runs WHERE id = 1"),
        "interrupted"
    );
    assert_eq!(
        statuses(&p, "1"),
        pairs(&[("later", "skipped"), ("nap", "interrupted")])
    );
    assert!(p.cache_entries().is_empty());
}

#[test]
fn force_reruns_a_stage_and_its_descendants() {
    let p = Project::new();
    p.write("diamond.yaml", DIAMOND);
    p.run("diamond.yaml", &[]).ok();
    p.run("diamond.yaml", &["--force", "b"]).ok();
    assert_eq!(
        statuses(&p, "2"),
        pairs(&[
            ("a", "cached"),
            ("b", "succeeded"),
            ("c", "cached"),
            ("d", "succeeded")
        ])
    );
    let ran = p.run("diamond.yaml", &["--force", "x"]);
    assert_eq!(ran.status, 1);
    assert!(
        ran.stderr.contains("no stage named \"x\""),
        "{}",
        ran.stderr
    );
}

#[test]
fn declared_outputs_must_be_written() {
    let p = Project::new();
    p.write("out.yaml", "name: out\nstages:\n  a:\n    uses: shell\n    outputs: [model.bin]\n    with: {run: \"true\"}\n");
    let ran = p.run("out.yaml", &[]);
    assert_eq!(ran.status, 1);
    assert!(
        ran.stderr
            .contains("declared output \"model.bin\" (model.bin) was not written"),
        "{}",
        ran.stderr
    );
    assert!(p.cache_entries().is_empty());
}

#[test]
fn artifacts_and_params_are_recorded() {
    let p = Project::new();
    p.write("diamond.yaml", DIAMOND);
    p.run("diamond.yaml", &["--set", "scale=4"]).ok();
    assert_eq!(
        p.scalar("SELECT value FROM params WHERE run_id = 1 AND key = 'scale'"),
        "4"
    );
    let wrong = p.run("diamond.yaml", &["--set", "scale=1.5"]);
    assert_eq!(wrong.status, 2);
    assert!(
        wrong
            .stderr
            .contains("diamond.yaml:4:3: param \"scale\": expected an int, found number 1.5"),
        "{}",
        wrong.stderr
    );
    assert_eq!(
        p.scalar("SELECT value_num FROM params WHERE run_id = 1 AND key = 'words'"),
        "5"
    );
    let rows =
        p.query("SELECT stage, bytes, length(hash) FROM artifacts WHERE run_id = 1 ORDER BY stage");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], ["a", "10", "64"]);
    let config = p.scalar("SELECT config FROM runs WHERE id = 1");
    let config: serde_json::Value = serde_json::from_str(&config).expect("config is JSON");
    assert_eq!(config["params"]["scale"], serde_json::json!(4));
}
