//! `kiln gc`: removes cache entries, state, failed stages' directories and leftovers that no
//! kept run needs, and says what it freed (the rules: `kiln_core::gc`).

use std::time::Duration;

use anyhow::{Context, Result};
use kiln_core::gc::{GcOptions, GcReport, Kind, Tally};
use kiln_store::Store;

use crate::Cli;

pub async fn run(
    cli: &Cli,
    dry_run: bool,
    keep_last: Option<usize>,
    older_than: Option<Duration>,
) -> Result<()> {
    // Without the store every entry would look unreferenced: never guess.
    let location = kiln_store::location(&cli.store)?;
    anyhow::ensure!(
        location.may_exist(),
        "there is no results store at {}: kiln gc reads it to know which cache entries runs use (give --store)",
        location.display()
    );
    let store = Store::open(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    let opts = GcOptions {
        keep_last,
        older_than,
        dry_run,
        host: gethostname::gethostname().to_string_lossy().into_owned(),
    };
    let report = kiln_core::gc::gc(&cli.results, &store, &opts).await;
    store.close().await;
    let report = report?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

/// The report for a terminal: one line per removed item, then a table by kind.
fn text(report: &GcReport) -> String {
    let mut out = String::new();
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    if report.removed.is_empty() {
        out.push_str("nothing to remove\n");
    } else {
        out.push_str(&format!("{verb}:\n"));
    }
    for item in &report.removed {
        out.push_str(&format!(
            "  {:<9} {:<32} {:>10}  {}\n",
            item.kind.as_str(),
            item.label,
            human(item.bytes),
            item.why
        ));
    }
    let removed = report.removed_by_kind();
    out.push_str(&format!(
        "\n{:<10} {:>8} {:>10} {:>8} {:>10}\n",
        "kind",
        if report.dry_run { "to go" } else { "removed" },
        if report.dry_run { "to free" } else { "freed" },
        "kept",
        "kept size"
    ));
    let (mut gone, mut kept) = (Tally::default(), Tally::default());
    for kind in Kind::ALL {
        let r = removed.get(&kind).copied().unwrap_or_default();
        let k = report.kept.get(&kind).copied().unwrap_or_default();
        out.push_str(&row(kind.as_str(), r, k));
        (gone.count, gone.bytes) = (gone.count + r.count, gone.bytes + r.bytes);
        (kept.count, kept.bytes) = (kept.count + k.count, kept.bytes + k.bytes);
    }
    out.push_str(&row("total", gone, kept));
    if !report.in_progress.is_empty() {
        out.push_str(&format!(
            "runs in progress: {:?} (every entry of their plans stays)\n",
            report.in_progress
        ));
    }
    for note in &report.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    if report.dry_run {
        out.push_str("dry run: nothing was removed\n");
    }
    out
}

fn row(name: &str, removed: Tally, kept: Tally) -> String {
    format!(
        "{name:<10} {:>8} {:>10} {:>8} {:>10}\n",
        removed.count,
        human(removed.bytes),
        kept.count,
        human(kept.bytes)
    )
}

/// Bytes in binary units (`0 B`, `12.3 KiB`, `1.5 GiB`).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1024), "1.0 KiB");
        assert_eq!(human(12_595), "12.3 KiB");
        assert_eq!(human(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
