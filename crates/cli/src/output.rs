//! Printing tables as aligned text, CSV or JSON.

use std::io::Write;

use anyhow::Result;
use comfy_table::{Table, presets};
use kiln_store::{Cell, QueryResult};

use crate::args::TableFormat;

/// Prints `result` to stdout in `format`.
pub fn print(result: &QueryResult, format: TableFormat) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        TableFormat::Table => {
            let mut table = Table::new();
            table.load_preset(presets::NOTHING);
            table.set_header(&result.columns);
            for row in &result.rows {
                table.add_row(row.iter().map(ToString::to_string));
            }
            // Right-align numeric columns.
            for (i, column) in table.column_iter_mut().enumerate() {
                let numeric = !result.rows.is_empty()
                    && result.rows.iter().all(|r| {
                        matches!(r.get(i), Some(Cell::Int(_) | Cell::Real(_) | Cell::Null))
                    });
                if numeric {
                    column.set_cell_alignment(comfy_table::CellAlignment::Right);
                }
            }
            writeln!(out, "{}", table.to_string().trim_end())?;
            writeln!(
                out,
                "({} row{})",
                result.rows.len(),
                if result.rows.len() == 1 { "" } else { "s" }
            )?;
        }
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(&result.columns)?;
            for row in &result.rows {
                w.write_record(row.iter().map(ToString::to_string))?;
            }
            w.flush()?;
        }
        TableFormat::Json => {
            let rows: Vec<serde_json::Map<String, serde_json::Value>> = result
                .rows
                .iter()
                .map(|row| {
                    result
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.clone(), serde_json::to_value(v).unwrap_or_default()))
                        .collect()
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        }
    }
    Ok(())
}
