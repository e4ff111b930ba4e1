//! `model.init`: a randomly initialized GPT-2 of a named or custom size, for training from
//! scratch; its vocabulary can come from a tokenizer (or a dataset directory holding one).

use std::collections::BTreeMap;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::tokenizer::Tok;
use kiln_model::gpt2::Gpt2Config;
use serde_json::Value;

use kiln_model::Cpu;

/// The `model.init` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct ModelInit;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "config",
        ParamType::String,
        "gpt2, gpt2-medium, distilgpt2, custom (default: a GPT-2 with the sizes below), or another architecture's shape: smollm2-135m, smollm2-360m, qwen2-0.5b, tinyllama-1.1b, bloom-560m, phi-1_5, phi-2",
    )
    .one_of(NAMED),
    ParamSpec::optional(
        "tokenizer",
        ParamType::Path,
        "tokenizer.json or a dataset directory: sets vocab_size and the end-of-text id",
    ),
    ParamSpec::optional(
        "vocab_size",
        ParamType::Int,
        "vocabulary size (default: the tokenizer's)",
    )
    .at_least(1),
    ParamSpec::optional(
        "n_positions",
        ParamType::Int,
        "context length (custom; default 128)",
    )
    .at_least(1),
    ParamSpec::optional(
        "n_embd",
        ParamType::Int,
        "hidden size (custom; default 128)",
    )
    .at_least(1),
    ParamSpec::optional("n_layer", ParamType::Int, "blocks (custom; default 2)").at_least(1),
    ParamSpec::optional(
        "n_head",
        ParamType::Int,
        "attention heads (custom; default 4)",
    )
    .at_least(1),
    ParamSpec::optional("seed", ParamType::Int, "initialization seed (default 0)").at_least(0),
];

const NAMED: &[&str] = &[
    "gpt2",
    "gpt2-medium",
    "distilgpt2",
    "custom",
    "smollm2-135m",
    "smollm2-360m",
    "qwen2-0.5b",
    "tinyllama-1.1b",
    "bloom-560m",
    "phi-1_5",
    "phi-2",
];

impl Stage for ModelInit {
    fn kind(&self) -> &'static str {
        "model.init"
    }
    fn version(&self) -> u32 {
        1
    }
    fn doc(&self) -> &'static str {
        "a randomly initialized model: a GPT-2 (named or custom size) or a named BLOOM, Phi, SmolLM2, Qwen2 or TinyLlama shape; writes model/"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
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
        let p = ctx.p();
        let tok = p.path("tokenizer")?.as_deref().map(Tok::load).transpose()?;
        let named = p.string("config")?.unwrap_or_else(|| "custom".into());
        if let Some(shape) = kiln_model::named::config(&named) {
            return init_named(ctx, &named, shape, tok.as_ref());
        }
        let mut config = match Gpt2Config::named(&named) {
            Some(c) => c,
            None => Gpt2Config::new(
                0,
                p.count("n_positions")?.unwrap_or(128),
                p.count("n_embd")?.unwrap_or(128),
                p.count("n_layer")?.unwrap_or(2),
                p.count("n_head")?.unwrap_or(4),
            ),
        };
        config.vocab_size = match (p.count("vocab_size")?, &tok) {
            (Some(v), _) => v,
            (None, Some(t)) => t.vocab_size(),
            (None, None) if config.vocab_size > 0 => config.vocab_size,
            (None, None) => return Err("give vocab_size or a tokenizer".into()),
        };
        if let Some(t) = &tok {
            config.eos_token_id = t.eos_id().map(|e| e as usize).or(config.eos_token_id);
        }
        config.check().map_err(|m| format!("model config: {m}"))?;
        let device = Default::default();
        let seed = p.u64("seed")?.unwrap_or(0);
        let model = kiln_model::seeded::<Cpu, _>(&device, seed, || config.init::<Cpu>(&device));
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

/// `model.init` for another architecture's named shape: its `config.json` with the
/// vocabulary and special ids of the tokenizer (or `vocab_size`), weights from N(0, 0.02).
fn init_named(
    ctx: &mut StageContext,
    named: &str,
    mut shape: Value,
    tok: Option<&Tok>,
) -> StageResult {
    let p = ctx.p();
    let vocab = match (p.count("vocab_size")?, tok) {
        (Some(v), _) => v,
        (None, Some(t)) => t.vocab_size(),
        (None, None) => return Err("give vocab_size or a tokenizer".into()),
    };
    shape["vocab_size"] = vocab.into();
    if let Some(eos) = tok.and_then(Tok::eos_id) {
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            shape[key] = eos.into();
        }
    }
    let device = Default::default();
    let seed = p.u64("seed")?.unwrap_or(0);
    let model = kiln_model::seeded::<Cpu, _>(&device, seed, || {
        kiln_model::named::init::<Cpu>(&shape, &device)
    })?;
    let dir = ctx.out_dir.join("model");
    model.save(&dir)?;
    if let Some(t) = tok {
        t.save(&dir.join("tokenizer.json"))?;
    }
    ctx.log(&format!(
        "initialized {named} ({}): vocab {vocab}",
        model.model_type()
    ));
    Ok(())
}
