//! One stage's execution, on a blocking thread: a fresh temporary directory in the cache,
//! stage references resolved to the needs' directories, the kind run with a
//! [`StageContext`], then either committed as the fingerprint's cache entry or kept under
//! `results/failed/` with its log.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_store::ArtifactRecord;

use super::ExecOptions;
use crate::cache::{Cache, EntryRecord, LOG_FILE};
use crate::interp;
use crate::plan::PlannedStage;
use crate::stage::{MetricSink, Progress, StageContext};

/// What a stage thread hands back.
pub(super) struct Executed {
    pub index: usize,
    /// The committed entry, or the error.
    pub ok: std::result::Result<PathBuf, String>,
    pub log: PathBuf,
    pub elapsed: Duration,
    pub artifacts: Vec<ArtifactRecord>,
}

/// Everything a stage thread needs, owned.
pub(super) struct Job {
    pub index: usize,
    pub stage: PlannedStage,
    pub metrics: MetricSink,
    /// The needs' output directories, by name.
    pub needs: BTreeMap<String, PathBuf>,
    /// Every stage's declared outputs (for `${stages.X.outputs.Y}`).
    pub outputs_of: BTreeMap<String, BTreeMap<String, String>>,
    pub gpus: Vec<u32>,
}

/// Builds the closure that executes `job` on a blocking thread.
pub(super) fn prepare(job: Job, opts: &ExecOptions) -> impl FnOnce() -> Executed + Send + 'static {
    let cache = opts.cache.clone();
    let kind = opts.registry.get(&job.stage.kind);
    let reporter = opts.reporter.clone();
    let cancel = opts.cancel.clone();
    let workdir = opts.workdir.clone();
    move || {
        let started = Instant::now();
        let Job {
            index,
            stage,
            metrics,
            needs,
            outputs_of,
            gpus,
        } = job;
        let fail = |log: PathBuf, message: String| Executed {
            index,
            ok: Err(message),
            log,
            elapsed: started.elapsed(),
            artifacts: Vec::new(),
        };
        let tmp = match cache.begin(&stage.fingerprint) {
            Ok(t) => t,
            Err(e) => return fail(PathBuf::new(), super::error_chain(&e)),
        };
        let keep = |message: String| {
            let kept = cache.keep_failed(&tmp, &stage.name, &stage.fingerprint);
            fail(kept.join(LOG_FILE), message)
        };
        let log_path = tmp.join(LOG_FILE);
        let log = std::fs::File::create(&log_path).ok();
        let Some(kind) = kind else {
            return keep(format!("unknown stage kind {:?}", stage.kind));
        };
        let (params, inputs) = match resolve(&stage, &needs, &outputs_of, &workdir) {
            Ok(resolved) => resolved,
            Err(message) => return keep(message),
        };
        let mut ctx = StageContext {
            stage: stage.name.clone(),
            params,
            inputs,
            needs,
            out_dir: tmp.clone(),
            outputs: stage
                .outputs
                .iter()
                .map(|(k, rel)| (k.clone(), tmp.join(rel)))
                .collect(),
            downloads: cache.downloads_dir(),
            state_dir: cache.state_dir(&stage.fingerprint),
            workdir,
            metrics: metrics.clone(),
            progress: Progress::new(&stage.name, reporter),
            gpus,
            cancel,
            log_path: log_path.clone(),
            log: Mutex::new(log),
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| kind.run(&mut ctx)));
        drop(ctx);
        let outcome = match result {
            Ok(Ok(())) => missing_output(&stage, &tmp),
            Ok(Err(e)) => Err(super::error_chain(e.as_ref())),
            Err(panic) => Err(panic_message(panic.as_ref())),
        };
        if let Err(message) = outcome {
            append_log(&log_path, &format!("kiln: stage failed: {message}"));
            return keep(message);
        }
        let elapsed = started.elapsed();
        match commit(&cache, &tmp, &stage, elapsed, &metrics) {
            Ok((dir, artifacts)) => Executed {
                index,
                log: dir.join(LOG_FILE),
                ok: Ok(dir),
                elapsed,
                artifacts,
            },
            Err(message) => keep(message),
        }
    }
}

/// A stage's resolved params and inputs.
type Resolved = (
    BTreeMap<String, serde_json::Value>,
    BTreeMap<String, PathBuf>,
);

/// A stage's params and inputs, with stage references turned into the needs' real paths.
fn resolve(
    stage: &PlannedStage,
    needs: &BTreeMap<String, PathBuf>,
    outputs_of: &BTreeMap<String, BTreeMap<String, String>>,
    workdir: &Path,
) -> std::result::Result<Resolved, String> {
    let mut params = BTreeMap::new();
    for (k, v) in &stage.params {
        let v = interp::substitute_stages(v, needs, outputs_of)
            .map_err(|m| format!("with.{k}: {m}"))?;
        params.insert(k.clone(), v);
    }
    let mut inputs = BTreeMap::new();
    for (k, text) in &stage.inputs {
        let v =
            interp::substitute_stages(&serde_json::Value::String(text.clone()), needs, outputs_of)
                .map_err(|m| format!("inputs.{k}: {m}"))?;
        inputs.insert(k.clone(), workdir.join(crate::value::display(&v)));
    }
    Ok((params, inputs))
}

/// The first declared output the stage did not write, as an error.
fn missing_output(stage: &PlannedStage, tmp: &Path) -> std::result::Result<(), String> {
    stage
        .outputs
        .iter()
        .find(|(_, rel)| !tmp.join(rel).exists())
        .map_or(Ok(()), |(name, rel)| {
            Err(format!("declared output {name:?} ({rel}) was not written"))
        })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    format!(
        "panicked: {}",
        panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)")
    )
}

/// Commits `tmp` as the fingerprint's entry (with its metrics and artifact list) and drops
/// the resume state, which a finished stage no longer needs.
fn commit(
    cache: &Cache,
    tmp: &Path,
    stage: &PlannedStage,
    elapsed: Duration,
    metrics: &MetricSink,
) -> std::result::Result<(PathBuf, Vec<ArtifactRecord>), String> {
    let committed = Cache::artifacts(tmp).and_then(|artifacts| {
        let record = EntryRecord {
            stage: stage.name.clone(),
            fingerprint_input: stage.fingerprint_input.clone(),
            created_at: kiln_store::now(),
            seconds: elapsed.as_secs_f64(),
            artifacts: artifacts.clone(),
        };
        cache
            .commit(tmp, &stage.fingerprint, &record, &metrics.recorded())
            .map(|dir| (dir, artifacts))
    });
    match committed {
        Ok(done) => {
            let state = cache.state_dir(&stage.fingerprint);
            if state.exists() {
                let _ = std::fs::remove_dir_all(&state);
            }
            Ok(done)
        }
        Err(e) => Err(super::error_chain(&e)),
    }
}

fn append_log(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}
