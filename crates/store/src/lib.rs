//! kiln's results store: every run, parameter, metric, artifact and stage status, in SQLite
//! (one machine) or PostgreSQL (a cluster whose nodes all write at once).
//!
//! - [`Store`] opens (and migrates) a store from a path, a `sqlite://` URL or a
//!   `postgres://` URL. SQLite runs with WAL and a busy timeout so several processes can
//!   write at once. Both run the same migrations and statements ([`backend`] holds the few
//!   places where they differ).
//! - [`MetricWriter`] is the one way metrics go in: rows are queued on a channel and written
//!   in batches, one transaction per batch, never one per metric.
//! - [`Store::query_read_only`] runs a user's SQL on a read-only connection (`kiln query`).
//! - Typed reads ([`reads`]) answer every question the CLI and the report ask: no SQL
//!   outside this crate.
//! - [`Store::copy_to`] moves a whole store (e.g. SQLite → PostgreSQL), ids preserved,
//!   verified by row counts and checksums.
//!
//! ```no_run
//! # async fn demo() -> kiln_store::Result<()> {
//! let store = kiln_store::Store::open("results/kiln.sqlite").await?;
//! let result = store.query_read_only("SELECT * FROM run_summary").await?;
//! println!("{} rows", result.rows.len());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod backend;
mod bench;
pub mod browse;
mod copy;
mod error;
mod gc;
mod hashes;
mod jobs;
mod locks;
mod query;
pub mod reads;
mod records;
mod schema;
mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use backend::Location;
pub use bench::{BenchFigure, BenchRow, Machine, PeerFigure};
pub use copy::{CopyReport, TableCopy};
pub use error::{Error, Result};
pub use gc::{GcLock, GcRun, GcSnapshot, GcStageRef};
pub use hashes::FileHash;
pub use jobs::ExecutorJob;
pub use locks::{LockAttempt, LockHolder};
pub use query::{Cell, QueryResult};
pub use reads::{ExperimentInfo, MetricValue, TrialRun};
pub use records::{
    ArtifactRecord, MetricPoint, NewRun, NewStageRun, RecordedRun, RunRow, RunStatus,
    StageExecution, StageStatus,
};
pub use writer::MetricWriter;

use backend::{Pool, on_pool, on_tx, postgres_ddl};
use error::sql;

/// The default location of the store, relative to the project root.
pub const DEFAULT_STORE: &str = "results/kiln.sqlite";

/// How long a connection waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// The schema migrations, embedded at compile time and applied in order on open. They are
/// written for SQLite; PostgreSQL gets [`postgres_ddl`]'s translation.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "trials", include_str!("../migrations/0002_trials.sql")),
    (
        3,
        "file hashes",
        include_str!("../migrations/0003_file_hashes.sql"),
    ),
    (4, "run_pid", include_str!("../migrations/0004_run_pid.sql")),
    (
        5,
        "experiment metric",
        include_str!("../migrations/0005_experiment_metric.sql"),
    ),
    (
        6,
        "stage locks and executor jobs",
        include_str!("../migrations/0006_locks_and_jobs.sql"),
    ),
    (
        7,
        "benchmarks",
        include_str!("../migrations/0007_benchmarks.sql"),
    ),
    (
        8,
        "bench_peers",
        include_str!("../migrations/0008_bench_peers.sql"),
    ),
    (9, "browse", include_str!("../migrations/0009_browse.sql")),
];

fn migrator(postgres: bool) -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            let text = if postgres {
                Cow::Owned(postgres_ddl(sql))
            } else {
                Cow::Borrowed(*sql)
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                text,
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// Applies pending migrations. PostgreSQL serializes concurrent migrators with an advisory
/// lock; SQLite's migrator takes none, so two processes opening a new file at once can both
/// try a migration: the loser fails on "already exists" and, retried, finds it applied.
async fn migrate(pool: &Pool) -> Result<()> {
    let mut attempt = 0;
    loop {
        let result = match pool {
            Pool::Sqlite(p) => migrator(false).run(p).await,
            Pool::Postgres(p) => migrator(true).run(p).await,
        };
        match result {
            Ok(()) => return Ok(()),
            Err(_) if attempt < 5 && matches!(pool, Pool::Sqlite(_)) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(Error::Migrate(e)),
        }
    }
}

/// A handle on the results store. Cheap to clone (it wraps a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    location: Location,
}

