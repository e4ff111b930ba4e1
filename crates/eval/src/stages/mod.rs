//! The eval crate's stage kinds. One file per kind; one line each in [`register`]. All read a
//! model directory (`model: ${stages.X.dir}/model`) on the CPU and record into the store.

mod gap;
mod generate;
mod score;
mod sentiment;
mod trace;

use std::path::{Path, PathBuf};

use kiln_core::{Registry, StageContext, StageError};

pub use gap::EvalGap;
pub use generate::EvalGenerate;
pub use score::EvalScore;
pub use sentiment::EvalSentiment;
pub use trace::EvalTrace;

/// Adds the eval kinds to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(EvalSentiment);
    registry.add(EvalTrace);
    registry.add(EvalGap);
    registry.add(EvalScore);
    registry.add(EvalGenerate);
}

/// A required path param, relative to the project root.
fn path(ctx: &StageContext, key: &str) -> Result<PathBuf, StageError> {
    let p = ctx.p();
    Ok(p.require(key, p.path(key))?)
}

fn write_json<T: serde::Serialize>(
    ctx: &StageContext,
    name: &str,
    value: &T,
) -> Result<(), StageError> {
    let path = ctx.out_dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// Writes a CSV file (RFC 4180 quoting through the `csv` crate, so any text, quotes, commas
/// and newlines included, reads back exactly): `header`, then `rows`.
fn write_csv<R>(
    path: &Path,
    header: &[&str],
    rows: impl IntoIterator<Item = R>,
) -> Result<(), StageError>
where
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let cannot = |e: csv::Error| format!("cannot write {}: {e}", path.display());
    let mut w = csv::Writer::from_path(path).map_err(cannot)?;
    w.write_record(header).map_err(cannot)?;
    for row in rows {
        w.write_record(row).map_err(cannot)?;
    }
    w.flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::write_csv;

    #[test]
    fn csv_cells_with_quotes_commas_and_newlines_read_back_exactly() {
        let tricky = [
            "He said \"no, thanks\"\nand left",
            "\"",
            ",",
            "\n",
            " \"quoted\", ",
            "\r\n",
            "'single' {:?}",
        ];
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("t.csv");
        let rows: Vec<Vec<String>> = tricky
            .iter()
            .enumerate()
            .map(|(i, t)| vec![i.to_string(), (*t).to_owned()])
            .collect();
        write_csv(&path, &["n", "text"], &rows).expect("writes");
        let mut reader = csv::Reader::from_path(&path).expect("opens");
        assert_eq!(reader.headers().expect("header"), vec!["n", "text"]);
        let back: Vec<String> = reader
            .records()
            .map(|r| r.expect("a record")[1].to_owned())
            .collect();
        assert_eq!(back, tricky);
    }
}
