//! The eval crate's stage kinds. One file per kind; one line each in [`register`]. All read a
//! model directory (`model: ${stages.X.dir}/model`) on the CPU and record into the store.

mod gap;
mod generate;
mod score;
mod sentiment;
mod trace;

use std::path::PathBuf;

use kiln_core::{Registry, StageContext, StageError};
use serde_json::Value;

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

/// A path param, relative to the project root.
fn path(ctx: &StageContext, key: &str) -> Result<PathBuf, StageError> {
    ctx.param_str(key)
        .map(|p| ctx.workdir.join(p))
        .ok_or_else(|| format!("give `{key}`").into())
}

fn uint(ctx: &StageContext, key: &str) -> Option<usize> {
    ctx.params
        .get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
}

fn float(ctx: &StageContext, key: &str) -> Option<f64> {
    ctx.params.get(key).and_then(Value::as_f64)
}

fn strings(ctx: &StageContext, key: &str) -> Vec<String> {
    ctx.params
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(kiln_core::value::display).collect())
        .unwrap_or_default()
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
