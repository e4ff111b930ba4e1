//! Stage locks: one row per stage fingerprint being executed (see migration 6). The store
//! only keeps the rows; when a holder counts as dead is the engine's call.

use sqlx::Row;

use crate::backend::on_pool;
use crate::error::{Result, sql};
use crate::{Store, now, unix_now};

/// Who holds a stage lock.
#[derive(Debug, Clone, PartialEq)]
pub struct LockHolder {
    /// Unique per acquisition (host, pid and run).
    pub holder: String,
    /// The holder's host.
    pub host: String,
    /// The holder's process.
    pub pid: i64,
    /// The run it executes the stage for.
    pub run_id: Option<i64>,
    /// Its last heartbeat, seconds since the Unix epoch.
    pub heartbeat: f64,
}

/// What an attempt to take a stage lock found.
#[derive(Debug, Clone, PartialEq)]
pub enum LockAttempt {
    /// The lock is ours now.
    Acquired,
    /// Someone else holds it.
    Held(LockHolder),
}

impl Store {
    /// Takes the lock on `fingerprint` for `holder` if nobody holds it.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn try_lock_stage(
        &self,
        fingerprint: &str,
        holder: &str,
        host: &str,
        run_id: Option<i64>,
    ) -> Result<LockAttempt> {
        on_pool!(&self.pool, p => {
            sqlx::query(
                "INSERT INTO stage_locks (fingerprint, holder, host, pid, run_id, acquired_at, heartbeat)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(fingerprint)
            .bind(holder)
            .bind(host)
            .bind(i64::from(std::process::id()))
            .bind(run_id)
            .bind(now())
            .bind(unix_now())
            .execute(p)
            .await
            .map_err(sql("take a stage lock"))?;
            let row = sqlx::query(
                "SELECT holder, host, pid, run_id, heartbeat FROM stage_locks WHERE fingerprint = $1",
            )
            .bind(fingerprint)
            .fetch_optional(p)
            .await
            .map_err(sql("read a stage lock"))?;
            Ok(match row {
                // Released between the two statements: try again next time.
                None => LockAttempt::Held(LockHolder {
                    holder: String::new(),
                    host: String::new(),
                    pid: 0,
                    run_id: None,
                    heartbeat: unix_now(),
                }),
                Some(r) if r.get::<String, _>(0) == holder => LockAttempt::Acquired,
                Some(r) => LockAttempt::Held(LockHolder {
                    holder: r.get(0),
                    host: r.get(1),
                    pid: r.get(2),
                    run_id: r.get(3),
                    heartbeat: r.get(4),
                }),
            })
        })
    }

    /// Refreshes the heartbeat of a lock `holder` holds. `false` when it no longer does (it
    /// was reclaimed).
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn heartbeat_stage_lock(&self, fingerprint: &str, holder: &str) -> Result<bool> {
        on_pool!(&self.pool, p => sqlx::query(
            "UPDATE stage_locks SET heartbeat = $1 WHERE fingerprint = $2 AND holder = $3",
        )
        .bind(unix_now())
        .bind(fingerprint)
        .bind(holder)
        .execute(p)
        .await
        .map_err(sql("refresh a stage lock"))
        .map(|done| done.rows_affected() == 1))
    }

    /// Releases (or reclaims) the lock on `fingerprint` if `holder` still holds it. `true`
    /// when a row was removed.
    ///
    /// # Errors
    /// When the statement fails.
    pub async fn unlock_stage(&self, fingerprint: &str, holder: &str) -> Result<bool> {
        on_pool!(&self.pool, p => sqlx::query(
            "DELETE FROM stage_locks WHERE fingerprint = $1 AND holder = $2",
        )
        .bind(fingerprint)
        .bind(holder)
        .execute(p)
        .await
        .map_err(sql("release a stage lock"))
        .map(|done| done.rows_affected() == 1))
    }
}
