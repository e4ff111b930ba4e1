//! Each page's data, read from the store: the HTML templates render it and `/api/…` returns
//! it as JSON, so the two always agree.

use std::collections::{BTreeMap, BTreeSet};

use kiln_core::MetricDirection;
use kiln_store::Store;
use kiln_store::browse::{
    ExperimentSummary, RunDetail, RunListing, RunQuery, Series, SortKey, StageRow,
};
use serde::{Deserialize, Serialize};

use crate::svg::{self, Axis, Line};
use crate::{Error, files, filter};

/// Runs per page unless the URL says otherwise, and the most it may say.
const PER_PAGE: i64 = 50;
const MAX_PER_PAGE: i64 = 500;
/// The most runs a compare page takes.
pub const MAX_COMPARE: usize = 20;
/// Bytes of a text artifact previewed on the run page.
const PREVIEW_BYTES: usize = 4096;
/// Artifacts shown on a run page (a tokenized dataset may record hundreds of shards).
const MAX_ARTIFACTS: usize = 50;

/// The runs page's URL parameters, as typed (all optional; checked in [`RunsParams::query`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RunsParams {
    /// `running`, `succeeded`, `failed` or `interrupted`.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub status: Option<String>,
    /// A pipeline's name.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub pipeline: Option<String>,
    /// An experiment's id.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub experiment: Option<String>,
    /// A filter expression ([`filter`]).
    #[serde(default, skip_serializing_if = "is_blank")]
    pub filter: Option<String>,
    /// `id`, `status`, `pipeline`, `experiment`, `started`, `param:KEY` or `metric:KEY`.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub sort: Option<String>,
    /// `1`: largest first (the default for `id`), `0`: smallest first.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub desc: Option<String>,
    /// 1-based page number.
    #[serde(default, skip_serializing_if = "is_blank")]
    pub page: Option<String>,
    /// Runs per page (at most 500).
    #[serde(default, skip_serializing_if = "is_blank")]
    pub per_page: Option<String>,
}

#[allow(clippy::ref_option)] // serde's skip_serializing_if passes a reference to the field.
fn is_blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn blank_none(v: Option<&String>) -> Option<&str> {
    v.map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn int(name: &str, v: Option<&String>) -> Result<Option<i64>, Error> {
    blank_none(v)
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| Error::BadRequest(format!("{name} must be a whole number, not {s:?}")))
        })
        .transpose()
}

impl RunsParams {
    /// The store query these parameters ask for.
    ///
    /// # Errors
    /// [`Error::BadRequest`] / [`Error::Filter`] naming the parameter that is wrong.
    pub fn query(&self) -> Result<RunQuery, Error> {
        let status = blank_none(self.status.as_ref()).map(str::to_owned);
        if let Some(s) = &status
            && !["running", "succeeded", "failed", "interrupted"].contains(&s.as_str())
        {
            return Err(Error::BadRequest(format!(
                "status must be running, succeeded, failed or interrupted, not {s:?}"
            )));
        }
        let sort = parse_sort(blank_none(self.sort.as_ref()).unwrap_or("id"))?;
        let descending = match blank_none(self.desc.as_ref()) {
            None => sort == SortKey::Id,
            Some("1" | "true") => true,
            Some("0" | "false") => false,
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "desc must be 1 or 0, not {other:?}"
                )));
            }
        };
        let per_page = int("per_page", self.per_page.as_ref())?.unwrap_or(PER_PAGE);
        if !(1..=MAX_PER_PAGE).contains(&per_page) {
            return Err(Error::BadRequest(format!(
                "per_page must be between 1 and {MAX_PER_PAGE}, not {per_page}"
            )));
        }
        let page = int("page", self.page.as_ref())?.unwrap_or(1).max(1);
        Ok(RunQuery {
            ids: Vec::new(),
            status,
            pipeline: blank_none(self.pipeline.as_ref()).map(str::to_owned),
            experiment: int("experiment", self.experiment.as_ref())?,
            conditions: filter::parse(self.filter.as_deref().unwrap_or_default())?,
            sort,
            descending,
            offset: (page - 1).saturating_mul(per_page),
            limit: per_page,
        })
    }

    /// This page's URL with some parameters replaced (`None` removes one).
    pub fn url_with(&self, changes: &[(&str, Option<String>)]) -> String {
        let mut p = self.clone();
        for (key, value) in changes {
            let slot = match *key {
                "status" => &mut p.status,
                "pipeline" => &mut p.pipeline,
                "experiment" => &mut p.experiment,
                "filter" => &mut p.filter,
                "sort" => &mut p.sort,
                "desc" => &mut p.desc,
                "page" => &mut p.page,
                _ => &mut p.per_page,
            };
            slot.clone_from(value);
        }
        let query = serde_urlencoded::to_string(&p).unwrap_or_default();
        if query.is_empty() {
            "/".into()
        } else {
            format!("/?{query}")
        }
    }
}

