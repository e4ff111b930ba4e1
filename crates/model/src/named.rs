//! Named shapes of the architectures beyond GPT-2, as their Hugging Face `config.json`s give
//! them, and randomly initialized models of a shape (for `model.init`: training from scratch).

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde_json::{Value, json};

use crate::Model;
use crate::bloom::BloomConfig;
use crate::error::{Error, Result};
use crate::llama::LlamaConfig;
use crate::phi::PhiConfig;

/// The named shapes [`config`] knows.
pub const NAMES: &[&str] = &[
    "smollm2-135m",
    "smollm2-360m",
    "qwen2-0.5b",
    "tinyllama-1.1b",
    "bloom-560m",
    "phi-1_5",
    "phi-2",
];

/// The `config.json` of a named shape (its vocabulary as released), or `None`.
#[must_use]
pub fn config(name: &str) -> Option<Value> {
    let llama = |vocab: u64, d: u64, inner: u64, layers: u64, heads: u64, kv: u64, theta: f64| {
        json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
               "hidden_size": d, "intermediate_size": inner, "num_hidden_layers": layers,
               "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_act": "silu",
               "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": theta,
               "tie_word_embeddings": true, "initializer_range": 0.02})
    };
    Some(match name {
        "smollm2-135m" => llama(49152, 576, 1536, 30, 9, 3, 100_000.0),
        "smollm2-360m" => llama(49152, 960, 2560, 32, 15, 5, 100_000.0),
        "tinyllama-1.1b" => {
            let mut c = llama(32000, 2048, 5632, 22, 32, 4, 10_000.0);
            c["tie_word_embeddings"] = json!(false);
            c
        }
        "qwen2-0.5b" => json!({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": 151_936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0, "tie_word_embeddings": true, "initializer_range": 0.02}),
        "bloom-560m" => json!({"model_type": "bloom", "architectures": ["BloomForCausalLM"],
            "vocab_size": 250_880, "hidden_size": 1024, "n_layer": 24, "n_head": 16,
            "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
            "apply_residual_connection_post_layernorm": false}),
        "phi-1_5" | "phi-2" => {
            let (d, layers) = if name == "phi-2" {
                (2560, 32)
            } else {
                (2048, 24)
            };
            json!({"model_type": "phi", "architectures": ["PhiForCausalLM"], "vocab_size": 51200,
                   "hidden_size": d, "intermediate_size": 4 * d, "num_hidden_layers": layers,
                   "num_attention_heads": 32, "max_position_embeddings": 2048,
                   "layer_norm_eps": 1e-5, "partial_rotary_factor": 0.4, "rope_theta": 10000.0,
                   "hidden_act": "gelu_new", "tie_word_embeddings": false,
                   "initializer_range": 0.02})
        }
        _ => return None,
    })
}

/// Sizes that replace a shape's own (each `None` keeps it): `model.init`'s custom sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Hidden size.
    pub hidden: Option<usize>,
    /// Blocks.
    pub layers: Option<usize>,
    /// Attention heads.
    pub heads: Option<usize>,
    /// Key/value heads (grouped-query attention; Llama, Qwen2, Phi).
    pub kv_heads: Option<usize>,
    /// MLP inner size (Llama, Qwen2, Phi).
    pub intermediate: Option<usize>,
    /// Context length (not BLOOM: ALiBi has no position table).
    pub positions: Option<usize>,
}

/// Writes `sizes` into a `config.json` value under its architecture's keys.
///
/// # Errors
/// A size the architecture has no key for (BLOOM's MLP is 4 × hidden, and it has no
/// context length or key/value heads), naming it.
pub fn set_sizes(config: &mut Value, sizes: &Sizes) -> std::result::Result<(), String> {
    let bloom = config["model_type"] == "bloom";
    let keys: [(&str, Option<usize>, Option<&str>); 6] = [
        ("hidden size", sizes.hidden, Some("hidden_size")),
        (
            "layers",
            sizes.layers,
            Some(if bloom {
                "n_layer"
            } else {
                "num_hidden_layers"
            }),
        ),
        (
            "heads",
            sizes.heads,
            Some(if bloom {
                "n_head"
            } else {
                "num_attention_heads"
            }),
        ),
        (
            "key/value heads",
            sizes.kv_heads,
            (!bloom).then_some("num_key_value_heads"),
        ),
        (
            "intermediate size",
            sizes.intermediate,
            (!bloom).then_some("intermediate_size"),
        ),
        (
            "context length",
            sizes.positions,
            (!bloom).then_some("max_position_embeddings"),
        ),
    ];
    for (what, value, key) in keys {
        match (value, key) {
            (None, _) => {}
            (Some(v), Some(key)) => config[key] = v.into(),
            (Some(_), None) => {
                return Err(format!(
                    "{} has no {what} to set (BLOOM: hidden size, layers and heads only)",
                    config["model_type"]
                ));
            }
        }
    }
    Ok(())
}

/// Draws every matrix (embeddings and projections) from N(0, `std`); vectors keep their
/// initial values (biases 0, norm scales 1), as transformers initializes these models.
struct Randomize {
    std: f64,
}

impl<B: Backend> ModuleMapper<B> for Randomize {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D < 2 {
            return param;
        }
        let std = self.std;
        param.map(|t| Tensor::random(t.shape(), Distribution::Normal(0.0, std), &t.device()))
    }
}

/// A randomly initialized model of `config` (a `config.json`'s JSON), weights from
/// N(0, `initializer_range`). Draw it inside [`crate::seeded`], through [`crate::drawn`], for a
/// reproducible model.
///
/// # Errors
/// A `model_type` other than bloom, phi, llama, qwen2, or sizes that do not fit together.
pub fn init<B: Backend>(config: &Value, device: &B::Device) -> Result<Model<B>> {
    let std = config
        .get("initializer_range")
        .and_then(Value::as_f64)
        .unwrap_or(0.02);
    let model = match config.get("model_type").and_then(Value::as_str) {
        Some("bloom") => Model::Bloom(BloomConfig::from_value(config)?.init(device)),
        Some("phi") => Model::Phi(PhiConfig::from_value(config)?.init(device)),
        Some("llama" | "qwen2") => Model::Llama(LlamaConfig::from_value(config)?.init(device)),
        other => {
            return Err(Error::Config {
                path: "config.json".into(),
                message: format!("{other:?} is not bloom, phi, llama or qwen2"),
            });
        }
    };
    Ok(model.map(&mut Randomize { std }))
}
