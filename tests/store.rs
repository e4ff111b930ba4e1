//! The results store: round trips, concurrency, last values, copies, locks, read-only
//! queries. Every test runs on SQLite and on a real PostgreSQL server
//! (`KILN_TEST_POSTGRES`, started by `.ci/postgres-test-server`).

use kiln_store::{
    Cell, LockAttempt, MetricPoint, NewRun, NewStageRun, RunStatus, StageStatus, Store,
};

use crate::support::{TestStore, test_stores};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn new_run(store: &Store) -> i64 {
    let pipeline = store
        .pipeline_id("p", "p.yaml", "hash")
        .await
        .expect("pipeline");
    store
        .begin_run(&NewRun {
            pipeline_id: pipeline,
            kiln_version: "test".into(),
            host: "test".into(),
            git_dirty: Some(true),
            params: [("alpha".to_owned(), serde_json::json!(0.5))]
                .into_iter()
                .collect(),
            ..NewRun::default()
        })
        .await
        .expect("run")
}

fn point(run_id: i64, stage: &str, name: &str, step: i64, value: f64) -> MetricPoint {
    MetricPoint {
        run_id,
        stage: stage.into(),
        step,
        name: name.into(),
        value,
        time: 1.5,
    }
}

/// Runs `test` once per backend.
fn on_each_store<F, Fut>(tag: &str, test: F)
where
    F: Fn(TestStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = runtime();
    let stores = rt.block_on(test_stores(tag));
    for store in stores {
        eprintln!("{tag} on {}", store.backend);
        rt.block_on(test(store));
    }
}

#[test]
fn metrics_written_equal_metrics_read() {
    on_each_store("roundtrip", |ts| async move {
        let url = ts.url.clone();
        let store = Store::open(&url).await.expect("open");
        let run = new_run(&store).await;
        let mut written = Vec::new();
        for step in 0..2500 {
            written.push(point(run, "train", "loss", step, 1.0 / (step as f64 + 1.0)));
            written.push(point(run, "train", "lr", step, 1e-4));
        }
        written.push(point(run, "eval", "acc", 0, 0.75));
        written.push(point(run, "eval", "inf", 0, f64::INFINITY));
        // Text that COPY's format escapes.
        written.push(point(run, "eval\ttab", "back\\slash\nnl", 0, -0.0));
        let writer = store.metric_writer();
        for p in &written {
            writer.send(p.clone()).expect("send");
        }
        writer.close().await.expect("close");
        // A NaN goes in as NULL and comes back as NaN.
        let w2 = store.metric_writer();
        w2.send(point(run, "eval", "nan", 0, f64::NAN))
            .expect("send");
        w2.close().await.expect("close");
        store.close().await;

        let reader = Store::open_read_only(&url).await.expect("open ro");
        let read = reader.metrics(run).await.expect("read");
        assert_eq!(read.len(), written.len() + 1, "{}", ts.backend);
        assert_eq!(&read[..written.len()], &written[..], "{}", ts.backend);
        assert!(read[written.len()].value.is_nan());
        let last = reader
            .query_read_only(
                "SELECT stage, metric, step, value FROM last_metrics WHERE stage IN ('eval', 'train') ORDER BY stage, metric",
            )
            .await
            .expect("query");
        let rendered: Vec<String> = last
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            rendered,
            [
                "eval acc 0 0.75",
                "eval inf 0 inf",
                "eval nan 0 ",
                "train loss 2499 0.0004",
                "train lr 2499 0.0001"
            ],
            "{}",
            ts.backend
        );
        // The typed reads agree with the SQL view.
        let finals = reader.final_metrics(run).await.expect("final metrics");
        assert_eq!(finals.len(), 6);
        assert_eq!(finals[0].key(), "eval.acc");
        assert_eq!(finals[0].value, Some(0.75));
        let params = reader.params(run).await.expect("params");
        assert_eq!(params.get("alpha").map(String::as_str), Some("0.5"));
    });
}

