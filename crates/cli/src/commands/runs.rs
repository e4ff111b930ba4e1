//! `kiln runs`: recent runs.

use anyhow::{Context, Result};
use kiln_store::{Cell, QueryResult, Store};

use crate::Cli;
use crate::args::TableFormat;

pub async fn run(cli: &Cli, limit: i64, format: TableFormat) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    let runs = store.recent_runs(limit).await?;
    let result = QueryResult {
        columns: [
            "run",
            "pipeline",
            "status",
            "started (UTC)",
            "executed",
            "cached",
            "failed",
            "params",
            "final metrics",
        ]
        .map(String::from)
        .to_vec(),
        rows: runs
            .into_iter()
            .map(|r| {
                vec![
                    Cell::Int(r.id),
                    Cell::Text(r.pipeline),
                    Cell::Text(r.status),
                    Cell::Text(r.started_at),
                    Cell::Int(r.executed),
                    Cell::Int(r.cached),
                    Cell::Int(r.failed),
                    Cell::Text(r.params),
                    Cell::Text(r.final_metrics),
                ]
            })
            .collect(),
    };
    crate::output::print(&result, format)
}
