//! `kiln gc`: what no kept run references goes, what runs use stays, a dry run deletes
//! nothing, and a run in progress keeps every entry of its plan.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::Project;

const TOY: &str = r#"name: toy
params:
  x: 1
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
      x: ${x}
      run: cat "${stages.prep.outputs.data.txt}" > "$KILN_OUT/model.txt"; echo "$KILN_PARAM_X" >> "$KILN_OUT/model.txt"
    outputs: [model.txt]
"#;

/// b waits for the file `gate` (at most 30 s), so a test can act while it executes.
const GATED: &str = r#"name: gated
stages:
  a:
    uses: shell
    with:
      run: echo a > "$KILN_OUT/a.txt"
    outputs: [a.txt]
  b:
    uses: shell
    needs: [a]
    with:
      run: |
        i=0; while [ ! -f gate ] && [ -d "$KILN_WORKDIR" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
        test -f gate && cat "${stages.a.outputs.a.txt}" > "$KILN_OUT/b.txt"
    outputs: [b.txt]
  c:
    uses: shell
    needs: [b]
    with:
      run: cat "${stages.b.outputs.b.txt}" > "$KILN_OUT/c.txt"
    outputs: [c.txt]
"#;

fn set<I: IntoIterator<Item = String>>(items: I) -> BTreeSet<String> {
    items.into_iter().collect()
}

/// The fingerprints the store `store` recorded for the runs `runs` selects.
fn fingerprints(p: &Project, store: &str, runs: &str) -> BTreeSet<String> {
    let sql = format!("SELECT DISTINCT fingerprint FROM stage_runs WHERE run_id IN ({runs})");
    let ran = p
        .kiln(&["--store", store, "query", "--format", "csv", &sql])
        .ok();
    set(ran.stdout.lines().skip(1).map(str::to_owned))
}

/// The fingerprint a stage recorded in run 1 of the project's store.
fn fingerprint(p: &Project, stage: &str) -> String {
    p.scalar(&format!(
        "SELECT fingerprint FROM stage_runs WHERE run_id = 1 AND stage = '{stage}'"
    ))
}

/// The total length of the files under `path`.
fn bytes(path: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(path).expect("exists");
    if meta.is_dir() {
        std::fs::read_dir(path)
            .expect("readable")
            .map(|e| bytes(&e.expect("entry").path()))
            .sum()
    } else {
        meta.len()
    }
}

/// `kiln --json gc ARGS…`, parsed.
fn gc(p: &Project, args: &[&str]) -> Value {
    let mut all = vec!["--json", "gc"];
    all.extend_from_slice(args);
    let ran = p.kiln(&all).ok();
    serde_json::from_str(&ran.stdout).expect("gc prints JSON")
}

/// The file names of what a gc report removed, of one kind.
fn removed(report: &Value, kind: &str) -> BTreeSet<String> {
    let items = report["removed"].as_array().expect("removed is a list");
    set(items.iter().filter(|i| i["kind"] == kind).map(|i| {
        let path = i["path"].as_str().expect("path");
        Path::new(path)
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned()
    }))
}

fn removed_bytes(report: &Value) -> u64 {
    let items = report["removed"].as_array().expect("removed is a list");
    items.iter().filter_map(|i| i["bytes"].as_u64()).sum()
}

/// Waits until a temporary directory of the stage with fingerprint `fp` exists.
fn wait_for_tmp(p: &Project, fp: &str, child: &mut Child) {
    let tmp = p.path().join("results/cache/.tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::fs::read_dir(&tmp).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(fp)))
        });
        if started {
            return;
        }
        assert!(
            child.try_wait().expect("kiln can be waited for").is_none(),
            "kiln ended before the stage started"
        );
        assert!(Instant::now() < deadline, "the stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gc_removes_unreferenced_entries_and_keeps_referenced_ones() {
    let p = Project::new();
    p.write("toy.yaml", TOY);
    p.run("toy.yaml", &["--set", "x=1"]).ok();
    p.run("toy.yaml", &["--set", "x=2"]).ok();
    // Recorded in another store: no run of the project's store references x=3's training.
    p.kiln(&[
        "--quiet",
        "--store",
        "other.sqlite",
        "run",
        "toy.yaml",
        "--set",
        "x=3",
    ])
    .ok();
    let referenced = fingerprints(&p, "results/kiln.sqlite", "SELECT id FROM runs");
    let other = fingerprints(&p, "other.sqlite", "SELECT id FROM runs");
    let orphans: BTreeSet<String> = other.difference(&referenced).cloned().collect();
    assert_eq!(orphans.len(), 1, "prep is shared, x=3's train is not");
    let everything = set(p.cache_entries());
    assert_eq!(everything, set(referenced.union(&other).cloned()));
    let orphan_bytes: u64 = orphans
        .iter()
        .map(|fp| bytes(&p.path().join("results/cache").join(fp)))
        .sum();

    let dry = gc(&p, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(removed(&dry, "cache"), orphans);
    assert_eq!(removed_bytes(&dry), orphan_bytes);
    assert_eq!(
        set(p.cache_entries()),
        everything,
        "a dry run deletes nothing"
    );
    let text = p.kiln(&["gc", "--dry-run"]).ok().stdout;
    assert!(text.contains("would remove:"), "{text}");
    assert!(text.contains("dry run: nothing was removed"), "{text}");
    assert_eq!(set(p.cache_entries()), everything);

    let done = gc(&p, &[]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(removed(&done, "cache"), orphans);
    assert_eq!(removed_bytes(&done), orphan_bytes);
    assert_eq!(done["kept"]["cache"]["count"], referenced.len());
    assert_eq!(set(p.cache_entries()), referenced);
    let trash = std::fs::read_dir(p.path().join("results"))
        .expect("results")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(".gc-trash"))
        })
        .count();
    assert_eq!(trash, 0, "the trash is emptied");
    // What stayed is what the runs need: both run again from the cache.
    for x in ["x=1", "x=2"] {
        let ran = p.run("toy.yaml", &["--set", x]).ok();
        assert!(
            ran.stderr.contains("0 executed, 2 cached"),
            "{}",
            ran.stderr
        );
    }
    let again = p.kiln(&["gc"]).ok().stdout;
    assert!(again.contains("nothing to remove"), "{again}");
}

