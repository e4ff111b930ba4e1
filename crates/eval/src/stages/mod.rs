//! The eval crate's stage kinds. One file per kind; one line each in [`register`]. All read a
//! model directory (`model: ${stages.X.dir}/model`) on the CPU and record into the store.

mod gap;
mod generate;
mod score;
mod sentiment;
mod trace;

use std::path::PathBuf;

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
