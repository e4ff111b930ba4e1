//! Hugging Face interop: `config.json` + `model.safetensors` directories.
//!
//! Loading renames keys (`transformer.h.N.…` → `blocks.N.…`, LayerNorm `weight`/`bias` →
//! `gamma`/`beta`) and checks that every parameter was found with the right shape; nothing
//! is transposed, because Hugging Face's GPT-2 Conv1D weights are `[in, out]` like burn's
//! `Linear`. The LM head is tied to `transformer.wte.weight`, so `lm_head.weight`, when a file
//! has it, is not needed.

use std::path::Path;

use burn::prelude::*;
use burn_store::{ModuleSnapshot, SafetensorsStore};

use crate::error::{Error, Result};
use crate::gpt2::{Gpt2, Gpt2Config};

#[derive(serde::Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
}

fn default_eps() -> f64 {
    1e-5
}

/// Reads a Hugging Face GPT-2 `config.json`.
///
/// # Errors
/// When the file is missing, not JSON, or not a GPT-2 configuration.
pub fn read_config(path: &Path) -> Result<Gpt2Config> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "cannot read the model configuration",
        path: path.to_owned(),
        source,
    })?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: format!("not a GPT-2 config.json: {e}"),
    })?;
    if let Some(t) = hf.model_type.as_deref().filter(|t| *t != "gpt2") {
        return Err(Error::Config {
            path: path.to_owned(),
            message: format!("model_type is {t:?}, not \"gpt2\""),
        });
    }
    if hf.n_head == 0 || !hf.n_embd.is_multiple_of(hf.n_head) {
        return Err(Error::Config {
            path: path.to_owned(),
            message: format!(
                "n_embd {} is not a multiple of n_head {}",
                hf.n_embd, hf.n_head
            ),
        });
    }
    Ok(Gpt2Config::new(
        hf.vocab_size,
        hf.n_positions,
        hf.n_embd,
        hf.n_layer,
        hf.n_head,
    )
    .with_layer_norm_epsilon(hf.layer_norm_epsilon))
}

/// Loads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`).
///
/// # Errors
/// A missing or corrupt file, or weights that do not match the configuration (named).
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Gpt2Config, Gpt2<B>)> {
    let config = read_config(&dir.join("config.json"))?;
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(Error::Io {
            what: "model weights not found:",
            path: weights,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut model = config.init::<B>(device);
    let mut store = SafetensorsStore::from_file(&weights)
        .with_key_remapping(r"^transformer\.", "")
        .with_key_remapping(r"^h\.", "blocks.")
        .with_key_remapping(r"(ln_1|ln_2|ln_f)\.weight$", "$1.gamma")
        .with_key_remapping(r"(ln_1|ln_2|ln_f)\.bias$", "$1.beta")
        .allow_partial(true);
    let bad = |message: String| Error::Weights {
        path: weights.clone(),
        message,
    };
    let result = model.load_from(&mut store).map_err(|e| {
        let text = e.to_string();
        match text.find("ShapeMismatch") {
            // burn-store lists every mismatch; one is enough to say what is wrong.
            Some(start) => {
                let count = text.matches("ShapeMismatch").count();
                let end = text[start + 1..]
                    .find("ShapeMismatch")
                    .map_or(text.len(), |i| start + 1 + i);
                let first = text[start..end].trim_end_matches([',', ' ', ']']);
                bad(format!(
                    "weights do not fit config.json: {count} shape mismatch(es), e.g. {first}"
                ))
            }
            None => bad(format!("cannot read: {text}")),
        }
    })?;
    if !result.errors.is_empty() {
        let shown: Vec<String> = result
            .errors
            .iter()
            .take(5)
            .map(|e| format!("{e:?}"))
            .collect();
        return Err(bad(format!(
            "weights do not fit config.json: {}",
            shown.join("; ")
        )));
    }
    if !result.missing.is_empty() {
        let shown: Vec<&str> = result
            .missing
            .iter()
            .take(5)
            .map(|(p, _)| p.as_str())
            .collect();
        return Err(bad(format!(
            "{} parameter(s) missing, e.g. {} (is this a GPT-2 checkpoint?)",
            result.missing.len(),
            shown.join(", ")
        )));
    }
    Ok((config, model))
}
