//! Browsing the store (`kiln ui`): runs filtered, sorted and paginated by the database, one
//! run's whole record, several runs' metric curves. A page never reads every run: the
//! filter, the order and the page are SQL, and only the page's params and metrics are read.
//!
//! A filter [`Condition`] names a parameter or a final metric the way a researcher writes
//! it (`alpha`, `accuracy_2way`, `eval.accuracy_2way`); a run matches when its parameter of
//! that name, or its final metric of that name (or `stage.name`), compares true.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::Store;
use crate::backend::on_pool;
use crate::error::{Result, sql};

/// A comparison in a run filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=` (also written `==`)
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Eq => "=",
            Self::Ne => "<>",
        }
    }
}

/// What a condition compares with.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Operand {
    /// A number: compared with a parameter's numeric value or a metric's value.
    Number(f64),
    /// Text: compared with a parameter's text (metrics are numbers: never equal to text).
    Text(String),
}

/// `name op value` (see the module docs for what `name` may be).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Condition {
    /// A parameter key, a metric name or `stage.metric`.
    pub name: String,
    /// The comparison.
    pub op: CmpOp,
    /// The value compared with.
    pub value: Operand,
}

impl Condition {
    /// `name op value`.
    pub fn new(name: &str, op: CmpOp, value: Operand) -> Self {
        Self {
            name: name.to_owned(),
            op,
            value,
        }
    }
}

/// How a page of runs is ordered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SortKey {
    /// The run id (the order runs started in).
    #[default]
    Id,
    /// The run's status.
    Status,
    /// The pipeline's name.
    Pipeline,
    /// The experiment's name, then the trial.
    Experiment,
    /// When the run started.
    Started,
    /// A parameter: numerically where it is a number, else by its text. Runs without it last.
    Param(String),
    /// A final metric (name or `stage.name`). Runs without it last.
    Metric(String),
}

/// Which runs, in which order, which page.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only these runs (empty: any run).
    pub ids: Vec<i64>,
    /// Only runs with this status.
    pub status: Option<String>,
    /// Only runs of the pipeline of this name.
    pub pipeline: Option<String>,
    /// Only runs of this experiment.
    pub experiment: Option<i64>,
    /// Every condition must hold.
    pub conditions: Vec<Condition>,
    /// The order.
    pub sort: SortKey,
    /// Largest first.
    pub descending: bool,
    /// Runs skipped before the page.
    pub offset: i64,
    /// Most runs on the page.
    pub limit: i64,
}

/// One run as a list shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunListing {
    /// The run's id.
    pub id: i64,
    /// Its pipeline's name.
    pub pipeline: String,
    /// Its experiment, if a sweep ran it.
    pub experiment_id: Option<i64>,
    /// The experiment's name.
    pub experiment: Option<String>,
    /// Its trial number in the sweep.
    pub trial: Option<i64>,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub status: String,
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Its parameters as recorded.
    pub params: BTreeMap<String, String>,
    /// Its final metrics by `stage.name` (`None`: recorded as NaN).
    pub metrics: BTreeMap<String, Option<f64>>,
}

/// A page of runs and how many match in all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPage {
    /// Runs matching the filter, on every page.
    pub total: i64,
    /// This page's runs.
    pub runs: Vec<RunListing>,
}

/// An experiment with what its runs did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentSummary {
    /// The experiment's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its file, as first run.
    pub path: String,
    /// The metric its file ranks by, if any.
    pub metric: Option<String>,
    /// Runs recorded.
    pub runs: i64,
    /// Distinct trials run.
    pub trials: i64,
    /// Runs that succeeded.
    pub succeeded: i64,
    /// Runs still running.
    pub running: i64,
    /// The latest run's start.
    pub last_started: Option<String>,
}

/// Everything the `runs` row holds about one run, with its pipeline and experiment named.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    /// The run's id.
    pub id: i64,
    /// Its pipeline's name.
    pub pipeline: String,
    /// The pipeline file.
    pub pipeline_path: String,
    /// Its experiment.
    pub experiment_id: Option<i64>,
    /// The experiment's name.
    pub experiment: Option<String>,
    /// Its trial number.
    pub trial: Option<i64>,
    /// Its status.
    pub status: String,
    /// The resolved config it ran (JSON text).
    pub config: String,
    /// blake3 of the config.
    pub config_hash: String,
    /// The git commit it ran at.
    pub git_commit: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// kiln's version.
    pub kiln_version: String,
    /// The run's seed.
    pub seed: Option<i64>,
    /// The machine.
    pub host: String,
    /// Start (UTC).
    pub started_at: String,
    /// End (UTC).
    pub ended_at: Option<String>,
}

