//! The store's side of a run: the run row, each stage's row, its metrics and artifacts, and
//! the matching [`Event`]s. A local run, a sweep lane and a Slurm task all record through
//! this one type, so they record the same way. Without a store only the events go out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kiln_store::{
    ArtifactRecord, MetricWriter, NewRun, NewStageRun, RunStatus, StageStatus, Store,
};

use super::{ExecOptions, RunSummary};
use crate::cache::{Cache, EntryRecord, LOG_FILE};
use crate::error::Result;
use crate::event::{Event, Reporter};
use crate::plan::{Plan, PlannedStage};
use crate::stage::MetricSink;

/// How an executed stage ended, as recorded.
pub(super) struct Ended<'a> {
    pub status: StageStatus,
    pub elapsed: Duration,
    pub error: Option<&'a str>,
    pub log: &'a Path,
    /// The committed entry and what it holds, for a succeeded stage.
    pub out: Option<(&'a Path, &'a [ArtifactRecord])>,
}

/// Records one run.
pub(super) struct Recorder {
    store: Option<Store>,
    run_id: Option<i64>,
    writer: Option<MetricWriter>,
    reporter: Arc<dyn Reporter>,
    /// The `stage_runs` row of each executing stage, by plan index.
    rows: Vec<Option<i64>>,
}

impl Recorder {
    /// Inserts the run (with its parameters) and announces it.
    pub async fn begin(plan: &Plan, opts: &ExecOptions) -> Result<Self> {
        let (run_id, writer) = match &opts.store {
            Some(store) => {
                let pipeline = &plan.pipeline;
                let pipeline_id = store
                    .pipeline_id(
                        &pipeline.name,
                        &pipeline.path.to_string_lossy(),
                        &pipeline.source_hash,
                    )
                    .await?;
                let run = NewRun {
                    pipeline_id,
                    experiment_id: opts.meta.experiment_id,
                    trial: opts.meta.trial,
                    cargo_lock_hash: opts.meta.cargo_lock_hash.clone(),
                    config_hash: plan.config_hash.clone(),
                    config: plan.config.to_string(),
                    git_commit: opts.meta.git_commit.clone(),
                    git_dirty: opts.meta.git_dirty,
                    kiln_version: opts.meta.kiln_version.clone(),
                    seed: plan.params.get("seed").and_then(serde_json::Value::as_i64),
                    host: opts.meta.host.clone(),
                    params: plan.params.clone(),
                };
                (
                    Some(store.begin_run(&run).await?),
                    Some(store.metric_writer()),
                )
            }
            None => (None, None),
        };
        opts.reporter.event(&Event::RunStarted {
            run_id,
            pipeline: plan.pipeline.name.clone(),
            stages: plan.stages.len(),
        });
        Ok(Self {
            store: opts.store.clone(),
            run_id,
            writer,
            reporter: opts.reporter.clone(),
            rows: vec![None; plan.stages.len()],
        })
    }

    /// The run's id in the store.
    pub fn run_id(&self) -> Option<i64> {
        self.run_id
    }

    /// Where a stage's metrics go.
    pub fn sink(&self, stage: &str) -> MetricSink {
        MetricSink::new(self.run_id, stage, self.writer.clone())
    }

    /// Stage `i` began executing.
    pub async fn started(&mut self, i: usize, stage: &PlannedStage) -> Result<()> {
        if let Some(store) = &self.store {
            self.rows[i] = Some(
                store
                    .begin_stage(&self.stage_row(stage, false, StageStatus::Running))
                    .await?,
            );
        }
        self.reporter.event(&Event::StageStarted {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            fingerprint: stage.fingerprint.clone(),
        });
        Ok(())
    }

    /// Stage `i` ended after executing.
    pub async fn ended(&self, i: usize, stage: &PlannedStage, end: &Ended<'_>) -> Result<()> {
        if let Some(store) = &self.store {
            if let Some(row) = self.rows[i] {
                store
                    .finish_stage(
                        row,
                        end.status,
                        Some(end.elapsed),
                        end.error,
                        Some(&end.log.to_string_lossy()),
                    )
                    .await?;
            }
            if let (Some(run), Some((dir, artifacts))) = (self.run_id, end.out) {
                store
                    .record_artifacts(run, &stage.name, &absolute_artifacts(dir, artifacts))
                    .await?;
            }
        }
        self.reporter.event(&match end.status {
            StageStatus::Succeeded => Event::StageSucceeded {
                stage: stage.name.clone(),
                elapsed: end.elapsed,
            },
            _ => Event::StageFailed {
                stage: stage.name.clone(),
                error: end.error.unwrap_or_default().to_owned(),
                log: Some(end.log.to_owned()),
                elapsed: end.elapsed,
            },
        });
        Ok(())
    }