#[test]
fn last_value_is_the_highest_step_across_batches() {
    on_each_store("last_value", |ts| async move {
        let store = Store::open(&ts.url).await.expect("open");
        let run = new_run(&store).await;
        let writer = store.metric_writer();
        writer.send(point(run, "t", "loss", 10, 1.0)).expect("send");
        writer.flush().await.expect("flush");
        writer.send(point(run, "t", "loss", 5, 2.0)).expect("send"); // an older step arriving late
        writer.flush().await.expect("flush");
        writer.send(point(run, "t", "loss", 10, 3.0)).expect("send"); // same step again: later wins
        // Within one batch too: the highest step, the later of equal steps.
        writer.send(point(run, "t", "acc", 2, 0.1)).expect("send");
        writer.send(point(run, "t", "acc", 3, 0.2)).expect("send");
        writer.send(point(run, "t", "acc", 3, 0.3)).expect("send");
        writer.send(point(run, "t", "acc", 1, 0.4)).expect("send");
        writer.close().await.expect("close");
        let r = store
            .query_read_only("SELECT metric, step, value FROM last_metrics ORDER BY metric")
            .await
            .expect("q");
        assert_eq!(
            r.rows,
            vec![
                vec![Cell::Text("acc".into()), Cell::Int(3), Cell::Real(0.3)],
                vec![Cell::Text("loss".into()), Cell::Int(10), Cell::Real(3.0)]
            ],
            "{}",
            ts.backend
        );
    });
}