#[test]
fn keep_last_lets_older_runs_entries_go() {
    let p = Project::new();
    p.write("toy.yaml", TOY);
    for x in ["x=1", "x=2", "x=3"] {
        p.run("toy.yaml", &["--set", x]).ok();
    }
    let before = set(p.cache_entries());
    let by_default = gc(&p, &[]);
    assert!(
        removed(&by_default, "cache").is_empty(),
        "succeeded runs are kept"
    );
    let latest = fingerprints(&p, "results/kiln.sqlite", "3");
    let done = gc(&p, &["--keep-last", "1"]);
    assert_eq!(
        removed(&done, "cache"),
        set(before.difference(&latest).cloned())
    );
    assert_eq!(set(p.cache_entries()), latest);
    let ran = p.run("toy.yaml", &["--set", "x=1"]).ok();
    assert!(
        ran.stderr.contains("1 executed, 1 cached"),
        "{}",
        ran.stderr
    );
}

#[test]
fn older_than_spares_entries_used_recently() {
    let p = Project::new();
    p.write("toy.yaml", TOY);
    p.write("other.yaml", &TOY.replace("name: toy", "name: other"));
    p.run("toy.yaml", &[]).ok();
    for x in ["x=5", "x=6"] {
        p.kiln(&[
            "--quiet",
            "--store",
            "other.sqlite",
            "run",
            "other.yaml",
            "--set",
            x,
        ])
        .ok();
    }
    let referenced = fingerprints(&p, "results/kiln.sqlite", "1");
    let orphans: Vec<String> = p
        .cache_entries()
        .into_iter()
        .filter(|fp| !referenced.contains(fp))
        .collect();
    assert_eq!(orphans.len(), 2, "two trainings (prep is the same stage)");
    let recent = gc(&p, &["--older-than", "1h"]);
    assert!(removed(&recent, "cache").is_empty(), "all made just now");
    // One orphan was made long ago.
    let entry = p
        .path()
        .join("results/cache")
        .join(&orphans[0])
        .join(".kiln/entry.json");
    let mut record: Value =
        serde_json::from_str(&std::fs::read_to_string(&entry).expect("entry.json")).expect("json");
    record["created_at"] = "2020-01-01 00:00:00.000".into();
    std::fs::write(&entry, record.to_string()).expect("rewrite");
    let done = gc(&p, &["--older-than", "7d"]);
    assert_eq!(removed(&done, "cache"), set([orphans[0].clone()]));
    let left = set(p.cache_entries());
    assert_eq!(
        left,
        set(referenced.iter().chain(&orphans[1..]).cloned()),
        "recent orphans stay"
    );
}

