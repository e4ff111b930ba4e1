//! `kiln ui`: the store's browse queries on both databases, and the real server driven over
//! HTTP and by headless Chromium (the quickstart sweep's checks live in tests/sweep.rs and
//! call [`check_quickstart`]).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};

use kiln_store::browse::{CmpOp, Condition, Operand, RunQuery, SortKey};
use kiln_store::{ArtifactRecord, MetricPoint, NewRun, NewStageRun, RunStatus, StageStatus, Store};

use crate::support::{Project, chromium, test_stores};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A generated run: what the test knows about it without asking the store.
#[derive(Debug, Clone)]
struct Made {
    id: i64,
    alpha: f64,
    opt: &'static str,
    accuracy: Option<f64>,
    status: RunStatus,
}

/// 30 runs: alpha in {0, 0.5, 1}, opt in {adam, sgd}, an accuracy on most (every seventh run
/// has none), every tenth failed; a loss curve of 5 steps each; all in one experiment.
async fn populate(store: &Store) -> Vec<Made> {
    let pipeline = store
        .pipeline_id("p", "p.yaml", "h")
        .await
        .expect("pipeline");
    let experiment = store
        .experiment_id("sweep", "e.yaml", "h")
        .await
        .expect("experiment");
    store
        .set_experiment_metric(experiment, Some("eval.accuracy"))
        .await
        .expect("metric");
    let writer = store.metric_writer();
    let mut made = Vec::new();
    for i in 0..30_i64 {
        let alpha = [0.0, 0.5, 1.0][usize::try_from(i % 3).expect("small")];
        let opt = if i % 2 == 0 { "adam" } else { "sgd" };
        let id = store
            .begin_run(&NewRun {
                pipeline_id: pipeline,
                experiment_id: Some(experiment),
                trial: Some(i),
                kiln_version: "test".into(),
                host: "test".into(),
                params: [
                    ("alpha".to_owned(), serde_json::json!(alpha)),
                    ("opt".to_owned(), serde_json::json!(opt)),
                    ("steps".to_owned(), serde_json::json!(100)),
                ]
                .into_iter()
                .collect(),
                ..NewRun::default()
            })
            .await
            .expect("run");
        // Not monotone in the id, so that sorting by it is not sorting by id.
        let accuracy = (i % 7 != 3).then(|| ((i * 37) % 30) as f64 / 30.0);
        for step in 0..5 {
            writer
                .send(point(
                    id,
                    "train",
                    "loss",
                    step,
                    2.0 / (step + 1 + i) as f64,
                ))
                .expect("send");
        }
        if let Some(a) = accuracy {
            writer
                .send(point(id, "eval", "accuracy", 0, a))
                .expect("send");
        }
        let status = if i % 10 == 9 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        writer.flush().await.expect("flush");
        store.finish_run(id, status).await.expect("finish");
        made.push(Made {
            id,
            alpha,
            opt,
            accuracy,
            status,
        });
    }
    writer.close().await.expect("close");
    made
}

fn point(run_id: i64, stage: &str, name: &str, step: i64, value: f64) -> MetricPoint {
    MetricPoint {
        run_id,
        stage: stage.into(),
        step,
        name: name.into(),
        value,
        time: 1.0,
    }
}

fn ids(page: &kiln_store::browse::RunPage) -> Vec<i64> {
    page.runs.iter().map(|r| r.id).collect()
}