/// One stage's execution in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRow {
    /// The stage's name.
    pub stage: String,
    /// Its kind (`train.lm`, …) and the kind's version.
    pub kind: String,
    /// The kind's version.
    pub kind_version: i64,
    /// `succeeded`, `cached`, `failed`, …
    pub status: String,
    /// Whether the cache served it.
    pub cache_hit: bool,
    /// Start.
    pub started_at: Option<String>,
    /// End.
    pub ended_at: Option<String>,
    /// How long it ran.
    pub duration_ms: Option<i64>,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// Its log file, as recorded.
    pub log_path: Option<String>,
}

/// One metric's points in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The run.
    pub run_id: i64,
    /// `stage.name`.
    pub key: String,
    /// (step, value), by step; NaN points left out.
    pub points: Vec<(i64, f64)>,
}

/// A value bound to a placeholder.
enum Bind {
    Int(i64),
    Real(f64),
    Text(String),
}

/// SQL text with `$n` placeholders and their values, built in one pass.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<Bind>,
}

impl Sql {
    /// Appends `text`.
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    fn bind(&mut self, value: Bind) -> &mut Self {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Bind::Text(value.to_owned()))
    }
}

/// Runs `$sql` as a query with its binds, `$fetch` (`fetch_all`, `fetch_one`) on `$pool`,
/// and maps the result `$r` with `$map` (in each backend's arm: its rows are its own type).
macro_rules! run_sql {
    ($pool:expr, $sql:expr, $fetch:ident, $what:literal, $r:ident => $map:expr) => {
        on_pool!($pool, p => {
            let mut q = sqlx::query(&$sql.text);
            for b in &$sql.binds {
                q = match b {
                    Bind::Int(v) => q.bind(*v),
                    Bind::Real(v) => q.bind(*v),
                    Bind::Text(v) => q.bind(v.clone()),
                };
            }
            q.$fetch(p).await.map_err(sql($what)).map(|$r| $map)
        })
    };
}

/// `stage.name` split at its first dot, when it has one.
fn split_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('.')
}

/// `metric_last` rows named `key` (a metric name or `stage.name`), for a `WHERE`.
fn push_metric_name(q: &mut Sql, key: &str, alias: &str) {
    q.push(&format!("({alias}.name = ")).text(key);
    if let Some((stage, name)) = split_key(key) {
        q.push(&format!(" OR ({alias}.stage = "))
            .text(stage)
            .push(&format!(" AND {alias}.name = "))
            .text(name)
            .push(")");
    }
    q.push(")");
}

/// The runs `c` holds for, as a subquery of run ids.
fn push_condition(q: &mut Sql, c: &Condition) {
    let op = c.op.sql();
    match &c.value {
        Operand::Number(v) => {
            q.push("SELECT run_id FROM params WHERE key = ")
                .text(&c.name)
                .push(&format!(" AND value_num {op} "))
                .bind(Bind::Real(*v))
                .push(" UNION SELECT m.run_id FROM metric_last m WHERE ");
            push_metric_name(q, &c.name, "m");
            q.push(&format!(" AND m.value {op} ")).bind(Bind::Real(*v));
        }
        Operand::Text(v) => {
            q.push("SELECT run_id FROM params WHERE key = ")
                .text(&c.name)
                .push(&format!(" AND value {op} "))
                .text(v);
        }
    }
}

/// `FROM … WHERE …` of a run query (with the sort key's join), shared by the count and
/// the page.
fn push_from_where(q: &mut Sql, query: &RunQuery, with_sort: bool) {
    q.push(
        " FROM runs r JOIN pipelines p ON p.id = r.pipeline_id
          LEFT JOIN experiments e ON e.id = r.experiment_id",
    );
    if with_sort {
        match &query.sort {
            SortKey::Param(key) => {
                q.push(
                    " LEFT JOIN (SELECT run_id, value_num AS num, value AS txt FROM params
                       WHERE key = ",
                )
                .text(key)
                .push(") sk ON sk.run_id = r.id");
            }
            SortKey::Metric(key) => {
                q.push(
                    " LEFT JOIN (SELECT m.run_id, min(m.value) AS num, min(m.name) AS txt
                       FROM metric_last m WHERE ",
                );
                push_metric_name(q, key, "m");
                q.push(" GROUP BY m.run_id) sk ON sk.run_id = r.id");
            }
            _ => {}
        }
    }
    q.push(" WHERE 1 = 1");
    if let Some(status) = &query.status {
        q.push(" AND r.status = ").text(status);
    }
    if let Some(pipeline) = &query.pipeline {
        q.push(" AND p.name = ").text(pipeline);
    }
    if let Some(experiment) = query.experiment {
        q.push(" AND r.experiment_id = ")
            .bind(Bind::Int(experiment));
    }
    if !query.ids.is_empty() {
        q.push(" AND r.id IN (");
        push_ids(q, &query.ids);
        q.push(")");
    }
    for c in &query.conditions {
        q.push(" AND r.id IN (");
        push_condition(q, c);
        q.push(")");
    }
}

