//! `data.alpaca`: Alpaca-format instruction records into tokenized LM shards with labels.

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};

use crate::alpaca::Labels;
use crate::dataset;

/// The `data.alpaca` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Alpaca;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "source",
        ParamType::Path,
        "JSON list or JSONL: path, URL or hf:// file (or declare inputs.source)",
    ),
    super::SOURCE_BLAKE3,
    ParamSpec::optional(
        "tokenizer",
        ParamType::Path,
        "tokenizer.json or a directory (or declare inputs.tokenizer)",
    ),
    ParamSpec::optional(
        "labels",
        ParamType::String,
        "completion (default: prompt tokens -100) or full",
    )
    .one_of(&["completion", "full"]),
    ParamSpec::optional(
        "marker_tokens",
        ParamType::Bool,
        "add the ### markers as special tokens (default false)",
    ),
    ParamSpec::optional(
        "max_length",
        ParamType::Int,
        "cut records to this many tokens (default 1024)",
    )
    .at_least(1),
    super::VAL,
    ParamSpec::optional("test", ParamType::Float, "test fraction (default 0)").range_open(0.0, 1.0),
    super::SEED,
    super::SHARD_ROWS,
    super::SPECIAL_TOKENS,
    super::ADD_PREFIX_SPACE,
];

impl Stage for Alpaca {
    fn kind(&self) -> &'static str {
        "data.alpaca"
    }
    fn version(&self) -> u32 {
        // 2: rows written in shuffled order. 3: the EOS is the tokenizer's configured
        // eos_token (tokenizer_config.json), kept with the dataset.
        3
    }
    fn doc(&self) -> &'static str {
        "Alpaca-format instructions (single or multi-turn) into tokenized LM shards with masked labels"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(
        &self,
        params: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), Vec<(String, String)>> {
        super::problems(super::split_sum(params))
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let (source, opts) = super::source_and_options(ctx, 0.0, Some(1024))?;
        let tok = super::load_tokenizer(ctx, &super::required_path(ctx, "tokenizer")?)?;
        let p = ctx.p();
        let labels = if p.string("labels")?.as_deref() == Some("full") {
            Labels::Full
        } else {
            Labels::Completion
        };
        let manifest = dataset::build_alpaca(
            &source,
            tok,
            labels,
            p.bool("marker_tokens")?.unwrap_or(false),
            &opts,
            &ctx.out_dir,
        )?;
        super::sentiment140::record(ctx, &manifest);
        ctx.metrics
            .record("added_tokens", 0, manifest.added_tokens as f64);
        Ok(())
    }
}
