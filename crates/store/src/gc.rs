//! What `kiln gc` reads from the store: which runs exist, which fingerprints each one
//! references, and when each fingerprint was last used.
//!
//! gc reads a [`GcSnapshot`] twice: once freely to work out what it could remove, then again
//! under a [`GcLock`] (SQLite's write lock; on PostgreSQL a lock on `runs` that blocks
//! inserts) while it moves what it removes out of the way. A
//! run inserts its row ([`crate::Store::begin_run`]) before it looks anything up in the
//! cache, and that insert waits for the lock; so every run that could use an entry either
//! shows up in the locked snapshot or starts after the entry is gone (and executes the stage
//! again).

use sqlx::Row;

use crate::Store;
use crate::backend::{Tx, on_tx};
use crate::error::{Result, sql};

/// A run, as gc weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcRun {
    /// The run's id (runs are numbered in the order they started).
    pub id: i64,
    /// Its pipeline's name.
    pub pipeline: String,
    /// blake3 of its resolved configuration.
    pub config_hash: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    /// The host it ran on.
    pub host: String,
    /// The process that executed it, when recorded.
    pub pid: Option<i64>,
    /// Its resolved configuration (JSON); only read for runs still `running`.
    pub config: Option<String>,
}

/// One stage of one run: the fingerprint it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcStageRef {
    /// The run.
    pub run_id: i64,
    /// The stage's fingerprint.
    pub fingerprint: String,
    /// Its log: in the cache entry, or in `results/failed/…` for a failed stage.
    pub log_path: Option<String>,
}

/// Everything gc needs from the store, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct GcSnapshot {
    /// Every run, oldest first.
    pub runs: Vec<GcRun>,
    /// Every (run, fingerprint) a stage row records.
    pub stages: Vec<GcStageRef>,
    /// For each recorded fingerprint, the latest time a stage with it started or ended
    /// (UTC, `YYYY-MM-DD HH:MM:SS.mmm`).
    pub last_used: Vec<(String, String)>,
}

/// The store's write lock, held while gc removes what it found unused. Runs that start
/// meanwhile wait (up to the busy timeout) to insert their row. Dropping it releases the
/// lock too.
#[derive(Debug)]
pub struct GcLock {
    tx: Tx,
}

impl GcLock {
    /// Reads the snapshot under the lock.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn snapshot(&mut self) -> Result<GcSnapshot> {
        read_snapshot(&mut self.tx).await
    }

    /// Releases the lock (nothing was written).
    ///
    /// # Errors
    /// When the transaction cannot end.
    pub async fn release(self) -> Result<()> {
        self.tx.commit("release the gc lock").await
    }
}

impl Store {
    /// Reads gc's snapshot without locking anything.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn gc_snapshot(&self) -> Result<GcSnapshot> {
        let mut tx = self.pool.begin_read("begin gc read").await?;
        let snapshot = read_snapshot(&mut tx).await?;
        tx.commit("end gc read").await?;
        Ok(snapshot)
    }

    /// Takes the store's write lock for gc (see [`GcLock`]).
    ///
    /// # Errors
    /// When the lock cannot be had within the busy timeout.
    pub async fn gc_lock(&self) -> Result<GcLock> {
        let mut tx = self.pool.begin_write("take the gc lock").await?;
        if let Tx::Postgres(t) = &mut tx {
            // Conflicts with the row lock every INSERT takes: runs cannot begin meanwhile.
            sqlx::query("LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut **t)
                .await
                .map_err(sql("take the gc lock"))?;
        }
        Ok(GcLock { tx })
    }
}

async fn read_snapshot(tx: &mut Tx) -> Result<GcSnapshot> {
    on_tx!(tx, t => {
        let runs = sqlx::query(
            "SELECT r.id, p.name, r.config_hash, r.status, r.host, r.pid,
                    CASE WHEN r.status = 'running' THEN r.config END
             FROM runs r JOIN pipelines p ON p.id = r.pipeline_id
             ORDER BY r.id",
        )
        .fetch_all(&mut **t)
        .await
        .map_err(sql("read runs for gc"))?
        .into_iter()
        .map(|r| GcRun {
            id: r.get(0),
            pipeline: r.get(1),
            config_hash: r.get(2),
            status: r.get(3),
            host: r.get(4),
            pid: r.get(5),
            config: r.get(6),
        })
        .collect();
        let stages = sqlx::query("SELECT DISTINCT run_id, fingerprint, log_path FROM stage_runs")
            .fetch_all(&mut **t)
            .await
            .map_err(sql("read stage fingerprints for gc"))?
            .into_iter()
            .map(|r| GcStageRef {
                run_id: r.get(0),
                fingerprint: r.get(1),
                log_path: r.get(2),
            })
            .collect();
        let last_used = sqlx::query(
            "SELECT fingerprint, max(coalesce(ended_at, started_at)) FROM stage_runs
             WHERE coalesce(ended_at, started_at) IS NOT NULL GROUP BY fingerprint",
        )
        .fetch_all(&mut **t)
        .await
        .map_err(sql("read last uses for gc"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        Ok(GcSnapshot {
            runs,
            stages,
            last_used,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewRun, NewStageRun, RunStatus, StageStatus};

    #[tokio::test]
    async fn snapshot_reads_runs_stages_and_pids() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("s.sqlite").to_string_lossy())
            .await
            .expect("open");
        let pipeline_id = store
            .pipeline_id("p", "p.yaml", "h")
            .await
            .expect("pipeline");
        let new = |config: &str| NewRun {
            pipeline_id,
            config_hash: "c".into(),
            config: config.into(),
            host: "here".into(),
            ..NewRun::default()
        };
        let done = store.begin_run(&new("{\"a\":1}")).await.expect("run");
        store
            .finish_run(done, RunStatus::Succeeded)
            .await
            .expect("finish");
        let running = store.begin_run(&new("{\"b\":2}")).await.expect("run");
        for (run_id, fp) in [(done, "f1"), (running, "f2")] {
            store
                .begin_stage(&NewStageRun {
                    run_id,
                    stage: "s".into(),
                    kind: "shell".into(),
                    kind_version: 1,
                    fingerprint: fp.into(),
                    fingerprint_input: "{}".into(),
                    cache_hit: false,
                    status: StageStatus::Running,
                })
                .await
                .expect("stage");
        }
        let mut lock = store.gc_lock().await.expect("lock");
        let snap = lock.snapshot().await.expect("snapshot");
        lock.release().await.expect("release");
        let pid = Some(i64::from(std::process::id()));
        assert_eq!(snap.runs.len(), 2);
        assert_eq!(
            (
                snap.runs[0].id,
                snap.runs[0].status.as_str(),
                snap.runs[0].pid
            ),
            (done, "succeeded", pid)
        );
        assert_eq!(
            snap.runs[0].config, None,
            "only running runs bring their plan"
        );
        assert_eq!(snap.runs[1].config.as_deref(), Some("{\"b\":2}"));
        assert_eq!(snap.runs[1].pipeline, "p");
        let mut fps: Vec<(i64, String)> = snap
            .stages
            .iter()
            .map(|s| (s.run_id, s.fingerprint.clone()))
            .collect();
        fps.sort();
        assert_eq!(fps, vec![(done, "f1".into()), (running, "f2".into())]);
        assert_eq!(snap.last_used.len(), 2);
        // The lock is released: a run can begin again.
        store
            .begin_run(&new("{}"))
            .await
            .expect("run after the lock");
    }
}