fn parse_sort(s: &str) -> Result<SortKey, Error> {
    Ok(match s {
        "id" => SortKey::Id,
        "status" => SortKey::Status,
        "pipeline" => SortKey::Pipeline,
        "experiment" => SortKey::Experiment,
        "started" => SortKey::Started,
        other => match other.split_once(':') {
            Some(("param", key)) if !key.is_empty() => SortKey::Param(key.to_owned()),
            Some(("metric", key)) if !key.is_empty() => SortKey::Metric(key.to_owned()),
            _ => {
                return Err(Error::BadRequest(format!(
                    "sort must be id, status, pipeline, experiment, started, param:KEY or \
                     metric:KEY, not {other:?}"
                )));
            }
        },
    })
}

/// A column header of the runs table: its label, and the URL that sorts by it.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    /// The sort key (`param:alpha`).
    pub key: String,
    /// The header's text.
    pub label: String,
    /// The URL sorting by this column (the other way round when it is the sort already).
    pub url: String,
    /// `asc`, `desc` or empty.
    pub sorted: &'static str,
}

/// An experiment on the runs page.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentRow {
    /// What the store holds about it.
    #[serde(flatten)]
    pub summary: ExperimentSummary,
    /// The best final value of its ranking metric among succeeded runs.
    pub best: Option<f64>,
}

/// The runs page.
#[derive(Debug, Clone, Serialize)]
pub struct RunsView {
    /// The parameters as given (the form shows them again).
    pub params: RunsParams,
    /// Runs matching, on every page.
    pub total: i64,
    /// This page (1-based) and how many there are.
    pub page: i64,
    /// Pages in all.
    pub pages: i64,
    /// The previous and next pages' URLs.
    pub prev_url: Option<String>,
    /// See `prev_url`.
    pub next_url: Option<String>,
    /// The fixed columns, then one per parameter and metric on this page.
    pub columns: Vec<Column>,
    /// Parameter keys on this page.
    pub param_keys: Vec<String>,
    /// Metric keys on this page.
    pub metric_keys: Vec<String>,
    /// The page's runs.
    pub runs: Vec<RunListing>,
    /// Every experiment (newest first).
    pub experiments: Vec<ExperimentRow>,
}