    /// A stage was served from the cache: its recorded metrics and artifacts are recorded
    /// again for this run, marked as a cache hit.
    pub async fn cached(
        &self,
        stage: &PlannedStage,
        cache: &Cache,
        entry: &EntryRecord,
    ) -> Result<()> {
        let dir = cache.entry_dir(&stage.fingerprint);
        if let Some(store) = &self.store {
            let row = store
                .begin_stage(&self.stage_row(stage, true, StageStatus::Cached))
                .await?;
            store
                .finish_stage(
                    row,
                    StageStatus::Cached,
                    Some(Duration::ZERO),
                    None,
                    Some(&dir.join(LOG_FILE).to_string_lossy()),
                )
                .await?;
            let sink = self.sink(&stage.name);
            for m in cache.metrics(&stage.fingerprint) {
                sink.send(&m);
            }
            if let Some(run) = self.run_id {
                store
                    .record_artifacts(
                        run,
                        &stage.name,
                        &absolute_artifacts(&dir, &entry.artifacts),
                    )
                    .await?;
            }
        }
        self.reporter.event(&Event::StageCached {
            stage: stage.name.clone(),
            fingerprint: stage.fingerprint.clone(),
        });
        Ok(())
    }

    /// A stage will not execute, for `reason`.
    pub async fn skipped(&self, stage: &PlannedStage, reason: &str) -> Result<()> {
        if let Some(store) = &self.store {
            let row = store
                .begin_stage(&self.stage_row(stage, false, StageStatus::Skipped))
                .await?;
            store
                .finish_stage(row, StageStatus::Skipped, None, Some(reason), None)
                .await?;
        }
        self.reporter.event(&Event::StageSkipped {
            stage: stage.name.clone(),
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Something the user should know about a stage (e.g. it waits for another run).
    pub fn warn(&self, stage: &str, message: String) {
        self.reporter.event(&Event::StageWarning {
            stage: stage.to_owned(),
            message,
        });
    }

    /// Writes the last metrics, sets the run's status and announces the end.
    pub async fn finish(self, summary: &RunSummary) -> Result<()> {
        if let Some(w) = &self.writer {
            w.close().await?;
        }
        if let (Some(store), Some(id)) = (&self.store, self.run_id) {
            store.finish_run(id, summary.status).await?;
        }
        self.reporter.event(&Event::RunFinished {
            run_id: self.run_id,
            status: summary.status.as_str().to_owned(),
            executed: summary.count(StageStatus::Succeeded) + summary.count(StageStatus::Failed),
            cached: summary.count(StageStatus::Cached),
            failed: summary.count(StageStatus::Failed) + summary.count(StageStatus::Interrupted),
            skipped: summary.count(StageStatus::Skipped),
            elapsed: summary.elapsed,
        });
        Ok(())
    }

    fn stage_row(&self, stage: &PlannedStage, cache_hit: bool, status: StageStatus) -> NewStageRun {
        NewStageRun {
            run_id: self.run_id.unwrap_or_default(),
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            kind_version: i64::from(stage.kind_version),
            fingerprint: stage.fingerprint.clone(),
            fingerprint_input: serde_json::to_string(&stage.fingerprint_input)
                .expect("serializable"),
            cache_hit,
            status,
        }
    }
}

/// The run's status from its stages and whether it was cancelled.
pub(super) fn run_status(cancelled: bool, stages: &[super::StageOutcome]) -> RunStatus {
    if cancelled {
        RunStatus::Interrupted
    } else if stages
        .iter()
        .all(|s| matches!(s.status, StageStatus::Succeeded | StageStatus::Cached))
    {
        RunStatus::Succeeded
    } else {
        RunStatus::Failed
    }
}

fn absolute_artifacts(dir: &Path, artifacts: &[ArtifactRecord]) -> Vec<ArtifactRecord> {
    artifacts
        .iter()
        .map(|a| ArtifactRecord {
            path: dir.join(&a.path).to_string_lossy().into_owned(),
            ..a.clone()
        })
        .collect()
}
