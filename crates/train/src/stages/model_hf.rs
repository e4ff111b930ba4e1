//! `model.hf`: a model from a local Hugging Face directory or the Hugging Face hub
//! (`gpt2`, `openai-community/gpt2`, `hf://openai-community/gpt2`), checked by loading it. A
//! GPT-2 is copied; another architecture (BLOOM, Phi, Llama, Qwen2) is loaded, sharded or
//! not, in any float type, and written back as one float32 `model.safetensors`.
//!
//! Hub files are downloaded once into `results/downloads` from `$HF_ENDPOINT` (default
//! `https://huggingface.co`); offline, the error names the files to fetch by hand.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_core::{ParamSpec, ParamType, Stage, StageContext, StageResult};
use kiln_data::tokenizer::Tok;
use kiln_model::Cpu;
use serde_json::Value;

/// The `model.hf` stage kind.
#[derive(Debug, Clone, Copy)]
pub struct ModelHf;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required(
        "source",
        ParamType::Path,
        "a local directory (config.json + model.safetensors) or a hub id: gpt2, OWNER/NAME, hf://OWNER/NAME",
    ),
    ParamSpec::optional("revision", ParamType::String, "hub revision (default main)"),
];

/// The hub URL of `file` in model repository `repo`.
pub fn hub_url(repo: &str, revision: &str, file: &str) -> String {
    let endpoint =
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_owned());
    format!(
        "{}/{repo}/resolve/{revision}/{file}",
        endpoint.trim_end_matches('/')
    )
}

impl Stage for ModelHf {
    fn kind(&self) -> &'static str {
        "model.hf"
    }
    fn version(&self) -> u32 {
        // 2: the tokenizer's configuration (special tokens) is kept.
        2
    }
    fn doc(&self) -> &'static str {
        "a model (gpt2, bloom, phi, llama, qwen2) from a Hugging Face directory or hub id, writes model/"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn validate(&self, params: &BTreeMap<String, Value>) -> Result<(), Vec<(String, String)>> {
        match params.get("source").and_then(Value::as_str) {
            Some("") => Err(vec![("source".into(), "must not be empty".into())]),
            _ => Ok(()),
        }
    }
    fn run(&self, ctx: &mut StageContext) -> StageResult {
        let source = ctx.param_str("source").unwrap_or_default();
        let local = ctx.workdir.join(&source);
        let files: BTreeMap<&str, PathBuf> = if !source.starts_with("hf://") && local.is_dir() {
            [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "vocab.json",
                "merges.txt",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ]
            .into_iter()
            .map(|f| (f, local.join(f)))
            .filter(|(_, p)| p.is_file())
            .collect()
        } else {
            let repo = source
                .strip_prefix("hf://")
                .unwrap_or(&source)
                .trim_matches('/');
            if repo.is_empty() || repo.split('/').count() > 2 || source.starts_with('.') {
                return Err(format!(
                    "model source {source:?} is neither a directory nor a hub id (gpt2, OWNER/NAME)"
                )
                .into());
            }
            let revision = ctx.p().string("revision")?.unwrap_or_else(|| "main".into());
            let mut files = BTreeMap::new();
            for file in ["config.json", "model.safetensors"] {
                let url = hub_url(repo, &revision, file);
                let path = kiln_data::source::fetch(&url, &ctx.workdir, &ctx.downloads, None)
                    .map_err(|e| {
                        format!(
                            "cannot get {file} of {repo}: {e}. To work offline, put config.json, \
                             model.safetensors and tokenizer.json (or vocab.json + merges.txt) of \
                             {repo} in a directory and give its path as `source`"
                        )
                    })?;
                files.insert(file, path);
            }
            // The tokenizer is welcome but optional: a dataset brings its own.
            for file in [
                "tokenizer.json",
                "vocab.json",
                "merges.txt",
                "tokenizer_config.json",
                "special_tokens_map.json",
            ] {
                let url = hub_url(repo, &revision, file);
                if let Ok(path) = kiln_data::source::fetch(&url, &ctx.workdir, &ctx.downloads, None)
                {
                    files.insert(file, path);
                }
            }
            files
        };
        let dir = ctx.out_dir.join("model");
        std::fs::create_dir_all(&dir)?;
        let config = files
            .get("config.json")
            .ok_or_else(|| format!("{}: no config.json", local.display()))?;
        let model_type = serde_json::from_str::<Value>(&std::fs::read_to_string(config)?)
            .map_err(|e| format!("{}: {e}", config.display()))?
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("gpt2")
            .to_owned();
        let summary = if model_type == "gpt2" {
            for name in ["config.json", "model.safetensors"] {
                let from = files
                    .get(name)
                    .ok_or_else(|| format!("{}: no {name}", local.display()))?;
                std::fs::copy(from, dir.join(name))
                    .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
            }
            // Loading checks names, shapes and the configuration.
            let (c, _) = kiln_model::hf::load::<Cpu>(&dir, &Default::default())?;
            format!(
                "vocab {}, {} layers, {} heads, {} dims",
                c.vocab_size, c.n_layer, c.n_head, c.n_embd
            )
        } else {
            // Other architectures are loaded (sharded or not, any float type) and written
            // back as one float32 model.safetensors.
            let from = if local.is_dir() {
                local.clone()
            } else {
                for name in ["config.json", "model.safetensors"] {
                    if let Some(path) = files.get(name) {
                        std::fs::copy(path, dir.join(name))
                            .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
                    }
                }
                dir.clone()
            };
            let model = kiln_model::load::<kiln_model::Flex>(&from, &Default::default())?;
            model.save(&dir)?;
            format!(
                "{model_type}, vocab {}",
                kiln_model::CausalLm::vocab_size(&model)
            )
        };
        let tok = match (
            files.get("tokenizer.json"),
            files.get("vocab.json"),
            files.get("merges.txt"),
        ) {
            (Some(t), _, _) => Some(Tok::from_json(t)?),
            (None, Some(v), Some(m)) => Some(Tok::gpt2(v, m)?),
            _ => None,
        };
        if let Some(mut t) = tok {
            // The tokenizer's configuration travels as is (its chat template, special
            // tokens); the special tokens it names must be in the vocabulary.
            for name in kiln_data::specials::FILES {
                if let Some(path) = files.get(name) {
                    std::fs::copy(path, dir.join(name))
                        .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
                }
            }
            t.read_specials(&dir)?;
            t.save(&dir.join("tokenizer.json"))?;
            // `save` wrote the map of the tokens kiln reads; the original has all of them.
            let map = kiln_data::specials::MAP_FILE;
            if let Some(path) = files.get(map) {
                std::fs::copy(path, dir.join(map))
                    .map_err(|e| format!("cannot copy {}: {e}", path.display()))?;
            }
        }
        ctx.log(&format!("loaded {source}: {summary}"));
        Ok(())
    }
}
