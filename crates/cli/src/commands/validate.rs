//! `kiln validate FILE…`: pipelines, and experiments (their pipeline with every trial's
//! params). Nothing runs and no input is read, so this needs no data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiln_core::{Registry, spec};
use serde_json::Value;

use crate::Exit;
use crate::args::SetArgs;

pub fn run(files: &[PathBuf], set: &SetArgs) -> Result<()> {
    let registry = super::registry();
    let overrides = super::overrides(set)?;
    let mut failed = 0;
    for file in files {
        match check(file, &registry, &overrides) {
            Ok(what) => println!("ok: {} ({what})", file.display()),
            Err(e) => {
                failed += 1;
                eprintln!("{e:#}");
            }
        }
    }
    if failed > 0 {
        return Err(Exit {
            code: 2,
            message: format!("{failed} of {} file(s) failed validation", files.len()),
        }
        .into());
    }
    Ok(())
}

/// Validates one file; says what it held.
fn check(file: &Path, registry: &Registry, overrides: &BTreeMap<String, Value>) -> Result<String> {
    if !is_experiment(file) {
        let p = spec::load(file)?;
        spec::validate_lenient(&p, registry, overrides)?;
        return Ok(format!("{} stages", p.stages.len()));
    }
    let experiment = kiln_core::experiment::load(file)?;
    let workdir = std::env::current_dir().context("reading the current directory")?;
    let pipeline = spec::load(&workdir.join(&experiment.pipeline))?;
    experiment.check(&pipeline)?;
    let trials = experiment.trials();
    for t in &trials {
        let mut params = t.params.clone();
        params.extend(overrides.clone());
        spec::validate_lenient(&pipeline, registry, &params)
            .with_context(|| format!("{}: trial {}", file.display(), t.index))?;
    }
    Ok(format!(
        "experiment over {}, {} trials",
        pipeline.path.display(),
        trials.len()
    ))
}

/// Whether `file` is an experiment (a top-level `pipeline:` key) rather than a pipeline.
fn is_experiment(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| text.lines().any(|l| l.starts_with("pipeline:")))
}
