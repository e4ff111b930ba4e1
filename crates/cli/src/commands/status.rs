//! `kiln status FILE`: per stage, cached / stale and why / never run.

use std::path::Path;

use anyhow::Result;
use kiln_core::cache::{Cache, HashMemo};
use kiln_core::fingerprint::{FingerprintInput, StaleReason, stale_reasons};
use kiln_core::plan;
use kiln_store::Store;

use crate::Cli;
use crate::args::SetArgs;

pub async fn run(cli: &Cli, file: &Path, set: &SetArgs) -> Result<()> {
    let pipeline = super::load(file)?;
    let registry = super::registry();
    let cache = Cache::new(&cli.results);
    let workdir = std::env::current_dir()?;
    let store = match kiln_store::location(&cli.store) {
        Ok(l) if l.may_exist() => Some(Store::open_read_only(&cli.store).await?),
        _ => None,
    };
    let mut memo = HashMemo::load(&cache, store.as_ref()).await?;
    let plan = plan::plan(
        &pipeline,
        &registry,
        &super::overrides(set)?,
        &workdir,
        &mut memo,
    )?;
    let mut stale_stages: Vec<String> = Vec::new();
    for stage in &plan.stages {
        let short = &stage.fingerprint[..12];
        let reasons: Vec<StaleReason> = if cache.lookup(&stage.fingerprint).is_some() {
            Vec::new()
        } else {
            let last = match &store {
                Some(s) => s.last_execution(&pipeline.name, &stage.name).await?,
                None => None,
            };
            match last {
                None => vec![StaleReason::NeverRun],
                Some(exec) if exec.fingerprint == stage.fingerprint => {
                    vec![StaleReason::EntryMissing]
                }
                Some(exec) => {
                    match serde_json::from_str::<FingerprintInput>(&exec.fingerprint_input) {
                        Ok(old) => {
                            let mut r = stale_reasons(&old, &stage.fingerprint_input);
                            if r.is_empty() {
                                r.push(StaleReason::EntryMissing);
                            }
                            for reason in &mut r {
                                name_changed_files(reason, &memo, store.as_ref()).await?;
                            }
                            r
                        }
                        Err(_) => vec![StaleReason::NeverRun],
                    }
                }
            }
        };
        let upstream: Vec<&String> = stage
            .needs
            .iter()
            .filter(|n| stale_stages.contains(n))
            .collect();
        if reasons.is_empty() && upstream.is_empty() {
            println!("{:<20} cached     {short}", stage.name);
            continue;
        }
        stale_stages.push(stage.name.clone());
        let mut why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        for u in upstream {
            let text = format!("need {u} will run");
            if !why.iter().any(|w| w.contains(u.as_str())) {
                why.push(text);
            }
        }
        if reasons == [StaleReason::NeverRun] {
            println!("{:<20} never run  {short}", stage.name);
        } else {
            println!("{:<20} stale      {short}  {}", stage.name, why.join("; "));
        }
    }
    Ok(())
}

/// For a changed directory, the files in it that changed (from the manifests of its old and
/// new hash; the old one is in the store when kiln hashed it before).
async fn name_changed_files(
    reason: &mut StaleReason,
    memo: &HashMemo,
    store: Option<&Store>,
) -> Result<()> {
    let StaleReason::InputChanged {
        hashes: (Some(old), Some(new)),
        files,
        ..
    } = reason
    else {
        return Ok(());
    };
    let (Some(new_manifest), Some(store)) = (memo.manifest(new), store) else {
        return Ok(());
    };
    if let Some(old_manifest) = store.dir_manifest(old).await? {
        *files = kiln_core::cache::manifest_changes(&old_manifest, new_manifest);
    }
    Ok(())
}
