//! `model.init`: a randomly initialized model for training from scratch: a GPT-2 or a named
//! shape of another architecture (BLOOM, Phi, SmolLM2, Qwen2, TinyLlama), each with its sizes
//! replaceable; its vocabulary and special ids can come from a tokenizer (or a dataset
//! directory holding one).

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
        "context length (default: the named shape's; custom 128; not BLOOM)",
    )
    .at_least(1),
    ParamSpec::optional(
        "n_embd",
        ParamType::Int,
        "hidden size (default: the named shape's; custom 128)",
    )
    .at_least(1),
    ParamSpec::optional(
        "n_layer",
        ParamType::Int,
        "blocks (default: the named shape's; custom 2)",
    )
    .at_least(1),
    ParamSpec::optional(
        "n_head",
        ParamType::Int,
        "attention heads (default: the named shape's; custom 4)",
    )
    .at_least(1),
    ParamSpec::optional(
        "n_kv_head",
        ParamType::Int,
        "key/value heads, grouped-query attention (Llama, Qwen2, Phi shapes; default: the named shape's)",
    )
    .at_least(1),
    ParamSpec::optional(
        "intermediate_size",
        ParamType::Int,
        "MLP inner size (Llama, Qwen2, Phi shapes; default: the named shape's)",
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
        // 2: sizes apply to named shapes (a named GPT-2 ignored them); BOS/EOS/pad ids of
        // other architectures come from the tokenizer's configuration.
        2
    }
    fn doc(&self) -> &'static str {
        "a randomly initialized model: a GPT-2 or a named BLOOM, Phi, SmolLM2, Qwen2 or TinyLlama shape, sizes replaceable; writes model/"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        let mut problems = Vec::new();
        if !params.contains_key("tokenizer") && !params.contains_key("vocab_size") {
            problems.push(("vocab_size".into(), "give vocab_size or a tokenizer".into()));
        }
        // Sizes the architecture has no place for are refused, not ignored.
        let named = params
            .get("config")
            .and_then(Value::as_str)
            .unwrap_or("custom");
        let unused: &[&str] = match named {
            "bloom-560m" => &["n_positions", "n_kv_head", "intermediate_size"],
            _ if kiln_model::named::config(named).is_some() => &[],
            _ => &["n_kv_head", "intermediate_size"],
        };
        for key in unused.iter().filter(|k| params.contains_key(**k)) {
            problems.push((
                (*key).into(),
                format!("a {named} model has no such size to set"),
            ));
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
        let mut config =
            Gpt2Config::named(&named).unwrap_or_else(|| Gpt2Config::new(0, 128, 128, 2, 4));
        for (key, slot) in [
            ("n_positions", &mut config.n_positions),
            ("n_embd", &mut config.n_embd),
            ("n_layer", &mut config.n_layer),
            ("n_head", &mut config.n_head),
        ] {
            if let Some(v) = p.count(key)? {
                *slot = v;
            }
        }
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
        let model = kiln_model::seeded::<Cpu, _>(&device, seed, || {
            kiln_model::drawn(config.init::<Cpu>(&device))
        });
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
    let sizes = kiln_model::named::Sizes {
        hidden: p.count("n_embd")?,
        layers: p.count("n_layer")?,
        heads: p.count("n_head")?,
        kv_heads: p.count("n_kv_head")?,
        intermediate: p.count("intermediate_size")?,
        positions: p.count("n_positions")?,
    };
    kiln_model::named::set_sizes(&mut shape, &sizes).map_err(|m| format!("{named}: {m}"))?;
    if let Some(t) = tok {
        for (key, id) in [
            ("bos_token_id", t.bos_id()),
            ("eos_token_id", t.eos_id()),
            ("pad_token_id", t.pad_id()),
        ] {
            if let Some(id) = id {
                shape[key] = id.into();
            }
        }
    }
    let device = Default::default();
    let seed = p.u64("seed")?.unwrap_or(0);
    let model = kiln_model::seeded::<Cpu, _>(&device, seed, || {
        kiln_model::named::init::<Cpu>(&shape, &device).map(kiln_model::drawn)
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
