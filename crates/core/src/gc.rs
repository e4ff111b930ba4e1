//! `kiln gc`: removes from `results/` what no kept run needs.
//!
//! What stays (see the README's "Caching" section):
//!
//! - **Kept runs.** By default every succeeded run and the latest run of each (pipeline,
//!   configuration); with `--keep-last N`, the N most recent runs of each pipeline instead.
//!   A run in progress is always kept.
//! - **Cache entries** (`results/cache/F/`) that a kept run's stage recorded with fingerprint
//!   `F`, and every fingerprint of the plan of a run in progress (computed from the
//!   fingerprint inputs in `runs.config`, so the stages it has not reached yet count too).
//! - **State** (`results/state/F/`) of a kept fingerprint whose entry does not exist yet
//!   (what a failed or killed stage resumes from).
//! - **Failed stages' directories** (`results/failed/…`) that a kept run's stage logged to.
//! - **Temporary directories** (`results/cache/.tmp/F.PID.N/`) while process `PID` runs.
//! - **Downloads** (`results/downloads/`): shared sources no fingerprint names; only removed
//!   with `--older-than`, and never while a run is in progress. Partial downloads of a
//!   process that has ended are removed.
//!
//! A run `running` in the store is in progress unless it was recorded on this host with a
//! process id and that process has ended (a killed kiln). While any run in progress has a
//! plan gc cannot read, no entry or state is removed at all.
//!
//! `--older-than D` further spares anything used within `D`: for an entry, the latest of its
//! creation and of any stage row that recorded it; for state, that row or its files'
//! modification; for other files, their modification (downloads: or access) time.
//!
//! Removal is safe against runs that start meanwhile: gc decides from a first look at the
//! store, then takes the store's write lock ([`kiln_store::GcLock`]), looks again, and moves
//! what is still unneeded into `results/.gc-trash.PID/` before releasing the lock; the moved
//! files are deleted after. A run records itself before its first cache lookup and that
//! write waits for the lock, so it either is seen under the lock or finds the entry gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_store::{GcRun, GcSnapshot, Store};

use crate::cache::{Cache, process_alive};
use crate::error::{Error, Result};
use crate::fingerprint::FingerprintInput;

/// How `kiln gc` decides.
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Keep the entries of the N most recent runs of each pipeline (instead of every
    /// succeeded run and the latest run of each configuration).
    pub keep_last: Option<usize>,
    /// Only remove what was not used for this long.
    pub older_than: Option<Duration>,
    /// List what would go; remove nothing.
    pub dry_run: bool,
    /// This machine's host name: a run recorded here with a process id is in progress only
    /// while that process runs.
    pub host: String,
}

/// The kinds of directories gc looks at.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `results/cache/F/`: complete cache entries.
    Cache,
    /// `results/state/F/`: resumable stage state.
    State,
    /// `results/failed/…`: failed stages' directories and logs.
    Failed,
    /// `results/downloads/`: downloaded sources.
    Downloads,
    /// `results/cache/.tmp/…`, `results/.gc-trash.PID/`: what ended processes left.
    Tmp,
}

impl Kind {
    /// Every kind, in display order.
    pub const ALL: [Self; 5] = [
        Self::Cache,
        Self::State,
        Self::Failed,
        Self::Downloads,
        Self::Tmp,
    ];

    /// Its name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::State => "state",
            Self::Failed => "failed",
            Self::Downloads => "downloads",
            Self::Tmp => "tmp",
        }
    }
}

/// Something gc removed (or, in a dry run, would remove).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcItem {
    /// Its kind.
    pub kind: Kind,
    /// Its path.
    pub path: PathBuf,
    /// What it is: the stage and short fingerprint of an entry, else its name.
    pub label: String,
    /// Its size (the sum of its files' lengths).
    pub bytes: u64,
    /// Why it may go.
    pub why: String,
}

/// A count and a size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// What gc did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcReport {
    /// Nothing was removed: `removed` is what would have been.
    pub dry_run: bool,
    /// What was removed.
    pub removed: Vec<GcItem>,
    /// What stays, by kind.
    pub kept: BTreeMap<Kind, Tally>,
    /// Runs in progress (their plans' entries and state stay).
    pub in_progress: Vec<i64>,
    /// Things worth saying (e.g. why nothing fingerprinted was removed).
    pub notes: Vec<String>,
}