/// Reads the runs page.
///
/// # Errors
/// Bad parameters, store errors.
pub async fn runs(store: &Store, params: RunsParams) -> Result<RunsView, Error> {
    let query = params.query()?;
    let page_data = store.run_page(&query).await?;
    let page = query.offset / query.limit + 1;
    let pages = (page_data.total + query.limit - 1) / query.limit;
    let param_keys: Vec<String> = page_data
        .runs
        .iter()
        .flat_map(|r| r.params.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let metric_keys: Vec<String> = page_data
        .runs
        .iter()
        .flat_map(|r| r.metrics.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let current = blank_none(params.sort.as_ref()).unwrap_or("id").to_owned();
    let column = |key: String, label: String| {
        let (sorted, next_desc) = if key == current {
            if query.descending {
                ("desc", "0")
            } else {
                ("asc", "1")
            }
        } else {
            ("", if key == "id" { "1" } else { "0" })
        };
        Column {
            url: params.url_with(&[
                ("sort", Some(key.clone())),
                ("desc", Some(next_desc.into())),
                ("page", None),
            ]),
            key,
            label,
            sorted,
        }
    };
    let mut columns: Vec<Column> = ["id", "experiment", "pipeline", "status", "started"]
        .into_iter()
        .map(|k| column(k.into(), k.into()))
        .collect();
    columns.extend(
        param_keys
            .iter()
            .map(|k| column(format!("param:{k}"), k.clone())),
    );
    columns.extend(
        metric_keys
            .iter()
            .map(|k| column(format!("metric:{k}"), k.clone())),
    );
    let page_url = |n: i64| params.url_with(&[("page", Some(n.to_string()))]);
    Ok(RunsView {
        prev_url: (page > 1).then(|| page_url(page - 1)),
        next_url: (page < pages).then(|| page_url(page + 1)),
        total: page_data.total,
        page,
        pages,
        columns,
        param_keys,
        metric_keys,
        runs: page_data.runs,
        experiments: experiments(store).await?,
        params,
    })
}

/// Every experiment with the best value of its ranking metric (one query per distinct
/// ranking metric).
///
/// # Errors
/// Store errors.
pub async fn experiments(store: &Store) -> Result<Vec<ExperimentRow>, Error> {
    let summaries = store.experiment_summaries().await?;
    let metrics: BTreeSet<&String> = summaries.iter().filter_map(|s| s.metric.as_ref()).collect();
    let mut ranges: BTreeMap<&String, BTreeMap<i64, (f64, f64)>> = BTreeMap::new();
    for metric in metrics {
        ranges.insert(metric, store.metric_ranges(metric).await?);
    }
    let best = |s: &ExperimentSummary| {
        let metric = s.metric.as_ref()?;
        let (lo, hi) = *ranges.get(metric)?.get(&s.id)?;
        Some(match MetricDirection::of(metric) {
            MetricDirection::Higher => hi,
            MetricDirection::Lower => lo,
        })
    };
    let rows = summaries
        .iter()
        .map(|s| ExperimentRow {
            best: best(s),
            summary: s.clone(),
        })
        .collect();
    Ok(rows)
}

/// A stage execution on the run page, with its log's URL.
#[derive(Debug, Clone, Serialize)]
pub struct StageView {
    /// The stage's row.
    #[serde(flatten)]
    pub row: StageRow,
    /// `/runs/{id}/log/{stage}` when a log was recorded.
    pub log_url: Option<String>,
}

/// A metric of a run: its last value and how many points it has.
#[derive(Debug, Clone, Serialize)]
pub struct MetricSummary {
    /// `stage.name`.
    pub key: String,
    /// The last point's step and value (`None`: NaN).
    pub step: i64,
    /// See `step`.
    pub value: Option<f64>,
    /// Points recorded.
    pub points: usize,
}

/// An artifact on the run page.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactView {
    /// The stage that wrote it.
    pub stage: String,
    /// Its path as recorded.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// `/runs/{id}/artifacts/{n}`.
    pub url: String,
    /// `image`, `text` or `file`.
    pub shown: files::Shown,
    /// A text artifact's first bytes.
    pub preview: Option<String>,
}

/// The run page.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// The run's record.
    pub run: RunDetail,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// Its stage executions.
    pub stages: Vec<StageView>,
    /// Each metric's last value.
    pub metrics: Vec<MetricSummary>,
    /// The first artifacts (see `artifacts_total`).
    pub artifacts: Vec<ArtifactView>,
    /// Artifacts recorded in all.
    pub artifacts_total: usize,
    /// The config, pretty-printed.
    pub config: String,
    /// Whether the page should poll for updates (the run is still running).
    pub live: bool,
}

