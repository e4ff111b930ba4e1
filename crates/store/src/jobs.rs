//! The jobs an executor submitted for an experiment's trials (migration 6).

use sqlx::Row;

use crate::backend::{on_pool, on_tx};
use crate::error::{Result, sql};
use crate::{Store, now};

/// One submitted job: a trial and the scheduler's id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorJob {
    /// The trial.
    pub trial: i64,
    /// `slurm`.
    pub executor: String,
    /// The scheduler's id (`1234_5` for a Slurm array task).
    pub job_id: String,
    /// When it was submitted (UTC).
    pub submitted_at: String,
}

impl Store {
    /// Records the jobs just submitted for `experiment_id`: (trial, job id).
    ///
    /// # Errors
    /// When a statement fails.
    pub async fn record_jobs(
        &self,
        experiment_id: i64,
        executor: &str,
        jobs: &[(i64, String)],
    ) -> Result<()> {
        let mut tx = self.pool.begin_write("begin recording jobs").await?;
        let at = now();
        on_tx!(&mut tx, t => {
            for (trial, job_id) in jobs {
                sqlx::query(
                    "INSERT INTO executor_jobs (experiment_id, trial, executor, job_id, submitted_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(experiment_id)
                .bind(trial)
                .bind(executor)
                .bind(job_id)
                .bind(&at)
                .execute(&mut **t)
                .await
                .map_err(sql("record a job"))?;
            }
        });
        tx.commit("commit recorded jobs").await
    }

    /// Every job submitted for `experiment_id`, oldest first.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn executor_jobs(&self, experiment_id: i64) -> Result<Vec<ExecutorJob>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT trial, executor, job_id, submitted_at FROM executor_jobs
             WHERE experiment_id = $1 ORDER BY id",
        )
        .bind(experiment_id)
        .fetch_all(p)
        .await
        .map_err(sql("read an experiment's jobs"))
        .map(|rows| rows.into_iter().map(|r| ExecutorJob {
            trial: r.get(0),
            executor: r.get(1),
            job_id: r.get(2),
            submitted_at: r.get(3),
        }).collect()))
    }
}