impl GcReport {
    /// What was removed, by kind.
    pub fn removed_by_kind(&self) -> BTreeMap<Kind, Tally> {
        let mut out = BTreeMap::new();
        for item in &self.removed {
            out.entry(item.kind)
                .or_insert_with(Tally::default)
                .add(item.bytes);
        }
        out
    }

    /// Bytes removed in all.
    pub fn freed(&self) -> u64 {
        self.removed.iter().map(|i| i.bytes).sum()
    }
}

/// What the store says must stay.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    /// Fingerprints a kept run recorded: their entries stay.
    pub fingerprints: HashSet<String>,
    /// Fingerprints a run in progress (or a live temporary directory) may still read or
    /// write: nothing of theirs is touched.
    pub in_use: HashSet<String>,
    /// Names of `results/failed/` directories a kept run's stage logged to.
    pub failed_dirs: HashSet<String>,
    /// Runs in progress.
    pub in_progress: Vec<i64>,
    /// Runs in progress whose plan could not be read.
    pub unknown_plans: Vec<i64>,
    /// The latest recorded use of each fingerprint.
    pub last_used: HashMap<String, SystemTime>,
}

/// Works out what must stay from the store's `snapshot`; `alive` says whether a `running`
/// run is still in progress.
pub fn decide(
    snapshot: &GcSnapshot,
    keep_last: Option<usize>,
    alive: &dyn Fn(&GcRun) -> bool,
) -> Keep {
    let mut keep = Keep::default();
    let in_progress: Vec<&GcRun> = snapshot
        .runs
        .iter()
        .filter(|r| r.status == "running" && alive(r))
        .collect();
    let mut kept_runs = policy_runs(&snapshot.runs, keep_last);
    for run in &in_progress {
        kept_runs.insert(run.id);
        keep.in_progress.push(run.id);
        match run.config.as_deref().and_then(plan_fingerprints) {
            Some(fps) => keep.in_use.extend(fps),
            None => keep.unknown_plans.push(run.id),
        }
    }
    for stage in &snapshot.stages {
        if keep.in_progress.contains(&stage.run_id) {
            keep.in_use.insert(stage.fingerprint.clone());
        }
        if kept_runs.contains(&stage.run_id) {
            keep.fingerprints.insert(stage.fingerprint.clone());
            if let Some(name) = stage.log_path.as_deref().and_then(failed_dir_name) {
                keep.failed_dirs.insert(name);
            }
        }
    }
    keep.fingerprints.extend(keep.in_use.iter().cloned());
    keep.last_used = snapshot
        .last_used
        .iter()
        .filter_map(|(fp, t)| Some((fp.clone(), parse_time(t)?)))
        .collect();
    keep
}

/// The runs the policy keeps (runs in progress aside): the N most recent of each pipeline,
/// or every succeeded run and the latest of each (pipeline, configuration).
fn policy_runs(runs: &[GcRun], keep_last: Option<usize>) -> HashSet<i64> {
    let mut kept = HashSet::new();
    if let Some(n) = keep_last {
        let mut by_pipeline: HashMap<&str, Vec<i64>> = HashMap::new();
        for r in runs {
            by_pipeline.entry(&r.pipeline).or_default().push(r.id);
        }
        for ids in by_pipeline.values_mut() {
            ids.sort_unstable_by(|a, b| b.cmp(a));
            kept.extend(ids.iter().take(n));
        }
        return kept;
    }
    let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
    for r in runs {
        if r.status == "succeeded" {
            kept.insert(r.id);
        }
        let id = latest.entry((&r.pipeline, &r.config_hash)).or_insert(r.id);
        *id = (*id).max(r.id);
    }
    kept.extend(latest.values());
    kept
}

/// Every stage fingerprint of a run's plan, from its resolved configuration (`runs.config`:
/// `{"stages": {name: fingerprint input}}`); `None` when it cannot be read. A configuration
/// without stages (e.g. `kiln bench`'s) has none.
pub fn plan_fingerprints(config: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(config).ok()?;
    let Some(stages) = value.get("stages") else {
        return Some(Vec::new());
    };
    stages
        .as_object()?
        .values()
        .map(|input| {
            serde_json::from_value::<FingerprintInput>(input.clone())
                .ok()
                .map(|i| i.fingerprint())
        })
        .collect()
}

