//! `data.sentiment140`: labelled tweets into a tokenized, split classification dataset, or
//! (with `template`) into a language-modelling dataset of the same rows and splits that
//! teaches a model the prompted task (`"{text} I feel{label}"`).

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};

use crate::dataset::{self, AsLm};
use crate::prompted::{PromptTemplate, Trained};
use crate::sentiment::{Encoding, Layout, OnBadRow, Polarity, ReadOptions};
use crate::tokenizer::Tok;

/// The `data.sentiment140` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Sentiment140;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "source",
        ParamType::Path,
        "path, http(s):// URL or hf://OWNER/NAME/FILE (or declare inputs.source)",
    ),
    super::SOURCE_BLAKE3,
    ParamSpec::optional(
        "tokenizer",
        ParamType::Path,
        "tokenizer.json or a directory (or declare inputs.tokenizer)",
    ),
    ParamSpec::optional(
        "layout",
        ParamType::String,
        "sentiment140 (default), hf-parquet, or table (csv/jsonl/parquet with text_column/label_column)",
    )
    .one_of(&["sentiment140", "hf-parquet", "table"]),
    ParamSpec::optional(
        "text_column",
        ParamType::String,
        "table layout: the text column",
    ),
    ParamSpec::optional(
        "label_column",
        ParamType::String,
        "table layout: the label column",
    ),
    ParamSpec::optional(
        "label_values",
        ParamType::Map,
        "table layout: raw label value -> negative/neutral/positive",
    ),
    ParamSpec::optional(
        "encoding",
        ParamType::String,
        "latin-1 (default for sentiment140) or utf-8",
    )
    .one_of(&["latin-1", "utf-8"]),
    ParamSpec::optional(
        "unescape_html",
        ParamType::Bool,
        "turn &quot; &amp; … into characters (default true)",
    ),
    ParamSpec::optional(
        "keep_neutral",
        ParamType::Bool,
        "keep neutral (2) rows (default false: dropped and counted)",
    ),
    ParamSpec::optional(
        "on_bad_row",
        ParamType::String,
        "error (default) or skip (malformed rows are counted)",
    )
    .one_of(&["error", "skip"]),
    ParamSpec::optional(
        "labels",
        ParamType::Map,
        "polarity -> label token (default negative: bad, positive: good)",
    ),
    super::VAL,
    ParamSpec::optional("test", ParamType::Float, "test fraction (default 0.05)")
        .range_open(0.0, 1.0),
    super::SEED,
    super::SHARD_ROWS,
    ParamSpec::optional(
        "max_length",
        ParamType::Int,
        "cut texts to this many tokens (default: no cut)",
    )
    .at_least(1),
    super::SPECIAL_TOKENS,
    ParamSpec::optional(
        "template",
        ParamType::String,
        "write a language-modelling dataset instead: each row rendered as e.g. \"{text} I feel{label}\" (the label token after the prompt), same rows and splits",
    ),
    ParamSpec::optional(
        "template_labels",
        ParamType::String,
        "with template: full (default: every token trained) or label (the label token only)",
    )
    .one_of(&["full", "label"]),
    super::ADD_PREFIX_SPACE,
];

