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

/// A store for a test: a SQLite file in a temp dir, or a fresh PostgreSQL database.
pub struct TestStore {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// What `--store` takes.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh SQLite store, and a fresh PostgreSQL database named after `tag` on the server
/// `KILN_TEST_POSTGRES` names (`.ci/postgres-test-server` starts one). Without that
/// variable the PostgreSQL store is left out with a note, unless `KILN_REQUIRE_POSTGRES=1`
/// (CI), when the test fails.
pub async fn test_stores(tag: &str) -> Vec<TestStore> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = vec![TestStore {
        backend: "sqlite",
        url: dir.path().join("s.sqlite").to_string_lossy().into_owned(),
        _dir: Some(dir),
    }];
    if let Some(url) = fresh_postgres(tag).await {
        out.push(TestStore {
            backend: "postgres",
            url,
            _dir: None,
        });
    }
    out
}

/// A fresh, empty PostgreSQL database (see [`test_stores`]).
pub async fn fresh_postgres(tag: &str) -> Option<String> {
    use sqlx::Connection;
    let Ok(server) = std::env::var("KILN_TEST_POSTGRES") else {
        assert!(
            std::env::var("KILN_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "KILN_REQUIRE_POSTGRES=1 but KILN_TEST_POSTGRES is not set (start one with .ci/postgres-test-server)"
        );
        eprintln!("note: KILN_TEST_POSTGRES is not set: {tag} runs on SQLite only");
        return None;
    };
    let name = format!("kiln_{tag}_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("connecting to KILN_TEST_POSTGRES={server}: {e}"));
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop the old test database");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    conn.close().await.ok();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

/// Headless Chromium's command (Debian's `chromium`; `.ci/run` installs it and sets
/// KILN_REQUIRE_CHROMIUM, when a missing one fails the test instead of skipping its checks).
pub fn chromium() -> Option<String> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("KILN_REQUIRE_CHROMIUM").is_none(),
            "KILN_REQUIRE_CHROMIUM is set but no chromium is installed"
        );
        eprintln!("no chromium: skipping the browser checks");
    }
    found.map(str::to_owned)
}
