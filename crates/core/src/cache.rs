//! The content-addressed stage cache under `results/cache/`.
//!
//! A stage with fingerprint `F` keeps its outputs in `results/cache/F/`. The rule that keeps
//! the cache honest: **a stage writes only into a temporary directory**
//! (`results/cache/.tmp/F.<pid>.<n>/`), and only after it succeeds, its outputs are checked
//! and kiln's own record is written (`.kiln/entry.json`, `.kiln/metrics.jsonl`), is that
//! directory renamed to `results/cache/F/`. A rename within one file system is atomic, so an
//! entry either exists complete or not at all: a stage killed mid-way (Ctrl-C, `kill -9`, a
//! power cut) leaves only a temporary directory, which the next run removes once its process
//! is gone. A failed stage's directory moves to `results/failed/` so its log can be read.
//!
//! Input hashes are memoized in the results store by (path, size, mtime, inode) ([`HashMemo`]),
//! so an unchanged multi-gigabyte input is not re-read on every run; the mtime never enters a
//! fingerprint.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::collections::HashMap;

use kiln_store::{ArtifactRecord, FileHash};

use crate::error::{Error, Result};
use crate::fingerprint::FingerprintInput;
use crate::stage::Metric;

/// kiln's own files inside an entry.
pub const META_DIR: &str = ".kiln";
/// The stage log inside an entry (or a failed stage's directory).
pub const LOG_FILE: &str = "stage.log";

/// What kiln records about an entry, in `.kiln/entry.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EntryRecord {
    /// The stage name that produced it.
    pub stage: String,
    /// What its fingerprint was computed from.
    pub fingerprint_input: FingerprintInput,
    /// When it was committed (UTC).
    pub created_at: String,
    /// How long the stage ran, in seconds.
    pub seconds: f64,
    /// Its files (paths relative to the entry).
    pub artifacts: Vec<ArtifactRecord>,
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    failed: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Cache { what, path, source }
}

impl Cache {
    /// The cache under `results_dir` (`results_dir/cache`, `results_dir/failed`).
    pub fn new(results_dir: &Path) -> Self {
        Self {
            root: results_dir.join("cache"),
            failed: results_dir.join("failed"),
        }
    }

    /// Where stages keep downloaded sources (`results/downloads`).
    pub fn downloads_dir(&self) -> PathBuf {
        self.root
            .parent()
            .map_or_else(|| self.root.join("downloads"), |r| r.join("downloads"))
    }

    /// A stage's resumable state for `fingerprint` (`results/state/F/`, e.g. training
    /// checkpoints): it survives a failed or killed attempt, so the next attempt of the same
    /// stage continues from it, and is removed once the stage's entry is committed.
    pub fn state_dir(&self, fingerprint: &str) -> PathBuf {
        self.root
            .parent()
            .map_or_else(|| self.root.join("state"), |r| r.join("state"))
            .join(fingerprint)
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where failed stages' directories go (`results/failed`).
    pub fn failed_dir(&self) -> &Path {
        &self.failed
    }

    /// Where the entry for `fingerprint` lives (whether or not it exists).
    pub fn entry_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join(fingerprint)
    }

