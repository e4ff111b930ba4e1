//! Read-only user queries (`kiln query`).

use sqlx::{Column, Row, TypeInfo, ValueRef};

use crate::Store;
use crate::backend::Pool;
use crate::error::{Error, Result};

/// One cell of a query result, typed as the database stored it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
    /// A blob, shown as its length.
    Blob(usize),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Null => Ok(()),
            Self::Int(v) => write!(f, "{v}"),
            Self::Real(v) => write!(f, "{v}"),
            Self::Text(v) => f.write_str(v),
            Self::Blob(n) => write!(f, "<{n} bytes>"),
        }
    }
}

/// The columns and rows a query returned.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueryResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, each with one cell per column.
    pub rows: Vec<Vec<Cell>>,
}

/// Statement keywords that change a database. A statement starting with one of these is
/// refused before it reaches the database, with a message that says why; the read-only connection
/// is the backstop for anything that slips past (e.g. a `WITH … DELETE`).
const WRITE_KEYWORDS: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "UPSERT",
    "CREATE",
    "DROP",
    "ALTER",
    "ATTACH",
    "DETACH",
    "VACUUM",
    "REINDEX",
    "PRAGMA",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "ANALYZE",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
];

/// The first keyword of each statement in `sql` that would write, if any.
fn refused_keyword(sql: &str) -> Option<String> {
    sql.split(';')
        .map(strip_leading_comments)
        .filter_map(|stmt| {
            let word: String = stmt
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_ascii_uppercase();
            WRITE_KEYWORDS.contains(&word.as_str()).then_some(word)
        })
        .next()
}

fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return s;
        }
    }
}

impl Store {
    /// Runs `sql` and returns every row. Statements that would change the store are refused.
    ///
    /// Use it on a store opened with [`Store::open_read_only`]; on a writable store the
    /// keyword check still refuses writes, and on PostgreSQL the statement runs inside a
    /// read-only transaction whichever way the store was opened.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for a write statement; [`Error::Query`] with the database's
    /// message when the statement fails.
    pub async fn query_read_only(&self, sql: &str) -> Result<QueryResult> {
        if let Some(keyword) = refused_keyword(sql) {
            return Err(Error::ReadOnly { keyword });
        }
        match &self.pool {
            Pool::Sqlite(pool) => sqlite_query(pool, sql).await,
            Pool::Postgres(pool) => postgres_query(pool, sql).await,
        }
    }
}

fn query_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db)
            if db.message().contains("readonly")
                // PostgreSQL's read_only_sql_transaction
                || db.code().as_deref() == Some("25006") =>
        {
            Error::ReadOnly {
                keyword: "this".to_owned(),
            }
        }
        sqlx::Error::Database(db) => Error::Query {
            message: db.message().to_owned(),
        },
        _ => Error::Query {
            message: e.to_string(),
        },
    }
}

/// The names of result columns (from a row, or from a description of the statement when it
/// returned none).
fn names<C: Column>(columns: &[C]) -> Vec<String> {
    columns.iter().map(|c| c.name().to_owned()).collect()
}

async fn sqlite_query(pool: &sqlx::SqlitePool, sql: &str) -> Result<QueryResult> {
    let rows = sqlx::query(sql)
        .fetch_all(pool)
        .await
        .map_err(query_error)?;
    let mut result = QueryResult::default();
    result.columns = match rows.first() {
        Some(first) => names(first.columns()),
        None => sqlx::Executor::describe(pool, sql)
            .await
            .map(|d| names(d.columns()))
            .unwrap_or_default(),
    };
    for row in &rows {
        result
            .rows
            .push((0..row.len()).map(|i| sqlite_cell(row, i)).collect());
    }
    Ok(result)
}

fn sqlite_cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> Cell {
    let Ok(raw) = row.try_get_raw(i) else {
        return Cell::Null;
    };
    if raw.is_null() {
        return Cell::Null;
    }
    let type_name = raw.type_info().name().to_ascii_uppercase();
    match type_name.as_str() {
        "INTEGER" | "BOOLEAN" => row.try_get::<i64, _>(i).map_or(Cell::Null, Cell::Int),
        "REAL" => row.try_get::<f64, _>(i).map_or(Cell::Null, Cell::Real),
        "BLOB" => row
            .try_get::<Vec<u8>, _>(i)
            .map_or(Cell::Null, |b| Cell::Blob(b.len())),
        _ => row.try_get::<String, _>(i).map_or(Cell::Null, Cell::Text),
    }
}

/// PostgreSQL: the statement goes through the simple query protocol, whose results are text
/// whatever their type (so `numeric`, timestamps and arrays read as well as integers do),
/// inside a read-only transaction.
async fn postgres_query(pool: &sqlx::PgPool, sql: &str) -> Result<QueryResult> {
    let mut tx = pool
        .begin_with("BEGIN TRANSACTION READ ONLY")
        .await
        .map_err(query_error)?;
    let rows = sqlx::raw_sql(sql)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_error)?;
    let mut result = QueryResult::default();
    result.columns = match rows.first() {
        Some(first) => names(first.columns()),
        None => sqlx::Executor::describe(&mut *tx, sql)
            .await
            .map(|d| names(d.columns()))
            .unwrap_or_default(),
    };
    tx.rollback().await.map_err(query_error)?;
    for row in &rows {
        result
            .rows
            .push((0..row.len()).map(|i| postgres_cell(row, i)).collect());
    }
    Ok(result)
}

fn postgres_cell(row: &sqlx::postgres::PgRow, i: usize) -> Cell {
    let Ok(raw) = row.try_get_raw(i) else {
        return Cell::Null;
    };
    if raw.is_null() {
        return Cell::Null;
    }
    let type_name = raw.type_info().name().to_ascii_uppercase();
    // Text format: every value decodes as its text.
    let Ok(text) = row.try_get_unchecked::<String, _>(i) else {
        return Cell::Null;
    };
    match type_name.as_str() {
        "INT2" | "INT4" | "INT8" => text.parse().map_or(Cell::Text(text), Cell::Int),
        "FLOAT4" | "FLOAT8" => text.parse().map_or(Cell::Text(text), Cell::Real),
        // sum() of integers is NUMERIC in PostgreSQL: whole numbers stay integers, as SQLite
        // gives them.
        "NUMERIC" => match text.parse::<i64>() {
            Ok(i) => Cell::Int(i),
            Err(_) => text.parse().map_or(Cell::Text(text), Cell::Real),
        },
        "BOOL" => Cell::Int(i64::from(text == "t")),
        _ => Cell::Text(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_statements_are_recognised() {
        assert_eq!(
            refused_keyword("DELETE FROM runs").as_deref(),
            Some("DELETE")
        );
        assert_eq!(
            refused_keyword("  drop table runs").as_deref(),
            Some("DROP")
        );
        assert_eq!(
            refused_keyword("SELECT 1; -- c\n insert into runs values (1)").as_deref(),
            Some("INSERT")
        );
        assert_eq!(
            refused_keyword("/* x */ PRAGMA journal_mode=DELETE").as_deref(),
            Some("PRAGMA")
        );
        assert_eq!(refused_keyword("SELECT * FROM runs"), None);
        assert_eq!(
            refused_keyword("WITH x AS (SELECT 1) SELECT * FROM x"),
            None
        );
    }
}
