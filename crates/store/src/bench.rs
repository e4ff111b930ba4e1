//! Benchmark figures (`kiln bench suite`) and the machines they were measured on
//! (migration 7).

use sqlx::Row;

use crate::backend::on_pool;
use crate::error::{Result, sql};
use crate::{Store, now};

/// What identifies a machine for benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// blake3 of the other fields.
    pub fingerprint: String,
    /// The CPU's model name.
    pub cpu_model: String,
    /// The SIMD flags kernels choose by, space-separated.
    pub cpu_flags: String,
    /// Cores kiln may use.
    pub cores: i64,
    /// Memory, GiB.
    pub memory_gib: i64,
    /// GPU names, or `none`.
    pub gpu: String,
}

/// One figure to record.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchFigure {
    /// The benchmark.
    pub name: String,
    /// The median of the repeats.
    pub value: f64,
    /// `tok/s`, `ms`, …
    pub unit: String,
    /// The median absolute deviation of the repeats.
    pub spread: f64,
    /// How many repeats.
    pub repeats: i64,
    /// Whether more is better (rates) or less (times).
    pub higher_is_better: bool,
    /// The same figure of a peer tool, measured in the same run.
    pub peer: Option<PeerFigure>,
}

/// A peer tool's figure beside kiln's (`kiln bench suite --peers`).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerFigure {
    /// The peer: `pytorch-eager`, `transformers-generate`, …
    pub name: String,
    /// The median of its repeats.
    pub value: f64,
    /// Their median absolute deviation.
    pub spread: f64,
}

impl BenchFigure {
    /// kiln against its peer, above 1 when kiln is better: `value / peer` for rates,
    /// `peer / value` for times and memory. `None` without a peer or with a zero.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        let peer = self.peer.as_ref()?;
        let (num, den) = if self.higher_is_better {
            (self.value, peer.value)
        } else {
            (peer.value, self.value)
        };
        (den > 0.0).then(|| num / den)
    }
}

/// One recorded figure with its machine, as the history page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// `cpu_model, N cores, M GiB, gpu` and the fingerprint's first 8 digits.
    pub machine: String,
    /// The benchmark.
    pub name: String,
    /// The median.
    pub value: f64,
    /// The spread.
    pub spread: f64,
    /// Its unit.
    pub unit: String,
    /// Whether more is better.
    pub higher_is_better: bool,
    /// When (UTC).
    pub at: String,
    /// The commit measured.
    pub git_commit: Option<String>,
    /// The peer measured in the same run, and kiln's ratio to it (above 1: kiln better).
    pub peer: Option<(PeerFigure, f64)>,
}

impl Store {
    /// Every recorded figure, by machine and benchmark, oldest first.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn bench_rows(&self) -> Result<Vec<BenchRow>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT m.cpu_model, m.cores, m.memory_gib, m.gpu, m.fingerprint, b.name, b.value,
                    b.spread, b.unit, b.higher_is_better, b.at, b.git_commit,
                    b.peer, b.peer_value, b.peer_spread, b.ratio
             FROM bench_results b JOIN machines m ON m.id = b.machine_id
             ORDER BY m.id, b.name, b.id",
        )
        .fetch_all(p)
        .await
        .map_err(sql("read benchmark figures"))
        .map(|rows| rows.into_iter().map(|r| {
            let fingerprint: String = r.get(4);
            BenchRow {
                machine: format!(
                    "{}, {} cores, {} GiB, GPU {} ({})",
                    r.get::<String, _>(0),
                    r.get::<i64, _>(1),
                    r.get::<i64, _>(2),
                    r.get::<String, _>(3),
                    &fingerprint[..fingerprint.len().min(8)]
                ),
                name: r.get(5),
                value: r.get(6),
                spread: r.get(7),
                unit: r.get(8),
                higher_is_better: r.get::<i64, _>(9) != 0,
                at: r.get(10),
                git_commit: r.get(11),
                peer: match (
                    r.get::<Option<String>, _>(12),
                    r.get::<Option<f64>, _>(13),
                    r.get::<Option<f64>, _>(14),
                    r.get::<Option<f64>, _>(15),
                ) {
                    (Some(name), Some(value), Some(spread), Some(ratio)) => {
                        Some((PeerFigure { name, value, spread }, ratio))
                    }
                    _ => None,
                },
            }
        }).collect()))
    }

    /// The id of `machine`'s row, inserting it if new.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn machine_id(&self, machine: &Machine) -> Result<i64> {
        on_pool!(&self.pool, p => {
            sqlx::query(
                "INSERT INTO machines (fingerprint, cpu_model, cpu_flags, cores, memory_gib, gpu, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (fingerprint) DO NOTHING",
            )
            .bind(&machine.fingerprint)
            .bind(&machine.cpu_model)
            .bind(&machine.cpu_flags)
            .bind(machine.cores)
            .bind(machine.memory_gib)
            .bind(&machine.gpu)
            .bind(now())
            .execute(p)
            .await
            .map_err(sql("record a machine"))?;
            sqlx::query("SELECT id FROM machines WHERE fingerprint = $1")
                .bind(&machine.fingerprint)
                .fetch_one(p)
                .await
                .map_err(sql("find a machine"))
                .map(|r| r.get::<i64, _>(0))
        })
    }

    /// Records one suite run's figures.
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn record_bench(
        &self,
        suite: &str,
        machine_id: i64,
        kiln_version: &str,
        git_commit: Option<&str>,
        figures: &[BenchFigure],
    ) -> Result<()> {
        let mut tx = self.pool.begin_write("begin recording benchmarks").await?;
        let at = now();
        crate::backend::on_tx!(&mut tx, t => {
            for f in figures {
                sqlx::query(
                    "INSERT INTO bench_results (suite, machine_id, name, value, unit, spread, repeats,
                                                higher_is_better, kiln_version, git_commit, at,
                                                peer, peer_value, peer_spread, ratio)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .bind(suite)
                .bind(machine_id)
                .bind(&f.name)
                .bind(f.value)
                .bind(&f.unit)
                .bind(f.spread)
                .bind(f.repeats)
                .bind(i64::from(f.higher_is_better))
                .bind(kiln_version)
                .bind(git_commit)
                .bind(&at)
                .bind(f.peer.as_ref().map(|p| p.name.as_str()))
                .bind(f.peer.as_ref().map(|p| p.value))
                .bind(f.peer.as_ref().map(|p| p.spread))
                .bind(f.ratio())
                .execute(&mut **t)
                .await
                .map_err(sql("record a benchmark figure"))?;
            }
        });
        tx.commit("commit benchmark figures").await
    }

    /// The latest `limit` figures of benchmark `name` on machine `machine_id`, oldest first:
    /// (value, spread).
    ///
    /// # Errors
    /// When the query fails.
    pub async fn bench_history(
        &self,
        machine_id: i64,
        name: &str,
        limit: i64,
    ) -> Result<Vec<(f64, f64)>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT value, spread FROM bench_results WHERE machine_id = $1 AND name = $2
             ORDER BY id DESC LIMIT $3",
        )
        .bind(machine_id)
        .bind(name)
        .bind(limit)
        .fetch_all(p)
        .await
        .map_err(sql("read a benchmark's history"))
        .map(|rows| rows
            .into_iter()
            .rev()
            .map(|r| (r.get::<f64, _>(0), r.get::<f64, _>(1)))
            .collect()))
    }
}