#[test]
fn run_pages_filter_sort_and_paginate_on_both_databases() {
    let rt = runtime();
    for t in rt.block_on(test_stores("ui_browse")) {
        eprintln!("on {}", t.backend);
        rt.block_on(async {
            let store = Store::open(&t.url).await.expect("open");
            let made = populate(&store).await;
            let all = |q: RunQuery| {
                let store = &store;
                async move {
                    store
                        .run_page(&RunQuery { limit: 100, ..q })
                        .await
                        .expect("page")
                }
            };

            // The filter: a param and a metric, by bare name and by stage.name.
            let want: Vec<i64> = made
                .iter()
                .rev()
                .filter(|m| m.alpha >= 0.5 && m.accuracy.is_some_and(|a| a > 0.5))
                .map(|m| m.id)
                .collect();
            assert!(want.len() >= 5, "{want:?}");
            for metric in ["accuracy", "eval.accuracy"] {
                let page = all(RunQuery {
                    conditions: vec![
                        Condition::new("alpha", CmpOp::Ge, Operand::Number(0.5)),
                        Condition::new(metric, CmpOp::Gt, Operand::Number(0.5)),
                    ],
                    descending: true,
                    ..RunQuery::default()
                })
                .await;
                assert_eq!(ids(&page), want, "{metric}");
                assert_eq!(page.total, want.len() as i64);
            }
            // Text params, status.
            let page = all(RunQuery {
                conditions: vec![Condition::new(
                    "opt",
                    CmpOp::Eq,
                    Operand::Text("sgd".into()),
                )],
                status: Some("failed".into()),
                ..RunQuery::default()
            })
            .await;
            let want: Vec<i64> = made
                .iter()
                .filter(|m| m.opt == "sgd" && m.status == RunStatus::Failed)
                .map(|m| m.id)
                .collect();
            assert_eq!(ids(&page), want);

            // Sorted by a metric, best first; runs without it last.
            let page = all(RunQuery {
                sort: SortKey::Metric("accuracy".into()),
                descending: true,
                ..RunQuery::default()
            })
            .await;
            let mut want = made.clone();
            want.sort_by(|a, b| match (a.accuracy, b.accuracy) {
                (Some(x), Some(y)) => y.total_cmp(&x).then(b.id.cmp(&a.id)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => b.id.cmp(&a.id),
            });
            assert_eq!(ids(&page), want.iter().map(|m| m.id).collect::<Vec<_>>());
            let last = page.runs.last().expect("runs");
            assert!(!last.metrics.contains_key("eval.accuracy"));
            // By a numeric param ascending, ties by id.
            let page = all(RunQuery {
                sort: SortKey::Param("alpha".into()),
                ..RunQuery::default()
            })
            .await;
            let mut want = made.clone();
            want.sort_by(|a, b| a.alpha.total_cmp(&b.alpha).then(a.id.cmp(&b.id)));
            assert_eq!(ids(&page), want.iter().map(|m| m.id).collect::<Vec<_>>());

            // Pages: the third page of 7, newest first.
            let page = store
                .run_page(&RunQuery {
                    descending: true,
                    offset: 14,
                    limit: 7,
                    ..RunQuery::default()
                })
                .await
                .expect("page");
            let newest: Vec<i64> = made.iter().rev().map(|m| m.id).collect();
            assert_eq!(ids(&page), newest[14..21].to_vec());
            assert_eq!(page.total, 30);
            let run = &page.runs[0];
            let m = made.iter().find(|m| m.id == run.id).expect("made");
            assert_eq!(run.params.get("opt").map(String::as_str), Some(m.opt));
            assert_eq!(
                run.metrics.get("eval.accuracy").copied().flatten(),
                m.accuracy
            );

            // The experiment and its best value; a metric's curves.
            let summaries = store.experiment_summaries().await.expect("experiments");
            assert_eq!(summaries.len(), 1);
            assert_eq!((summaries[0].runs, summaries[0].trials), (30, 30));
            assert_eq!(summaries[0].succeeded, 27);
            let succeeded_best = made
                .iter()
                .filter(|m| m.status == RunStatus::Succeeded)
                .filter_map(|m| m.accuracy)
                .fold(f64::NEG_INFINITY, f64::max);
            let ranges = store.metric_ranges("accuracy").await.expect("ranges");
            assert_eq!(
                ranges.get(&summaries[0].id).map(|r| r.1),
                Some(succeeded_best)
            );
            let ranges = store.metric_ranges("eval.accuracy").await.expect("ranges");
            assert_eq!(
                ranges.get(&summaries[0].id).map(|r| r.1),
                Some(succeeded_best)
            );
            assert!(
                store
                    .metric_ranges("nothing")
                    .await
                    .expect("ranges")
                    .is_empty()
            );
            let series = store
                .metric_series(&[made[0].id, made[1].id], "train.loss")
                .await
                .expect("series");
            assert_eq!(series.len(), 2);
            assert_eq!(series[1].points.len(), 5);
            assert_eq!(series[1].points[4], (4, 2.0 / 6.0));
            store.close().await;
        });
    }
}

/// A running `kiln ui --port 0`; killed when dropped.
pub struct Ui {
    child: Child,
    /// `http://127.0.0.1:PORT/`
    pub url: String,
}

impl Ui {
    pub fn start(p: &Project, extra: &[&str]) -> Self {
        let mut child = p
            .cmd(&["ui", "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln ui starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read");
        let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) else {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("kiln ui printed {line:?}\n{err}");
        };
        Self {
            url: url.to_owned(),
            child,
        }
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://").trim_end_matches('/')
    }

    /// `METHOD path` over plain HTTP/1.1: (status, body).
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(self.addr()).expect("connect");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.addr()
        )
        .expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("receive");
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, body.to_owned())
    }

    pub fn get(&self, path: &str) -> String {
        let (status, body) = self.request("GET", path);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DOM headless Chromium builds from `url` after its scripts ran.
pub fn dump_dom(browser: &str, url: &str) -> String {
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("</html>"),
        "chromium returned no page for {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Pixels of a Chromium screenshot of `url` within 40 of `rgb` in every channel.
pub fn pixels_near(browser: &str, url: &str, png: &Path, rgb: [u8; 3]) -> usize {
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,2400",
            &format!("--screenshot={}", png.display()),
            url,
        ])
        .output()
        .expect("chromium runs");
    let file = std::fs::File::open(png).unwrap_or_else(|_| {
        panic!(
            "no screenshot of {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| (0..3).all(|c| px[c].abs_diff(rgb[c]) <= 40))
        .count()
}

/// Every value of the attribute `attr` in `html`, in document order (e.g. each row's `data-run`).
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    html.split(&format!("{attr}=\""))
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

/// The quickstart sweep (run by tests/sweep.rs) browsed in Chromium: the runs page lists
/// its runs, the compare page's "only differences" shows exactly the swept params, a metric
/// chart is drawn, and a filter URL returns the runs the store says it should.
pub fn check_quickstart(p: &Project) {
    let Some(browser) = chromium() else { return };
    let ui = Ui::start(p, &[]);
    assert!(ui.url.starts_with("http://127.0.0.1:"), "{}", ui.url);
    let runs: BTreeSet<String> = p
        .query("SELECT id FROM runs")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(runs.len(), 6);
    let dom = dump_dom(&browser, &ui.url);
    let listed: BTreeSet<String> = attr_values(&dom, "data-run").into_iter().collect();
    assert_eq!(listed, runs, "the runs page lists the sweep's runs");
    assert!(dom.contains(">quickstart</a>"), "the experiment is listed");

    let experiment = p.scalar("SELECT max(id) FROM experiments");
    let compare = dump_dom(
        &browser,
        &format!("{}compare?experiment={experiment}", ui.url),
    );
    let shown: Vec<String> = compare
        .split("<tr class=\"param\" data-key=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        shown,
        ["alpha", "temperature"],
        "only the swept params differ"
    );
    let every = dump_dom(
        &browser,
        &format!("{}compare?experiment={experiment}&all=1", ui.url),
    );
    assert!(
        every.contains("data-key=\"student_steps\""),
        "all=1 shows the params every trial shares"
    );
    // The curves of the picked metric: one polyline per trial, each of several points.
    let curves = compare
        .split("id=\"curves\"")
        .nth(1)
        .and_then(|s| s.split("</div>").next())
        .expect("a curves section");
    let lines: Vec<&str> = curves.split("<polyline points=\"").skip(1).collect();
    assert_eq!(lines.len(), 6, "a curve per trial: {curves}");
    for line in &lines {
        let points = line.split('"').next().unwrap_or_default();
        assert!(points.split(' ').count() > 2, "{points}");
    }
    assert!(compare.contains("id=\"heatmap\"") && compare.contains("id=\"parallel\""));
    // The picture: run 2's orange curve is drawn in pixels (the page has no other orange).
    let orange = pixels_near(
        &browser,
        &format!("{}compare?experiment={experiment}", ui.url),
        &p.path().join("compare.png"),
        [255, 127, 14],
    );
    assert!(orange > 150, "only {orange} orange pixels: no curve drawn");
    if let Some(dir) = std::env::var_os("KILN_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(
            p.path().join("compare.png"),
            Path::new(&dir).join("ui-compare.png"),
        );
    }

    // A filter URL: the runs the store's own SQL picks.
    let want: BTreeSet<String> = p
        .query(
            "SELECT r.id FROM runs r
             JOIN params a ON a.run_id = r.id AND a.key = 'alpha' AND a.value_num >= 0.5
             JOIN params t ON t.run_id = r.id AND t.key = 'temperature' AND t.value_num = 2",
        )
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(want.len(), 2);
    let filtered = dump_dom(
        &browser,
        &format!("{}?filter=alpha+%3E%3D+0.5+and+temperature+%3D+2", ui.url),
    );
    let got: BTreeSet<String> = attr_values(&filtered, "data-run").into_iter().collect();
    assert_eq!(got, want);
    // The API mirrors the page.
    let api: serde_json::Value =
        serde_json::from_str(&ui.get("/api/runs?filter=alpha+%3E%3D+0.5+and+temperature+%3D+2"))
            .expect("json");
    assert_eq!(api["total"], 2);

    // A run's page: its stages (cached or executed), and its metric charts drawn in blue.
    let run = runs
        .iter()
        .max_by_key(|r| r.parse::<i64>().unwrap_or(0))
        .expect("a run");
    let page = dump_dom(&browser, &format!("{}runs/{run}", ui.url));
    assert!(
        page.contains(">cached</td>") && page.contains(">executed</td>"),
        "{page}"
    );
    assert!(
        page.contains("<figure data-metric=\"student.loss\""),
        "a loss chart"
    );
    // Its artifacts: the trace plots inline, served from the results directory.
    let images: Vec<&str> = page
        .split("<img class=\"artifact\" src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(!images.is_empty(), "image artifacts shown inline");
    let served: Vec<String> = images.iter().map(|i| ui.get(i)).collect();
    assert!(
        served.iter().any(|b| b.contains("<svg")),
        "a trace plot's SVG"
    );
    assert!(page.contains("trace-0.svg"), "the trace plot is listed");
    let blue = pixels_near(
        &browser,
        &format!("{}runs/{run}", ui.url),
        &p.path().join("run.png"),
        [31, 119, 180],
    );
    if let Some(dir) = std::env::var_os("KILN_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(p.path().join("run.png"), Path::new(&dir).join("ui-run.png"));
    }
    assert!(blue > 150, "only {blue} blue pixels: no chart drawn");
}

/// A run of pipeline `pipeline` with `params` and `config`, not in an experiment.
async fn bare_run(
    store: &Store,
    pipeline: &str,
    params: &[(&str, serde_json::Value)],
    config: &str,
) -> i64 {
    let pipeline = store
        .pipeline_id(pipeline, "p.yaml", "h")
        .await
        .expect("pipeline");
    store
        .begin_run(&NewRun {
            pipeline_id: pipeline,
            kiln_version: "test".into(),
            host: "test".into(),
            config: config.into(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            ..NewRun::default()
        })
        .await
        .expect("run")
}

/// A store written directly: a run whose param is a script, artifacts inside and outside
/// the results directory, a stage log.
async fn hostile_store(dir: &Path) -> i64 {
    let store = Store::open(&dir.join("results/kiln.sqlite").to_string_lossy())
        .await
        .expect("open");
    let run = bare_run(
        &store,
        "p<b>",
        &[("note", serde_json::json!("<script>alert(1)</script>"))],
        "{\"note\": \"<script>alert(2)</script>\"}",
    )
    .await;
    let entry = dir.join("results/cache/f1");
    std::fs::create_dir_all(&entry).expect("mkdir");
    std::fs::write(entry.join("scores.json"), "{\"a\": \"<i>x</i>\"}").expect("write");
    std::fs::write(entry.join("stage.log"), "stage log line\n").expect("write");
    std::fs::write(dir.join("secret.txt"), "top secret").expect("write");
    let stage = store
        .begin_stage(&NewStageRun {
            run_id: run,
            stage: "s".into(),
            kind: "shell".into(),
            kind_version: 1,
            fingerprint: "f1".into(),
            fingerprint_input: "{}".into(),
            cache_hit: false,
            status: StageStatus::Running,
        })
        .await
        .expect("stage");
    store
        .finish_stage(
            stage,
            StageStatus::Succeeded,
            Some(std::time::Duration::from_millis(5)),
            None,
            Some(&entry.join("stage.log").to_string_lossy()),
        )
        .await
        .expect("finish stage");
    let artifact = |path: String| ArtifactRecord {
        path,
        bytes: 1,
        hash: "h".into(),
    };
    store
        .record_artifacts(
            run,
            "s",
            &[
                artifact(entry.join("scores.json").to_string_lossy().into_owned()),
                artifact("/etc/passwd".into()),
                artifact(format!("{}/../secret.txt", dir.join("results").display())),
            ],
        )
        .await
        .expect("artifacts");
    store
        .finish_run(run, RunStatus::Succeeded)
        .await
        .expect("finish");
    store.close().await;
    run
}

#[test]
fn the_ui_escapes_store_values_serves_no_file_outside_results_and_cannot_write() {
    let p = Project::new();
    let run = runtime().block_on(hostile_store(p.path()));
    let ui = Ui::start(&p, &[]);
    assert!(
        ui.url.starts_with("http://127.0.0.1:"),
        "binds loopback: {}",
        ui.url
    );
    for path in ["/", &format!("/runs/{run}")] {
        let body = ui.get(path);
        assert!(
            !body.contains("<script>alert"),
            "{path} carries the script: {body}"
        );
    }
    // The API keeps the value as it is (JSON, served as application/json, never as a page).
    let api: serde_json::Value = serde_json::from_str(&ui.get("/api/runs")).expect("json");
    assert_eq!(
        api["runs"][0]["params"]["note"],
        "<script>alert(1)</script>"
    );
    let page = ui.get(&format!("/runs/{run}"));
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;")
            || page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("alert(2)"), "the config is shown");
    assert!(
        page.contains("&lt;i&gt;x&lt;"),
        "the JSON artifact is previewed as text"
    );

    // Files: by index, and only inside results/.
    let (status, body) = ui.request("GET", &format!("/runs/{run}/artifacts/0"));
    assert_eq!((status, body.as_str()), (200, "{\"a\": \"<i>x</i>\"}"));
    assert_eq!(ui.get(&format!("/runs/{run}/log/s")), "stage log line\n");
    for (path, want) in [
        (format!("/runs/{run}/artifacts/1"), 403),
        (format!("/runs/{run}/artifacts/2"), 403),
        (
            format!("/runs/{run}/artifacts/..%2F..%2F..%2Fetc%2Fpasswd"),
            404,
        ),
        (format!("/runs/{run}/artifacts/%2Fetc%2Fpasswd"), 404),
        (format!("/runs/{run}/log/..%2F..%2Fsecret.txt"), 404),
        ("/runs/../../etc/passwd".to_owned(), 404),
        ("/..%2F..%2Fetc%2Fpasswd".to_owned(), 404),
    ] {
        let (status, body) = ui.request("GET", &path);
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            !body.contains("root:") && !body.contains("top secret"),
            "{path}"
        );
    }
    // No write endpoint: every route answers GET only.
    for path in ["/", "/api/runs", &format!("/runs/{run}"), "/compare"] {
        for method in ["POST", "PUT", "DELETE"] {
            assert_eq!(ui.request(method, path).0, 405, "{method} {path}");
        }
    }
    // Bad requests are clear errors, escaped.
    let (status, body) = ui.request("GET", "/?filter=alpha+%3C%3E%3Cb%3E");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("column") && !body.contains("<b>"), "{body}");
    let (status, body) = ui.request("GET", "/compare?runs=1");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("compare takes 2 to 20 runs"), "{body}");

    // Only loopback unless told, and then with a warning.
    drop(ui);
    let mut child = p
        .cmd(&["ui", "--port", "0", "--host", "0.0.0.0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln ui");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("read");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("without authentication"), "{line}");

    // The page in a browser: the script is text, never an element.
    if let Some(browser) = chromium() {
        let ui = Ui::start(&p, &[]);
        let dom = dump_dom(&browser, &format!("{}runs/{run}", ui.url));
        assert!(dom.contains("&lt;script&gt;alert(1)"), "shown as text");
        assert!(!dom.contains("<script>alert(1)"));
    }
}

