//! Reading a sweep's trials out of the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_core::MetricDirection;
use kiln_store::{Cell, Store};

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

fn text(c: &Cell) -> String {
    match c {
        Cell::Null => String::new(),
        Cell::Int(i) => i.to_string(),
        Cell::Real(v) => v.to_string(),
        Cell::Text(s) => s.clone(),
        Cell::Blob(n) => format!("<{n} bytes>"),
    }
}

fn num(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(i) => Some(*i as f64),
        Cell::Real(v) => Some(*v),
        _ => None,
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
    let q = |sql: String| async move { store.query_read_only(&sql).await };
    let row = q(format!(
        "SELECT name, metric FROM experiments WHERE id = {experiment_id}"
    ))
    .await?
    .rows
    .into_iter()
    .next()
    .ok_or_else(|| Error::Empty(format!("no experiment {experiment_id} in the store")))?;
    let name = text(&row[0]);
    let named = match &row[1] {
        Cell::Text(m) => Some(m.clone()),
        _ => None,
    };
    let metric = metric.or(named.as_deref());
    let runs = q(format!(
        "SELECT trial, max(id) FROM runs WHERE experiment_id = {experiment_id} AND status = 'succeeded'
         GROUP BY trial ORDER BY trial"
    ))
    .await?;
    let mut trials = Vec::new();
    for r in &runs.rows {
        let (Some(trial), Some(run_id)) = (num(&r[0]), num(&r[1])) else {
            continue;
        };
        let (trial, run_id) = (trial as i64, run_id as i64);
        let params = q(format!(
            "SELECT key, value FROM params WHERE run_id = {run_id}"
        ))
        .await?
        .rows
        .iter()
        .map(|r| (text(&r[0]), text(&r[1])))
        .collect();
        let metrics = q(format!(
            "SELECT stage || '.' || metric, value FROM last_metrics WHERE run_id = {run_id}"
        ))
        .await?
        .rows
        .iter()
        .filter_map(|r| num(&r[1]).map(|v| (text(&r[0]), v)))
        .collect();
        let mut curves: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for row in q(format!(
            "SELECT stage || '.' || name, step, value FROM metrics
             WHERE run_id = {run_id} AND name IN ('loss', 'val_loss') ORDER BY id"
        ))
        .await?
        .rows
        {
            if let (Some(step), Some(v)) = (num(&row[1]), num(&row[2])) {
                curves
                    .entry(text(&row[0]))
                    .or_default()
                    .push((step as i64, v));
            }
        }
        let artifacts = q(format!(
            "SELECT stage, path FROM artifacts WHERE run_id = {run_id}"
        ))
        .await?
        .rows
        .iter()
        .map(|r| (text(&r[0]), PathBuf::from(text(&r[1]))))
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