#[test]
fn eight_writers_ten_thousand_metrics_each_all_present() {
    on_each_store("eight_writers", |ts| async move {
        let url = ts.url.clone();
        let store = Store::open(&url).await.expect("open");
        let run = new_run(&store).await;
        store.close().await;
        // Eight threads, each with its own runtime and its own connection pool, as eight
        // processes would be: they contend for SQLite's write lock, PostgreSQL's rows.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let url = url.clone();
                std::thread::spawn(move || {
                    runtime().block_on(async move {
                        let store = Store::open(&url).await.expect("open");
                        let writer = store.metric_writer();
                        for i in 0..10_000 {
                            writer
                                .send(point(run, &format!("w{t}"), "x", i, i as f64))
                                .expect("send");
                            if i % 1000 == 999 {
                                writer.flush().await.expect("no 'database is locked'");
                            }
                        }
                        writer.close().await.expect("close");
                        store.close().await;
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let store = Store::open_read_only(&url).await.expect("open");
        let r = store
            .query_read_only("SELECT count(*), count(DISTINCT stage || ':' || step) FROM metrics")
            .await
            .expect("count");
        assert_eq!(
            r.rows[0],
            vec![Cell::Int(80_000), Cell::Int(80_000)],
            "{}",
            ts.backend
        );
        let r = store
            .query_read_only("SELECT count(*), min(step) FROM last_metrics")
            .await
            .expect("q");
        assert_eq!(
            r.rows[0],
            vec![Cell::Int(8), Cell::Int(9_999)],
            "{}",
            ts.backend
        );
    });
}

/// Eight `kiln bench ingest` processes write 10,000 metric rows each into one store at once.
#[test]
fn eight_processes_ingest_into_one_store() {
    on_each_store("eight_processes", |ts| async move {
        let project = crate::support::Project::new();
        let children: Vec<_> = (0..8)
            .map(|i| {
                project
                    .cmd(&[
                        "--store",
                        &format!("bench{i}.sqlite"),
                        "bench",
                        "ingest",
                        "--rows",
                        "10000",
                        "--ingest-into",
                        &ts.url,
                    ])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("kiln bench starts")
            })
            .collect();
        let mut rates = Vec::new();
        for child in children {
            let out = child.wait_with_output().expect("kiln bench ends");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{}: {stdout}{}",
                ts.backend,
                String::from_utf8_lossy(&out.stderr)
            );
            let rate: f64 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("ingest_rows_per_s"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .expect("an ingest figure");
            rates.push(rate);
        }
        eprintln!("{}: 8 processes, rows/s each: {rates:.0?}", ts.backend);
        let store = Store::open_read_only(&ts.url).await.expect("open");
        let r = store
            .query_read_only(
                "SELECT count(*), count(DISTINCT run_id), count(DISTINCT run_id || ':' || name || ':' || step) FROM metrics",
            )
            .await
            .expect("count");
        assert_eq!(
            r.rows[0],
            vec![Cell::Int(80_000), Cell::Int(800), Cell::Int(80_000)],
            "{}: every row of every process, once",
            ts.backend
        );
    });
}

#[test]
fn reopening_applies_no_migration_twice() {
    on_each_store("reopen", |ts| async move {
        for _ in 0..3 {
            let store = Store::open(&ts.url).await.expect("open");
            new_run(&store).await;
            store.close().await;
        }
        let store = Store::open_read_only(&ts.url).await.expect("open");
        let r = store
            .query_read_only("SELECT count(*) FROM runs")
            .await
            .expect("q");
        assert_eq!(r.rows[0], vec![Cell::Int(3)]);
        let r = store
            .query_read_only("SELECT count(*) FROM _sqlx_migrations")
            .await
            .expect("q");
        // Each migration once (one per file in crates/store/migrations), however often the
        // store is opened.
        let files = std::fs::read_dir(crate::support::repo_root().join("crates/store/migrations"))
            .expect("migrations")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
            })
            .count();
        assert_eq!(r.rows[0], vec![Cell::Int(files as i64)], "{}", ts.backend);
    });
}

#[test]
fn query_is_read_only_and_reads_every_type() {
    on_each_store("read_only", |ts| async move {
        let store = Store::open(&ts.url).await.expect("open");
        let run = new_run(&store).await;
        store.close().await;
        let reader = Store::open_read_only(&ts.url).await.expect("open ro");
        for sql in [
            "DELETE FROM runs",
            "WITH x AS (DELETE FROM runs RETURNING id) SELECT * FROM x",
            "SELECT 1; DROP TABLE runs",
        ] {
            let err = reader.query_read_only(sql).await.expect_err(sql);
            // SQLite has no DELETE inside WITH: a syntax error, which writes nothing either.
            let sqlite_syntax = ts.backend == "sqlite" && sql.starts_with("WITH");
            assert!(
                matches!(err, kiln_store::Error::ReadOnly { .. }) || sqlite_syntax,
                "{}: {sql}: {err}",
                ts.backend
            );
        }
        // The writable handle refuses too.
        let writable = Store::open(&ts.url).await.expect("open");
        let err = writable
            .query_read_only("WITH x AS (DELETE FROM runs RETURNING id) SELECT * FROM x")
            .await
            .expect_err("a write through WITH");
        assert!(matches!(err, kiln_store::Error::ReadOnly { .. }) || ts.backend == "sqlite");
        assert!(
            writable.run_exists(run).await.expect("exists"),
            "nothing was deleted"
        );
        // Sums, averages and text come back typed.
        let r = reader
            .query_read_only("SELECT sum(id) AS s, avg(id) AS a, 'x' AS t, NULL AS n FROM runs")
            .await
            .expect("q");
        assert_eq!(r.columns, ["s", "a", "t", "n"]);
        assert_eq!(
            r.rows[0],
            vec![
                Cell::Int(run),
                Cell::Real(run as f64),
                Cell::Text("x".into()),
                Cell::Null
            ],
            "{}",
            ts.backend
        );
        let r = reader
            .query_read_only("SELECT id FROM runs WHERE id < 0")
            .await
            .expect("q");
        assert_eq!(
            (r.columns.len(), r.rows.len()),
            (1, 0),
            "columns of an empty result"
        );
    });
}

#[test]
fn stage_locks_exclude_and_release() {
    on_each_store("locks", |ts| async move {
        let store = Store::open(&ts.url).await.expect("open");
        let fp = "f00d";
        assert_eq!(
            store
                .try_lock_stage(fp, "a", "h", Some(1))
                .await
                .expect("lock"),
            LockAttempt::Acquired
        );
        match store
            .try_lock_stage(fp, "b", "h", Some(2))
            .await
            .expect("lock")
        {
            LockAttempt::Held(holder) => {
                assert_eq!((holder.holder.as_str(), holder.run_id), ("a", Some(1)));
                assert_eq!(holder.pid, i64::from(std::process::id()));
            }
            other => panic!("{}: b took a held lock: {other:?}", ts.backend),
        }
        assert!(store.heartbeat_stage_lock(fp, "a").await.expect("beat"));
        assert!(!store.heartbeat_stage_lock(fp, "b").await.expect("beat"));
        assert!(
            !store.unlock_stage(fp, "b").await.expect("unlock"),
            "b cannot release a's lock"
        );
        assert!(store.unlock_stage(fp, "a").await.expect("unlock"));
        assert_eq!(
            store
                .try_lock_stage(fp, "b", "h", Some(2))
                .await
                .expect("lock"),
            LockAttempt::Acquired
        );
    });
}

/// A store with a bit of everything: runs, params, stages, metrics, artifacts, hashes, jobs.
async fn populate(store: &Store) -> i64 {
    let run = new_run(store).await;
    let stage = store
        .begin_stage(&NewStageRun {
            run_id: run,
            stage: "train".into(),
            kind: "train.lm".into(),
            kind_version: 6,
            fingerprint: "abc".into(),
            fingerprint_input: "{}".into(),
            cache_hit: false,
            status: StageStatus::Running,
        })
        .await
        .expect("stage");
    store
        .finish_stage(
            stage,
            StageStatus::Succeeded,
            Some(std::time::Duration::from_millis(7)),
            None,
            Some("log"),
        )
        .await
        .expect("finish");
    store
        .record_artifacts(
            run,
            "train",
            &[kiln_store::ArtifactRecord {
                path: "/x/model.safetensors".into(),
                bytes: 12,
                hash: "h".into(),
            }],
        )
        .await
        .expect("artifacts");
    let writer = store.metric_writer();
    for step in 0..300 {
        writer
            .send(point(run, "train", "loss", step, 1.0 / (1.0 + step as f64)))
            .expect("send");
    }
    writer
        .send(point(run, "eval", "nan", 0, f64::NAN))
        .expect("send");
    writer.close().await.expect("close");
    store
        .finish_run(run, RunStatus::Succeeded)
        .await
        .expect("finish");
    store
        .save_hashes(
            &[kiln_store::FileHash {
                path: "/data/a".into(),
                size: 3,
                mtime_ns: 4,
                inode: 5,
                hash: "hh".into(),
            }],
            &[("dh".into(), "[]".into())],
        )
        .await
        .expect("hashes");
    let experiment = store
        .experiment_id("e", "e.yaml", "eh")
        .await
        .expect("experiment");
    store
        .set_experiment_metric(experiment, Some("eval.acc"))
        .await
        .expect("metric");
    store
        .record_jobs(
            experiment,
            "slurm",
            &[(0, "12_0".into()), (1, "12_1".into())],
        )
        .await
        .expect("jobs");
    run
}

#[test]
fn copy_moves_every_table_ids_and_all() {
    let rt = runtime();
    let targets = rt.block_on(test_stores("copy_target"));
    for target in targets {
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tmp");
            let source_url = dir
                .path()
                .join("source.sqlite")
                .to_string_lossy()
                .into_owned();
            let source = Store::open(&source_url).await.expect("open source");
            // Ids that do not start at 1: a store whose early runs were... many.
            for _ in 0..3 {
                new_run(&source).await;
            }
            let run = populate(&source).await;
            let dest = Store::open(&target.url).await.expect("open target");
            let report = source.copy_to(&dest).await.expect("copy");
            let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
            assert!(rows > 300, "{} rows", rows);
            assert_eq!(
                source.table_checksums().await.expect("source sums"),
                dest.table_checksums().await.expect("target sums"),
                "{}",
                target.backend
            );
            // The same answers, by the same ids.
            assert_eq!(dest.metrics(run).await.expect("m").len(), 301);
            assert_eq!(
                format!("{:?}", source.recent_runs(10).await.expect("runs")),
                format!("{:?}", dest.recent_runs(10).await.expect("runs")),
                "kiln runs reads the same from both"
            );
            assert_eq!(
                source.final_metrics(run).await.expect("finals"),
                dest.final_metrics(run).await.expect("finals")
            );
            // New rows get ids after the copied ones.
            let next = new_run(&dest).await;
            assert_eq!(next, run + 1, "{}", target.backend);
            // A second copy into a store with rows is refused, and writes nothing.
            let before = dest.table_checksums().await.expect("sums");
            let err = source.copy_to(&dest).await.expect_err("not empty");
            assert!(matches!(err, kiln_store::Error::CopyTarget { .. }), "{err}");
            assert_eq!(before, dest.table_checksums().await.expect("sums"));
        });
    }
}