/// Whether a `running` run is still in progress: only a run recorded on `host` with a
/// process id can be known to have ended (its process is gone).
pub fn run_alive(run: &GcRun, host: &str) -> bool {
    match run.pid {
        Some(pid) if run.host == host => u32::try_from(pid).map_or(true, process_alive),
        _ => true,
    }
}

/// The name of the `results/failed/` directory a stage's log lies in, if it does.
fn failed_dir_name(log_path: &str) -> Option<String> {
    let dir = Path::new(log_path).parent()?;
    let parent = dir.parent()?.file_name()?;
    (parent == "failed").then(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))?
}

/// A store timestamp (UTC, `YYYY-MM-DD HH:MM:SS.mmm`) as a time.
fn parse_time(text: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(SystemTime::from(t.and_utc()))
}

/// Whether `name` is a fingerprint (64 lowercase hex digits).
fn is_fingerprint(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses an age: a number and a unit, `s`, `m`, `h`, `d` or `w` (`90s`, `12h`, `7d`,
/// `1.5h`).
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_age(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?}: give a unit: s, m, h, d or w (e.g. 7d, 12h)"))?;
    let (number, unit) = text.split_at(split);
    let seconds = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m, h, d or w)")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number before the unit"))?;
    Duration::try_from_secs_f64(n * seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Looks through `results`, decides with the store what may go, and (unless
/// `opts.dry_run`) removes it; see the module docs.
///
/// # Errors
/// When the store cannot be read or locked, or a directory of `results` cannot be listed.
/// What cannot be removed is reported in the notes, not as an error.
pub async fn gc(results: &Path, store: &Store, opts: &GcOptions) -> Result<GcReport> {
    let found = scan(results)?;
    let snapshot = store.gc_snapshot().await?;
    let keep = keep_for(results, &snapshot, opts);
    let (candidates, mut kept) = judge(found, &keep, opts);
    if opts.dry_run {
        let removed = candidates.into_iter().map(|(f, why)| f.item(why)).collect();
        return Ok(report(true, removed, kept, &keep, opts));
    }
    let mut notes = Vec::new();
    let mut lock = store.gc_lock().await?;
    let snapshot = lock.snapshot().await?;
    let keep = keep_for(results, &snapshot, opts);
    let (still, spared) = judge(
        candidates.into_iter().map(|(f, _)| f).collect(),
        &keep,
        opts,
    );
    for (kind, tally) in spared {
        let k = kept.entry(kind).or_default();
        k.count += tally.count;
        k.bytes += tally.bytes;
    }
    let trash = results.join(format!(".gc-trash.{}", std::process::id()));
    let removed = move_out(still, &trash, &mut kept, &mut notes);
    lock.release().await?;
    if trash.exists()
        && let Err(e) = fs::remove_dir_all(&trash)
    {
        notes.push(format!(
            "cannot delete {} ({e}); the next kiln gc removes it",
            trash.display()
        ));
    }
    let mut report = report(false, removed, kept, &keep, opts);
    report.notes.extend(notes);
    Ok(report)
}

fn report(
    dry_run: bool,
    removed: Vec<GcItem>,
    kept: BTreeMap<Kind, Tally>,
    keep: &Keep,
    opts: &GcOptions,
) -> GcReport {
    let mut notes = Vec::new();
    if !keep.unknown_plans.is_empty() {
        notes.push(format!(
            "run(s) {:?} in progress have a plan gc cannot read: no cache entry or state was removed",
            keep.unknown_plans
        ));
    }
    let downloads = kept.get(&Kind::Downloads).map_or(0, |t| t.count);
    if downloads > 0 && opts.older_than.is_none() {
        notes.push("downloads are only removed with --older-than".into());
    } else if downloads > 0 && !keep.in_progress.is_empty() {
        notes.push("downloads were left alone: runs are in progress".into());
    }
    GcReport {
        dry_run,
        removed,
        kept,
        in_progress: keep.in_progress.clone(),
        notes,
    }
}

/// What must stay: the store's view plus the fingerprints live temporary directories hold
/// (stages of runs executing, whether or not they record into this store).
fn keep_for(results: &Path, snapshot: &GcSnapshot, opts: &GcOptions) -> Keep {
    let mut keep = decide(snapshot, opts.keep_last, &|r| run_alive(r, &opts.host));
    let tmp = Cache::new(results).root().join(".tmp");
    for (name, _) in list(&tmp).unwrap_or_default() {
        let fp = name.split('.').next().unwrap_or_default();
        let live = crate::cache::local_tmp_pid(&name).is_none_or(|pid| ended(pid).is_none());
        if is_fingerprint(fp) && live {
            keep.in_use.insert(fp.to_owned());
            keep.fingerprints.insert(fp.to_owned());
        }
    }
    keep
}

/// Splits what was found into what may go (with why) and what stays (tallied by kind).
fn judge(
    found: Vec<Found>,
    keep: &Keep,
    opts: &GcOptions,
) -> (Vec<(Found, String)>, BTreeMap<Kind, Tally>) {
    let judge = Judge {
        keep,
        cutoff: opts
            .older_than
            .and_then(|d| SystemTime::now().checked_sub(d)),
        older_than: opts.older_than.is_some(),
    };
    let mut go = Vec::new();
    let mut kept: BTreeMap<Kind, Tally> = BTreeMap::new();
    for f in found {
        match judge.why(&f) {
            Some(why) => go.push((f, why)),
            None => kept.entry(f.kind).or_default().add(f.bytes),
        }
    }
    (go, kept)
}

/// Moves each item into `trash` (removing it in place where it cannot be moved).
fn move_out(
    items: Vec<(Found, String)>,
    trash: &Path,
    kept: &mut BTreeMap<Kind, Tally>,
    notes: &mut Vec<String>,
) -> Vec<GcItem> {
    let have_trash = !items.is_empty() && fs::create_dir_all(trash).is_ok();
    let mut removed = Vec::new();
    for (n, (f, why)) in items.into_iter().enumerate() {
        if have_trash && fs::rename(&f.path, trash.join(n.to_string())).is_ok() {
            removed.push(f.item(why));
            continue;
        }
        let result = if f.path.is_dir() {
            fs::remove_dir_all(&f.path)
        } else {
            fs::remove_file(&f.path)
        };
        match result {
            Ok(()) => removed.push(f.item(why)),
            // Gone meanwhile: nothing to remove, nothing freed by gc.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                notes.push(format!("cannot remove {}: {e}", f.path.display()));
                kept.entry(f.kind).or_default().add(f.bytes);
            }
        }
    }
    removed
}

/// One thing found under `results/`, with what gc judges it by.
#[derive(Debug, Clone)]
struct Found {
    kind: Kind,
    path: PathBuf,
    /// Its file name.
    name: String,
    label: String,
    bytes: u64,
    /// When its files were last written (a download's: or read).
    touched: Option<SystemTime>,
    /// An entry's `created_at`.
    created: Option<SystemTime>,
    /// The process a temporary directory or partial download belongs to.
    pid: Option<u32>,
    /// For a state directory: whether its stage's entry exists.
    finished: bool,
}

impl Found {
    fn new(kind: Kind, path: PathBuf, name: String) -> Self {
        let (bytes, touched) = tree(&path);
        Self {
            kind,
            label: name.clone(),
            path,
            name,
            bytes,
            touched,
            created: None,
            pid: None,
            finished: false,
        }
    }

    fn item(self, why: String) -> GcItem {
        GcItem {
            kind: self.kind,
            path: self.path,
            label: self.label,
            bytes: self.bytes,
            why,
        }
    }
}

/// The rules of the module docs, for one found thing.
struct Judge<'a> {
    keep: &'a Keep,
    cutoff: Option<SystemTime>,
    older_than: bool,
}