/// A running run's page polls itself (its live part is swapped in every two seconds until
/// the run ends) and each fetch shows the points recorded since.
#[test]
fn a_running_runs_page_polls_and_shows_points_as_they_arrive() {
    let p = Project::new();
    let rt = runtime();
    let url = p.path().join("results/kiln.sqlite");
    let store = rt
        .block_on(Store::open(&url.to_string_lossy()))
        .expect("open");
    let writer = rt.block_on(async {
        let run = bare_run(&store, "p", &[], "{}").await;
        assert_eq!(run, 1);
        store.metric_writer()
    });
    let send = |from: i64, to: i64| {
        rt.block_on(async {
            for step in from..to {
                writer
                    .send(point(1, "train", "loss", step, 1.0 / (step + 1) as f64))
                    .expect("send");
            }
            writer.flush().await.expect("flush");
        });
    };
    send(0, 2);
    let ui = Ui::start(&p, &[]);
    let page = ui.get("/runs/1");
    assert!(
        page.contains("id=\"live\"") && page.contains("setTimeout"),
        "polls"
    );
    assert!(
        page.contains("<td class=\"num\">2</td>"),
        "two points: {page}"
    );
    send(2, 7);
    let page = ui.get("/runs/1");
    assert!(
        page.contains("<td class=\"num\">7</td>"),
        "seven points now: {page}"
    );
    let api: serde_json::Value = serde_json::from_str(&ui.get("/api/runs/1")).expect("json");
    assert_eq!(api["metrics"][0]["points"], 7);
    assert_eq!(api["live"], true);
    rt.block_on(async {
        writer.close().await.expect("close");
        store
            .finish_run(1, RunStatus::Succeeded)
            .await
            .expect("finish");
    });
    let page = ui.get("/runs/1");
    assert!(
        !page.contains("setTimeout"),
        "an ended run's page stops polling"
    );
}

