//! `data.instruct`: instruction and chat records (JSON, JSONL, CSV, parquet) rendered by a
//! template into tokenized LM shards with full or completion labels.

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use serde_json::Value;

use crate::alpaca::Labels;
use crate::dataset::{self, InstructOptions, OnMissingMarker};
use crate::instruct::Template;

/// The `data.instruct` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Instruct;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "source",
        ParamType::Path,
        "records: .json list, .jsonl, .csv/.tsv or .parquet (path, URL or hf:// file; or declare inputs.source)",
    ),
    super::SOURCE_BLAKE3,
    ParamSpec::optional(
        "tokenizer",
        ParamType::Path,
        "tokenizer.json or a directory (or declare inputs.tokenizer); chat_template reads its tokenizer_config.json",
    ),
    ParamSpec::optional(
        "template",
        ParamType::Any,
        "alpaca (default), human-assistant, chatml, chat_template (the model's Jinja), raw, or a custom template {segments, turns, prefix}",
    ),
    ParamSpec::optional(
        "columns",
        ParamType::Map,
        "kiln's name (instruction, input, output, system, turns, text) -> the source's column",
    ),
    ParamSpec::optional(
        "labels",
        ParamType::String,
        "completion (default: only answers trained) or full",
    )
    .one_of(&["completion", "full"]),
    ParamSpec::optional(
        "response_marker",
        ParamType::String,
        "raw text: training starts after this marker's tokens ({bos}/{eos} allowed)",
    ),
    ParamSpec::optional(
        "instruction_marker",
        ParamType::String,
        "raw text: training stops at this marker's tokens until the next response marker",
    ),
    ParamSpec::optional(
        "on_missing_marker",
        ParamType::String,
        "raw text without the response marker: error (default, with a count) or skip",
    )
    .one_of(&["error", "skip"]),
    ParamSpec::optional(
        "bos_token",
        ParamType::String,
        "BOS to use instead of the tokenizer's (added as a special token if new), e.g. <s>",
    ),
    ParamSpec::optional(
        "eos_token",
        ParamType::String,
        "EOS to use instead of the tokenizer's (added as a special token if new), e.g. </s>",
    ),
    ParamSpec::optional(
        "max_length",
        ParamType::Int,
        "cut records to this many tokens, counted (default 1024)",
    )
    .at_least(1),
    super::VAL,
    ParamSpec::optional("test", ParamType::Float, "test fraction (default 0)").range_open(0.0, 1.0),
    super::SEED,
    super::SHARD_ROWS,
    super::SPECIAL_TOKENS,
    super::ADD_PREFIX_SPACE,
];

impl Stage for Instruct {
    fn kind(&self) -> &'static str {
        "data.instruct"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "instruction and chat records rendered by a template (presets, custom, the model's chat_template) into LM shards"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        let mut problems = super::split_sum(params);
        let template = params
            .get("template")
            .cloned()
            .unwrap_or_else(|| Value::String("alpaca".into()));
        // chat_template needs the tokenizer's files, read when the stage runs.
        if template.as_str() != Some("chat_template")
            && let Err(e) = Template::parse(&template, None)
        {
            problems.push(("template".into(), e.to_string()));
        }
        let name = template.as_str().unwrap_or("custom");
        let markers = params.contains_key("response_marker");
        if params.contains_key("instruction_marker") && !markers {
            problems.push((
                "instruction_marker".into(),
                "needs a response_marker".into(),
            ));
        }
        if markers && !matches!(name, "raw" | "human-assistant") {
            problems.push((
                "response_marker".into(),
                format!("markers apply to raw text (template raw or human-assistant), not {name}"),
            ));
        }
        let completion = params.get("labels").and_then(Value::as_str) != Some("full");
        if name == "raw" && completion && !markers {
            problems.push((
                "response_marker".into(),
                "template raw with completion labels needs the response marker to search for (or labels: full)".into(),
            ));
        }
        super::problems(problems)
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let (source, opts) = super::source_and_options(ctx, 0.0, Some(1024))?;
        let tokenizer = super::required_path(ctx, "tokenizer")?;
        let tok = super::load_tokenizer(ctx, &tokenizer)?;
        let p = ctx.p();
        let template_value = ctx
            .params
            .get("template")
            .cloned()
            .unwrap_or_else(|| Value::String("alpaca".into()));
        let config_dir = if tokenizer.is_dir() {
            tokenizer.clone()
        } else {
            tokenizer
                .parent()
                .map(ToOwned::to_owned)
                .unwrap_or_default()
        };
        let template = Template::parse(&template_value, Some(&config_dir))?;
        let markers = p
            .string("response_marker")?
            .map(|r| -> Result<_, kiln_core::ParamError> {
                Ok((r, p.string("instruction_marker")?))
            })
            .transpose()?;
        let io = InstructOptions {
            template,
            columns: p.string_map("columns")?.unwrap_or_default(),
            labels: if p.string("labels")?.as_deref() == Some("full") {
                Labels::Full
            } else {
                Labels::Completion
            },
            markers,
            on_missing_marker: if p.string("on_missing_marker")?.as_deref() == Some("skip") {
                OnMissingMarker::Skip
            } else {
                OnMissingMarker::Error
            },
            bos: p.string("bos_token")?,
            eos: p.string("eos_token")?,
        };
        let manifest = dataset::build_instruct(&source, tok, &io, &opts, &ctx.out_dir)?;
        super::sentiment140::record(ctx, &manifest);
        ctx.metrics
            .record("added_tokens", 0, manifest.added_tokens as f64);
        let missing = manifest
            .rejected
            .get(dataset::NO_RESPONSE_MARKER)
            .copied()
            .unwrap_or(0);
        ctx.metrics.record("rows_missing_marker", 0, missing as f64);
        if missing > 0 {
            ctx.warn(&format!(
                "{missing} of {} records had no response marker and were left out",
                manifest.rows_read
            ));
        }
        Ok(())
    }
}
