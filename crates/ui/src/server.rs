//! The HTTP side: routes (every one a `GET`), the page templates, and error responses.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use kiln_store::Store;
use minijinja::value::Serde;
use minijinja::{Environment, Value, context};
use serde::Serialize;

use crate::views::{self, CompareParams, RunsParams};
use crate::{Error, files};

/// Where the server finds files the store names. A results directory that does not exist
/// (a PostgreSQL store browsed from another machine) serves no files.
#[derive(Debug, Clone)]
pub struct Options {
    /// The results directory: the only place files are served from.
    pub results: PathBuf,
    /// The directory kiln ran in (relative recorded paths start here).
    pub project: PathBuf,
}

/// The results directory, canonical, and the project directory.
#[derive(Debug)]
pub(crate) struct Files {
    pub results: PathBuf,
    pub project: PathBuf,
}

struct App {
    store: Store,
    files: Files,
    templates: Environment<'static>,
}

type Shared = State<Arc<App>>;

/// The `Content-Security-Policy` of every page: nothing is fetched from anywhere else, and
/// only the page's own inline script runs.
const CSP: &str = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; \
                   script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";
/// Served files get no script at all (an SVG artifact may carry one).
const FILE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:";

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, text) in [
        ("layout.html", include_str!("../templates/layout.html")),
        ("runs.html", include_str!("../templates/runs.html")),
        ("run.html", include_str!("../templates/run.html")),
        ("compare.html", include_str!("../templates/compare.html")),
    ] {
        // The templates are part of the binary; a syntax error is caught by the tests.
        if let Err(e) = env.add_template(name, text) {
            tracing::error!("template {name}: {e}");
        }
    }
    env.add_filter("num", |v: Option<f64>| {
        v.map_or_else(String::new, crate::svg::short)
    });
    env
}

/// The application's routes over `store`. Every route is a `GET`: the server cannot write.
pub fn router(store: Store, options: &Options) -> Router {
    let results = options
        .results
        .canonicalize()
        .unwrap_or_else(|_| options.project.join(&options.results));
    let app = Arc::new(App {
        store,
        files: Files {
            results,
            project: options.project.clone(),
        },
        templates: templates(),
    });
    Router::new()
        .route("/", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/log/{stage}", get(stage_log))
        .route("/runs/{id}/artifacts/{n}", get(artifact))
        .route("/compare", get(compare_page))
        .route("/api/runs", get(runs_api))
        .route("/api/runs/{id}", get(run_api))
        .route("/api/compare", get(compare_api))
        .route("/api/experiments", get(experiments_api))
        .fallback(|| async { Error::NotFound("no such page".into()) })
        .with_state(app)
}

/// Serves `router` on `listener` until Ctrl-C.
///
/// # Errors
/// When the server fails.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Filter(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{self}");
        }
        let body = format!(
            "<!doctype html><meta charset=utf-8><title>kiln ui: {}</title><p><a href=\"/\">runs</a></p><h1>{}</h1><pre>{}</pre>",
            status.as_u16(),
            status,
            html_escape::encode_safe(&self.to_string())
        );
        secure(status, Html(body).into_response(), CSP)
    }
}

fn secure(status: StatusCode, mut response: Response, csp: &'static str) -> Response {
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn page(app: &App, template: &str, ctx: minijinja::Value) -> Result<Response, Error> {
    let html = app.templates.get_template(template)?.render(ctx)?;
    Ok(secure(StatusCode::OK, Html(html).into_response(), CSP))
}

fn json<T: Serialize>(value: &T) -> Response {
    secure(StatusCode::OK, Json(value).into_response(), CSP)
}

fn run_id(raw: &str) -> Result<i64, Error> {
    raw.parse()
        .map_err(|_| Error::NotFound(format!("no run {raw:?}")))
}

async fn runs_page(
    State(app): Shared,
    Query(params): Query<RunsParams>,
) -> Result<Response, Error> {
    let view = views::runs(&app.store, params).await?;
    page(
        &app,
        "runs.html",
        context! { view => Value::from(Serde(&view)) },
    )
}

async fn runs_api(State(app): Shared, Query(params): Query<RunsParams>) -> Result<Response, Error> {
    Ok(json(&views::runs(&app.store, params).await?))
}

async fn experiments_api(State(app): Shared) -> Result<Response, Error> {
    Ok(json(&views::experiments(&app.store).await?))
}

async fn run_page(State(app): Shared, Path(id): Path<String>) -> Result<Response, Error> {
    let (view, charts) = views::run(&app.store, &app.files, run_id(&id)?).await?;
    page(
        &app,
        "run.html",
        context! { view => Value::from(Serde(&view)), charts => Value::from(Serde(&charts)) },
    )
}

async fn run_api(State(app): Shared, Path(id): Path<String>) -> Result<Response, Error> {
    let (view, _) = views::run(&app.store, &app.files, run_id(&id)?).await?;
    Ok(json(&view))
}

async fn compare_page(State(app): Shared, RawQuery(raw): RawQuery) -> Result<Response, Error> {
    let params = CompareParams::parse(raw.as_deref().unwrap_or_default())?;
    let (view, charts) = views::compare(&app.store, params).await?;
    page(
        &app,
        "compare.html",
        context! {
            view => Value::from(Serde(&view)),
            curves => charts.curves,
            parallel => charts.parallel,
            heatmap => charts.heatmap,
        },
    )
}

async fn compare_api(State(app): Shared, RawQuery(raw): RawQuery) -> Result<Response, Error> {
    let params = CompareParams::parse(raw.as_deref().unwrap_or_default())?;
    Ok(json(&views::compare(&app.store, params).await?.0))
}

/// A stage's log, as plain text, if it lies inside the results directory.
async fn stage_log(
    State(app): Shared,
    Path((id, stage)): Path<(String, String)>,
) -> Result<Response, Error> {
    let id = run_id(&id)?;
    let row = app
        .store
        .stage_rows(id)
        .await?
        .into_iter()
        .find(|s| s.stage == stage)
        .ok_or_else(|| Error::NotFound(format!("run {id} has no stage {stage:?}")))?;
    let recorded = row
        .log_path
        .ok_or_else(|| Error::NotFound(format!("stage {stage:?} of run {id} kept no log")))?;
    let path = files::inside(&app.files.results, &app.files.project, &recorded)?;
    send_file(&path, "text/plain; charset=utf-8").await
}

/// Artifact `n` of a run (by its index in the run's record, never by a path from the URL),
/// if it lies inside the results directory.
async fn artifact(
    State(app): Shared,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, Error> {
    let id = run_id(&id)?;
    let n: usize = n
        .parse()
        .map_err(|_| Error::NotFound(format!("no artifact {n:?}")))?;
    let (_, recorded) = app
        .store
        .artifacts(id)
        .await?
        .into_iter()
        .nth(n)
        .ok_or_else(|| Error::NotFound(format!("run {id} has no artifact {n}")))?;
    let path = files::inside(&app.files.results, &app.files.project, &recorded.path)?;
    send_file(&path, files::content_type(&path)).await
}

async fn send_file(path: &std::path::Path, content_type: &'static str) -> Result<Response, Error> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| Error::io("cannot read", path, e))?;
    let mut response = bytes.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(secure(StatusCode::OK, response, FILE_CSP))
}