impl Judge<'_> {
    /// Why `f` may go, or `None` when it stays.
    fn why(&self, f: &Found) -> Option<String> {
        match (f.kind, f.pid) {
            (Kind::Tmp, pid) => ended(pid?),
            (Kind::Downloads, Some(pid)) => ended(pid).map(|w| format!("partial download {w}")),
            (Kind::Downloads, None) => {
                let unused = self.cutoff.is_some()
                    && self.keep.in_progress.is_empty()
                    && self.old_enough(f.touched);
                unused.then(|| "not used within --older-than".to_owned())
            }
            (Kind::Cache | Kind::State, _) => self.unneeded_fingerprint(f),
            (Kind::Failed, _) => self.unneeded_failed(f),
        }
    }

    fn old_enough(&self, used: Option<SystemTime>) -> bool {
        match (self.cutoff, used) {
            (None, _) => true,
            (Some(cutoff), Some(used)) => used <= cutoff,
            (Some(_), None) => false,
        }
    }

    fn unneeded_fingerprint(&self, f: &Found) -> Option<String> {
        let (keep, fp) = (self.keep, f.name.as_str());
        if !keep.unknown_plans.is_empty() || keep.in_use.contains(fp) {
            return None;
        }
        let finished_state = f.kind == Kind::State && f.finished;
        if keep.fingerprints.contains(fp) && !finished_state {
            return None;
        }
        // An entry is used when made and when a stage row records it; state, when written.
        let recorded = f.created.max(keep.last_used.get(fp).copied());
        let used = match f.kind {
            Kind::Cache => recorded.or(f.touched),
            _ => recorded.max(f.touched),
        };
        if !self.old_enough(used) {
            return None;
        }
        let why = match f.kind {
            Kind::State if finished_state => "its stage finished",
            Kind::State => "no kept run resumes from it",
            _ => "no kept run references it",
        };
        Some(self.with_age(why))
    }

    fn unneeded_failed(&self, f: &Found) -> Option<String> {
        let keep = self.keep;
        if keep.failed_dirs.contains(&f.name) || !keep.unknown_plans.is_empty() {
            return None;
        }
        // A stage of a run in progress may have just moved here: NAME is STAGE-FP12-STAMP.
        let short = f.name.rsplit('-').nth(1).unwrap_or_default();
        if short.len() == 12 && keep.in_use.iter().any(|fp| fp.starts_with(short)) {
            return None;
        }
        self.old_enough(f.touched)
            .then(|| self.with_age("no kept run logged to it"))
    }

    fn with_age(&self, why: &str) -> String {
        if self.older_than {
            format!("{why}, unused within --older-than")
        } else {
            why.to_owned()
        }
    }
}

