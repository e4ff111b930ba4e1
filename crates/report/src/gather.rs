//! Reading a sweep's trials out of the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_core::MetricDirection;
use kiln_store::Store;

use crate::{Error, Result};

/// One trial: its latest succeeded run.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Trial number.
    pub trial: i64,
    /// The run.
    pub run_id: i64,
    /// Params (as recorded text).
    pub params: BTreeMap<String, String>,
    /// Final metric values, `stage.metric`.
    pub metrics: BTreeMap<String, f64>,
    /// Curves by `stage.metric` (`loss`, `val_loss`), (step, value).
    pub curves: BTreeMap<String, Vec<(i64, f64)>>,
    /// Artifacts of the run: (stage, path).
    pub artifacts: Vec<(String, PathBuf)>,
}

/// What a report shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// Experiment name.
    pub name: String,
    /// Experiment id.
    pub experiment_id: i64,
    /// Params that vary between trials, in name order.
    pub swept: Vec<String>,
    /// Trials, by number.
    pub trials: Vec<Trial>,
    /// The metric that ranks trials and colours the heatmap (`stage.metric`).
    pub metric: String,
    /// Index into `trials` of the best trial by `metric` ([`Report::ranking`]'s first, when it
    /// has the metric).
    pub best: Option<usize>,
    /// Probe texts, their top-k next tokens from the best trial's model.
    pub top_k: Vec<(String, Vec<(String, f32)>)>,
    /// Probe texts and the best model's greedy continuation.
    pub samples: Vec<(String, String)>,
}

impl Report {
    /// Which way the ranking metric improves ([`MetricDirection::of`] its name).
    pub fn direction(&self) -> MetricDirection {
        MetricDirection::of(&self.metric)
    }

    /// Indexes into `trials`, best first by the ranking metric; trials without it (or with
    /// NaN) come last. Ties keep trial order.
    pub fn ranking(&self) -> Vec<usize> {
        let direction = self.direction();
        let value = |i: usize| self.trials[i].metrics.get(&self.metric).copied();
        let mut order: Vec<usize> = (0..self.trials.len()).collect();
        order.sort_by(|&a, &b| direction.best_first(value(a), value(b)));
        order
    }

    /// The best trial: the first of the ranking, if it has the metric.
    pub(crate) fn best_trial(&self) -> Option<usize> {
        let first = *self.ranking().first()?;
        let value = self.trials[first].metrics.get(&self.metric)?;
        (!value.is_nan()).then_some(first)
    }
}

/// Reads experiment `experiment_id`'s trials. `metric` (`stage.metric` or a metric name)
/// picks the ranking metric; by default the one the experiment's file names (`metric:`),
/// else the first recorded metric whose name holds `accuracy`, else the first holding
/// `loss`. Which way it ranks comes from its name
/// ([`MetricDirection`]).
///
/// # Errors
/// An unreadable store, an unknown experiment, or one without a succeeded trial.
pub async fn gather(store: &Store, experiment_id: i64, metric: Option<&str>) -> Result<Report> {
    let experiment = store
        .experiment(experiment_id)
        .await?
        .ok_or_else(|| Error::Empty(format!("no experiment {experiment_id} in the store")))?;
    let name = experiment.name;
    let metric = metric.or(experiment.metric.as_deref());
    let mut trials = Vec::new();
    for (trial, run_id) in store.succeeded_trial_runs(experiment_id).await? {
        let params = store.params(run_id).await?;
        let metrics = store
            .final_metrics(run_id)
            .await?
            .into_iter()
            .filter_map(|m| m.value.map(|v| (m.key(), v)))
            .collect();
        let mut curves: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for point in store.metrics(run_id).await? {
            if matches!(point.name.as_str(), "loss" | "val_loss") && !point.value.is_nan() {
                curves
                    .entry(format!("{}.{}", point.stage, point.name))
                    .or_default()
                    .push((point.step, point.value));
            }
        }
        let artifacts = store
            .artifacts(run_id)
            .await?
            .into_iter()
            .map(|(stage, a)| (stage, PathBuf::from(a.path)))
            .collect();
        trials.push(Trial {
            trial,
            run_id,
            params,
            metrics,
            curves,
            artifacts,
        });
    }
    if trials.is_empty() {
        return Err(Error::Empty(format!(
            "experiment {experiment_id} ({name}) has no succeeded trial yet"
        )));
    }
    let keys: BTreeSet<&String> = trials.iter().flat_map(|t| t.params.keys()).collect();
    let swept: Vec<String> = keys
        .into_iter()
        .filter(|k| {
            let values: BTreeSet<Option<&String>> =
                trials.iter().map(|t| t.params.get(*k)).collect();
            values.len() > 1
        })
        .cloned()
        .collect();
    let all: BTreeSet<&String> = trials.iter().flat_map(|t| t.metrics.keys()).collect();
    let metric = match metric {
        Some(m) => all
            .iter()
            .find(|k| **k == m || k.ends_with(&format!(".{m}")))
            .map(|k| (*k).clone())
            .ok_or_else(|| Error::Empty(format!("no trial recorded a metric {m:?}")))?,
        None => all
            .iter()
            .find(|k| k.contains("accuracy"))
            .or_else(|| all.iter().find(|k| k.contains("loss")))
            .map(|k| (*k).clone())
            .unwrap_or_default(),
    };
    let mut report = Report {
        name,
        experiment_id,
        swept,
        trials,
        metric,
        best: None,
        top_k: Vec::new(),
        samples: Vec::new(),
    };
    report.best = report.best_trial();
    Ok(report)
}
