//! `kiln store copy`: every table of one store into another (e.g. SQLite → PostgreSQL), ids
//! preserved, in one transaction on the target, verified by row counts and checksums before
//! it commits.

use std::collections::BTreeMap;

use sqlx::{QueryBuilder, Row};

use crate::Store;
use crate::backend::{Tx, on_pool, on_tx};
use crate::error::{Error, Result, sql};
use crate::schema::{Col, TABLES, Table, col_of};

/// One table's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    /// The table.
    pub table: String,
    /// Rows copied (equal on both sides).
    pub rows: u64,
    /// blake3 over the rows in key order (equal on both sides), hex.
    pub checksum: String,
}

/// What [`Store::copy_to`] moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// One entry per table, in copy order.
    pub tables: Vec<TableCopy>,
}

/// A value as copy moves it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

/// Most bound values per statement (under SQLite's 32,766 and PostgreSQL's 65,535).
const VALUES_PER_STATEMENT: usize = 30_000;

impl Store {
    /// The tables and their columns (name, type as the database names it), in column order.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn describe_schema(&self) -> Result<BTreeMap<String, Vec<(String, String)>>> {
        let rows: Vec<(String, String, String)> = on_pool!(&self.pool, p => {
            let query = match self.backend() {
                "sqlite" => {
                    "SELECT m.name, c.name, c.type FROM sqlite_master m, pragma_table_info(m.name) c
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'
                       AND m.name <> '_sqlx_migrations'
                     ORDER BY m.name, c.cid"
                }
                _ => {
                    "SELECT table_name::text, column_name::text, data_type::text
                     FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'
                       AND table_name IN (SELECT table_name FROM information_schema.tables
                                          WHERE table_schema = current_schema()
                                            AND table_type = 'BASE TABLE')
                     ORDER BY table_name, ordinal_position"
                }
            };
            sqlx::query(query)
                .fetch_all(p)
                .await
                .map_err(sql("describe the schema"))?
                .into_iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect()
        });
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (table, column, ty) in rows {
            out.entry(table).or_default().push((column, ty));
        }
        Ok(out)
    }

    /// Copies every table of this store into `target`, which must be migrated and empty.
    /// Ids are preserved (and PostgreSQL's sequences moved past them); the target's
    /// transaction commits only once every table's row count and checksum equal the
    /// source's.
    ///
    /// # Errors
    /// [`Error::CopyTarget`] when the target holds rows, [`Error::CopySchema`] when either
    /// side's tables are not the ones this kiln knows, [`Error::CopyMismatch`] when a table
    /// reads back differently; SQL errors otherwise.
    pub async fn copy_to(&self, target: &Store) -> Result<CopyReport> {
        for store in [self, target] {
            check_schema(store).await?;
        }
        let mut tx = target.pool.begin_write("begin the copy").await?;
        // One read transaction: every table from the same state of the source.
        let mut source = self.pool.begin_read("begin reading the source").await?;
        let mut report = CopyReport::default();
        for table in TABLES {
            if !read_table(&mut tx, table, Some(1)).await?.is_empty() {
                return Err(Error::CopyTarget {
                    table: table.name.to_owned(),
                });
            }
            let rows = read_table(&mut source, table, None).await?;
            insert_rows(&mut tx, table, &rows).await?;
            if table.serial
                && let Tx::Postgres(t) = &mut tx
            {
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', 'id'), coalesce(max(id), 0) + 1, false) FROM {0}",
                    table.name
                ))
                .execute(&mut **t)
                .await
                .map_err(sql("move a sequence past the copied ids"))?;
            }
            let copied = read_table(&mut tx, table, None).await?;
            let (want, got) = (checksum(&rows), checksum(&copied));
            if rows.len() != copied.len() || want != got {
                return Err(Error::CopyMismatch {
                    table: table.name.to_owned(),
                    source_rows: rows.len() as u64,
                    target_rows: copied.len() as u64,
                });
            }
            report.tables.push(TableCopy {
                table: table.name.to_owned(),
                rows: rows.len() as u64,
                checksum: want,
            });
        }
        source.commit("end reading the source").await?;
        tx.commit("commit the copy").await?;
        Ok(report)
    }

    /// Row count and checksum of every table, as [`Store::copy_to`] verifies them.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn table_checksums(&self) -> Result<Vec<TableCopy>> {
        let mut tx = self.pool.begin_read("begin checksums").await?;
        let mut out = Vec::new();
        for table in TABLES {
            let rows = read_table(&mut tx, table, None).await?;
            out.push(TableCopy {
                table: table.name.to_owned(),
                rows: rows.len() as u64,
                checksum: checksum(&rows),
            });
        }
        tx.commit("end checksums").await?;
        Ok(out)
    }
}