/// Reads run `id`'s page and its charts (one per metric with more than one point).
///
/// # Errors
/// [`Error::NotFound`] when there is no such run; store errors.
pub async fn run(
    store: &Store,
    ctx: &crate::server::Files,
    id: i64,
) -> Result<(RunView, Vec<(String, String)>), Error> {
    let run = store
        .run_detail(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no run {id}")))?;
    let params = store.params(id).await?;
    let stages = store
        .stage_rows(id)
        .await?
        .into_iter()
        .map(|row| StageView {
            log_url: row
                .log_path
                .as_ref()
                .map(|_| format!("/runs/{id}/log/{}", url_part(&row.stage))),
            row,
        })
        .collect();
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut metrics: BTreeMap<String, MetricSummary> = BTreeMap::new();
    for p in store.metrics(id).await? {
        let key = format!("{}.{}", p.stage, p.name);
        let m = metrics.entry(key.clone()).or_insert(MetricSummary {
            key: key.clone(),
            step: p.step,
            value: None,
            points: 0,
        });
        m.points += 1;
        if p.step >= m.step {
            m.step = p.step;
            m.value = Some(p.value).filter(|v| !v.is_nan());
        }
        #[allow(clippy::cast_precision_loss)] // steps are far below 2^53
        series
            .entry(key)
            .or_default()
            .push((p.step as f64, p.value));
    }
    let charts = series
        .into_iter()
        .filter(|(_, pts)| pts.len() > 1)
        .filter_map(|(key, mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let line = Line {
                label: key.clone(),
                points,
                color: 0,
            };
            svg::line_chart(&key, &[line], 360, 200).map(|svg| (key, svg))
        })
        .collect();
    let recorded = store.artifacts(id).await?;
    let artifacts_total = recorded.len();
    // Images first, then what can be previewed, then the rest (a run that reuses cached
    // stages records their shards and checkpoints before its own plots); each keeps its index
    // in the record, which its URL names.
    let mut indexed: Vec<(usize, (String, kiln_store::ArtifactRecord))> =
        recorded.into_iter().enumerate().collect();
    indexed.sort_by_key(|(_, (_, a))| files::shown(&a.path));
    let artifacts = indexed
        .into_iter()
        .take(MAX_ARTIFACTS)
        .map(|(n, (stage, a))| artifact_view(ctx, id, n, stage, a))
        .collect();
    let config = serde_json::from_str::<serde_json::Value>(&run.config)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| run.config.clone());
    let view = RunView {
        live: run.status == "running",
        run,
        params,
        stages,
        metrics: metrics.into_values().collect(),
        artifacts,
        artifacts_total,
        config,
    };
    Ok((view, charts))
}

fn artifact_view(
    ctx: &crate::server::Files,
    id: i64,
    n: usize,
    stage: String,
    a: kiln_store::ArtifactRecord,
) -> ArtifactView {
    let shown = files::shown(&a.path);
    let preview = (shown == files::Shown::Text)
        .then(|| files::inside(&ctx.results, &ctx.project, &a.path).ok())
        .flatten()
        .and_then(|path| files::head(&path, PREVIEW_BYTES).ok())
        .map(|(text, more)| if more { text + "\n…" } else { text });
    ArtifactView {
        stage,
        url: format!("/runs/{id}/artifacts/{n}"),
        shown,
        preview,
        bytes: a.bytes,
        path: a.path,
    }
}

/// A path segment with what a URL path cannot hold percent-encoded.
pub fn url_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The compare page's URL parameters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompareParams {
    /// Run ids (`runs=1,2,3`, or `run=1&run=2` from the runs page's checkboxes).
    pub runs: Vec<i64>,
    /// An experiment whose trials' latest runs are compared.
    pub experiment: Option<i64>,
    /// Show every row, not only those that differ.
    pub all: bool,
    /// The metric whose curves are drawn.
    pub metric: Option<String>,
    /// Smoothing weight, 0 to 0.99.
    pub smooth: f64,
}

