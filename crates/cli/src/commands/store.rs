//! `kiln store migrate` and `kiln store copy`.

use anyhow::{Context, Result};
use kiln_store::Store;

use crate::Cli;
use crate::args::StoreCommand;

pub async fn run(cli: &Cli, command: &StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Migrate => {
            let store = Store::open(&cli.store)
                .await
                .with_context(|| format!("migrating the results store {}", cli.store_label()))?;
            println!(
                "{} ({}): schema up to date",
                store.location().display(),
                store.backend()
            );
            store.close().await;
            Ok(())
        }
        StoreCommand::Copy { from, to } => copy(from, to).await,
    }
}

async fn copy(from: &str, to: &str) -> Result<()> {
    let source = Store::open_read_only(from)
        .await
        .with_context(|| format!("opening the source store {}", kiln_store::display_url(from)))?;
    let target = Store::open(to)
        .await
        .with_context(|| format!("opening the target store {}", kiln_store::display_url(to)))?;
    let report = source.copy_to(&target).await.with_context(|| {
        format!(
            "copying {} into {}",
            source.location().display(),
            target.location().display()
        )
    })?;
    for t in &report.tables {
        println!(
            "{:<14} {:>10} rows  blake3 {}",
            t.table,
            t.rows,
            &t.checksum[..16]
        );
    }
    let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
    println!(
        "copied {rows} rows in {} tables from {} to {}: counts and checksums equal",
        report.tables.len(),
        source.location().display(),
        target.location().display()
    );
    source.close().await;
    target.close().await;
    Ok(())
}
