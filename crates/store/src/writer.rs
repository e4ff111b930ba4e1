//! The batched metric writer.
//!
//! Stages emit metrics from any thread; each point goes onto an unbounded channel (a send
//! never blocks a training step). One task owns the receiving end and writes whatever has
//! queued up as one transaction: multi-row `INSERT`s into `metrics` (up to
//! [`ROWS_PER_STATEMENT`] rows each) plus one upsert per (run, stage, metric) into
//! `metric_last`, which keeps the point with the highest step. A batch is written as soon as
//! the task wakes and finds rows, so latency stays low when metrics trickle in and batches
//! grow by themselves when they pour in. On SQLite, `BEGIN IMMEDIATE` takes the write lock
//! up front, so concurrent writers queue on the busy timeout instead of failing with
//! "database is locked" on a lock upgrade. On PostgreSQL the points go in with `COPY`.

use std::collections::HashMap;

use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Pool, Tx, on_tx};
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
    pub(crate) fn spawn(pool: Pool) -> Self {
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

async fn run(pool: Pool, mut rx: mpsc::UnboundedReceiver<Msg>) -> Result<()> {
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

/// Writes one batch in one transaction: the points (a multi-row `INSERT` on SQLite, `COPY` on
/// PostgreSQL), then the last value of each (run, stage, metric).
pub(crate) async fn write_batch(pool: &Pool, batch: &[MetricPoint]) -> Result<()> {
    let mut tx = pool.begin_write("begin metric batch").await?;
    match &mut tx {
        Tx::Sqlite(t) => insert_points(t, batch).await?,
        Tx::Postgres(t) => copy_points(t, batch).await?,
    }
    // The last point per key within this batch (highest step; later wins a tie). One row
    // per key: PostgreSQL refuses an upsert that touches a row twice.
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
        on_tx!(&mut tx, t => {
            let mut q = QueryBuilder::new(
                "INSERT INTO metric_last (run_id, stage, name, step, value, time) ",
            );
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
                  value = excluded.value, time = excluded.time
                  WHERE excluded.step >= metric_last.step",
            );
            q.build()
                .execute(&mut **t)
                .await
                .map_err(sql("update last metric values"))?;
        });
    }
    tx.commit("commit metric batch").await
}

/// SQLite: multi-row `INSERT`s of up to [`ROWS_PER_STATEMENT`] rows.
async fn insert_points(t: &mut Transaction<'static, Sqlite>, batch: &[MetricPoint]) -> Result<()> {
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
            .execute(&mut **t)
            .await
            .map_err(sql("insert metrics"))?;
    }
    Ok(())
}

/// PostgreSQL: one `COPY … FROM STDIN` in text format (several times faster than inserts).
async fn copy_points(t: &mut Transaction<'static, Postgres>, batch: &[MetricPoint]) -> Result<()> {
    let mut text = String::with_capacity(batch.len() * 48);
    for p in batch {
        use std::fmt::Write;
        let _ = write!(text, "{}\t", p.run_id);
        copy_text(&mut text, &p.stage);
        let _ = write!(text, "\t{}\t", p.step);
        copy_text(&mut text, &p.name);
        text.push('\t');
        copy_float(&mut text, p.value);
        text.push('\t');
        copy_float(&mut text, p.time);
        text.push('\n');
    }
    let mut copy = t
        .copy_in_raw("COPY metrics (run_id, stage, step, name, value, time) FROM STDIN")
        .await
        .map_err(sql("start copying metrics"))?;
    copy.send(text.into_bytes())
        .await
        .map_err(sql("copy metrics"))?;
    copy.finish().await.map_err(sql("finish copying metrics"))?;
    Ok(())
}

/// A text field in `COPY`'s text format: backslash, tab, newline and carriage return escaped.
pub(crate) fn copy_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// A float in `COPY`'s text format: NaN as NULL (as the inserts store it), infinities by
/// name, the rest as the shortest text that reads back to the same bits.
pub(crate) fn copy_float(out: &mut String, v: f64) {
    use std::fmt::Write;
    if v.is_nan() {
        out.push_str("\\N");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let _ = write!(out, "{v:e}");
    }
}

fn finite_or_null(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = String::new();
        copy_text(&mut out, "a\tb\nc\\d\re");
        assert_eq!(out, "a\\tb\\nc\\\\d\\re");
    }

    #[test]
    fn copy_floats_read_back_to_the_same_bits() {
        for v in [
            0.1,
            -2.5e-300,
            1e300,
            0.0,
            -0.0,
            123456.789,
            f64::MIN_POSITIVE,
        ] {
            let mut out = String::new();
            copy_float(&mut out, v);
            let back: f64 = out.parse().expect("a float");
            assert_eq!(back.to_bits(), v.to_bits(), "{v} as {out}");
        }
        let mut out = String::new();
        copy_float(&mut out, f64::NAN);
        copy_float(&mut out, f64::NEG_INFINITY);
        assert_eq!(out, "\\N-Infinity");
    }
}