impl CompareParams {
    /// Parses a raw query string.
    ///
    /// # Errors
    /// [`Error::BadRequest`] naming the parameter.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| Error::BadRequest(format!("the query string: {e}")))?;
        let mut out = Self::default();
        for (key, value) in pairs {
            let value = value.trim();
            match key.as_str() {
                "runs" | "run" => {
                    for id in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        out.runs.push(id.parse().map_err(|_| {
                            Error::BadRequest(format!("runs: {id:?} is not a run id"))
                        })?);
                    }
                }
                "experiment" if !value.is_empty() => {
                    out.experiment = Some(value.parse().map_err(|_| {
                        Error::BadRequest(format!("experiment: {value:?} is not an id"))
                    })?);
                }
                "all" => out.all = matches!(value, "1" | "true" | "on"),
                "metric" if !value.is_empty() => out.metric = Some(value.to_owned()),
                "smooth" if !value.is_empty() => {
                    out.smooth = value
                        .parse::<f64>()
                        .ok()
                        .filter(|w| (0.0..1.0).contains(w))
                        .ok_or_else(|| {
                            Error::BadRequest(format!(
                                "smooth must be a number from 0 to below 1, not {value:?}"
                            ))
                        })?;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The URL of this comparison with `all`, `metric` or `smooth` changed.
    pub fn url(&self, all: bool, metric: Option<&str>, smooth: f64) -> String {
        let ids: Vec<String> = self.runs.iter().map(i64::to_string).collect();
        let mut pairs = vec![("runs", ids.join(","))];
        if all {
            pairs.push(("all", "1".into()));
        }
        if let Some(m) = metric {
            pairs.push(("metric", m.to_owned()));
        }
        if smooth > 0.0 {
            pairs.push(("smooth", smooth.to_string()));
        }
        format!(
            "/compare?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    }
}

/// One row of the compare table: a parameter or metric and each run's value.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    /// The parameter key or metric `stage.name`.
    pub key: String,
    /// Each run's value, in the page's run order (`None`: the run has none).
    pub values: Vec<Option<String>>,
    /// Whether the values are not all the same.
    pub differs: bool,
}

/// The compare page.
#[derive(Debug, Clone, Serialize)]
pub struct CompareView {
    /// The parameters as parsed (runs resolved from an experiment).
    pub params: CompareParams,
    /// The runs, in the order given.
    pub runs: Vec<RunListing>,
    /// Parameter rows (only those that differ unless `params.all`).
    pub param_rows: Vec<CompareRow>,
    /// Final-metric rows (the same rule).
    pub metric_rows: Vec<CompareRow>,
    /// Rows hidden because every run has the same value.
    pub hidden: usize,
    /// Every metric the runs recorded (the picker's choices).
    pub metric_keys: Vec<String>,
    /// The metric drawn.
    pub metric: Option<String>,
    /// The URL with "only differences" flipped.
    pub toggle_url: String,
    /// When every run belongs to one experiment: its id and name.
    pub experiment: Option<(i64, String)>,
    /// The sweep's ranking metric (the experiment's, or the drawn one).
    pub ranking: Option<String>,
}

/// The compare page's drawings.
#[derive(Debug, Default)]
pub struct CompareCharts {
    /// The picked metric's curves.
    pub curves: Option<String>,
    /// A sweep's parallel coordinates.
    pub parallel: Option<String>,
    /// A sweep's heatmap over its first two swept params.
    pub heatmap: Option<String>,
}

/// Reads the compare page.
///
/// # Errors
/// Fewer than 2 or more than 20 runs, unknown runs, store errors.
pub async fn compare(
    store: &Store,
    mut params: CompareParams,
) -> Result<(CompareView, CompareCharts), Error> {
    let mut experiment_metric = None;
    if let Some(e) = params.experiment {
        let info = store
            .experiment(e)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no experiment {e}")))?;
        experiment_metric = info.metric;
        params.runs = store
            .trial_runs(e)
            .await?
            .into_iter()
            .map(|t| t.run_id)
            .collect();
    }
    let mut seen = BTreeSet::new();
    params.runs.retain(|id| seen.insert(*id));
    if !(2..=MAX_COMPARE).contains(&params.runs.len()) {
        return Err(Error::BadRequest(format!(
            "compare takes 2 to {MAX_COMPARE} runs, not {} (pick them on the runs page)",
            params.runs.len()
        )));
    }
    let runs = listings(store, &params.runs).await?;
    let experiment = match runs.first().and_then(|r| r.experiment_id) {
        Some(e) if runs.iter().all(|r| r.experiment_id == Some(e)) => {
            if experiment_metric.is_none() {
                experiment_metric = store.experiment(e).await?.and_then(|i| i.metric);
            }
            runs[0].experiment.clone().map(|name| (e, name))
        }
        _ => None,
    };
    let param_rows = rows(runs.iter().map(|r| r.params.clone()).collect());
    let metric_rows = rows(
        runs.iter()
            .map(|r| {
                r.metrics
                    .iter()
                    .map(|(k, v)| (k.clone(), v.map_or_else(|| "NaN".into(), svg::precise)))
                    .collect()
            })
            .collect(),
    );
    let metric_keys: Vec<String> = metric_rows.iter().map(|r| r.key.clone()).collect();
    let swept: Vec<String> = param_rows
        .iter()
        .filter(|r| r.differs)
        .map(|r| r.key.clone())
        .collect();
    let ranking = experiment_metric
        .and_then(|m| resolve_metric(&metric_keys, &m))
        .or_else(|| params.metric.clone());
    let picked = match &params.metric {
        Some(m) => Some((m.clone(), store.metric_series(&params.runs, m).await?)),
        None => default_metric(store, &params.runs, ranking.as_deref(), &metric_keys).await?,
    };
    let mut charts = CompareCharts::default();
    if let Some((m, series)) = &picked {
        charts.curves = curves(&params.runs, m, series, params.smooth);
    }
    let metric = picked.map(|(m, _)| m);
    if experiment.is_some()
        && let Some(rank) = &ranking
    {
        charts.parallel = parallel(&runs, &swept, rank);
        charts.heatmap = heatmap(&runs, &swept, rank);
    }
    let keep = |rows: Vec<CompareRow>| -> (Vec<CompareRow>, usize) {
        let before = rows.len();
        let kept: Vec<CompareRow> = rows
            .into_iter()
            .filter(|r| params.all || r.differs)
            .collect();
        let hidden = before - kept.len();
        (kept, hidden)
    };
    let (param_rows, hidden_params) = keep(param_rows);
    let (metric_rows, hidden_metrics) = keep(metric_rows);
    let view = CompareView {
        toggle_url: params.url(!params.all, metric.as_deref(), params.smooth),
        hidden: hidden_params + hidden_metrics,
        params,
        runs,
        param_rows,
        metric_rows,
        metric_keys,
        metric,
        experiment,
        ranking,
    };
    Ok((view, charts))
}

/// The listings of `ids` in that order; an unknown id is an error.
async fn listings(store: &Store, ids: &[i64]) -> Result<Vec<RunListing>, Error> {
    let page = store
        .run_page(&RunQuery {
            ids: ids.to_vec(),
            limit: i64::try_from(ids.len()).unwrap_or(i64::MAX),
            ..RunQuery::default()
        })
        .await?;
    let mut by_id: BTreeMap<i64, RunListing> = page.runs.into_iter().map(|r| (r.id, r)).collect();
    ids.iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or_else(|| Error::NotFound(format!("no run {id}")))
        })
        .collect()
}

/// Rows over the union of keys; `differs` when the runs' values are not all equal.
fn rows(maps: Vec<BTreeMap<String, String>>) -> Vec<CompareRow> {
    let keys: BTreeSet<&String> = maps.iter().flat_map(BTreeMap::keys).collect();
    keys.into_iter()
        .map(|k| {
            let values: Vec<Option<String>> = maps.iter().map(|m| m.get(k).cloned()).collect();
            let differs = values.iter().collect::<BTreeSet<_>>().len() > 1;
            CompareRow {
                key: k.clone(),
                values,
                differs,
            }
        })
        .collect()
}

/// `metric` as one of `keys` (exactly, or as the name part of `stage.name`).
fn resolve_metric(keys: &[String], metric: &str) -> Option<String> {
    keys.iter()
        .find(|k| *k == metric)
        .or_else(|| keys.iter().find(|k| k.ends_with(&format!(".{metric}"))))
        .cloned()
}

/// The metric drawn when none is picked, with its series: the ranking metric if it has a
/// curve, else the first loss with a curve, else the first metric.
async fn default_metric(
    store: &Store,
    runs: &[i64],
    ranking: Option<&str>,
    keys: &[String],
) -> Result<Option<(String, Vec<Series>)>, Error> {
    let candidates = ranking
        .into_iter()
        .map(str::to_owned)
        .chain(keys.iter().filter(|k| k.contains("loss")).cloned());
    for key in candidates.take(8) {
        let series = store.metric_series(runs, &key).await?;
        if series.iter().any(|s| s.points.len() > 1) {
            return Ok(Some((key, series)));
        }
    }
    match ranking.map(str::to_owned).or_else(|| keys.first().cloned()) {
        Some(key) => Ok(Some((key.clone(), store.metric_series(runs, &key).await?))),
        None => Ok(None),
    }
}

/// The curves of `metric` (already read), one color per run in the page's order.
fn curves(ids: &[i64], metric: &str, series: &[Series], smooth: f64) -> Option<String> {
    let lines: Vec<Line> = series
        .iter()
        .map(|s| {
            let i = ids
                .iter()
                .position(|id| *id == s.run_id)
                .unwrap_or_default();
            #[allow(clippy::cast_precision_loss)]
            let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x as f64, y)).collect();
            Line {
                label: format!("run {} {}", s.run_id, s.key),
                points: svg::smooth(&points, smooth),
                color: i,
            }
        })
        .collect();
    svg::line_chart(metric, &lines, 900, 380)
}

