//! The results store: round trips, concurrency, last values.

use kiln_store::{MetricPoint, NewRun, Store};

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

#[test]
fn metrics_written_equal_metrics_read() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let url = dir.path().join("s.sqlite").to_string_lossy().into_owned();
        let store = Store::open(&url).await.expect("open");
        let run = new_run(&store).await;
        let mut written = Vec::new();
        for step in 0..2500 {
            written.push(point(run, "train", "loss", step, 1.0 / (step as f64 + 1.0)));
            written.push(point(run, "train", "lr", step, 1e-4));
        }
        written.push(point(run, "eval", "acc", 0, 0.75));
        written.push(point(run, "eval", "inf", 0, f64::INFINITY));
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
        assert_eq!(read.len(), written.len() + 1);
        assert_eq!(&read[..written.len()], &written[..]);
        assert!(read[written.len()].value.is_nan());
        let last = reader
            .query_read_only(
                "SELECT stage, metric, step, value FROM last_metrics ORDER BY stage, metric",
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
            ]
        );
    });
}

#[test]
fn last_value_is_the_highest_step_across_batches() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("s.sqlite").to_string_lossy())
            .await
            .expect("open");
        let run = new_run(&store).await;
        let writer = store.metric_writer();
        writer.send(point(run, "t", "loss", 10, 1.0)).expect("send");
        writer.flush().await.expect("flush");
        writer.send(point(run, "t", "loss", 5, 2.0)).expect("send"); // an older step arriving late
        writer.flush().await.expect("flush");
        writer.send(point(run, "t", "loss", 10, 3.0)).expect("send"); // same step again: later wins
        writer.close().await.expect("close");
        let r = store
            .query_read_only("SELECT step, value FROM last_metrics")
            .await
            .expect("q");
        assert_eq!(
            r.rows,
            vec![vec![kiln_store::Cell::Int(10), kiln_store::Cell::Real(3.0)]]
        );
    });
}

#[test]
fn eight_writers_ten_thousand_metrics_each_all_present() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = dir.path().join("s.sqlite").to_string_lossy().into_owned();
    let run = runtime().block_on(async {
        let store = Store::open(&url).await.expect("open");
        let run = new_run(&store).await;
        store.close().await;
        run
    });
    // Eight threads, each with its own runtime and its own connection pool, as eight
    // processes would be: they contend for SQLite's write lock.
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
    runtime().block_on(async {
        let store = Store::open_read_only(&url).await.expect("open");
        let r = store
            .query_read_only("SELECT count(*), count(DISTINCT stage || ':' || step) FROM metrics")
            .await
            .expect("count");
        assert_eq!(
            r.rows[0],
            vec![kiln_store::Cell::Int(80_000), kiln_store::Cell::Int(80_000)]
        );
        let r = store
            .query_read_only("SELECT count(*), min(step) FROM last_metrics")
            .await
            .expect("q");
        assert_eq!(
            r.rows[0],
            vec![kiln_store::Cell::Int(8), kiln_store::Cell::Int(9_999)]
        );
    });
}

#[test]
fn reopening_applies_no_migration_twice() {
    runtime().block_on(async {
        let dir = tempfile::tempdir().expect("tmp");
        let url = dir.path().join("s.sqlite").to_string_lossy().into_owned();
        for _ in 0..3 {
            let store = Store::open(&url).await.expect("open");
            new_run(&store).await;
            store.close().await;
        }
        let store = Store::open_read_only(&url).await.expect("open");
        let r = store
            .query_read_only("SELECT count(*) FROM runs")
            .await
            .expect("q");
        assert_eq!(r.rows[0], vec![kiln_store::Cell::Int(3)]);
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
        assert_eq!(r.rows[0], vec![kiln_store::Cell::Int(files as i64)]);
    });
}