    /// The complete entry for `fingerprint`, if there is one.
    pub fn lookup(&self, fingerprint: &str) -> Option<EntryRecord> {
        let path = self
            .entry_dir(fingerprint)
            .join(META_DIR)
            .join("entry.json");
        let text = fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The metrics recorded when the entry was made.
    pub fn metrics(&self, fingerprint: &str) -> Vec<Metric> {
        let path = self
            .entry_dir(fingerprint)
            .join(META_DIR)
            .join("metrics.jsonl");
        fs::read_to_string(path)
            .map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes a fresh temporary directory for executing the stage with `fingerprint`.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn begin(&self, fingerprint: &str) -> Result<PathBuf> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        // The host too: on a cluster the cache is shared, and a pid means nothing elsewhere.
        let dir = self.root.join(".tmp").join(format!(
            "{fingerprint}.{}.{n}.{}",
            std::process::id(),
            this_host()
        ));
        fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        Ok(dir)
    }

    /// Records `record` and `metrics` in `tmp` and renames it to the entry for `fingerprint`,
    /// replacing an older entry (a forced re-execution).
    ///
    /// # Errors
    /// When writing or renaming fails; the temporary directory is then left for cleanup.
    pub fn commit(
        &self,
        tmp: &Path,
        fingerprint: &str,
        record: &EntryRecord,
        metrics: &[Metric],
    ) -> Result<PathBuf> {
        let meta = tmp.join(META_DIR);
        fs::create_dir_all(&meta).map_err(io("cannot create", &meta))?;
        let mut lines = String::new();
        for m in metrics {
            lines.push_str(&serde_json::to_string(m).expect("a metric always serializes"));
            lines.push('\n');
        }
        let metrics_path = meta.join("metrics.jsonl");
        fs::write(&metrics_path, lines).map_err(io("cannot write", &metrics_path))?;
        let entry_path = meta.join("entry.json");
        let json = serde_json::to_string_pretty(record).expect("an entry record always serializes");
        fs::write(&entry_path, json).map_err(io("cannot write", &entry_path))?;
        let target = self.entry_dir(fingerprint);
        if target.exists() {
            let old = self.begin(&format!("{fingerprint}.old"))?;
            fs::remove_dir(&old).map_err(io("cannot prepare", &old))?;
            fs::rename(&target, &old).map_err(io("cannot move aside", &target))?;
            fs::rename(tmp, &target).map_err(io("cannot commit", &target))?;
            let _ = fs::remove_dir_all(&old);
        } else if let Err(e) = fs::rename(tmp, &target) {
            // Another process committed the same fingerprint first: its outputs are the ones
            // this execution would have made, so keep them and drop ours.
            if self.lookup(fingerprint).is_some() {
                let _ = fs::remove_dir_all(tmp);
            } else {
                return Err(io("cannot commit", &target)(e));
            }
        }
        Ok(target)
    }

    /// Moves a failed stage's temporary directory to `results/failed/` and returns where.
    pub fn keep_failed(&self, tmp: &Path, stage: &str, fingerprint: &str) -> PathBuf {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
        let short = &fingerprint[..fingerprint.len().min(12)];
        let target = self.failed.join(format!("{stage}-{short}-{stamp}"));
        let moved = fs::create_dir_all(&self.failed).is_ok() && fs::rename(tmp, &target).is_ok();
        if moved { target } else { tmp.to_owned() }
    }

    /// Removes temporary directories left by processes of this host that no longer run (a
    /// killed run). Another host's directories are its own business.
    pub fn sweep_tmp(&self) {
        let Ok(entries) = fs::read_dir(self.root.join(".tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = local_tmp_pid(&name)
                && pid != std::process::id()
                && !process_alive(pid)
            {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Lists the files of a finished stage directory (kiln's own files left out) with sizes
    /// and hashes, paths relative to `dir`.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn artifacts(dir: &Path) -> Result<Vec<ArtifactRecord>> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files).map_err(io("cannot list", dir))?;
        files.retain(|rel| rel != LOG_FILE && !rel.starts_with(META_DIR));
        files.sort();
        files
            .into_iter()
            .map(|rel| {
                let path = dir.join(&rel);
                let (hash, bytes) = hash_file(&path).map_err(io("cannot read", &path))?;
                Ok(ArtifactRecord {
                    path: rel,
                    bytes,
                    hash,
                })
            })
            .collect()
    }
}

/// This machine's name, as temporary directories and stage locks record it.
pub fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// The process that made temporary directory `name` (`F.PID.N.HOST`, `F.old.PID.N.HOST`, or
/// without `.HOST` from older kilns), when it ran on this host.
pub(crate) fn local_tmp_pid(name: &str) -> Option<u32> {
    let rest = name.split_once('.')?.1;
    let rest = rest.strip_prefix("old.").unwrap_or(rest);
    let mut parts = rest.splitn(3, '.');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    match parts.next() {
        Some(host) if host != this_host() => None,
        _ => Some(pid),
    }
}

/// Whether process `pid` runs on this machine.
#[cfg(target_os = "linux")]
pub(crate) fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether process `pid` runs on this machine (always yes without `/proc`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn process_alive(_pid: u32) -> bool {
    // Without /proc, keep the directory: a leftover temp dir is harmless.
    true
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let ty = entry.file_type()?;
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// blake3 (hex) and size of a file.
///
/// # Errors
/// When the file cannot be read.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// Content hashes of the files and directories stages read, memoized in the results store
/// (`file_hashes`) by path, size, mtime and inode, so an unchanged input is not re-read on
/// every run. A directory hashes as its manifest: the sorted list of (relative path, size,
/// blake3) of its files.
#[derive(Debug, Default)]
pub struct HashMemo {
    files: HashMap<String, FileHash>,
    /// Rows hashed by this process, to save.
    fresh: BTreeMap<String, FileHash>,
    /// Manifests of the directories hashed by this process, by their hash.
    manifests: BTreeMap<String, String>,
    /// The cache root: a path inside an entry is identified by its entry, not re-read.
    cache_root: Option<PathBuf>,
}

/// One file of a directory manifest: relative path, size, blake3.
pub type ManifestEntry = (String, u64, String);

impl HashMemo {
    /// An empty memo for the cache `cache` (nothing memoized yet).
    pub fn new(cache: &Cache) -> Self {
        Self {
            cache_root: Some(cache.root.clone()),
            ..Self::default()
        }
    }

    /// The memo kept in `store` (an empty one without a store).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load(cache: &Cache, store: Option<&kiln_store::Store>) -> Result<Self> {
        let mut memo = Self::new(cache);
        if let Some(store) = store {
            memo.files = store
                .file_hashes()
                .await?
                .into_iter()
                .map(|f| (f.path.clone(), f))
                .collect();
        }
        Ok(memo)
    }

    /// Writes what this process hashed into `store`.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn save(&mut self, store: &kiln_store::Store) -> Result<()> {
        let files: Vec<FileHash> = std::mem::take(&mut self.fresh).into_values().collect();
        let manifests: Vec<(String, String)> = self
            .manifests
            .iter()
            .map(|(h, m)| (h.clone(), m.clone()))
            .collect();
        store.save_hashes(&files, &manifests).await?;
        Ok(())
    }

    /// The manifest (JSON) of a directory this process hashed to `hash`.
    pub fn manifest(&self, hash: &str) -> Option<&str> {
        self.manifests.get(hash).map(String::as_str)
    }

    /// What a path param stands for in a fingerprint: `entry:<fingerprint>/<rest>` for a path
    /// inside a cache entry (the entry's fingerprint already says what it holds), the content
    /// hash of an existing file or directory, or `None` for a path that does not exist (a URL
    /// or hub id, which pins its own content).
    ///
    /// # Errors
    /// When an existing path cannot be read.
    pub fn identify(&mut self, path: &Path) -> std::io::Result<Option<String>> {
        let Ok(canonical) = fs::canonicalize(path) else {
            return Ok(None);
        };
        if let Some(root) = self
            .cache_root
            .as_ref()
            .and_then(|r| fs::canonicalize(r).ok())
            && let Ok(rest) = canonical.strip_prefix(&root)
        {
            let mut parts = rest.components();
            if let Some(fp) = parts
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                && fp.len() == 64
                && fp.bytes().all(|b| b.is_ascii_hexdigit())
            {
                let rest = parts.as_path().to_string_lossy().replace('\\', "/");
                return Ok(Some(format!("entry:{fp}/{rest}")));
            }
        }
        self.hash(&canonical).map(Some)
    }

    /// The content hash of a file, or of a directory (blake3 of its manifest).
    ///
    /// # Errors
    /// When the path cannot be read.
    pub fn hash(&mut self, path: &Path) -> std::io::Result<String> {
        if fs::metadata(path)?.is_dir() {
            let manifest = self.manifest_of(path)?;
            let json = serde_json::to_string(&manifest).map_err(std::io::Error::other)?;
            let hash = blake3::hash(json.as_bytes()).to_hex().to_string();
            self.manifests.insert(hash.clone(), json);
            return Ok(hash);
        }
        self.hash_file(path).map(|(hash, _)| hash)
    }

    fn manifest_of(&mut self, dir: &Path) -> std::io::Result<Vec<ManifestEntry>> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files)?;
        files.sort();
        files
            .into_iter()
            .map(|rel| {
                let (hash, size) = self.hash_file(&dir.join(&rel))?;
                Ok((rel, size, hash))
            })
            .collect()
    }

    fn hash_file(&mut self, path: &Path) -> std::io::Result<(String, u64)> {
        let meta = fs::metadata(path)?;
        let key = fs::canonicalize(path)?.to_string_lossy().into_owned();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
        let inode = inode(&meta);
        if let Some(f) = self.files.get(&key)
            && (f.size, f.mtime_ns, f.inode) == (size, mtime_ns, inode)
        {
            return Ok((f.hash.clone(), meta.len()));
        }
        let (hash, bytes) = hash_file(path)?;
        // Like git's "racy clean" rule: a file modified within the last seconds could change
        // again within the same mtime tick, so its hash is not memoized yet.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        if now.saturating_sub(mtime_ns) > 2_000_000_000 {
            let row = FileHash {
                path: key.clone(),
                size,
                mtime_ns,
                inode,
                hash: hash.clone(),
            };
            self.files.insert(key.clone(), row.clone());
            self.fresh.insert(key, row);
        }
        Ok((hash, bytes))
    }
}

/// The files that differ between two directory manifests (JSON, as [`HashMemo::manifest`]
/// gives them): added, removed or changed, by relative path.
pub fn manifest_changes(old: &str, new: &str) -> Vec<String> {
    let parse = |json: &str| -> BTreeMap<String, (u64, String)> {
        serde_json::from_str::<Vec<ManifestEntry>>(json)
            .unwrap_or_default()
            .into_iter()
            .map(|(rel, size, hash)| (rel, (size, hash)))
            .collect()
    };
    let (old, new) = (parse(old), parse(new));
    let mut out: Vec<String> = Vec::new();
    for (rel, entry) in &new {
        match old.get(rel) {
            None => out.push(format!("{rel} added")),
            Some(o) if o != entry => out.push(format!("{rel} changed")),
            Some(_) => {}
        }
    }
    out.extend(
        old.keys()
            .filter(|rel| !new.contains_key(*rel))
            .map(|rel| format!("{rel} removed")),
    );
    out
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    i64::try_from(meta.ino()).unwrap_or(i64::MAX)
}

#[cfg(not(unix))]
fn inode(_meta: &fs::Metadata) -> i64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_directories_name_their_process_and_host() {
        let me = this_host();
        assert_eq!(local_tmp_pid(&format!("abc.42.7.{me}")), Some(42));
        assert_eq!(local_tmp_pid(&format!("abc.old.42.7.{me}")), Some(42));
        assert_eq!(local_tmp_pid("abc.42.7"), Some(42), "older kilns' names");
        assert_eq!(
            local_tmp_pid("abc.42.7.node-b.cluster.example"),
            None,
            "another host's process is none of this host's business"
        );
        assert_eq!(local_tmp_pid("abc"), None);
    }
}
