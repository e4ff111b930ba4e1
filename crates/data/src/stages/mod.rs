//! The data crate's stage kinds. One file per kind; one line each in [`register`].

mod alpaca;
mod instruct;
mod sentiment140;
mod tokenizer;

use std::path::PathBuf;

use kiln_core::{ParamSpec, ParamType, Registry, StageContext};

use crate::dataset::{BuildOptions, Fractions};

pub use alpaca::Alpaca;
pub use instruct::Instruct;
pub use sentiment140::Sentiment140;
pub use tokenizer::TokenizerStage;

/// Adds the data kinds to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(TokenizerStage);
    registry.add(Sentiment140);
    registry.add(Alpaca);
    registry.add(Instruct);
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
    default_max_length: Option<usize>,
) -> Result<(PathBuf, BuildOptions), kiln_core::StageError> {
    let source_name =
        path_or_url(ctx, "source").ok_or("give `source` (with.source or inputs.source)")?;
    let source = crate::source::fetch(
        &source_name,
        &ctx.workdir,
        &ctx.downloads,
        ctx.param_str("source_blake3").as_deref(),
    )?;
    let p = ctx.p();
    let max_length = p.count("max_length")?.or(default_max_length);
    let opts = BuildOptions {
        source_name,
        fractions: Fractions {
            val: p.f64("val")?.unwrap_or(0.05),
            test: p.f64("test")?.unwrap_or(default_test),
        },
        seed: p.u64("seed")?.unwrap_or(0),
        rows_per_shard: p.count("shard_rows")?.unwrap_or(10_000),
        max_length,
        special_tokens: p.strings("special_tokens")?.unwrap_or_default(),
        params: serde_json::to_value(&ctx.params)?,
    };
    Ok((source, opts))
}

/// The params [`source_and_options`] reads that every dataset kind shares (their defaults are
/// its defaults); `source`, `test` and `max_length` differ by kind and are each kind's own.
pub const SOURCE_BLAKE3: ParamSpec = ParamSpec::optional(
    "source_blake3",
    ParamType::String,
    "expected blake3 of a downloaded source",
);
/// See [`SOURCE_BLAKE3`].
pub const VAL: ParamSpec = ParamSpec::optional(
    "val",
    ParamType::Float,
    "validation fraction (default 0.05)",
)
.range_open(0.0, 1.0);
/// See [`SOURCE_BLAKE3`].
pub const SEED: ParamSpec =
    ParamSpec::optional("seed", ParamType::Int, "split seed (default 0)").at_least(0);
/// See [`SOURCE_BLAKE3`].
pub const SHARD_ROWS: ParamSpec = ParamSpec::optional(
    "shard_rows",
    ParamType::Int,
    "rows per shard (default 10000)",
)
.at_least(1);
/// See [`SOURCE_BLAKE3`].
pub const SPECIAL_TOKENS: ParamSpec = ParamSpec::optional(
    "special_tokens",
    ParamType::List,
    "tokens to add to the tokenizer as special tokens (default none)",
);

/// The `add_prefix_space` param every stage that loads a tokenizer takes.
pub const ADD_PREFIX_SPACE: ParamSpec = ParamSpec::optional(
    "add_prefix_space",
    ParamType::Bool,
    "tokenize as if the text began with a space (\"good\" as \" good\"), as Hugging Face's option of that name; default: as the tokenizer's files say",
);

/// Loads the tokenizer at `path` with the stage's `add_prefix_space` (see
/// [`ADD_PREFIX_SPACE`]).
///
/// # Errors
/// A bad tokenizer, or the option on a tokenizer it does not apply to.
pub fn load_tokenizer(
    ctx: &StageContext,
    path: &std::path::Path,
) -> Result<crate::tokenizer::Tok, kiln_core::StageError> {
    let on = ctx.p().bool("add_prefix_space")?;
    Ok(crate::tokenizer::Tok::load_with(path, on)?)
}

fn required_path(ctx: &StageContext, name: &str) -> Result<PathBuf, String> {
    path_or_url(ctx, name)
        .map(|p| ctx.workdir.join(p))
        .ok_or_else(|| {
            format!("give `{name}` as a declared input (inputs.{name}) or as with.{name}")
        })
}

/// The split fractions must leave rows to train on (each is held to [0, 1) by its spec).
fn split_sum(
    params: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<(String, String)> {
    let get = |k: &str| params.get(k).and_then(serde_json::Value::as_f64);
    match (get("val"), get("test")) {
        (Some(v), Some(t)) if v + t >= 1.0 => vec![(
            "test".to_owned(),
            format!("val + test = {v} + {t} leaves nothing to train on"),
        )],
        _ => Vec::new(),
    }
}

fn problems(list: Vec<(String, String)>) -> Result<(), Vec<(String, String)>> {
    if list.is_empty() { Ok(()) } else { Err(list) }
}
