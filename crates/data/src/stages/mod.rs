//! The data crate's stage kinds. One file per kind; one line each in [`register`].

mod alpaca;
mod sentiment140;
mod tokenizer;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_core::{Registry, StageContext};

use crate::dataset::{BuildOptions, Fractions};
use serde_json::Value;

pub use alpaca::Alpaca;
pub use sentiment140::Sentiment140;
pub use tokenizer::TokenizerStage;

/// Adds the data kinds to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(TokenizerStage);
    registry.add(Sentiment140);
    registry.add(Alpaca);
}

/// A path-like param: a declared input of that name (content-hashed by the engine) wins over
/// `with.<name>` (a path or URL, resolved against the project root when relative).
fn path_or_url(ctx: &StageContext, name: &str) -> Option<String> {
    if let Some(p) = ctx.inputs.get(name) {
        // Relative to the project root, so manifests do not depend on where the checkout is.
        let p = p.strip_prefix(&ctx.workdir).unwrap_or(p);
        return Some(p.to_string_lossy().into_owned());
    }
    ctx.param_str(name)
}

/// Fetches `source` (declared input, path, URL or `hf://` file) and reads the options every
/// dataset stage shares. `default_test` and `default_max_length` differ between kinds.
fn source_and_options(
    ctx: &StageContext,
    default_test: f64,
    default_max_length: Option<u64>,
) -> Result<(PathBuf, BuildOptions), kiln_core::StageError> {
    let source_name =
        path_or_url(ctx, "source").ok_or("give `source` (with.source or inputs.source)")?;
    let source = crate::source::fetch(
        &source_name,
        &ctx.workdir,
        &ctx.downloads,
        ctx.param_str("source_blake3").as_deref(),
    )?;
    let max_length = ctx
        .params
        .get("max_length")
        .and_then(Value::as_u64)
        .or(default_max_length);
    let opts = BuildOptions {
        source_name,
        fractions: Fractions {
            val: f64_param(ctx, "val", 0.05),
            test: f64_param(ctx, "test", default_test),
        },
        seed: u64_param(ctx, "seed", 0),
        rows_per_shard: u64_param(ctx, "shard_rows", 10_000) as usize,
        max_length: max_length.map(|m| m as usize),
        special_tokens: strings_param(ctx, "special_tokens"),
        params: serde_json::to_value(&ctx.params)?,
    };
    Ok((source, opts))
}

fn required_path(ctx: &StageContext, name: &str) -> Result<PathBuf, String> {
    path_or_url(ctx, name)
        .map(|p| ctx.workdir.join(p))
        .ok_or_else(|| {
            format!("give `{name}` as a declared input (inputs.{name}) or as with.{name}")
        })
}

fn f64_param(ctx: &StageContext, key: &str, default: f64) -> f64 {
    ctx.params
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or(default)
}

fn u64_param(ctx: &StageContext, key: &str, default: u64) -> u64 {
    ctx.params
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or(default)
}

fn bool_param(ctx: &StageContext, key: &str, default: bool) -> bool {
    ctx.params
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

fn strings_param(ctx: &StageContext, key: &str) -> Vec<String> {
    ctx.params
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(kiln_core::value::display).collect())
        .unwrap_or_default()
}

fn map_param(ctx: &StageContext, key: &str) -> BTreeMap<String, String> {
    ctx.params
        .get(key)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), kiln_core::value::display(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that an enum-like string param has one of `allowed` values.
fn one_of(
    params: &BTreeMap<String, Value>,
    key: &str,
    allowed: &[&str],
    problems: &mut Vec<(String, String)>,
) {
    if let Some(v) = params.get(key).and_then(Value::as_str)
        && !allowed.contains(&v)
        && !v.contains("${")
    {
        problems.push((
            key.to_owned(),
            format!("{v:?} is not one of {}", allowed.join(", ")),
        ));
    }
}

/// Checks split fractions.
fn fractions(params: &BTreeMap<String, Value>, problems: &mut Vec<(String, String)>) {
    for key in ["val", "test"] {
        if let Some(x) = params.get(key).and_then(Value::as_f64)
            && !(0.0..1.0).contains(&x)
        {
            problems.push((key.to_owned(), format!("{x} must be in [0, 1)")));
        }
    }
}
