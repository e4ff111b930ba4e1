//! The two databases the store runs on, and the small dialect layer between them.
//!
//! Every statement in this crate is written once, with `$1`-style placeholders (which both
//! SQLite and PostgreSQL read) and types both accept. [`on_pool!`] runs it against whichever
//! pool the store holds, so each arm is type-checked against its own driver. Where the two
//! must differ, the difference lives here:
//!
//! - [`postgres_ddl`] turns the migrations (written for SQLite) into PostgreSQL:
//!   `INTEGER PRIMARY KEY` → `BIGSERIAL PRIMARY KEY`, `INTEGER` → `BIGINT`, `REAL` →
//!   `DOUBLE PRECISION`, `group_concat(` → `string_agg(`;
//! - [`Location`] parses a `--store` argument into a SQLite file or a PostgreSQL URL;
//! - [`Pool::begin_write`] starts a transaction that takes SQLite's write lock up front
//!   (`BEGIN IMMEDIATE`), where PostgreSQL's row locks need no such thing.

use std::path::PathBuf;

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::error::{Error, Result, sql};

/// Where a store lives, as parsed from `--store` / `KILN_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (a path, or a `sqlite:` URL).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL).
    Postgres(String),
}

impl Location {
    /// Parses a path, `sqlite:` URL or `postgres://` URL.
    ///
    /// # Errors
    /// [`Error::UnsupportedUrl`] for any other URL scheme.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let rest = rest.split('?').next().unwrap_or(rest);
            return Ok(Self::Sqlite(PathBuf::from(rest)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if url.contains("://") {
            return Err(Error::UnsupportedUrl {
                url: url.to_owned(),
            });
        }
        Ok(Self::Sqlite(PathBuf::from(url)))
    }

    /// Whether there may be a store to read: the SQLite file exists, or it is a server (which
    /// is only known once connected).
    pub fn may_exist(&self) -> bool {
        match self {
            Self::Sqlite(path) => path.exists(),
            Self::Postgres(_) => true,
        }
    }

    /// The location for messages: the file path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(url) => redact(url),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((auth, host)) if auth.contains(':') => {
            let user = auth.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// A connection pool on one of the two databases.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction on one of the two databases.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite(_) => "Tx::Sqlite",
            Self::Postgres(_) => "Tx::Postgres",
        })
    }
}

/// Runs `$body` with `$p` bound to the concrete pool (or transaction), once per backend: the
/// same statement text, type-checked against each driver.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::backend::Pool::Sqlite($p) => $body,
            $crate::backend::Pool::Postgres($p) => $body,
        }
    };
}

/// [`on_pool!`] for a [`Tx`]: `$t` is the `&mut` transaction.
macro_rules! on_tx {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            $crate::backend::Tx::Sqlite($t) => $body,
            $crate::backend::Tx::Postgres($t) => $body,
        }
    };
}

pub(crate) use {on_pool, on_tx};

impl Pool {
    /// Which database this is, for messages and tests.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock now
    /// (`BEGIN IMMEDIATE`), so concurrent writers queue on the busy timeout instead of failing
    /// on a lock upgrade.
    pub(crate) async fn begin_write(&self, what: &'static str) -> Result<Tx> {
        Ok(match self {
            Self::Sqlite(p) => {
                Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await.map_err(sql(what))?)
            }
            Self::Postgres(p) => Tx::Postgres(p.begin().await.map_err(sql(what))?),
        })
    }

    /// Begins a transaction that only reads, from one consistent state of the store.
    pub(crate) async fn begin_read(&self, what: &'static str) -> Result<Tx> {
        Ok(match self {
            Self::Sqlite(p) => Tx::Sqlite(p.begin().await.map_err(sql(what))?),
            Self::Postgres(p) => Tx::Postgres(
                // One snapshot for every statement of the transaction.
                p.begin_with("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
                    .map_err(sql(what))?,
            ),
        })
    }

    pub(crate) async fn close(&self) {
        on_pool!(self, p => p.close().await);
    }
}

impl Tx {
    pub(crate) async fn commit(self, what: &'static str) -> Result<()> {
        on_tx!(self, t => t.commit().await.map_err(sql(what)))
    }
}

/// The PostgreSQL text of a migration written for SQLite (see the module docs).
pub(crate) fn postgres_ddl(sqlite: &str) -> String {
    let mut out = String::with_capacity(sqlite.len() + 64);
    for line in sqlite.lines() {
        // Comments stay as written: they explain the SQLite text the checksum is taken from.
        let (code, comment) = match line.find("--") {
            Some(at) => line.split_at(at),
            None => (line, ""),
        };
        let code = replace_word(code, "INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY");
        let code = replace_word(&code, "INTEGER", "BIGINT");
        let code = replace_word(&code, "REAL", "DOUBLE PRECISION");
        let code = code.replace("group_concat(", "string_agg(");
        out.push_str(&code);
        out.push_str(comment);
        out.push('\n');
    }
    out
}

/// Replaces whole-word occurrences of `word` (ASCII, case-sensitive) in `text`.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if is_word(before) || is_word(after) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("results/kiln.sqlite").ok(),
            Some(Location::Sqlite("results/kiln.sqlite".into()))
        );
        assert_eq!(
            Location::parse("sqlite:///tmp/a.sqlite?mode=rwc").ok(),
            Some(Location::Sqlite("/tmp/a.sqlite".into()))
        );
        assert_eq!(
            Location::parse("postgresql://u@h/db").ok(),
            Some(Location::Postgres("postgresql://u@h/db".into()))
        );
        assert!(matches!(
            Location::parse("mysql://h/db"),
            Err(Error::UnsupportedUrl { .. })
        ));
        assert_eq!(
            Location::parse("postgres://kiln:pw@db:5432/r")
                .map(|l| l.display())
                .ok()
                .as_deref(),
            Some("postgres://kiln:***@db:5432/r")
        );
    }

    #[test]
    fn ddl_is_translated_word_by_word() {
        let sqlite = "CREATE TABLE t (\n    id INTEGER PRIMARY KEY,\n    n INTEGER NOT NULL, -- an INTEGER\n    x REAL,\n    realm TEXT,\n    y INTEGERS\n);\nSELECT group_concat(a, ' ') FROM t;";
        let pg = postgres_ddl(sqlite);
        assert_eq!(
            pg,
            "CREATE TABLE t (\n    id BIGSERIAL PRIMARY KEY,\n    n BIGINT NOT NULL, -- an INTEGER\n    x DOUBLE PRECISION,\n    realm TEXT,\n    y INTEGERS\n);\nSELECT string_agg(a, ' ') FROM t;\n"
        );
    }

    #[test]
    fn every_migration_leaves_no_sqlite_type_behind() {
        for (_, name, text) in crate::MIGRATIONS {
            let pg = postgres_ddl(text);
            let code: String = pg
                .lines()
                .map(|l| l.split("--").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            for word in [
                "INTEGER",
                " REAL",
                "group_concat",
                "AUTOINCREMENT",
                "PRAGMA",
            ] {
                assert!(!code.contains(word), "migration {name:?} keeps {word:?}");
            }
        }
    }
}
