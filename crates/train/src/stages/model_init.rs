//! `model.init`: a randomly initialized GPT-2 of a named or custom size, for training from
//! scratch; its vocabulary can come from a tokenizer (or a dataset directory holding one).

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::tokenizer::Tok;
use kiln_model::gpt2::Gpt2Config;
use serde_json::Value;

use super::path;
use kiln_model::Cpu;

/// The `model.init` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct ModelInit;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "config",
        ParamType::String,
        "gpt2, gpt2-medium, distilgpt2, or custom (default) with the sizes below",
    ),
    ParamSpec::optional(
        "tokenizer",
        ParamType::Path,
        "tokenizer.json or a dataset directory: sets vocab_size and the end-of-text id",
    ),
    ParamSpec::optional(
        "vocab_size",
        ParamType::Int,
        "vocabulary size (default: the tokenizer's)",
    ),
    ParamSpec::optional(
        "n_positions",
        ParamType::Int,
        "context length (custom; default 128)",
    ),
    ParamSpec::optional(
        "n_embd",
        ParamType::Int,
        "hidden size (custom; default 128)",
    ),
    ParamSpec::optional("n_layer", ParamType::Int, "blocks (custom; default 2)"),
    ParamSpec::optional(
        "n_head",
        ParamType::Int,
        "attention heads (custom; default 4)",
    ),
    ParamSpec::optional("seed", ParamType::Int, "initialization seed (default 0)"),
];

const NAMED: &[&str] = &["gpt2", "gpt2-medium", "distilgpt2", "custom"];

impl Stage for ModelInit {
    fn kind(&self) -> &'static str {
        "model.init"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "a randomly initialized GPT-2 (named or custom size), writes model/"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        if let Some(c) = params.get("config").and_then(Value::as_str)
            && !NAMED.contains(&c)
            && !c.contains("${")
        {
            problems.push((
                "config".into(),
                format!("{c:?} is not one of {}", NAMED.join(", ")),
            ));
        }
        for key in ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head"] {
            if params.get(key).and_then(Value::as_u64) == Some(0) {
                problems.push((key.into(), "must be at least 1".into()));
            }
        }
        if !params.contains_key("tokenizer") && !params.contains_key("vocab_size") {
            problems.push(("vocab_size".into(), "give vocab_size or a tokenizer".into()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let p = &ctx.params;
        let uint = |k: &str, d: usize| p.get(k).and_then(Value::as_u64).map_or(d, |v| v as usize);
        let tok_path = path(ctx, "tokenizer");
        let tok = tok_path.as_deref().map(Tok::load).transpose()?;
        let named = ctx.param_str("config").unwrap_or_else(|| "custom".into());
        let mut config = match Gpt2Config::named(&named) {
            Some(c) => c,
            None => Gpt2Config::new(
                0,
                uint("n_positions", 128),
                uint("n_embd", 128),
                uint("n_layer", 2),
                uint("n_head", 4),
            ),
        };
        config.vocab_size = match (p.get("vocab_size").and_then(Value::as_u64), &tok) {
            (Some(v), _) => v as usize,
            (None, Some(t)) => t.vocab_size(),
            (None, None) if config.vocab_size > 0 => config.vocab_size,
            (None, None) => return Err("give vocab_size or a tokenizer".into()),
        };
        if let Some(t) = &tok {
            config.eos_token_id = t.eos_id().map(|e| e as usize).or(config.eos_token_id);
        }
        config.check().map_err(|m| format!("model config: {m}"))?;
        let device = Default::default();
        <Cpu as burn::tensor::backend::Backend>::seed(
            &device,
            p.get("seed").and_then(Value::as_u64).unwrap_or(0),
        );
        let model = config.init::<Cpu>(&device);
        let dir = ctx.out_dir.join("model");
        kiln_model::hf::save(&model, &config, &dir)?;
        if let Some(t) = &tok {
            t.save(&dir.join("tokenizer.json"))?;
        }
        ctx.log(&format!(
            "initialized {named} GPT-2: vocab {}, {} layers, {} heads, {} dims, context {}",
            config.vocab_size, config.n_layer, config.n_head, config.n_embd, config.n_positions
        ));
        Ok(())
    }
}