/// `kiln store copy` and `kiln store migrate` as a user runs them.
#[test]
fn store_copy_command_moves_a_project_store() {
    let project = crate::support::Project::new();
    project.write(
        "p.yaml",
        "name: p\nstages:\n  a:\n    uses: echo\n    with: {message: hi}\n",
    );
    project.run("p.yaml", &[]).ok();
    let rt = runtime();
    let target = rt
        .block_on(test_stores("copy_command"))
        .pop()
        .expect("a store");
    let migrated = project
        .kiln(&["--store", &target.url, "store", "migrate"])
        .ok();
    assert!(
        migrated.stdout.contains("schema up to date"),
        "{}",
        migrated.stdout
    );
    let ran = project
        .kiln(&[
            "store",
            "copy",
            "--from",
            "results/kiln.sqlite",
            "--to",
            &target.url,
        ])
        .ok();
    assert!(
        ran.stdout.contains("counts and checksums equal"),
        "{}",
        ran.stdout
    );
    let from = project.kiln(&["runs", "--format", "csv"]).ok().stdout;
    let to = project
        .kiln(&["--store", &target.url, "runs", "--format", "csv"])
        .ok()
        .stdout;
    assert_eq!(from, to, "kiln runs reads the same from both");
    let again = project.kiln(&[
        "store",
        "copy",
        "--from",
        "results/kiln.sqlite",
        "--to",
        &target.url,
    ]);
    assert_eq!(again.status, 1);
    assert!(
        again.stderr.contains("already has rows"),
        "{}",
        again.stderr
    );
}