/// Why a process's leftovers may go: it has ended.
fn ended(pid: u32) -> Option<String> {
    (pid != std::process::id() && !process_alive(pid))
        .then(|| format!("left by process {pid}, which has ended"))
}

/// Everything gc weighs under `results` (see the module docs).
fn scan(results: &Path) -> Result<Vec<Found>> {
    let cache = Cache::new(results);
    let mut found = Vec::new();
    for (name, path) in list(cache.root())? {
        if is_fingerprint(&name) && path.is_dir() {
            let entry = cache.lookup(&name);
            let mut f = Found::new(Kind::Cache, path, name.clone());
            let stage = entry.as_ref().map_or("(incomplete)", |e| e.stage.as_str());
            f.label = format!("{stage} {}", &name[..12]);
            f.created = entry.and_then(|e| parse_time(&e.created_at));
            found.push(f);
        }
    }
    for (name, path) in list(&cache.root().join(".tmp"))? {
        let mut f = Found::new(Kind::Tmp, path, name.clone());
        f.pid = crate::cache::local_tmp_pid(&name);
        found.push(f);
    }
    for (name, path) in list(results)? {
        if let Some(pid) = name.strip_prefix(".gc-trash.") {
            let mut f = Found::new(Kind::Tmp, path, name.clone());
            f.pid = pid.parse().ok();
            found.push(f);
        }
    }
    if let Some(state) = cache.state_dir("x").parent() {
        for (name, path) in list(state)? {
            if is_fingerprint(&name) {
                let mut f = Found::new(Kind::State, path, name.clone());
                f.finished = cache.lookup(&name).is_some();
                f.label = name[..12].to_owned();
                found.push(f);
            }
        }
    }
    for (name, path) in list(cache.failed_dir())? {
        if !name.starts_with('.') {
            found.push(Found::new(Kind::Failed, path, name));
        }
    }
    downloads(&cache.downloads_dir(), &cache.downloads_dir(), &mut found);
    Ok(found)
}

/// Every file under `dir` (a download each); `.NAME.PID` is one still being written.
fn downloads(root: &Path, dir: &Path, found: &mut Vec<Found>) {
    for (name, path) in list(dir).unwrap_or_default() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            downloads(root, &path, found);
        } else if meta.is_file() {
            let mut f = Found::new(Kind::Downloads, path.clone(), name.clone());
            f.label = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            f.touched = f.touched.max(meta.accessed().ok());
            f.pid = name
                .strip_prefix('.')
                .filter(|rest| rest.contains('.'))
                .and_then(|rest| rest.rsplit('.').next()?.parse().ok());
            found.push(f);
        }
    }
}

/// The entries of `dir` (none when it does not exist).
fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Cache {
                what: "cannot list",
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    Ok(out)
}