/// Turns a `--store` argument into where the store lives.
///
/// # Errors
/// [`Error::UnsupportedUrl`] for URL schemes other than `sqlite:` and `postgres://`.
pub fn location(url: &str) -> Result<Location> {
    Location::parse(url)
}

/// `url` as messages show it: a PostgreSQL URL without its password.
pub fn display_url(url: &str) -> String {
    Location::parse(url).map_or_else(|_| url.to_owned(), |l| l.display())
}

impl Store {
    /// Opens the store at `url` for reading and writing, creating it (a SQLite file) and
    /// applying migrations as needed.
    ///
    /// # Errors
    /// When the directory cannot be created, the database cannot be reached, or migrations
    /// fail.
    pub async fn open(url: &str) -> Result<Self> {
        let location = Location::parse(url)?;
        if let Location::Sqlite(path) = &location
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let pool = connect(&location, false).await?;
        migrate(&pool).await?;
        Ok(Self { pool, location })
    }

    /// Opens an existing store read-only: every statement that would write fails (SQLite
    /// opens the file read-only; PostgreSQL sessions default to read-only transactions).
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no SQLite file yet; [`Error::Open`] when the server
    /// cannot be reached.
    pub async fn open_read_only(url: &str) -> Result<Self> {
        let location = Location::parse(url)?;
        if let Location::Sqlite(path) = &location
            && !path.exists()
        {
            return Err(Error::Missing { path: path.clone() });
        }
        let pool = connect(&location, true).await?;
        Ok(Self { pool, location })
    }