/// `kiln runs`, `compare`, `rerun`, `status`, `query` and `gc` on a PostgreSQL store, as on
/// SQLite.
#[test]
fn the_commands_that_read_the_store_work_on_postgres() {
    let rt = runtime();
    let Some(pg) = rt.block_on(crate::support::fresh_postgres("commands")) else {
        return;
    };
    let p = crate::support::Project::new();
    std::fs::copy(
        crate::support::repo_root().join("pipelines/demo.yaml"),
        p.path().join("demo.yaml"),
    )
    .expect("copy the demo");
    let kiln = |args: &[&str]| {
        let mut all = vec!["--store", pg.as_str()];
        all.extend_from_slice(args);
        p.kiln(&all).ok()
    };
    kiln(&["--quiet", "run", "demo.yaml"]);
    kiln(&["--quiet", "run", "demo.yaml", "--set", "scale=3"]);
    assert!(
        !p.path().join("results/kiln.sqlite").exists(),
        "nothing went to a SQLite file"
    );
    let runs = kiln(&["runs", "--format", "csv"]).stdout;
    assert_eq!(runs.lines().count(), 3, "a header and two runs:\n{runs}");
    let compared = kiln(&["compare", "1", "2"]).stdout;
    assert!(
        compared
            .lines()
            .any(|l| l.contains("scale") && l.contains('≠')),
        "{compared}"
    );
    let rerun = kiln(&["rerun", "1", "--expect-identical"]).stdout;
    assert!(rerun.contains("all identical"), "{rerun}");
    let status = kiln(&["status", "demo.yaml"]).stdout;
    assert!(status.contains("cached"), "{status}");
    let count = kiln(&["query", "--format", "csv", "SELECT count(*) AS n FROM runs"]).stdout;
    assert_eq!(count, "n\n3\n");
    kiln(&["gc", "--dry-run"]);
}

