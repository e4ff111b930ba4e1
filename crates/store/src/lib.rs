//! kiln's results store: every run, parameter, metric, artifact and stage status, in SQLite.
//!
//! - [`Store`] opens (and migrates) a store from a path or `sqlite://` URL, with WAL and a
//!   busy timeout so several processes can write at once.
//! - [`MetricWriter`] is the one way metrics go in: rows are queued on a channel and written
//!   in batches, one transaction per batch, never one per metric.
//! - [`Store::query_read_only`] runs a user's SQL on a read-only connection (`kiln query`).
//!
//! ```no_run
//! # async fn demo() -> kiln_store::Result<()> {
//! let store = kiln_store::Store::open("results/kiln.sqlite").await?;
//! let result = store.query_read_only("SELECT * FROM run_summary").await?;
//! println!("{} rows", result.rows.len());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
mod gc;
mod hashes;
mod query;
mod records;
mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use error::{Error, Result};
pub use gc::{GcLock, GcRun, GcSnapshot, GcStageRef};
pub use hashes::FileHash;
pub use query::{Cell, QueryResult};
pub use records::{
    ArtifactRecord, MetricPoint, NewRun, NewStageRun, RecordedRun, RunRow, RunStatus,
    StageExecution, StageStatus,
};
pub use writer::MetricWriter;

use error::sql;

/// The default location of the store, relative to the project root.
pub const DEFAULT_STORE: &str = "results/kiln.sqlite";

/// How long a connection waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// The schema migrations, embedded at compile time and applied in order on open.
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
];

fn migrator() -> Migrator {
    let migrations: Vec<Migration> = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                Cow::Borrowed(*sql),
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

/// A handle on the results store. Cheap to clone (it wraps a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

/// Turns a `--store` argument (a path, or a `sqlite:` URL) into a file path.
///
/// # Errors
/// [`Error::UnsupportedUrl`] for other URL schemes (a Postgres backend is not built yet).
pub fn store_path(url: &str) -> Result<PathBuf> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let rest = rest.split('?').next().unwrap_or(rest);
        return Ok(PathBuf::from(rest));
    }
    if url.contains("://") {
        return Err(Error::UnsupportedUrl {
            url: url.to_owned(),
        });
    }
    Ok(PathBuf::from(url))
}

impl Store {
    /// Opens the store at `url` for reading and writing, creating it and applying migrations
    /// as needed.
    ///
    /// # Errors
    /// When the directory cannot be created, the file cannot be opened, or migrations fail.
    pub async fn open(url: &str) -> Result<Self> {
        let path = store_path(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let options = Self::options(&path)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| Error::Open {
                url: url.to_owned(),
                source,
            })?;
        migrator().run(&pool).await.map_err(Error::Migrate)?;
        Ok(Self { pool, path })
    }

    /// Opens an existing store read-only: every statement that would write fails.
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no store file yet.
    pub async fn open_read_only(url: &str) -> Result<Self> {
        let path = store_path(url)?;
        if !path.exists() {
            return Err(Error::Missing { path });
        }
        let options = Self::options(&path)?
            .read_only(true)
            .pragma("query_only", "ON");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| Error::Open {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self { pool, path })
    }

    fn options(path: &Path) -> Result<SqliteConnectOptions> {
        let url = format!("sqlite://{}", path.display());
        Ok(SqliteConnectOptions::from_str(&url)
            .map_err(|source| Error::Open { url, source })?
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true))
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying pool, for crates that add their own tables in later migrations.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
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
        sqlx::query("UPDATE experiments SET metric = ? WHERE id = ?")
            .bind(metric)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(sql("set experiment metric"))?;
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
        sqlx::query(&format!(
            "INSERT INTO {table} (name, path, spec_hash, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (name, path, spec_hash) DO NOTHING"
        ))
        .bind(name)
        .bind(path)
        .bind(spec_hash)
        .bind(now())
        .execute(&self.pool)
        .await
        .map_err(sql("insert spec row"))?;
        let row = sqlx::query(&format!(
            "SELECT id FROM {table} WHERE name = ? AND path = ? AND spec_hash = ?"
        ))
        .bind(name)
        .bind(path)
        .bind(spec_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(sql("find spec row"))?;
        Ok(row.get(0))
    }

