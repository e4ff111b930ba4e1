//! Typed answers to the questions the CLI and the report ask of the store, so that no SQL
//! lives outside this crate and no caller picks result cells by position.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::backend::on_pool;
use crate::error::{Result, sql};
use crate::{ArtifactRecord, Store};

/// An experiment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentInfo {
    /// Its id.
    pub id: i64,
    /// The experiment's name.
    pub name: String,
    /// The experiment file's path, as given when it was first run.
    pub path: String,
    /// blake3 of the file's text.
    pub spec_hash: String,
    /// The metric its file names for ranking (`metric:`), if any.
    pub metric: Option<String>,
}

/// A trial's latest run and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialRun {
    /// The trial's number in its sweep.
    pub trial: i64,
    /// The run.
    pub run_id: i64,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
}

/// The last value of one metric of one run's stage.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricValue {
    /// The stage that recorded it.
    pub stage: String,
    /// The metric's name.
    pub name: String,
    /// Its step.
    pub step: i64,
    /// The value (`None`: recorded as NaN).
    pub value: Option<f64>,
}

impl MetricValue {
    /// `stage.name`, as reports and comparisons name a metric.
    pub fn key(&self) -> String {
        format!("{}.{}", self.stage, self.name)
    }
}

impl Store {
    /// Experiment `id`, if it exists.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn experiment(&self, id: i64) -> Result<Option<ExperimentInfo>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT id, name, path, spec_hash, metric FROM experiments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(p)
        .await
        .map_err(sql("read an experiment"))
        .map(|row| row.map(|r| ExperimentInfo {
            id: r.get(0),
            name: r.get(1),
            path: r.get(2),
            spec_hash: r.get(3),
            metric: r.get(4),
        })))
    }

    /// The id of the experiment row for (name, path, spec hash), if recorded.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn find_experiment(
        &self,
        name: &str,
        path: &str,
        spec_hash: &str,
    ) -> Result<Option<i64>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT id FROM experiments WHERE name = $1 AND path = $2 AND spec_hash = $3",
        )
        .bind(name)
        .bind(path)
        .bind(spec_hash)
        .fetch_optional(p)
        .await
        .map_err(sql("find an experiment"))
        .map(|row| row.map(|r| r.get::<i64, _>(0))))
    }

    /// Whether run `id` exists.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn run_exists(&self, id: i64) -> Result<bool> {
        on_pool!(&self.pool, p => sqlx::query("SELECT 1 FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(p)
            .await
            .map_err(sql("find a run"))
            .map(|row| row.is_some()))
    }

    /// Each trial's latest run (any status), by trial number.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn trial_runs(&self, experiment_id: i64) -> Result<Vec<TrialRun>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT r.trial, r.id, r.status FROM runs r
             WHERE r.experiment_id = $1 AND r.trial IS NOT NULL
               AND r.id = (SELECT max(x.id) FROM runs x
                           WHERE x.experiment_id = r.experiment_id AND x.trial = r.trial)
             ORDER BY r.trial",
        )
        .bind(experiment_id)
        .fetch_all(p)
        .await
        .map_err(sql("read an experiment's trials"))
        .map(|rows| rows.into_iter().map(|r| TrialRun {
            trial: r.get(0),
            run_id: r.get(1),
            status: r.get(2),
        }).collect()))
    }

    /// Each trial's latest succeeded run: trial → run id, in trial order.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn succeeded_trial_runs(&self, experiment_id: i64) -> Result<Vec<(i64, i64)>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT trial, max(id) FROM runs
             WHERE experiment_id = $1 AND status = 'succeeded' AND trial IS NOT NULL
             GROUP BY trial ORDER BY trial",
        )
        .bind(experiment_id)
        .fetch_all(p)
        .await
        .map_err(sql("read an experiment's succeeded trials"))
        .map(|rows| rows
            .into_iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
            .collect()))
    }

    /// A run's resolved parameters, as the text the store keeps.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn params(&self, run_id: i64) -> Result<BTreeMap<String, String>> {
        on_pool!(&self.pool, p => sqlx::query("SELECT key, value FROM params WHERE run_id = $1")
            .bind(run_id)
            .fetch_all(p)
            .await
            .map_err(sql("read a run's parameters"))
            .map(|rows| rows
                .into_iter()
                .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
                .collect()))
    }

    /// The last value of each of a run's metrics, ordered by stage and name.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn final_metrics(&self, run_id: i64) -> Result<Vec<MetricValue>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT stage, name, step, value FROM metric_last WHERE run_id = $1
             ORDER BY stage, name",
        )
        .bind(run_id)
        .fetch_all(p)
        .await
        .map_err(sql("read a run's final metrics"))
        .map(|rows| rows.into_iter().map(|r| MetricValue {
            stage: r.get(0),
            name: r.get(1),
            step: r.get(2),
            value: r.get(3),
        }).collect()))
    }

    /// [`Store::final_metrics`] of several runs in one query: (run, value), by run, stage and
    /// name.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn final_metrics_of(&self, run_ids: &[i64]) -> Result<Vec<(i64, MetricValue)>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(&self.pool, p => {
            let mut q = sqlx::QueryBuilder::new(
                "SELECT run_id, stage, name, step, value FROM metric_last WHERE run_id IN (",
            );
            let mut ids = q.separated(", ");
            for id in run_ids {
                ids.push_bind(*id);
            }
            q.push(") ORDER BY run_id, stage, name");
            q.build()
                .fetch_all(p)
                .await
                .map_err(sql("read final metrics"))
                .map(|rows| rows.into_iter().map(|r| (r.get::<i64, _>(0), MetricValue {
                    stage: r.get(1),
                    name: r.get(2),
                    step: r.get(3),
                    value: r.get(4),
                })).collect())
        })
    }

    /// The artifacts recorded for a run: (stage, artifact), in the order they were recorded.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn artifacts(&self, run_id: i64) -> Result<Vec<(String, ArtifactRecord)>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT stage, path, bytes, hash FROM artifacts WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(p)
        .await
        .map_err(sql("read a run's artifacts"))
        .map(|rows| rows.into_iter().map(|r| (
            r.get::<String, _>(0),
            ArtifactRecord {
                path: r.get(1),
                bytes: u64::try_from(r.get::<i64, _>(2)).unwrap_or_default(),
                hash: r.get(3),
            },
        )).collect()))
    }

    /// How many stage executions and cache hits the runs of an experiment recorded for each
    /// stage: stage → (executed, cached).
    ///
    /// # Errors
    /// When the query fails.
    pub async fn stage_counts(&self, experiment_id: i64) -> Result<BTreeMap<String, (i64, i64)>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT s.stage,
                    sum(CASE WHEN s.status = 'succeeded' THEN 1 ELSE 0 END),
                    sum(CASE WHEN s.status = 'cached' THEN 1 ELSE 0 END)
             FROM stage_runs s JOIN runs r ON r.id = s.run_id
             WHERE r.experiment_id = $1 GROUP BY s.stage",
        )
        .bind(experiment_id)
        .fetch_all(p)
        .await
        .map_err(sql("count an experiment's stage executions"))
        .map(|rows| rows
            .into_iter()
            .map(|r| (r.get::<String, _>(0), (r.get::<i64, _>(1), r.get::<i64, _>(2))))
            .collect()))
    }
}
