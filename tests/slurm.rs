//! Sweeps on a real single-node Slurm cluster (`.ci/slurm-single-node`) into a real
//! PostgreSQL store (`.ci/postgres-test-server`): the quickstart as a 2 × 2 sweep submitted
//! with `--executor slurm`, one array task cancelled mid-training and the sweep submitted
//! again, then everything compared with the same sweep run by the local executor.
//! Without Slurm or PostgreSQL the test says so and passes, unless `KILN_REQUIRE_SLURM=1`
//! (CI), when it fails.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_store::Store;

use crate::support::{Project, fresh_postgres};

const EXPERIMENT: &str = "name: q2x2
pipeline: pipelines/quickstart.yaml
params:
  student_steps: 400
sweep:
  method: grid
  params:
    alpha: [0.0, 1.0]
    temperature: [1.0, 2.0]
metric: accuracy.loss
executor:
  kind: slurm
  cpus: 1
";

fn quickstart_project() -> Project {
    let root = crate::support::repo_root();
    let p = Project::new();
    for f in [
        "data/samples/sentiment140.sample.csv",
        "pipelines/quickstart.yaml",
    ] {
        let to = p.path().join(f);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(root.join(f), to).expect("copy");
    }
    p.write("experiments/q2x2.yaml", EXPERIMENT);
    p
}

fn slurm_available() -> bool {
    let up = std::process::Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !up {
        assert!(
            std::env::var("KILN_REQUIRE_SLURM").as_deref() != Ok("1"),
            "KILN_REQUIRE_SLURM=1 but no Slurm answers (start one with .ci/slurm-single-node)"
        );
        eprintln!("note: no Slurm cluster answers `sinfo`: the Slurm sweep test is skipped");
    }
    up
}

/// Polls `what` until it returns `Some`, failing after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `(stage, metric)` → final value of each succeeded trial, timings left out; and each
/// trial's metric rows: (rows, distinct (stage, name, step)).
type Finals = BTreeMap<i64, BTreeMap<String, Option<f64>>>;

fn finals_and_rows(url: &str, experiment: i64) -> (Finals, BTreeMap<i64, (usize, usize)>) {
    rt().block_on(async {
        let store = Store::open_read_only(url).await.expect("open");
        let mut finals = Finals::new();
        let mut rows = BTreeMap::new();
        for (trial, run) in store
            .succeeded_trial_runs(experiment)
            .await
            .expect("trials")
        {
            let metrics = store.final_metrics(run).await.expect("finals");
            finals.insert(
                trial,
                metrics
                    .into_iter()
                    .filter(|m| !m.name.contains("seconds") && !m.name.contains("per_s"))
                    .map(|m| (m.key(), m.value))
                    .collect(),
            );
            let points = store.metrics(run).await.expect("metrics");
            let distinct: std::collections::BTreeSet<(String, String, i64)> = points
                .iter()
                .map(|p| (p.stage.clone(), p.name.clone(), p.step))
                .collect();
            rows.insert(trial, (points.len(), distinct.len()));
        }
        (finals, rows)
    })
}

fn experiment_id(stdout: &str) -> i64 {
    stdout
        .split("experiment ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no experiment id in {stdout}"))
}