/// An unreachable server fails at once, saying why, and no message shows the password.
#[test]
fn an_unreachable_postgres_store_is_a_clear_error_without_its_password() {
    let p = crate::support::Project::new();
    let ran = p.kiln(&["--store", "postgres://kiln:s3cret@127.0.0.1:1/kiln", "runs"]);
    assert_eq!(ran.status, 1);
    assert!(ran.stderr.contains("Connection refused"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("postgres://kiln:***@127.0.0.1:1/kiln"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("s3cret"), "{}", ran.stderr);
    assert!(
        ran.elapsed < std::time::Duration::from_secs(10),
        "{:?}",
        ran.elapsed
    );
    let copy = p.kiln(&[
        "store",
        "copy",
        "--from",
        "missing.sqlite",
        "--to",
        "postgres://kiln:s3cret@127.0.0.1:1/kiln",
    ]);
    assert_eq!(copy.status, 1);
    assert!(copy.stderr.contains("missing.sqlite"), "{}", copy.stderr);
    assert!(!copy.stderr.contains("s3cret"), "{}", copy.stderr);
}

/// A suite's figures keep their peer beside them, with kiln's ratio to it (above 1: kiln
/// better, for rates and for memory alike).
#[test]
fn bench_figures_keep_their_peer_and_ratio() {
    use kiln_store::{BenchFigure, Machine, PeerFigure};
    on_each_store("bench_peers", |t| async move {
        let store = Store::open(&t.url).await.expect("open");
        let machine = Machine {
            fingerprint: "f".into(),
            cpu_model: "cpu".into(),
            cpu_flags: "avx2".into(),
            cores: 2,
            memory_gib: 24,
            gpu: "none".into(),
        };
        let id = store.machine_id(&machine).await.expect("machine");
        let figure = |name: &str, value: f64, higher: bool, peer: Option<f64>| BenchFigure {
            name: name.into(),
            value,
            unit: "u".into(),
            spread: 1.0,
            repeats: 3,
            higher_is_better: higher,
            peer: peer.map(|value| PeerFigure {
                name: "pytorch-eager".into(),
                value,
                spread: 0.5,
            }),
        };
        let figures = [
            figure("rate", 150.0, true, Some(100.0)),
            figure("memory", 3000.0, false, Some(4500.0)),
            figure("alone", 7.0, true, None),
        ];
        store
            .record_bench("s1", id, "0.1.0", Some("abc"), &figures)
            .await
            .expect("record");
        let rows = store.bench_rows().await.expect("rows");
        let peer = |name: &str| {
            rows.iter()
                .find(|r| r.name == name)
                .expect("the figure")
                .peer
                .clone()
        };
        let (p, ratio) = peer("rate").expect("a peer");
        assert_eq!(
            (p.name.as_str(), p.value, p.spread),
            ("pytorch-eager", 100.0, 0.5)
        );
        assert!((ratio - 1.5).abs() < 1e-12, "{ratio}");
        let (_, ratio) = peer("memory").expect("a peer");
        assert!((ratio - 1.5).abs() < 1e-12, "{ratio}");
        assert_eq!(peer("alone"), None);
        store.close().await;
    });
}