impl Stage for Sentiment140 {
    fn kind(&self) -> &'static str {
        "data.sentiment140"
    }
    fn version(&self) -> u32 {
        // 2: rows written in shuffled order. 3: the tokenizer's configured special tokens
        // are kept with the dataset (special_tokens_map.json).
        3
    }
    fn doc(&self) -> &'static str {
        "labelled tweets (sentiment140, HF parquet or a table) into tokenized classification shards"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(
        &self,
        params: &BTreeMap<String, serde_json::Value>,
    ) -> Result<(), Vec<(String, String)>> {
        let mut problems = super::split_sum(params);
        if params.get("layout").and_then(|v| v.as_str()) == Some("table") {
            for key in ["text_column", "label_column"] {
                if !params.contains_key(key) {
                    problems.push((key.to_owned(), "the table layout needs it".to_owned()));
                }
            }
        }
        match params.get("template").and_then(|v| v.as_str()) {
            Some(t) => {
                if let Err(e) = PromptTemplate::parse(t) {
                    problems.push(("template".to_owned(), e.to_string()));
                }
            }
            None if params.contains_key("template_labels") => problems.push((
                "template_labels".to_owned(),
                "only applies with a template".to_owned(),
            )),
            None => {}
        }
        if let Some(labels) = params.get("labels").and_then(|v| v.as_object()) {
            for key in labels.keys() {
                if Polarity::parse(key).is_none() {
                    problems.push((
                        "labels".to_owned(),
                        format!("{key:?} is not negative, neutral or positive"),
                    ));
                }
            }
        }
        super::problems(problems)
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let (source, opts) = super::source_and_options(ctx, 0.05, None)?;
        let tokenizer = super::required_path(ctx, "tokenizer")?;
        let p = ctx.p();
        let layout = match p.string("layout")?.as_deref().unwrap_or("sentiment140") {
            "hf-parquet" => Layout::HfParquet,
            "table" => Layout::Table {
                text: p.require("text_column", p.string("text_column"))?,
                label: p.require("label_column", p.string("label_column"))?,
                values: p
                    .string_map("label_values")?
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| {
                        Polarity::parse(&v).map(|p| (k, p)).ok_or_else(|| {
                            format!("label_values: {v:?} is not negative, neutral or positive")
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            _ => Layout::Sentiment140,
        };
        let default_encoding = if layout == Layout::Sentiment140 {
            "latin-1"
        } else {
            "utf-8"
        };
        let read = ReadOptions {
            layout,
            encoding: if p.string("encoding")?.as_deref().unwrap_or(default_encoding) == "utf-8" {
                Encoding::Utf8
            } else {
                Encoding::Latin1
            },
            unescape_html: p.bool("unescape_html")?.unwrap_or(true),
            keep_neutral: p.bool("keep_neutral")?.unwrap_or(false),
            on_bad_row: if p.string("on_bad_row")?.as_deref() == Some("skip") {
                OnBadRow::Skip
            } else {
                OnBadRow::Error
            },
        };
        let mut labels: BTreeMap<Polarity, String> = BTreeMap::from([
            (Polarity::Negative, "bad".to_owned()),
            (Polarity::Positive, "good".to_owned()),
        ]);
        for (k, v) in p.string_map("labels")?.unwrap_or_default() {
            let polarity = Polarity::parse(&k)
                .ok_or_else(|| format!("labels: {k:?} is not negative, neutral or positive"))?;
            labels.insert(polarity, v);
        }
        ctx.progress.update(0, None, Some("reading and tokenizing"));
        let started = std::time::Instant::now();
        // Loading a 50k-entry tokenizer and reading the file take about as long; do both at once.
        let prefix = ctx.p().bool("add_prefix_space")?;
        let (tok, rows) = std::thread::scope(|s| {
            let tok = s.spawn(|| {
                let tok = Tok::load_with(&tokenizer, prefix)?;
                tok.prepare_batch();
                Ok::<_, crate::Error>(tok)
            });
            let rows = crate::sentiment::read(&source, &read);
            (tok.join(), rows)
        });
        let tok = tok.map_err(|_| "loading the tokenizer panicked")??;
        ctx.log(&format!(
            "read the source and loaded the tokenizer in {:.0?}",
            started.elapsed()
        ));
        let template = ctx
            .p()
            .string("template")?
            .map(|t| PromptTemplate::parse(&t))
            .transpose()?;
        let trained = if ctx.p().string("template_labels")?.as_deref() == Some("label") {
            Trained::Label
        } else {
            Trained::Full
        };
        let lm = template.as_ref().map(|template| AsLm { template, trained });
        let manifest =
            dataset::build_sentiment_as(&source, rows?, tok, &labels, lm, &opts, &ctx.out_dir)?;
        ctx.log(&format!("built the dataset in {:.0?}", started.elapsed()));
        record(ctx, &manifest);
        Ok(())
    }
}

/// Row accounting as metrics: rows read, rejected, per split, truncated.
pub(super) fn record(ctx: &StageContext, m: &crate::shard::Manifest) {
    ctx.metrics.record("rows_read", 0, m.rows_read as f64);
    ctx.metrics.record(
        "rows_rejected",
        0,
        m.rejected.values().sum::<usize>() as f64,
    );
    ctx.metrics.record("rows_truncated", 0, m.truncated as f64);
    for (name, split) in &m.splits {
        ctx.metrics
            .record(&format!("{name}_rows"), 0, split.rows as f64);
        ctx.metrics
            .record(&format!("{name}_tokens"), 0, split.tokens as f64);
    }
    for (reason, n) in &m.rejected {
        ctx.log(&format!("rejected {n} row(s): {reason}"));
    }
}