#[test]
fn gc_during_a_run_keeps_every_entry_its_plan_needs() {
    let p = Project::new();
    p.write("gated.yaml", GATED);
    p.write("gate", "");
    p.run("gated.yaml", &[]).ok();
    let (a, b, c) = (
        fingerprint(&p, "a"),
        fingerprint(&p, "b"),
        fingerprint(&p, "c"),
    );
    // b's entry is lost (removed by hand), so run 2 executes b again and then takes c from
    // the cache: while b executes, only run 2's plan says that c's entry is needed.
    std::fs::remove_dir_all(p.path().join("results/cache").join(&b)).expect("rm b");
    std::fs::remove_file(p.path().join("gate")).expect("close the gate");
    // Things no run needs: an entry of a run in another store and some stale state.
    p.write("toy.yaml", TOY);
    p.kiln(&["--quiet", "--store", "other.sqlite", "run", "toy.yaml"])
        .ok();
    let orphans: BTreeSet<String> = set(p.cache_entries())
        .into_iter()
        .filter(|fp| ![&a, &b, &c].contains(&fp))
        .collect();
    assert_eq!(orphans.len(), 2);
    let stale = "0".repeat(64);
    p.write(&format!("results/state/{stale}/checkpoint"), "old");
    p.write(&format!("results/state/{b}/checkpoint"), "resume from here");

    let mut child = p
        .cmd(&["--quiet", "run", "gated.yaml"])
        .spawn()
        .expect("kiln starts");
    wait_for_tmp(&p, &b, &mut child);
    let report = gc(&p, &["--keep-last", "0"]);
    assert_eq!(report["in_progress"], serde_json::json!([2]));
    assert_eq!(removed(&report, "cache"), orphans);
    assert_eq!(removed(&report, "state"), set([stale.clone()]));
    assert!(removed(&report, "tmp").is_empty(), "b's directory is live");
    assert_eq!(set(p.cache_entries()), set([a.clone(), c.clone()]));
    assert!(p.path().join("results/state").join(&b).exists());

    p.write("gate", "");
    let status = child.wait().expect("kiln ends");
    assert!(status.success(), "run 2 must complete");
    let statuses = p.query("SELECT stage, status FROM stage_runs WHERE run_id = 2 ORDER BY stage");
    assert_eq!(
        statuses,
        vec![
            vec!["a".to_owned(), "cached".to_owned()],
            vec!["b".to_owned(), "succeeded".to_owned()],
            vec!["c".to_owned(), "cached".to_owned()],
        ]
    );
    assert_eq!(set(p.cache_entries()), set([a, b, c]));
    let ran = p.run("gated.yaml", &[]).ok();
    assert!(
        ran.stderr.contains("0 executed, 3 cached"),
        "{}",
        ran.stderr
    );
    // With no run in progress, keeping no run lets everything go.
    let report = gc(&p, &["--keep-last", "0"]);
    assert_eq!(report["in_progress"], serde_json::json!([]));
    assert!(p.cache_entries().is_empty(), "{:?}", p.cache_entries());
}

#[test]
fn a_killed_run_holds_nothing() {
    let p = Project::new();
    p.write("gated.yaml", GATED);
    let mut child = p
        .cmd(&["--quiet", "run", "gated.yaml"])
        .spawn()
        .expect("kiln starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let b_started = || {
        let ran = p.kiln(&[
            "query",
            "--format",
            "csv",
            "SELECT count(*) FROM stage_runs WHERE stage = 'b'",
        ]);
        ran.status == 0 && ran.stdout.lines().nth(1) == Some("1")
    };
    while !b_started() {
        assert!(Instant::now() < deadline, "b never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (a, b) = (fingerprint(&p, "a"), fingerprint(&p, "b"));
    wait_for_tmp(&p, &b, &mut child);
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(p.scalar("SELECT status FROM runs WHERE id = 1"), "running");

    let report = gc(&p, &[]);
    assert_eq!(report["in_progress"], serde_json::json!([]));
    assert_eq!(removed(&report, "tmp").len(), 1, "b's temporary directory");
    assert!(
        removed(&report, "tmp")
            .iter()
            .all(|name| name.starts_with(&b)),
        "{report}"
    );
    assert_eq!(
        set(p.cache_entries()),
        set([a]),
        "the latest run of its configuration keeps a"
    );
    gc(&p, &["--keep-last", "0"]);
    assert!(p.cache_entries().is_empty());
    p.write("gate", ""); // lets the orphaned shell of b end
}