fn parallel(runs: &[RunListing], swept: &[String], ranking: &str) -> Option<String> {
    let mut axes: Vec<Axis> = swept
        .iter()
        .map(|k| Axis {
            name: k.clone(),
            values: runs.iter().map(|r| r.params.get(k).cloned()).collect(),
        })
        .collect();
    axes.push(Axis {
        name: ranking.to_owned(),
        values: runs
            .iter()
            .map(|r| {
                r.metrics
                    .get(ranking)
                    .copied()
                    .flatten()
                    .map(|v| v.to_string())
            })
            .collect(),
    });
    let colors: Vec<usize> = (0..runs.len()).collect();
    svg::parallel_coordinates(&axes, &colors, 900)
}

fn heatmap(runs: &[RunListing], swept: &[String], ranking: &str) -> Option<String> {
    let [x, y, ..] = swept else { return None };
    let levels = |k: &String| -> Vec<String> {
        let mut v: Vec<String> = runs
            .iter()
            .filter_map(|r| r.params.get(k).cloned())
            .collect();
        v.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(p), Ok(q)) => p.total_cmp(&q),
            _ => a.cmp(b),
        });
        v.dedup();
        v
    };
    let (xs, ys) = (levels(x), levels(y));
    let direction = MetricDirection::of(ranking);
    let mut best: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    for r in runs {
        let (Some(px), Some(py)) = (r.params.get(x), r.params.get(y)) else {
            continue;
        };
        let Some(v) = r.metrics.get(ranking).copied().flatten() else {
            continue;
        };
        let (Some(ix), Some(iy)) = (
            xs.iter().position(|l| l == px),
            ys.iter().position(|l| l == py),
        ) else {
            continue;
        };
        let cell = best.entry((ix, iy)).or_insert(v);
        if direction.is_better(v, *cell) {
            *cell = v;
        }
    }
    let cells: Vec<(usize, usize, f64)> = best.into_iter().map(|((i, j), v)| (i, j, v)).collect();
    svg::heatmap(x, &xs, y, &ys, &cells, direction == MetricDirection::Higher)
}
