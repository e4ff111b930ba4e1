//! The local executor: trials run in this process, `lanes` at a time, after the first trial
//! ran alone. GPUs are split between lanes, so together they never use more than the
//! sweep's.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_store::RunStatus;
use tokio::task::JoinSet;

use super::{Executor, Outcome, PlannedTrial, Sweep, TrialRunner};
use crate::error::{Error, Result};
use crate::executor::RunSummary;

/// Shows which trial runs in which lane (the CLI's sweep display).
pub trait LaneDisplay: Send + Sync {
    /// Trial `trial` (`label`: its values) started in `lane`.
    fn started(&self, lane: usize, trial: usize, label: &str);
    /// Trial `trial` in `lane` ended with `status`.
    fn finished(&self, lane: usize, trial: usize, status: &str);
}

/// A display that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDisplay;

impl LaneDisplay for NoDisplay {
    fn started(&self, _: usize, _: usize, _: &str) {}
    fn finished(&self, _: usize, _: usize, _: &str) {}
}

/// Runs trials here.
pub struct LocalExecutor {
    /// Trials at once.
    pub lanes: usize,
    /// GPUs the whole sweep may use.
    pub gpus: u32,
    /// Where lane changes are shown.
    pub display: Arc<dyn LaneDisplay>,
}

impl LocalExecutor {
    /// Lanes that fit the GPUs: when a trial needs more than its share, fewer run at once.
    /// Returns (lanes, GPUs per lane).
    pub fn fit(&self, need: u32) -> (usize, u32) {
        let lanes = match self.gpus.checked_div(need) {
            Some(fit) if (fit.max(1) as usize) < self.lanes => fit.max(1) as usize,
            _ => self.lanes.max(1),
        };
        let per_lane = if need > 0 {
            self.gpus / lanes as u32
        } else {
            0
        };
        (lanes, per_lane)
    }
}

type Done = (usize, usize, Result<RunSummary>);

impl Executor for LocalExecutor {
    async fn execute(&self, sweep: &Sweep, runner: &TrialRunner) -> Result<Outcome> {
        let (lanes, per_lane) = self.fit(sweep.gpus_per_trial());
        let mut results = BTreeMap::new();
        let pending: Vec<PlannedTrial> = sweep.pending().into_iter().cloned().collect();
        let mut queue = pending.into_iter();
        // The first trial alone: it makes the shared stages that the others find cached.
        if let Some(first) = queue.next() {
            self.display.started(0, first.trial.index, &first.label);
            let summary = runner
                .run(sweep.experiment_id, &first, (0..self.gpus).collect())
                .await?;
            self.display
                .finished(0, first.trial.index, summary.status.as_str());
            results.insert(first.trial.index, (summary.status, summary.run_id));
        }
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut free: Vec<usize> = (0..lanes).rev().collect();
        for t in queue {
            while free.is_empty() {
                if let Some(joined) = running.join_next().await {
                    self.record(joined, &mut free, &mut results)?;
                }
            }
            if runner.cancel.is_cancelled() {
                break;
            }
            let lane = free.pop().unwrap_or(0);
            self.display.started(lane, t.trial.index, &t.label);
            // Lane L holds GPUs [L·share, (L+1)·share).
            let first = lane as u32 * per_lane;
            let (runner, experiment_id) = (runner.clone(), sweep.experiment_id);
            running.spawn(async move {
                let summary = runner
                    .run(experiment_id, &t, (first..first + per_lane).collect())
                    .await;
                (lane, t.trial.index, summary)
            });
        }
        while let Some(joined) = running.join_next().await {
            self.record(joined, &mut free, &mut results)?;
        }
        let interrupted = runner.cancel.is_cancelled()
            || results.values().any(|(s, _)| *s == RunStatus::Interrupted);
        Ok(Outcome::Ran {
            results,
            interrupted,
        })
    }
}

impl LocalExecutor {
    fn record(
        &self,
        joined: std::result::Result<Done, tokio::task::JoinError>,
        free: &mut Vec<usize>,
        results: &mut BTreeMap<usize, (RunStatus, Option<i64>)>,
    ) -> Result<()> {
        let (lane, trial, summary) = joined.map_err(|e| Error::Task(e.to_string()))?;
        free.push(lane);
        let summary = summary?;
        self.display.finished(lane, trial, summary.status.as_str());
        results.insert(trial, (summary.status, summary.run_id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl LaneDisplay for Quiet {
        fn started(&self, _: usize, _: usize, _: &str) {}
        fn finished(&self, _: usize, _: usize, _: &str) {}
    }

    #[test]
    fn lanes_shrink_to_fit_the_gpus() {
        let exec = |lanes, gpus| LocalExecutor {
            lanes,
            gpus,
            display: Arc::new(Quiet),
        };
        assert_eq!(exec(4, 4).fit(1), (4, 1));
        assert_eq!(exec(4, 4).fit(2), (2, 2));
        assert_eq!(exec(4, 3).fit(2), (1, 3));
        assert_eq!(exec(3, 0).fit(0), (3, 0), "CPU trials: every lane");
        assert_eq!(exec(2, 8).fit(1), (2, 4));
    }
}
