//! `kiln validate FILE…`

use std::path::PathBuf;

use anyhow::Result;
use kiln_core::spec;

use crate::Exit;
use crate::args::SetArgs;

pub fn run(files: &[PathBuf], set: &SetArgs) -> Result<()> {
    let registry = super::registry();
    let overrides = super::overrides(set)?;
    let mut failed = 0;
    for file in files {
        let checked = spec::load(file).map_err(anyhow::Error::from).and_then(|p| {
            let params = spec::resolve_params(&p, &overrides, true)?;
            spec::validate(&p, &registry, &params)?;
            Ok(p)
        });
        match checked {
            Ok(p) => println!("ok: {} ({} stages)", file.display(), p.stages.len()),
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
