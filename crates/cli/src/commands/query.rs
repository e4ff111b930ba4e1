//! `kiln query "SQL"`: read-only SQL on the results store.

use anyhow::{Context, Result};
use kiln_store::Store;

use crate::Cli;
use crate::Exit;
use crate::args::TableFormat;

pub async fn run(cli: &Cli, sql: &str, format: TableFormat) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    match store.query_read_only(sql).await {
        Ok(result) => crate::output::print(&result, format),
        Err(e @ (kiln_store::Error::ReadOnly { .. } | kiln_store::Error::Query { .. })) => {
            Err(Exit {
                code: if matches!(e, kiln_store::Error::ReadOnly { .. }) {
                    2
                } else {
                    1
                },
                message: format!("error: {e}"),
            }
            .into())
        }
        Err(e) => Err(e.into()),
    }
}
