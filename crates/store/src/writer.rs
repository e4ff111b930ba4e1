//! The batched metric writer.
//!
//! Stages emit metrics from any thread; each point goes onto an unbounded channel (a send
//! never blocks a training step). One task owns the receiving end and writes whatever has
//! queued up as one transaction: multi-row `INSERT`s into `metrics` (up to
//! [`ROWS_PER_STATEMENT`] rows each) plus one upsert per (run, stage, metric) into
//! `metric_last`, which keeps the point with the highest step. A batch is written as soon as
//! the task wakes and finds rows, so latency stays low when metrics trickle in and batches
//! grow by themselves when they pour in. `BEGIN IMMEDIATE` takes the write lock up front,
//! so concurrent writers queue on SQLite's busy timeout instead of failing with
//! "database is locked" on a lock upgrade.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result, sql};
use crate::records::MetricPoint;

/// Rows per multi-row `INSERT` (6 bound values each, under SQLite's 32,766 limit).
pub const ROWS_PER_STATEMENT: usize = 4096;

/// Most rows taken into one transaction.
const MAX_BATCH: usize = 50_000;

enum Msg {
    Point(MetricPoint),
    Flush(oneshot::Sender<Result<()>>),
}

/// A handle to the batched writer task. Clone it freely; [`MetricWriter::close`] waits for
/// everything queued to be written.
#[derive(Debug, Clone)]
pub struct MetricWriter {
    tx: mpsc::UnboundedSender<Msg>,
    task: std::sync::Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<Result<()>>>>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Point(p) => write!(f, "Point({p:?})"),
            Self::Flush(_) => write!(f, "Flush"),
        }
    }
}

impl MetricWriter {
    pub(crate) fn spawn(pool: SqlitePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(pool, rx));
        Self {
            tx,
            task: std::sync::Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    /// Queues one point. Never blocks; callable from any thread.
    ///
    /// # Errors
    /// [`Error::WriterClosed`] when the writer task has stopped (after an SQL error or close).
    pub fn send(&self, point: MetricPoint) -> Result<()> {
        self.tx
            .send(Msg::Point(point))
            .map_err(|_| Error::WriterClosed)
    }

    /// Waits until every point queued before this call is committed.
    ///
    /// # Errors
    /// The error of a failed batch, or [`Error::WriterClosed`].
    pub async fn flush(&self) -> Result<()> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(ack))
            .map_err(|_| Error::WriterClosed)?;
        done.await.map_err(|_| Error::WriterClosed)?
    }

    /// Flushes and stops the writer task.
    ///
    /// # Errors
    /// The error of a failed batch.
    pub async fn close(&self) -> Result<()> {
        let flushed = self.flush().await;
        let handle = self.task.lock().await.take();
        if let Some(handle) = handle {
            handle.abort();
            let _ = handle.await;
        }
        flushed
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Msg>) -> Result<()> {
    let mut batch: Vec<MetricPoint> = Vec::new();
    let mut acks: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Drain whatever else is already queued, up to the batch limit.
        while let Some(msg) = next.take() {
            match msg {
                Msg::Point(p) => batch.push(p),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            write_batch(&pool, &batch).await
        };
        batch.clear();
        let failed = result.as_ref().err().map(ToString::to_string);
        for ack in acks.drain(..) {
            let _ = ack.send(match &failed {
                None => Ok(()),
                Some(message) => Err(Error::Query {
                    message: message.clone(),
                }),
            });
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "metric writer stopped");
            return Err(e);
        }
    }
    Ok(())
}

/// Writes one batch in one transaction.
pub(crate) async fn write_batch(pool: &SqlitePool, batch: &[MetricPoint]) -> Result<()> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin metric batch"))?;
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO metrics (run_id, stage, step, name, value, time) ");
        q.push_values(chunk, |mut b, p| {
            b.push_bind(p.run_id)
                .push_bind(&p.stage)
                .push_bind(p.step)
                .push_bind(&p.name)
                .push_bind(finite_or_null(p.value))
                .push_bind(p.time);
        });
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(sql("insert metrics"))?;
    }
    // The last point per key within this batch (highest step; later wins a tie).
    let mut last: HashMap<(i64, &str, &str), &MetricPoint> = HashMap::new();
    for p in batch {
        last.entry((p.run_id, &p.stage, &p.name))
            .and_modify(|cur| {
                if p.step >= cur.step {
                    *cur = p;
                }
            })
            .or_insert(p);
    }
    let lasts: Vec<&MetricPoint> = last.into_values().collect();
    for chunk in lasts.chunks(ROWS_PER_STATEMENT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO metric_last (run_id, stage, name, step, value, time) ");
        q.push_values(chunk, |mut b, p| {
            b.push_bind(p.run_id)
                .push_bind(&p.stage)
                .push_bind(&p.name)
                .push_bind(p.step)
                .push_bind(finite_or_null(p.value))
                .push_bind(p.time);
        });
        q.push(
            " ON CONFLICT (run_id, stage, name) DO UPDATE SET step = excluded.step,
              value = excluded.value, time = excluded.time WHERE excluded.step >= metric_last.step",
        );
        q.build()
            .execute(&mut *tx)
            .await
            .map_err(sql("update last metric values"))?;
    }
    tx.commit().await.map_err(sql("commit metric batch"))?;
    Ok(())
}

fn finite_or_null(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}