#[test]
fn a_quickstart_sweep_on_slurm_survives_a_cancelled_task_and_reports_like_a_local_one() {
    if !slurm_available() {
        return;
    }
    let Some(pg) = rt().block_on(fresh_postgres("slurm_sweep")) else {
        assert!(
            std::env::var("KILN_REQUIRE_SLURM").as_deref() != Ok("1"),
            "Slurm needs KILN_TEST_POSTGRES"
        );
        return;
    };
    // The same sweep, run here by the local executor: the reference.
    let local = quickstart_project();
    let ran = local
        .kiln(&[
            "--quiet",
            "sweep",
            "experiments/q2x2.yaml",
            "--executor",
            "local",
        ])
        .ok();
    let local_id = experiment_id(&ran.stdout);
    let local_url = local.path().join("results/kiln.sqlite");
    let (local_finals, local_rows) = finals_and_rows(&local_url.to_string_lossy(), local_id);
    assert_eq!(local_finals.len(), 4);

    // Submitted to Slurm: the command returns at once with the job ids.
    let p = quickstart_project();
    let kiln = |args: &[&str]| {
        let mut all = vec!["--store", pg.as_str()];
        all.extend_from_slice(args);
        p.kiln(&all)
    };
    let submitted = kiln(&["sweep", "experiments/q2x2.yaml"]).ok();
    assert!(
        submitted.stdout.contains("submitted 4 trial(s) to Slurm"),
        "{}",
        submitted.stdout
    );
    let id = experiment_id(&submitted.stdout);
    let array = submitted
        .stdout
        .split("array job ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("an array job")
        .to_owned();
    let scalar = |sql: &str| -> i64 {
        rt().block_on(async {
            let store = Store::open_read_only(&pg).await.expect("open");
            match store
                .query_read_only(sql)
                .await
                .expect("query")
                .rows
                .first()
                .and_then(|r| r.first())
            {
                Some(kiln_store::Cell::Int(n)) => *n,
                _ => 0,
            }
        })
    };
    // Cancel trial 1's task once its student is well into training.
    wait_for(
        Duration::from_secs(300),
        "trial 1's student to train",
        || {
            (scalar(&format!(
            "SELECT count(*) FROM metrics m JOIN runs r ON r.id = m.run_id
             WHERE r.experiment_id = {id} AND r.trial = 1 AND m.stage = 'student' AND m.name = 'loss'"
        )) >= 60)
            .then_some(())
        },
    );
    let task = format!("{array}_1");
    let cancelled = std::process::Command::new("scancel")
        .arg(&task)
        .status()
        .expect("scancel runs");
    assert!(cancelled.success());
    // Every job ends (the cancelled one included), the others finishing their trials.
    wait_for(Duration::from_secs(600), "the jobs to end", || {
        let out = std::process::Command::new("squeue")
            .args(["-h", "-j", &array])
            .output()
            .expect("squeue");
        (out.stdout.is_empty()).then_some(())
    });
    let status = kiln(&["sweep", "experiments/q2x2.yaml", "--status"]).ok();
    assert!(
        status.stdout.contains("3 of 4 trial(s) done"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains(&format!("{task} ")),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("CANCELLED"), "{}", status.stdout);
    assert!(
        status.stdout.contains("tweets 1/3") && status.stdout.contains("teacher 1/3"),
        "shared stages executed once, cache hits for the other trials: {}",
        status.stdout
    );
    let killed_run_status = scalar(&format!(
        "SELECT count(*) FROM runs WHERE experiment_id = {id} AND trial = 1 AND status = 'interrupted'"
    ));
    assert_eq!(
        killed_run_status, 1,
        "the cancelled task's run ends interrupted"
    );
    for stage in ["tokenizer", "tweets", "prompted", "teacher"] {
        let executed = scalar(&format!(
            "SELECT count(*) FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE r.experiment_id = {id} AND s.stage = '{stage}' AND s.status = 'succeeded'"
        ));
        let hits = scalar(&format!(
            "SELECT count(*) FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE r.experiment_id = {id} AND s.stage = '{stage}' AND s.status = 'cached'"
        ));
        assert_eq!((executed, hits), (1, 3), "{stage}: executions, cache hits");
    }

    // Submitted again: only the cancelled trial goes, and it resumes its student.
    let again = kiln(&["sweep", "experiments/q2x2.yaml"]).ok();
    assert!(
        again.stdout.contains("submitted 1 trial(s) to Slurm: job"),
        "{}",
        again.stdout
    );
    let job = again
        .stdout
        .split(": job ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("a job id")
        .to_owned();
    wait_for(
        Duration::from_secs(300),
        "the resubmitted job to end",
        || {
            let out = std::process::Command::new("squeue")
                .args(["-h", "-j", &job])
                .output()
                .expect("squeue");
            out.stdout.is_empty().then_some(())
        },
    );
    let status = kiln(&["sweep", "experiments/q2x2.yaml", "--status"]).ok();
    assert!(
        status.stdout.contains("4 of 4 trial(s) done"),
        "{}",
        status.stdout
    );
    let log = p
        .path()
        .join(format!("results/slurm/q2x2-{id}/trial-1-job-{job}.out"));
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        log.contains("trial 1 (alpha=0.0 temperature=2.0): run"),
        "{log}"
    );
    let resumed = scalar(&format!(
        "SELECT count(*) FROM stage_runs s JOIN runs r ON r.id = s.run_id
         WHERE r.experiment_id = {id} AND r.trial = 1 AND r.status = 'succeeded'
           AND s.stage = 'student' AND s.status = 'succeeded'"
    ));
    assert_eq!(resumed, 1);
    let student_log = rt().block_on(async {
        let store = Store::open_read_only(&pg).await.expect("open");
        let r = store
            .query_read_only(&format!(
                "SELECT s.log_path FROM stage_runs s JOIN runs r ON r.id = s.run_id
                 WHERE r.experiment_id = {id} AND r.trial = 1 AND r.status = 'succeeded'
                   AND s.stage = 'student'"
            ))
            .await
            .expect("query");
        r.rows[0][0].to_string()
    });
    let student_log = std::fs::read_to_string(&student_log).expect("the student's log");
    assert!(
        student_log.contains("resuming from the checkpoint at step"),
        "the resubmitted trial continued its student from a checkpoint:\n{student_log}"
    );

    // Nothing doubled, nothing missing, and the same results as the local executor's.
    let (finals, rows) = finals_and_rows(&pg, id);
    for (trial, (n, distinct)) in &rows {
        assert_eq!(n, distinct, "trial {trial}: a metric row recorded twice");
        assert_eq!(
            Some(&(*n, *distinct)),
            local_rows.get(trial),
            "trial {trial}: metric rows vs local"
        );
    }
    assert_eq!(finals, local_finals, "final metrics: Slurm vs local");
    let (slurm_report, local_report) = rt().block_on(async {
        let s = Store::open_read_only(&pg).await.expect("open");
        let l = Store::open_read_only(&local_url.to_string_lossy())
            .await
            .expect("open");
        (
            kiln_report::gather(&s, id, None).await.expect("report"),
            kiln_report::gather(&l, local_id, None)
                .await
                .expect("report"),
        )
    });
    assert_eq!(slurm_report.metric, local_report.metric);
    assert_eq!(slurm_report.swept, local_report.swept);
    assert_eq!(
        slurm_report.ranking(),
        local_report.ranking(),
        "the same ranking"
    );
    assert_eq!(
        slurm_report.best.map(|i| slurm_report.trials[i].trial),
        local_report.best.map(|i| local_report.trials[i].trial)
    );
    for (s, l) in slurm_report.trials.iter().zip(&local_report.trials) {
        assert_eq!((s.trial, &s.params), (l.trial, &l.params));
        assert_eq!(s.curves, l.curves, "trial {}: loss curves", s.trial);
    }
    eprintln!("metric rows per trial (rows, distinct): Slurm {rows:?}, local {local_rows:?}");
    // The report renders from the PostgreSQL store as from SQLite.
    kiln(&["report", &id.to_string()]).ok();
    let md = std::fs::read_to_string(p.path().join(format!("results/reports/q2x2-{id}.md")))
        .expect("the Markdown report");
    assert!(md.contains("# Sweep report: q2x2"), "{md}");
    assert!(md.contains("alpha") && md.contains("temperature"), "{md}");
}
