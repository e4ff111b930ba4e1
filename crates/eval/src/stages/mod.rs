//! The eval crate's stage kinds. One file per kind; one line each in [`register`]. All read a
//! model directory (`model: ${stages.X.dir}/model`) on the device their `device` param names
//! (the CPU by default) and record into the store.

mod gap;
mod generate;
mod iterate;
mod score;
mod sentiment;
mod trace;

use std::path::{Path, PathBuf};

use kiln_core::{ParamSpec, ParamType, Registry, StageContext, StageError, StageResult};
use kiln_model::burn::tensor::backend::Backend;
use kiln_model::device::{self, Device, InferJob, Precision};

pub use gap::EvalGap;
pub use generate::EvalGenerate;
pub use iterate::EvalIterate;
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
    registry.add(EvalIterate);
}

/// The `device` param every eval kind takes.
const DEVICE: ParamSpec = ParamSpec::optional(
    "device",
    ParamType::String,
    "where to run the model (default cpu); cuda:N / wgpu:N is the Nth GPU the stage holds",
)
.parses(device::DEVICE_RULE, device::check_device);

/// The `precision` param every eval kind takes.
const PRECISION: ParamSpec = ParamSpec::optional("precision", ParamType::String, "default f32")
    .parses(device::PRECISION_RULE, device::check_precision);

/// A stage kind's work, generic over the backend its `device` param picks.
trait OnDevice: Copy {
    fn run<B: Backend>(self, ctx: &mut StageContext, device: &B::Device) -> StageResult;
}

/// Runs `kind`'s work on the stage's `device` at its `precision` (checked before it starts).
fn on_device<K: OnDevice>(ctx: &mut StageContext, kind: K) -> StageResult {
    struct Job<'a, K> {
        ctx: &'a mut StageContext,
        kind: K,
    }
    impl<K: OnDevice> InferJob for Job<'_, K> {
        type Output = StageResult;
        fn run<B: Backend>(self, device: B::Device) -> StageResult {
            self.kind.run::<B>(self.ctx, &device)
        }
    }
    let p = ctx.p();
    let device: Device =
        device::resolve(p.string("device")?.as_deref().unwrap_or("cpu"), &ctx.gpus)?;
    let precision: Precision = p.string("precision")?.as_deref().unwrap_or("f32").parse()?;
    ctx.log(&format!(
        "running on {} at {precision}",
        device::describe(device)
    ));
    device::dispatch_infer(device, precision, Job { ctx, kind })?
}

/// A required path param, relative to the project root.
/// A path param: a declared input of that name (content-hashed by the engine) wins over
/// `with.<name>`.
fn path(ctx: &StageContext, key: &str) -> Result<PathBuf, StageError> {
    if let Some(input) = ctx.inputs.get(key) {
        return Ok(input.clone());
    }
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
