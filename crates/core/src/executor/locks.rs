//! Stage locks across processes: before executing a stage, a run takes the store's lock on
//! its fingerprint, so two runs (sweep lanes, Slurm array tasks on any node) never execute
//! the same stage at once; the one that waits then finds the other's cache entry.
//!
//! A holder counts as dead, and its lock is reclaimed, when it ran on this host and its
//! process is gone, or when its heartbeat is older than [`STALE_AFTER`] (a node that died).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_store::{LockAttempt, LockHolder, Store};

use crate::cache::process_alive;
use crate::error::Result;

/// How often a held lock's heartbeat is refreshed.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

/// A lock whose heartbeat is older than this is taken over (seconds).
pub const STALE_AFTER: f64 = 120.0;

/// This run's stage locks.
pub(super) struct StageLocks {
    store: Option<Store>,
    host: String,
    holder: String,
    run_id: Option<i64>,
    held: Arc<Mutex<BTreeSet<String>>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl StageLocks {
    pub fn new(store: Option<Store>, host: &str, run_id: Option<i64>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let holder = format!(
            "{host}:{}:{}:{n}",
            std::process::id(),
            run_id.map_or_else(|| "-".to_owned(), |r| r.to_string())
        );
        let held: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let heartbeat = store.clone().map(|store| {
            let (held, holder) = (held.clone(), holder.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT_EVERY).await;
                    let fingerprints: Vec<String> = held
                        .lock()
                        .map(|h| h.iter().cloned().collect())
                        .unwrap_or_default();
                    for fp in fingerprints {
                        if let Err(e) = store.heartbeat_stage_lock(&fp, &holder).await {
                            tracing::warn!(error = %e, "cannot refresh a stage lock");
                        }
                    }
                }
            })
        });
        Self {
            store,
            host: host.to_owned(),
            holder,
            run_id,
            held,
            heartbeat,
        }
    }

    /// Takes the lock on `fingerprint`, reclaiming it from a dead holder. `Some(holder)` when
    /// a live run holds it; `None` when it is ours (or there is no store to coordinate
    /// through).
    pub async fn acquire(&self, fingerprint: &str) -> Result<Option<LockHolder>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        for _ in 0..2 {
            match store
                .try_lock_stage(fingerprint, &self.holder, &self.host, self.run_id)
                .await?
            {
                LockAttempt::Acquired => {
                    if let Ok(mut held) = self.held.lock() {
                        held.insert(fingerprint.to_owned());
                    }
                    return Ok(None);
                }
                LockAttempt::Held(holder) if self.is_dead(&holder) => {
                    tracing::info!(holder = %holder.holder, fingerprint, "reclaiming a dead run's stage lock");
                    store.unlock_stage(fingerprint, &holder.holder).await?;
                }
                LockAttempt::Held(holder) => return Ok(Some(holder)),
            }
        }
        // Reclaimed, and another run took it first: wait for that one like for any holder.
        Ok(Some(LockHolder {
            holder: "another run".to_owned(),
            host: String::new(),
            pid: 0,
            run_id: None,
            heartbeat: kiln_store::unix_now(),
        }))
    }

    /// Releases the lock on `fingerprint` if this run holds it.
    pub async fn release(&self, fingerprint: &str) -> Result<()> {
        let was_held = self
            .held
            .lock()
            .map(|mut h| h.remove(fingerprint))
            .unwrap_or(false);
        if let (Some(store), true) = (&self.store, was_held) {
            store.unlock_stage(fingerprint, &self.holder).await?;
        }
        Ok(())
    }

    fn is_dead(&self, holder: &LockHolder) -> bool {
        let gone = holder.host == self.host
            && u32::try_from(holder.pid).is_ok_and(|pid| !process_alive(pid));
        gone || kiln_store::unix_now() - holder.heartbeat > STALE_AFTER
    }
}

impl Drop for StageLocks {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
    }
}