/// `ORDER BY …`: missing values last in either direction, ties by id.
fn push_order(q: &mut Sql, query: &RunQuery) {
    let dir = if query.descending { "DESC" } else { "ASC" };
    let by = match &query.sort {
        SortKey::Id => String::new(),
        SortKey::Status => format!("r.status {dir}, "),
        SortKey::Pipeline => format!("p.name {dir}, "),
        SortKey::Experiment => {
            format!("(e.name IS NULL), e.name {dir}, (r.trial IS NULL), r.trial {dir}, ")
        }
        SortKey::Started => format!("r.started_at {dir}, "),
        SortKey::Param(_) | SortKey::Metric(_) => {
            // Runs without the key last, then numbers before text, in either direction
            // (the two databases put NULLs at opposite ends).
            format!("(sk.run_id IS NULL), (sk.num IS NULL), sk.num {dir}, sk.txt {dir}, ")
        }
    };
    q.push(&format!(" ORDER BY {by}r.id {dir}"));
}

impl Store {
    /// One page of runs: `query`'s filter, order and page, each run with its params and final
    /// metrics, and how many runs match in all.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn run_page(&self, query: &RunQuery) -> Result<RunPage> {
        let mut count = Sql::default();
        count.push("SELECT count(*)");
        push_from_where(&mut count, query, false);
        let total: i64 = run_sql!(&self.pool, count, fetch_one, "count runs", r => r.get(0))?;