    /// Where the store lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.pool.kind()
    }

    /// Starts the batched metric writer for this store.
    pub fn metric_writer(&self) -> MetricWriter {
        MetricWriter::spawn(self.pool.clone())
    }

    /// Returns the id of the pipeline row for (name, path, spec hash), inserting it if new.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn pipeline_id(&self, name: &str, path: &str, spec_hash: &str) -> Result<i64> {
        self.spec_row("pipelines", name, path, spec_hash).await
    }

    /// The id of the experiment row for (name, path, spec hash), inserting it if new.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn experiment_id(&self, name: &str, path: &str, spec_hash: &str) -> Result<i64> {
        self.spec_row("experiments", name, path, spec_hash).await
    }

    /// Records the metric an experiment's file names for ranking its trials (the row is the
    /// file's version, so this is set once per version).
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn set_experiment_metric(&self, id: i64, metric: Option<&str>) -> Result<()> {
        on_pool!(&self.pool, p => sqlx::query("UPDATE experiments SET metric = $1 WHERE id = $2")
            .bind(metric)
            .bind(id)
            .execute(p)
            .await
            .map_err(sql("set experiment metric"))
            .map(|_| ()))?;
        Ok(())
    }

    /// The id of the row for (name, path, spec hash) in `table` (`pipelines` or
    /// `experiments`, which share that shape), inserting it if new.
    async fn spec_row(
        &self,
        table: &'static str,
        name: &str,
        path: &str,
        spec_hash: &str,
    ) -> Result<i64> {
        let insert = format!(
            "INSERT INTO {table} (name, path, spec_hash, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name, path, spec_hash) DO NOTHING"
        );
        let select =
            format!("SELECT id FROM {table} WHERE name = $1 AND path = $2 AND spec_hash = $3");
        on_pool!(&self.pool, p => {
            sqlx::query(&insert)
                .bind(name)
                .bind(path)
                .bind(spec_hash)
                .bind(now())
                .execute(p)
                .await
                .map_err(sql("insert spec row"))?;
            sqlx::query(&select)
                .bind(name)
                .bind(path)
                .bind(spec_hash)
                .fetch_one(p)
                .await
                .map_err(sql("find spec row"))
                .map(|row| row.get::<i64, _>(0))
        })
    }

    /// The experiment's trials that have a succeeded run: trial number → (config hash, run id).
    ///
    /// # Errors
    /// When the query fails.
    pub async fn succeeded_trials(
        &self,
        experiment_id: i64,
    ) -> Result<BTreeMap<i64, (String, i64)>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT trial, config_hash, max(id) FROM runs
             WHERE experiment_id = $1 AND status = 'succeeded' AND trial IS NOT NULL
             GROUP BY trial, config_hash",
        )
        .bind(experiment_id)
        .fetch_all(p)
        .await
        .map_err(sql("find finished trials"))
        .map(|rows| rows
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>(0),
                    (r.get::<String, _>(1), r.get::<i64, _>(2)),
                )
            })
            .collect()))
    }

    /// Inserts a run (status `running`, with this process's id in `pid`) with its parameters
    /// and returns its id.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn begin_run(&self, run: &NewRun) -> Result<i64> {
        let mut tx = self.pool.begin_write("begin run").await?;
        let id: i64 = on_tx!(&mut tx, t => {
            let id: i64 = sqlx::query(
                "INSERT INTO runs (pipeline_id, experiment_id, trial, cargo_lock_hash, config_hash,
                                   config, git_commit, git_dirty, kiln_version, seed, host, pid,
                                   started_at, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'running')
                 RETURNING id",
            )
            .bind(run.pipeline_id)
            .bind(run.experiment_id)
            .bind(run.trial)
            .bind(&run.cargo_lock_hash)
            .bind(&run.config_hash)
            .bind(&run.config)
            .bind(&run.git_commit)
            .bind(run.git_dirty.map(i64::from))
            .bind(&run.kiln_version)
            .bind(run.seed)
            .bind(&run.host)
            // The process that inserts the run is the one that executes it.
            .bind(i64::from(std::process::id()))
            .bind(now())
            .fetch_one(&mut **t)
            .await
            .map_err(sql("insert run"))?
            .get(0);
            for (key, value) in &run.params {
                let (text, num) = param_columns(value);
                sqlx::query(
                    "INSERT INTO params (run_id, key, value, value_num) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(key)
                .bind(text)
                .bind(num)
                .execute(&mut **t)
                .await
                .map_err(sql("insert param"))?;
            }
            id
        });
        tx.commit("commit run").await?;
        Ok(id)
    }

    /// Marks a run finished with `status`.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<()> {
        on_pool!(&self.pool, p => sqlx::query("UPDATE runs SET status = $1, ended_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now())
            .bind(run_id)
            .execute(p)
            .await
            .map_err(sql("finish run"))
            .map(|_| ()))?;
        Ok(())
    }

    /// Records a stage of a run in its first state and returns the row id.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn begin_stage(&self, stage: &NewStageRun) -> Result<i64> {
        on_pool!(&self.pool, p => sqlx::query(
            "INSERT INTO stage_runs (run_id, stage, kind, kind_version, fingerprint,
                                     fingerprint_input, cache_hit, status, started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(stage.run_id)
        .bind(&stage.stage)
        .bind(&stage.kind)
        .bind(stage.kind_version)
        .bind(&stage.fingerprint)
        .bind(&stage.fingerprint_input)
        .bind(i64::from(stage.cache_hit))
        .bind(stage.status.as_str())
        .bind(now())
        .fetch_one(p)
        .await
        .map_err(sql("insert stage run"))
        .map(|row| row.get::<i64, _>(0)))
    }

    /// Sets a stage's final status, duration, error and log.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn finish_stage(
        &self,
        stage_run_id: i64,
        status: StageStatus,
        duration: Option<Duration>,
        error: Option<&str>,
        log_path: Option<&str>,
    ) -> Result<()> {
        let ms = duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        on_pool!(&self.pool, p => sqlx::query(
            "UPDATE stage_runs SET status = $1, ended_at = $2, duration_ms = $3, error = $4,
                                   log_path = $5
             WHERE id = $6",
        )
        .bind(status.as_str())
        .bind(now())
        .bind(ms)
        .bind(error)
        .bind(log_path)
        .bind(stage_run_id)
        .execute(p)
        .await
        .map_err(sql("finish stage run"))
            .map(|_| ()))?;
        Ok(())
    }

    /// Records the artifacts a stage produced for a run.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn record_artifacts(
        &self,
        run_id: i64,
        stage: &str,
        artifacts: &[ArtifactRecord],
    ) -> Result<()> {
        let mut tx = self.pool.begin_write("begin artifacts").await?;
        on_tx!(&mut tx, t => {
            for a in artifacts {
                sqlx::query(
                    "INSERT INTO artifacts (run_id, stage, path, bytes, hash) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (run_id, stage, path) DO UPDATE
                     SET bytes = excluded.bytes, hash = excluded.hash",
                )
                .bind(run_id)
                .bind(stage)
                .bind(&a.path)
                .bind(i64::try_from(a.bytes).unwrap_or(i64::MAX))
                .bind(&a.hash)
                .execute(&mut **t)
                .await
                .map_err(sql("insert artifact"))?;
            }
        });
        tx.commit("commit artifacts").await
    }

    /// The most recent successful execution of `stage` in pipeline `pipeline` (by name), if any:
    /// what `kiln status` compares against.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn last_execution(
        &self,
        pipeline: &str,
        stage: &str,
    ) -> Result<Option<StageExecution>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT s.fingerprint, s.fingerprint_input, s.run_id, s.ended_at
             FROM stage_runs s JOIN runs r ON r.id = s.run_id JOIN pipelines p ON p.id = r.pipeline_id
             WHERE p.name = $1 AND s.stage = $2 AND s.status IN ('succeeded', 'cached')
             ORDER BY s.id DESC LIMIT 1",
        )
        .bind(pipeline)
        .bind(stage)
        .fetch_optional(p)
        .await
        .map_err(sql("find last stage execution"))
        .map(|row| row.map(|r| StageExecution {
            fingerprint: r.get(0),
            fingerprint_input: r.get(1),
            run_id: r.get(2),
            ended_at: r.get(3),
        })))
    }

    /// What was recorded about run `run_id`, if it exists.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn recorded_run(&self, run_id: i64) -> Result<Option<RecordedRun>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT p.path, p.spec_hash, r.config, r.config_hash, r.experiment_id, r.trial,
                    r.git_commit, r.kiln_version
             FROM runs r JOIN pipelines p ON p.id = r.pipeline_id WHERE r.id = $1",
        )
        .bind(run_id)
        .fetch_optional(p)
        .await
        .map_err(sql("find run"))
        .map(|row| row.map(|r| RecordedRun {
            pipeline_path: r.get(0),
            spec_hash: r.get(1),
            config: r.get(2),
            config_hash: r.get(3),
            experiment_id: r.get(4),
            trial: r.get(5),
            git_commit: r.get(6),
            kiln_version: r.get(7),
        })))
    }

    /// The most recent runs, newest first. `final_metrics` is built here rather than taken
    /// from `run_summary`, whose text of a float is each database's own (`1.0` in SQLite,
    /// `1` in PostgreSQL): `kiln runs` reads the same from both.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        let mut runs: Vec<RunRow> = on_pool!(&self.pool, p => sqlx::query(
            "SELECT run_id, pipeline, status, started_at, ended_at, executed, cached, failed,
                    coalesce(params, '')
             FROM run_summary ORDER BY run_id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(p)
        .await
        .map_err(sql("list runs"))
        .map(|rows| rows
            .into_iter()
            .map(|r| RunRow {
                id: r.get(0),
                pipeline: r.get(1),
                status: r.get(2),
                started_at: r.get(3),
                ended_at: r.get(4),
                executed: r.get(5),
                cached: r.get(6),
                failed: r.get(7),
                params: r.get(8),
                final_metrics: String::new(),
            })
            .collect()))?;
        let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
        let mut finals: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (run, m) in self.final_metrics_of(&ids).await? {
            let value = m
                .value
                .map_or_else(|| "NaN".to_owned(), |v| format!("{v:?}"));
            finals
                .entry(run)
                .or_default()
                .push(format!("{}={value}", m.key()));
        }
        for run in &mut runs {
            run.final_metrics = finals.remove(&run.id).unwrap_or_default().join(" ");
        }
        Ok(runs)
    }

    /// All metric points of a run, in insertion order.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn metrics(&self, run_id: i64) -> Result<Vec<MetricPoint>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT run_id, stage, step, name, value, time FROM metrics WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(p)
        .await
        .map_err(sql("read metrics"))
        .map(|rows| rows
            .into_iter()
            .map(|r| MetricPoint {
                run_id: r.get(0),
                stage: r.get(1),
                step: r.get(2),
                name: r.get(3),
                value: r.get::<Option<f64>, _>(4).unwrap_or(f64::NAN),
                time: r.get(5),
            })
            .collect()))
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A pool on `location`: read-write (WAL, up to 4 connections) or read-only (one).
async fn connect(location: &Location, read_only: bool) -> Result<Pool> {
    let open_error = |source| Error::Open {
        url: location.display(),
        source,
    };
    let connections = if read_only { 1 } else { 4 };
    Ok(match location {
        Location::Sqlite(path) => {
            let options = sqlite_options(path)?;
            let options = if read_only {
                options.read_only(true).pragma("query_only", "ON")
            } else {
                options
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
            };
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(connections)
                    .connect_with(options)
                    .await
                    .map_err(open_error)?,
            )
        }
        Location::Postgres(url) => {
            let options = pg_options(url, location)?;
            let options = if read_only {
                options.options([("default_transaction_read_only", "on")])
            } else {
                options
            };
            // One connection first: its error says why (refused, unknown host, bad password);
            // a pool's first connect would only time out.
            use sqlx::Connection;
            sqlx::PgConnection::connect_with(&options)
                .await
                .map_err(open_error)?
                .close()
                .await
                .map_err(open_error)?;
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(connections)
                    .acquire_timeout(BUSY_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(open_error)?,
            )
        }
    })
}

/// SQLite's options for the file at `path`: busy timeout and foreign keys.
fn sqlite_options(path: &std::path::Path) -> Result<SqliteConnectOptions> {
    let url = format!("sqlite://{}", path.display());
    Ok(SqliteConnectOptions::from_str(&url)
        .map_err(|source| Error::Open { url, source })?
        .filename(path)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// PostgreSQL's options for `url`.
fn pg_options(url: &str, location: &Location) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|source| Error::Open {
        url: location.display(),
        source,
    })
}

/// The text and numeric columns of a parameter value.
fn param_columns(value: &serde_json::Value) -> (String, Option<f64>) {
    match value {
        serde_json::Value::String(s) => (s.clone(), s.parse::<f64>().ok()),
        serde_json::Value::Number(n) => (n.to_string(), n.as_f64()),
        serde_json::Value::Bool(b) => (b.to_string(), Some(f64::from(u8::from(*b)))),
        serde_json::Value::Null => ("null".to_owned(), None),
        other => (other.to_string(), None),
    }
}

/// Now, as the store writes timestamps: UTC, `YYYY-MM-DD HH:MM:SS.mmm`, which SQLite's date
/// functions read and which sorts as text.
pub fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

/// Seconds since the Unix epoch, as metric rows store time.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
