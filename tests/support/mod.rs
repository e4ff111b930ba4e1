//! Test helpers: a temporary project per test and a runner for the `kiln` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root exists")
}

/// A path under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// A temporary project directory with its own results/ and store.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// What a `kiln` invocation did.
pub struct Ran {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    fn from(output: Output, elapsed: Duration) -> Self {
        Self {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed,
        }
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.status, 0,
            "kiln failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Project {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating directories) and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A `kiln` command in this project (its store and results are the project's own).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("KILN_STORE")
            .env_remove("KILN_RESULTS")
            .env("RUST_LOG", "warn");
        cmd
    }

    /// Runs `kiln ARGS` and waits.
    pub fn kiln(&self, args: &[&str]) -> Ran {
        let start = Instant::now();
        let output = self.cmd(args).output().expect("kiln runs");
        Ran::from(output, start.elapsed())
    }

    /// `kiln --quiet run FILE EXTRA…`
    pub fn run(&self, file: &str, extra: &[&str]) -> Ran {
        let mut args = vec!["--quiet", "run", file];
        args.extend_from_slice(extra);
        self.kiln(&args)
    }

    /// `kiln query --format csv SQL`, as rows of cells (header left out).
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let ran = self.kiln(&["query", "--format", "csv", sql]).ok();
        let mut reader = csv::Reader::from_reader(ran.stdout.as_bytes());
        reader
            .records()
            .map(|r| r.expect("csv row").iter().map(str::to_owned).collect())
            .collect()
    }

    /// One value from a query.
    pub fn scalar(&self, sql: &str) -> String {
        let rows = self.query(sql);
        assert_eq!(rows.len(), 1, "{sql} returned {rows:?}");
        rows[0][0].clone()
    }

    /// Directories in results/cache that are complete entries.
    pub fn cache_entries(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.path().join("results/cache")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        out
    }
}