    /// The experiment's trials that have a succeeded run: trial number → (config hash, run id).
    ///
    /// # Errors
    /// When the query fails.
    pub async fn succeeded_trials(
        &self,
        experiment_id: i64,
    ) -> Result<BTreeMap<i64, (String, i64)>> {
        let rows = sqlx::query(
            "SELECT trial, config_hash, max(id) FROM runs
             WHERE experiment_id = ? AND status = 'succeeded' AND trial IS NOT NULL
             GROUP BY trial, config_hash",
        )
        .bind(experiment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("find finished trials"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>(0),
                    (r.get::<String, _>(1), r.get::<i64, _>(2)),
                )
            })
            .collect())
    }

    /// Inserts a run (status `running`, with this process's id in `pid`) with its parameters
    /// and returns its id.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn begin_run(&self, run: &NewRun) -> Result<i64> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql("begin run"))?;
        let id: i64 = sqlx::query(
            "INSERT INTO runs (pipeline_id, experiment_id, trial, cargo_lock_hash, config_hash,
                               config, git_commit, git_dirty, kiln_version, seed, host, pid,
                               started_at, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running') RETURNING id",
        )
        .bind(run.pipeline_id)
        .bind(run.experiment_id)
        .bind(run.trial)
        .bind(&run.cargo_lock_hash)
        .bind(&run.config_hash)
        .bind(&run.config)
        .bind(&run.git_commit)
        .bind(run.git_dirty)
        .bind(&run.kiln_version)
        .bind(run.seed)
        .bind(&run.host)
        // The process that inserts the run is the one that executes it.
        .bind(i64::from(std::process::id()))
        .bind(now())
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("insert run"))?
        .get(0);
        for (key, value) in &run.params {
            let (text, num) = param_columns(value);
            sqlx::query("INSERT INTO params (run_id, key, value, value_num) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(key)
                .bind(text)
                .bind(num)
                .execute(&mut *tx)
                .await
                .map_err(sql("insert param"))?;
        }
        tx.commit().await.map_err(sql("commit run"))?;
        Ok(id)
    }

    /// Marks a run finished with `status`.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn finish_run(&self, run_id: i64, status: RunStatus) -> Result<()> {
        sqlx::query("UPDATE runs SET status = ?, ended_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(now())
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(sql("finish run"))?;
        Ok(())
    }

    /// Records a stage of a run in its first state and returns the row id.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn begin_stage(&self, stage: &NewStageRun) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO stage_runs (run_id, stage, kind, kind_version, fingerprint, fingerprint_input,
                                     cache_hit, status, started_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(stage.run_id)
        .bind(&stage.stage)
        .bind(&stage.kind)
        .bind(stage.kind_version)
        .bind(&stage.fingerprint)
        .bind(&stage.fingerprint_input)
        .bind(stage.cache_hit)
        .bind(stage.status.as_str())
        .bind(now())
        .fetch_one(&self.pool)
        .await
        .map_err(sql("insert stage run"))?;
        Ok(row.get(0))
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
        sqlx::query(
            "UPDATE stage_runs SET status = ?, ended_at = ?, duration_ms = ?, error = ?, log_path = ?
             WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(now())
        .bind(duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        .bind(error)
        .bind(log_path)
        .bind(stage_run_id)
        .execute(&self.pool)
        .await
        .map_err(sql("finish stage run"))?;
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
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql("begin artifacts"))?;
        for a in artifacts {
            sqlx::query(
                "INSERT INTO artifacts (run_id, stage, path, bytes, hash) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (run_id, stage, path) DO UPDATE SET bytes = excluded.bytes, hash = excluded.hash",
            )
            .bind(run_id)
            .bind(stage)
            .bind(&a.path)
            .bind(i64::try_from(a.bytes).unwrap_or(i64::MAX))
            .bind(&a.hash)
            .execute(&mut *tx)
            .await
            .map_err(sql("insert artifact"))?;
        }
        tx.commit().await.map_err(sql("commit artifacts"))?;
        Ok(())
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
        let row = sqlx::query(
            "SELECT s.fingerprint, s.fingerprint_input, s.run_id, s.ended_at
             FROM stage_runs s JOIN runs r ON r.id = s.run_id JOIN pipelines p ON p.id = r.pipeline_id
             WHERE p.name = ? AND s.stage = ? AND s.status IN ('succeeded', 'cached')
             ORDER BY s.id DESC LIMIT 1",
        )
        .bind(pipeline)
        .bind(stage)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("find last stage execution"))?;
        Ok(row.map(|r| StageExecution {
            fingerprint: r.get(0),
            fingerprint_input: r.get(1),
            run_id: r.get(2),
            ended_at: r.get(3),
        }))
    }

    /// What was recorded about run `run_id`, if it exists.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn recorded_run(&self, run_id: i64) -> Result<Option<RecordedRun>> {
        let row = sqlx::query(
            "SELECT p.path, p.spec_hash, r.config, r.config_hash, r.experiment_id, r.trial,
                    r.git_commit, r.kiln_version
             FROM runs r JOIN pipelines p ON p.id = r.pipeline_id WHERE r.id = ?",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("find run"))?;
        Ok(row.map(|r| RecordedRun {
            pipeline_path: r.get(0),
            spec_hash: r.get(1),
            config: r.get(2),
            config_hash: r.get(3),
            experiment_id: r.get(4),
            trial: r.get(5),
            git_commit: r.get(6),
            kiln_version: r.get(7),
        }))
    }

    /// The most recent runs, newest first.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(
            "SELECT run_id, pipeline, status, started_at, ended_at, executed, cached, failed,
                    coalesce(params, ''), coalesce(final_metrics, '')
             FROM run_summary ORDER BY run_id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("list runs"))?;
        Ok(rows
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
                final_metrics: r.get(9),
            })
            .collect())
    }

    /// All metric points of a run, in insertion order.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn metrics(&self, run_id: i64) -> Result<Vec<MetricPoint>> {
        let rows = sqlx::query(
            "SELECT run_id, stage, step, name, value, time FROM metrics WHERE run_id = ? ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("read metrics"))?;
        Ok(rows
            .into_iter()
            .map(|r| MetricPoint {
                run_id: r.get(0),
                stage: r.get(1),
                step: r.get(2),
                name: r.get(3),
                value: r.get::<Option<f64>, _>(4).unwrap_or(f64::NAN),
                time: r.get(5),
            })
            .collect())
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
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
