//! Hugging Face interop: `config.json` + `model.safetensors` directories.
//!
//! Loading renames keys (`transformer.h.N.…` → `blocks.N.…`, LayerNorm `weight`/`bias` →
//! `gamma`/`beta`) and checks that every parameter was found with the right shape; nothing
//! is transposed, because Hugging Face's GPT-2 Conv1D weights are `[in, out]` like burn's
//! `Linear`. The LM head is tied to `transformer.wte.weight`, so `lm_head.weight`, when a file
//! has it, is not needed.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore};

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
    #[serde(default)]
    initializer_range: Option<f64>,
    #[serde(default)]
    eos_token_id: Option<usize>,
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
    let config = Gpt2Config::new(
        hf.vocab_size,
        hf.n_positions,
        hf.n_embd,
        hf.n_layer,
        hf.n_head,
    )
    .with_layer_norm_epsilon(hf.layer_norm_epsilon)
    .with_initializer_range(hf.initializer_range.unwrap_or(0.02))
    .with_eos_token_id(hf.eos_token_id);
    config.check().map_err(|message| Error::Config {
        path: path.to_owned(),
        message,
    })?;
    Ok(config)
}

/// The `config.json` Hugging Face's `GPT2LMHeadModel.from_pretrained` reads for `config`
/// (dropout 0: kiln's GPT-2 has none).
pub fn config_json(config: &Gpt2Config) -> serde_json::Value {
    let mut json = serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": config.initializer_range,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": true,
        "scale_attn_weights": true,
        "use_cache": true,
    });
    if let Some(eos) = config.eos_token_id {
        json["bos_token_id"] = eos.into();
        json["eos_token_id"] = eos.into();
    }
    json
}

/// Saves `model` as a Hugging Face GPT-2 directory: `config.json` and `model.safetensors`
/// (keys `transformer.…`, Conv1D layout, `format: pt` metadata), loadable by
/// `transformers.GPT2LMHeadModel.from_pretrained(dir)` and by [`load`]. Files are written
/// under temporary names and renamed, so a crash never leaves a complete-looking
/// half-written checkpoint. LoRA adapters, when attached, are merged into the saved weights.
///
/// # Errors
/// When the directory or a file cannot be written.
pub fn save<B: Backend>(model: &Gpt2<B>, config: &Gpt2Config, dir: &Path) -> Result<()> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let mut config = config.clone();
    config.vocab_size = model.vocab_size();
    let weights = dir.join("model.safetensors");
    let tmp = dir.join(".model.safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp)
        .with_key_remapping(r"^blocks\.", "transformer.h.")
        .with_key_remapping(r"^(wte|wpe|ln_f)\.", "transformer.$1.")
        .with_key_remapping(r"\.gamma$", ".weight")
        .with_key_remapping(r"\.beta$", ".bias")
        .clear_metadata()
        .metadata("format", "pt")
        .overwrite(true);
    // LoRA adapters are merged on export: the file is a plain GPT-2.
    let merged;
    let model = if model.has_lora() {
        merged = model.clone().merge_lora();
        &merged
    } else {
        model
    };
    model.save_into(&mut store).map_err(|e| Error::Weights {
        path: weights.clone(),
        message: format!("cannot write: {e}"),
    })?;
    std::fs::rename(&tmp, &weights).map_err(io("cannot write", &weights))?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_json(&config)).unwrap_or_default();
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &config_path).map_err(io("cannot write", &config_path))?;
    Ok(())
}

/// Loads a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`).
///
/// # Errors
/// A missing or corrupt file, or weights that do not match the configuration (named).
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Gpt2Config, Gpt2<B>)> {
    let config = read_config(&dir.join("config.json"))?;
    config.check_fits::<B>(None)?;
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(Error::Io {
            what: "model weights not found:",
            path: weights,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
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
    // The header is parsed (bounds-checked by the safetensors crate) before the model is built.
    store
        .get_all_snapshots()
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    // Initialization draws random numbers that load_from overwrites.
    let mut model = crate::unseeded(|| config.init::<B>(device));
    check_dtypes(&model, &mut store).map_err(bad)?;
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
    // What the weights did not replace is still lazy: drawn here, under the lock.
    Ok((config, crate::unseeded(|| crate::drawn(model))))
}

/// The dotted path of every float parameter, as burn-store names them, found without reading
/// the parameters: burn-store's `collect` reads each one, which draws a fresh model's whole
/// random initialization (time, and draws outside [`crate::unseeded`]) only to discard it.
#[derive(Default)]
struct ParamPaths {
    stack: Vec<String>,
    found: Vec<String>,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for ParamPaths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, _param: &burn::module::Param<Tensor<B, D>>) {
        self.found.push(self.stack.join("."));
    }
}

/// burn-store gives a parameter the dtype its tensor has in the file, and kiln's GPT-2
/// computes in float32 (the CPU backends panic or crash on other dtypes): a parameter stored
/// as anything else is refused here.
fn check_dtypes<B: Backend>(
    model: &Gpt2<B>,
    store: &mut SafetensorsStore,
) -> std::result::Result<(), String> {
    let mut paths = ParamPaths::default();
    model.visit(&mut paths);
    for path in paths.found {
        let snapshot = store
            .get_snapshot(&path)
            .map_err(|e| format!("cannot read: {e}"))?;
        if let Some(dtype) = snapshot.map(|s| s.dtype).filter(|d| *d != DType::F32) {
            return Err(format!(
                "{path} is stored as {dtype:?}; kiln loads float32 weights (convert the checkpoint)"
            ));
        }
    }
    Ok(())
}
