//! `kiln compare RUN_A RUN_B`: two runs side by side: their parameters (differences marked)
//! and their final metric values.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use kiln_store::{Cell, QueryResult, Store};

use crate::Cli;
use crate::args::TableFormat;

fn text(c: &Cell) -> String {
    match c {
        Cell::Null => String::new(),
        Cell::Int(i) => i.to_string(),
        Cell::Real(v) => format!("{v}"),
        Cell::Text(s) => s.clone(),
        Cell::Blob(n) => format!("<{n} bytes>"),
    }
}

async fn pairs(store: &Store, sql: &str) -> Result<Vec<(String, String)>> {
    Ok(store
        .query_read_only(sql)
        .await?
        .rows
        .iter()
        .map(|r| (text(&r[0]), text(&r[1])))
        .collect())
}

pub async fn run(cli: &Cli, a: i64, b: i64, format: TableFormat) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store))?;
    for id in [a, b] {
        if store
            .query_read_only(&format!("SELECT id FROM runs WHERE id = {id}"))
            .await?
            .rows
            .is_empty()
        {
            anyhow::bail!("no run {id} in {}", cli.store);
        }
    }
    let mut rows = Vec::new();
    for (what, sql) in [
        (
            "param",
            "SELECT key, value FROM params WHERE run_id = {} ORDER BY key",
        ),
        (
            "metric",
            "SELECT stage || '.' || metric, value FROM last_metrics WHERE run_id = {} ORDER BY stage, metric",
        ),
    ] {
        let left = pairs(&store, &sql.replace("{}", &a.to_string())).await?;
        let right = pairs(&store, &sql.replace("{}", &b.to_string())).await?;
        let keys: BTreeSet<&String> = left.iter().chain(&right).map(|(k, _)| k).collect();
        for k in keys {
            let get = |side: &[(String, String)]| {
                side.iter()
                    .find(|(x, _)| x == k)
                    .map_or_else(String::new, |(_, v)| v.clone())
            };
            let (l, r) = (get(&left), get(&right));
            let mark = if l == r { "" } else { "≠" };
            rows.push(vec![
                Cell::Text(what.into()),
                Cell::Text(k.clone()),
                Cell::Text(l),
                Cell::Text(r),
                Cell::Text(mark.into()),
            ]);
        }
    }
    let table = QueryResult {
        columns: vec![
            "".into(),
            "name".into(),
            format!("run {a}"),
            format!("run {b}"),
            "".into(),
        ],
        rows,
    };
    crate::output::print(&table, format)
}
