//! `kiln compare RUN_A RUN_B`: two runs side by side: their parameters (differences marked)
//! and their final metric values.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use kiln_store::{Cell, QueryResult, Store};

use crate::Cli;
use crate::args::TableFormat;

pub async fn run(cli: &Cli, a: i64, b: i64, format: TableFormat) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    for id in [a, b] {
        if !store.run_exists(id).await? {
            anyhow::bail!("no run {id} in {}", cli.store_label());
        }
    }
    let mut rows = Vec::new();
    let params = |run: i64| {
        let store = &store;
        async move { Ok::<_, anyhow::Error>(store.params(run).await?.into_iter().collect()) }
    };
    let metrics = |run: i64| {
        let store = &store;
        async move {
            Ok::<_, anyhow::Error>(
                store
                    .final_metrics(run)
                    .await?
                    .into_iter()
                    .map(|m| (m.key(), m.value.map(|v| v.to_string()).unwrap_or_default()))
                    .collect(),
            )
        }
    };
    type Pairs = Vec<(String, String)>;
    let sides: [(&str, Pairs, Pairs); 2] = [
        ("param", params(a).await?, params(b).await?),
        ("metric", metrics(a).await?, metrics(b).await?),
    ];
    for (what, left, right) in sides {
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