/// The same server on a PostgreSQL store (`--store postgres://…`): the runs page, a filter
/// and a sweep's compare page answer as on SQLite.
#[test]
fn the_ui_serves_a_postgres_store() {
    let rt = runtime();
    let Some(url) = rt.block_on(crate::support::fresh_postgres("ui_server")) else {
        return;
    };
    let made = rt.block_on(async {
        let store = Store::open(&url).await.expect("open");
        let made = populate(&store).await;
        store.close().await;
        made
    });
    let p = Project::new();
    let ui = Ui::start(&p, &["--store", &url]);
    let page = ui.get("/");
    assert_eq!(page.matches("<tr data-run=").count(), 30, "{page}");
    let api: serde_json::Value =
        serde_json::from_str(&ui.get("/api/runs?filter=alpha+%3E%3D+0.5+and+opt+%3D+sgd"))
            .expect("json");
    let want = made
        .iter()
        .filter(|m| m.alpha >= 0.5 && m.opt == "sgd")
        .count();
    assert_eq!(api["total"], want);
    let ids: Vec<String> = made.iter().take(4).map(|m| m.id.to_string()).collect();
    let compare = ui.get(&format!("/compare?runs={}", ids.join(",")));
    for key in ["alpha", "opt"] {
        assert!(
            compare.contains(&format!("<tr class=\"param\" data-key=\"{key}\">")),
            "{key}"
        );
    }
    assert!(
        !compare.contains("data-key=\"steps\""),
        "steps is the same in every run"
    );
    assert!(compare.contains("<polyline"), "the loss curves");
}