        let mut page = Sql::default();
        page.push(
            "SELECT r.id, p.name, r.experiment_id, e.name, r.trial, r.status, r.started_at,
                    r.ended_at",
        );
        push_from_where(&mut page, query, true);
        push_order(&mut page, query);
        page.push(" LIMIT ")
            .bind(Bind::Int(query.limit.max(0)))
            .push(" OFFSET ")
            .bind(Bind::Int(query.offset.max(0)));
        let mut runs: Vec<RunListing> = run_sql!(&self.pool, page, fetch_all, "list runs", rows => rows
            .into_iter()
            .map(|r| RunListing {
                id: r.get(0),
                pipeline: r.get(1),
                experiment_id: r.get(2),
                experiment: r.get(3),
                trial: r.get(4),
                status: r.get(5),
                started_at: r.get(6),
                ended_at: r.get(7),
                params: BTreeMap::new(),
                metrics: BTreeMap::new(),
            })
            .collect())?;
        let ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
        let mut params = self.params_of(&ids).await?;
        let mut metrics: BTreeMap<i64, BTreeMap<String, Option<f64>>> = BTreeMap::new();
        for (run, m) in self.final_metrics_of(&ids).await? {
            metrics.entry(run).or_default().insert(m.key(), m.value);
        }
        for run in &mut runs {
            run.params = params.remove(&run.id).unwrap_or_default();
            run.metrics = metrics.remove(&run.id).unwrap_or_default();
        }
        Ok(RunPage { total, runs })
    }

    /// The parameters of several runs: run → key → value.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn params_of(
        &self,
        run_ids: &[i64],
    ) -> Result<BTreeMap<i64, BTreeMap<String, String>>> {
        let mut out: BTreeMap<i64, BTreeMap<String, String>> = BTreeMap::new();
        if run_ids.is_empty() {
            return Ok(out);
        }
        let mut q = Sql::default();
        q.push("SELECT run_id, key, value FROM params WHERE run_id IN (");
        push_ids(&mut q, run_ids);
        q.push(")");
        let rows: Vec<(i64, String, String)> = run_sql!(&self.pool, q, fetch_all, "read parameters",
            rows => rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())?;
        for (run, key, value) in rows {
            out.entry(run).or_default().insert(key, value);
        }
        Ok(out)
    }

    /// Every experiment, newest first, with its runs counted.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn experiment_summaries(&self) -> Result<Vec<ExperimentSummary>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT e.id, e.name, e.path, e.metric, count(r.id), count(DISTINCT r.trial),
                    coalesce(sum(CASE WHEN r.status = 'succeeded' THEN 1 ELSE 0 END), 0),
                    coalesce(sum(CASE WHEN r.status = 'running' THEN 1 ELSE 0 END), 0),
                    max(r.started_at)
             FROM experiments e LEFT JOIN runs r ON r.experiment_id = e.id
             GROUP BY e.id, e.name, e.path, e.metric ORDER BY e.id DESC",
        )
        .fetch_all(p)
        .await
        .map_err(sql("list experiments"))
        .map(|rows| rows.into_iter().map(|r| ExperimentSummary {
            id: r.get(0),
            name: r.get(1),
            path: r.get(2),
            metric: r.get(3),
            runs: r.get(4),
            trials: r.get(5),
            succeeded: r.get(6),
            running: r.get(7),
            last_started: r.get(8),
        }).collect()))
    }

    /// The smallest and largest final value of `metric` (name or `stage.name`) among each
    /// experiment's succeeded runs: experiment → (min, max), for experiments where a
    /// succeeded run recorded it. One query for every experiment (through the metric-name
    /// index), not one per experiment.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn metric_ranges(&self, metric: &str) -> Result<BTreeMap<i64, (f64, f64)>> {
        let mut q = Sql::default();
        q.push(
            "SELECT r.experiment_id, min(m.value), max(m.value)
             FROM metric_last m JOIN runs r ON r.id = m.run_id
             WHERE r.status = 'succeeded' AND r.experiment_id IS NOT NULL AND m.value IS NOT NULL
               AND ",
        );
        push_metric_name(&mut q, metric, "m");
        q.push(" GROUP BY r.experiment_id");
        type Range = (i64, Option<f64>, Option<f64>);
        let rows: Vec<Range> = run_sql!(&self.pool, q, fetch_all, "read a metric's range",
            rows => rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())?;
        Ok(rows
            .into_iter()
            .filter_map(|(e, lo, hi)| Some((e, (lo?, hi?))))
            .collect())
    }

    /// Run `id`'s record, if it exists.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn run_detail(&self, id: i64) -> Result<Option<RunDetail>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT r.id, p.name, p.path, r.experiment_id, e.name, r.trial, r.status, r.config,
                    r.config_hash, r.git_commit, r.git_dirty, r.kiln_version, r.seed, r.host,
                    r.started_at, r.ended_at
             FROM runs r JOIN pipelines p ON p.id = r.pipeline_id
             LEFT JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1",
        )
        .bind(id)
        .fetch_optional(p)
        .await
        .map_err(sql("read a run"))
        .map(|row| row.map(|r| RunDetail {
            id: r.get(0),
            pipeline: r.get(1),
            pipeline_path: r.get(2),
            experiment_id: r.get(3),
            experiment: r.get(4),
            trial: r.get(5),
            status: r.get(6),
            config: r.get(7),
            config_hash: r.get(8),
            git_commit: r.get(9),
            git_dirty: r.get::<Option<i64>, _>(10).map(|d| d != 0),
            kiln_version: r.get(11),
            seed: r.get(12),
            host: r.get(13),
            started_at: r.get(14),
            ended_at: r.get(15),
        })))
    }

    /// A run's stage executions, in the order they started.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn stage_rows(&self, run_id: i64) -> Result<Vec<StageRow>> {
        on_pool!(&self.pool, p => sqlx::query(
            "SELECT stage, kind, kind_version, status, cache_hit, started_at, ended_at,
                    duration_ms, error, log_path
             FROM stage_runs WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(p)
        .await
        .map_err(sql("read a run's stages"))
        .map(|rows| rows.into_iter().map(|r| StageRow {
            stage: r.get(0),
            kind: r.get(1),
            kind_version: r.get(2),
            status: r.get(3),
            cache_hit: r.get::<i64, _>(4) != 0,
            started_at: r.get(5),
            ended_at: r.get(6),
            duration_ms: r.get(7),
            error: r.get(8),
            log_path: r.get(9),
        }).collect()))
    }

    /// The points of metric `key` (name or `stage.name`) in each of `run_ids`, by run and
    /// step; NaN points are left out.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn metric_series(&self, run_ids: &[i64], key: &str) -> Result<Vec<Series>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Sql::default();
        q.push(
            "SELECT m.run_id, m.stage, m.name, m.step, m.value FROM metrics m WHERE m.run_id IN (",
        );
        push_ids(&mut q, run_ids);
        q.push(") AND ");
        push_metric_name(&mut q, key, "m");
        q.push(" ORDER BY m.run_id, m.stage, m.name, m.step, m.id");
        let mut out: Vec<Series> = Vec::new();
        type Point = (i64, String, String, i64, Option<f64>);
        let rows: Vec<Point> = run_sql!(&self.pool, q, fetch_all, "read metric series",
            rows => rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect())?;
        for (run_id, stage, name, step, value) in rows {
            let key = format!("{stage}.{name}");
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let point = (step, value);
            match out.last_mut() {
                Some(s) if s.run_id == run_id && s.key == key => s.points.push(point),
                _ => out.push(Series {
                    run_id,
                    key,
                    points: vec![point],
                }),
            }
        }
        Ok(out)
    }
}

fn push_ids(q: &mut Sql, ids: &[i64]) {
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            q.push(", ");
        }
        q.bind(Bind::Int(*id));
    }
}