/// Refuses a store whose tables or columns are not [`TABLES`] (another kiln version's).
async fn check_schema(store: &Store) -> Result<()> {
    let schema = store.describe_schema().await?;
    let mismatch = |table: &str, detail: String| Error::CopySchema {
        store: store.location().display(),
        table: table.to_owned(),
        detail,
    };
    for table in TABLES {
        let columns = schema
            .get(table.name)
            .ok_or_else(|| mismatch(table.name, "the table is missing".into()))?;
        let have: Vec<(&str, Option<Col>)> = columns
            .iter()
            .map(|(c, ty)| (c.as_str(), col_of(ty)))
            .collect();
        let want: Vec<(&str, Option<Col>)> = table
            .columns
            .iter()
            .map(|(c, ty)| (*c, Some(*ty)))
            .collect();
        if have != want {
            return Err(mismatch(
                table.name,
                format!("columns {have:?}, expected {want:?}"),
            ));
        }
    }
    if let Some(extra) = schema
        .keys()
        .find(|t| !TABLES.iter().any(|known| known.name == t.as_str()))
    {
        return Err(mismatch(extra, "a table this kiln does not know".into()));
    }
    Ok(())
}

/// Every row of `table` in key order (at most `limit`), typed by its columns.
async fn read_table(tx: &mut Tx, table: &Table, limit: Option<u64>) -> Result<Vec<Vec<Val>>> {
    let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let mut query = format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns.join(", "),
        table.name,
        table.key
    );
    if let Some(n) = limit {
        query.push_str(&format!(" LIMIT {n}"));
    }
    on_tx!(tx, t => {
        let rows = sqlx::query(&query)
            .fetch_all(&mut **t)
            .await
            .map_err(sql("read a table to copy"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let mut row = Vec::with_capacity(columns.len());
            for (i, (_, col)) in table.columns.iter().enumerate() {
                let value = match col {
                    Col::Int => r.try_get::<Option<i64>, _>(i).map(|v| v.map_or(Val::Null, Val::Int)),
                    Col::Real => r.try_get::<Option<f64>, _>(i).map(|v| v.map_or(Val::Null, Val::Real)),
                    Col::Text => r.try_get::<Option<String>, _>(i).map(|v| v.map_or(Val::Null, Val::Text)),
                }
                .map_err(sql("decode a row to copy"))?;
                row.push(value);
            }
            out.push(row);
        }
        Ok(out)
    })
}

/// Inserts `rows` into `table` in multi-row statements.
async fn insert_rows(tx: &mut Tx, table: &Table, rows: &[Vec<Val>]) -> Result<()> {
    let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let per_statement = (VALUES_PER_STATEMENT / columns.len()).max(1);
    for chunk in rows.chunks(per_statement) {
        on_tx!(tx, t => {
            let mut q = QueryBuilder::new(format!(
                "INSERT INTO {} ({}) ",
                table.name,
                columns.join(", ")
            ));
            q.push_values(chunk, |mut b, row| {
                for (value, (_, col)) in row.iter().zip(table.columns) {
                    // A NULL is bound with its column's type: PostgreSQL checks it.
                    match (value, col) {
                        (Val::Int(v), _) => b.push_bind(*v),
                        (Val::Real(v), _) => b.push_bind(*v),
                        (Val::Text(v), _) => b.push_bind(v.clone()),
                        (Val::Null, Col::Int) => b.push_bind(None::<i64>),
                        (Val::Null, Col::Real) => b.push_bind(None::<f64>),
                        (Val::Null, Col::Text) => b.push_bind(None::<String>),
                    };
                }
            });
            q.build()
                .execute(&mut **t)
                .await
                .map_err(sql("insert copied rows"))?;
        });
    }
    Ok(())
}

/// blake3 over the rows: each value tagged with its type, floats by their bits.
fn checksum(rows: &[Vec<Val>]) -> String {
    let mut hasher = blake3::Hasher::new();
    for row in rows {
        for value in row {
            match value {
                Val::Null => hasher.update(b"n;"),
                Val::Int(v) => hasher.update(format!("i{v};").as_bytes()),
                Val::Real(v) => hasher.update(format!("r{:016x};", v.to_bits()).as_bytes()),
                Val::Text(s) => hasher
                    .update(format!("t{}:", s.len()).as_bytes())
                    .update(s.as_bytes()),
            };
        }
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_see_types_values_and_order() {
        let a = vec![
            vec![Val::Int(1), Val::Text("x".into())],
            vec![Val::Null, Val::Real(0.5)],
        ];
        let mut b = a.clone();
        assert_eq!(checksum(&a), checksum(&b));
        b.swap(0, 1);
        assert_ne!(checksum(&a), checksum(&b), "row order");
        let c = vec![
            vec![Val::Int(1), Val::Text("x".into())],
            vec![Val::Null, Val::Real(0.25)],
        ];
        assert_ne!(checksum(&a), checksum(&c), "a value");
        let d = vec![
            vec![Val::Text("1".into()), Val::Text("x".into())],
            vec![Val::Null, Val::Real(0.5)],
        ];
        assert_ne!(checksum(&a), checksum(&d), "a type");
    }
}
