//! `data.tokenizer`: writes a `tokenizer.json`: GPT-2's (from `vocab.json` + `merges.txt` or a
//! `tokenizer.json`), or a byte-level BPE trained on a corpus, plus added special tokens.

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};

use crate::sentiment::{self, Encoding, ReadOptions};
use crate::tokenizer::Tok;

/// The `data.tokenizer` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct TokenizerStage;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "from",
        ParamType::Path,
        "a tokenizer.json or a directory with tokenizer.json or vocab.json + merges.txt",
    ),
    ParamSpec::optional(
        "train_on",
        ParamType::Path,
        "train a byte-level BPE on this corpus instead (see corpus_format)",
    ),
    ParamSpec::optional(
        "corpus_format",
        ParamType::String,
        "sentiment140 (default; latin-1), alpaca, or lines (one text per line, UTF-8)",
    )
    .one_of(&["sentiment140", "alpaca", "lines"]),
    ParamSpec::optional(
        "vocab_size",
        ParamType::Int,
        "vocabulary size when training (default 8192; a byte-level BPE needs at least 300)",
    )
    .at_least(300),
    ParamSpec::optional(
        "min_frequency",
        ParamType::Int,
        "minimum pair frequency when training (default 2)",
    )
    .at_least(1),
    ParamSpec::optional(
        "special_tokens",
        ParamType::List,
        "tokens to add as single special tokens (default none)",
    ),
    super::ADD_PREFIX_SPACE,
];

impl Stage for TokenizerStage {
    fn kind(&self) -> &'static str {
        "data.tokenizer"
    }
    fn version(&self) -> u32 {
        // 2: the tokenizer's configured special tokens are kept (special_tokens_map.json).
        2
    }
    fn doc(&self) -> &'static str {
        "writes tokenizer.json: GPT-2's from vocab/merges, or a byte-level BPE trained on a corpus"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let mut tok = if let Some(from) = super::path_or_url(ctx, "from") {
            super::load_tokenizer(ctx, &ctx.workdir.join(from))?
        } else {
            let corpus = super::required_path(ctx, "train_on")
                .map_err(|_| "give `from` (a tokenizer) or `train_on` (a corpus)")?;
            let p = ctx.p();
            let vocab = p.usize("vocab_size")?.unwrap_or(8192);
            let min_freq = p.u64("min_frequency")?.unwrap_or(2);
            let texts: Vec<String> = match p
                .string("corpus_format")?
                .as_deref()
                .unwrap_or("sentiment140")
            {
                "alpaca" => crate::alpaca::read(&corpus)?
                    .iter()
                    .flat_map(|r| crate::alpaca::segments(r, "").into_iter().map(|s| s.text))
                    .collect(),
                "lines" => std::fs::read_to_string(&corpus)?
                    .lines()
                    .map(str::to_owned)
                    .collect(),
                _ => {
                    sentiment::read(
                        &corpus,
                        &ReadOptions {
                            keep_neutral: true,
                            encoding: Encoding::Latin1,
                            ..ReadOptions::default()
                        },
                    )?
                    .texts
                }
            };
            ctx.log(&format!(
                "training a byte-level BPE of {vocab} entries on {} texts",
                texts.len()
            ));
            let tok = Tok::train(texts.iter(), vocab, min_freq)?;
            match ctx.p().bool("add_prefix_space")? {
                Some(on) => tok.with_add_prefix_space(on)?,
                None => tok,
            }
        };
        let added = tok.add_special_tokens(&ctx.p().strings("special_tokens")?.unwrap_or_default());
        let hash = tok.save(&ctx.out_dir.join("tokenizer.json"))?;
        ctx.log(&format!("tokenizer.json blake3 {hash}"));
        ctx.metrics.record("vocab_size", 0, tok.vocab_size() as f64);
        ctx.metrics.record("added_tokens", 0, added as f64);
        ctx.log(&format!(
            "vocabulary {} entries, {added} special tokens added",
            tok.vocab_size()
        ));
        Ok(())
    }
}