/// The total length of the files under `path` and the latest modification time in it.
/// Symbolic links are not followed.
fn tree(path: &Path) -> (u64, Option<SystemTime>) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return (0, None);
    };
    let mut bytes = if meta.is_file() { meta.len() } else { 0 };
    let mut newest = meta.modified().ok();
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for entry in entries.flatten() {
            let (b, t) = tree(&entry.path());
            bytes += b;
            newest = newest.max(t);
        }
    }
    (bytes, newest)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kiln_store::GcStageRef;
    use serde_json::json;

    use super::*;

    fn run(id: i64, pipeline: &str, config_hash: &str, status: &str) -> GcRun {
        GcRun {
            id,
            pipeline: pipeline.into(),
            config_hash: config_hash.into(),
            status: status.into(),
            host: "here".into(),
            pid: None,
            config: None,
        }
    }

    fn stage(run_id: i64, fingerprint: &str, log_path: Option<&str>) -> GcStageRef {
        GcStageRef {
            run_id,
            fingerprint: fingerprint.into(),
            log_path: log_path.map(Into::into),
        }
    }

    fn input(run: &str) -> FingerprintInput {
        FingerprintInput {
            kind: "shell".into(),
            kind_version: 1,
            params: BTreeMap::from([("run".into(), json!(run)), ("alpha".into(), json!(0.1))]),
            needs: BTreeMap::new(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    fn sorted(set: &HashSet<String>) -> Vec<&str> {
        let mut v: Vec<&str> = set.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Runs of pipeline p: 1 succeeded (config a), 2 and 3 failed (config b, 3 the latest),
    /// 4 running and alive (pipeline q), 5 running but its process gone (config c).
    fn snapshot() -> GcSnapshot {
        let mut alive = run(4, "q", "d", "running");
        alive.config = Some(json!({"stages": {"late": input("echo late")}}).to_string());
        GcSnapshot {
            runs: vec![
                run(1, "p", "a", "succeeded"),
                run(2, "p", "b", "failed"),
                run(3, "p", "b", "failed"),
                alive,
                run(5, "p", "c", "running"),
            ],
            stages: vec![
                stage(1, "f1", Some("results/cache/f1/stage.log")),
                stage(
                    2,
                    "f2",
                    Some("results/failed/s-f2-20250101T000000.000/stage.log"),
                ),
                stage(
                    3,
                    "f3",
                    Some("/abs/results/failed/s-f3-20250102T000000.000/stage.log"),
                ),
                stage(4, "f4", None),
                stage(5, "f5", None),
            ],
            last_used: vec![("f1".into(), "2025-01-02 03:04:05.678".into())],
        }
    }

    #[test]
    fn default_keeps_succeeded_latest_per_config_and_in_progress_runs() {
        let keep = decide(&snapshot(), None, &|r| r.id == 4);
        let late = input("echo late").fingerprint();
        let mut expected = vec!["f1", "f3", "f4", "f5", late.as_str()];
        expected.sort_unstable();
        assert_eq!(sorted(&keep.fingerprints), expected, "run 2 is neither");
        let mut in_use = vec!["f4", late.as_str()];
        in_use.sort_unstable();
        assert_eq!(sorted(&keep.in_use), in_use);
        assert_eq!(keep.in_progress, vec![4]);
        assert!(keep.unknown_plans.is_empty());
        assert_eq!(sorted(&keep.failed_dirs), vec!["s-f3-20250102T000000.000"]);
        let expected_time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        assert_eq!(keep.last_used.get("f1"), Some(&expected_time));
    }

    #[test]
    fn keep_last_keeps_the_latest_runs_of_each_pipeline() {
        let keep = decide(&snapshot(), Some(1), &|r| r.id == 4);
        let late = input("echo late").fingerprint();
        let mut expected = vec!["f4", "f5", late.as_str()];
        expected.sort_unstable();
        assert_eq!(sorted(&keep.fingerprints), expected);
        let keep = decide(&snapshot(), Some(0), &|_| false);
        assert!(keep.fingerprints.is_empty(), "{:?}", keep.fingerprints);
        assert!(keep.in_progress.is_empty());
        let keep = decide(&snapshot(), Some(2), &|_| false);
        assert_eq!(sorted(&keep.fingerprints), vec!["f3", "f4", "f5"]);
    }

    #[test]
    fn a_run_in_progress_with_an_unreadable_plan_is_reported() {
        let mut snap = snapshot();
        snap.runs[3].config = Some("not json".into());
        let keep = decide(&snap, None, &|r| r.id == 4);
        assert_eq!(keep.unknown_plans, vec![4]);
        let judge = Judge {
            keep: &keep,
            cutoff: None,
            older_than: false,
        };
        let orphan = Found::new(Kind::Cache, PathBuf::from("/nonexistent"), "f9".into());
        assert_eq!(judge.why(&orphan), None, "nothing fingerprinted goes then");
    }

    #[test]
    fn plan_fingerprints_come_from_the_configuration() {
        let config = json!({
            "pipeline": "p",
            "params": {},
            "stages": {"a": input("echo a"), "b": input("echo b")},
        });
        let mut got = plan_fingerprints(&config.to_string()).expect("readable");
        got.sort_unstable();
        let mut expected = vec![input("echo a").fingerprint(), input("echo b").fingerprint()];
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(plan_fingerprints("{\"rows\": 3}"), Some(Vec::new()));
        assert_eq!(plan_fingerprints("{\"stages\": {\"a\": 1}}"), None);
        assert_eq!(plan_fingerprints("nope"), None);
    }

    #[test]
    fn judging_state_failed_and_tmp() {
        let keep = decide(&snapshot(), None, &|r| r.id == 4);
        let judge = Judge {
            keep: &keep,
            cutoff: None,
            older_than: false,
        };
        let found = |kind, name: &str| Found::new(kind, PathBuf::from("/nonexistent"), name.into());
        let mut state = found(Kind::State, "f3");
        assert_eq!(judge.why(&state), None, "a kept run may resume from it");
        state.finished = true;
        assert_eq!(judge.why(&state).as_deref(), Some("its stage finished"));
        let mut in_use = found(Kind::State, "f4");
        in_use.finished = true;
        assert_eq!(judge.why(&in_use), None, "a run in progress holds it");
        assert_eq!(
            judge.why(&found(Kind::Failed, "s-f3-20250102T000000.000")),
            None
        );
        assert_eq!(
            judge
                .why(&found(Kind::Failed, "s-f2-20250101T000000.000"))
                .as_deref(),
            Some("no kept run logged to it")
        );
        let mut mine = found(Kind::Tmp, "f4.1.0");
        mine.pid = Some(std::process::id());
        assert_eq!(judge.why(&mine), None);
        let mut gone = found(Kind::Tmp, "f4.1.0");
        gone.pid = Some(ended_pid());
        assert!(judge.why(&gone).is_some_and(|w| w.contains("has ended")));
        let download = found(Kind::Downloads, "x.csv");
        assert_eq!(judge.why(&download), None, "only with --older-than");
    }

    #[test]
    fn older_than_spares_what_was_used_recently() {
        let keep = decide(&snapshot(), None, &|_| false);
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        let judge = Judge {
            keep: &keep,
            cutoff: now.checked_sub(day),
            older_than: true,
        };
        let mut orphan = Found::new(Kind::Cache, PathBuf::from("/nonexistent"), "f9".into());
        orphan.created = now.checked_sub(Duration::from_secs(3600));
        assert_eq!(judge.why(&orphan), None, "made an hour ago");
        orphan.created = now.checked_sub(2 * day);
        assert_eq!(
            judge.why(&orphan).as_deref(),
            Some("no kept run references it, unused within --older-than")
        );
        orphan.created = None;
        assert_eq!(judge.why(&orphan), None, "no time known: it stays");
    }

    #[test]
    fn runs_elsewhere_or_without_a_pid_count_as_alive() {
        let mut r = run(1, "p", "a", "running");
        assert!(run_alive(&r, "here"), "no pid recorded");
        r.pid = Some(i64::from(ended_pid()));
        assert!(!run_alive(&r, "here"), "its process has ended");
        assert!(
            run_alive(&r, "elsewhere"),
            "another host's pid says nothing"
        );
        r.pid = Some(i64::from(std::process::id()));
        assert!(run_alive(&r, "here"));
    }

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_age("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(1_209_600)));
        assert_eq!(parse_age(" 30m "), Ok(Duration::from_secs(1_800)));
        for bad in ["7", "7x", "d", "", "-1d", "1..5h"] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
    }

    /// The id of a process that has ended (a `true` that was waited for).
    fn ended_pid() -> u32 {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id();
        child.wait().expect("true ends");
        pid
    }
}
