//! Phi-1.5 and Phi-2 in burn, as transformers' `PhiForCausalLM` computes them: one LayerNorm
//! feeding attention and MLP in parallel (their outputs added to the residual together),
//! partial rotary positions (only the first `partial_rotary_factor · head_dim` dimensions of a
//! head rotate), biases on q/k/v/dense and on the MLP, `gelu_new`, and an untied LM head with
//! a bias.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear};
use burn::prelude::*;
use serde::Deserialize;

use crate::error::Result;
use crate::gpt2::KvCache;
use crate::layers::{self, Kv, Rope};
use crate::lora::{self, Lora, LoraConfig};
use crate::weights::{Weights, WeightsWriter};

/// A Phi `config.json` (the keys kiln uses).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PhiConfig {
    /// The whole `config.json`, written back unchanged when the model is saved.
    #[serde(skip)]
    pub raw: serde_json::Value,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (Phi-2: as many as query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Share of each head's dimensions that rotate (transformers 4.x: top level).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Rotary base (transformers 4.x: top level).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Rotary settings (transformers 5.x).
    #[serde(default)]
    pub rope_parameters: Option<PhiRope>,
    /// LayerNorms on queries and keys (no released Phi-1.5/2 has them; refused).
    #[serde(default)]
    pub qk_layernorm: bool,
}

/// Phi's rotary settings in transformers 5.x.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PhiRope {
    /// Share of each head's dimensions that rotate.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Rotary base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

fn default_eps() -> f64 {
    1e-5
}

impl PhiConfig {
    /// Reads and checks `config.json`.
    ///
    /// # Errors
    /// Unreadable, not JSON, sizes that do not fit together, or `qk_layernorm`.
    pub fn load(path: &Path) -> Result<Self> {
        layers::read_config(path)
    }

    /// A configuration from `config.json`'s JSON (`model.init`'s named shapes).
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn from_value(value: &serde_json::Value) -> Result<Self> {
        layers::config_from_value(value)
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head size.
    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// How many dimensions of a head rotate: `int(partial_rotary_factor · head_dim)`.
    #[must_use]
    pub fn rotary_dim(&self) -> usize {
        let factor = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.partial_rotary_factor)
            .or(self.partial_rotary_factor)
            .unwrap_or(0.5);
        (factor * self.head_dim() as f64) as usize
    }

    /// The rotary frequencies, over the rotating dimensions.
    #[must_use]
    pub fn inv_freq(&self) -> Vec<f64> {
        let theta = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        layers::rope_frequencies(theta, self.rotary_dim())
    }

    /// A model of this shape with weights to be loaded.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Phi<B> {
        let (d, eps, inner) = (
            self.hidden_size,
            self.layer_norm_eps,
            self.intermediate_size,
        );
        let layers = (0..self.num_hidden_layers)
            .map(|_| Layer {
                input_norm: layers::layer_norm(d, eps, device),
                q_proj: layers::linear(d, d, true, device),
                k_proj: layers::linear(d, d, true, device),
                v_proj: layers::linear(d, d, true, device),
                dense: layers::linear(d, d, true, device),
                fc1: layers::linear(d, inner, true, device),
                fc2: layers::linear(inner, d, true, device),
                lora: [None, None, None, None],
            })
            .collect();
        Phi {
            embed: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
            layers,
            final_norm: layers::layer_norm(d, eps, device),
            lm_head: layers::linear(d, self.vocab_size, true, device),
            config: self.clone(),
        }
    }
}

/// A Phi causal LM.
#[derive(Module, Debug)]
pub struct Phi<B: Backend> {
    /// Token embedding `[vocab, d]`.
    pub embed: Embedding<B>,
    /// Layers.
    pub layers: Vec<Layer<B>>,
    /// Final LayerNorm.
    pub final_norm: LayerNorm<B>,
    /// LM head `[d, vocab]` with a bias.
    pub lm_head: Linear<B>,
    /// The configuration (not a parameter).
    #[module(skip)]
    pub config: PhiConfig,
}

/// One Phi layer.
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    /// The one LayerNorm, before attention and MLP.
    pub input_norm: LayerNorm<B>,
    /// Query projection.
    pub q_proj: Linear<B>,
    /// Key projection.
    pub k_proj: Linear<B>,
    /// Value projection.
    pub v_proj: Linear<B>,
    /// Attention output.
    pub dense: Linear<B>,
    /// MLP in `[d, inner]`.
    pub fc1: Linear<B>,
    /// MLP out `[inner, d]`.
    pub fc2: Linear<B>,
    /// LoRA adapters on `q_proj`, `k_proj`, `v_proj`, `dense` (when attached).
    pub lora: [Option<Lora<B>>; 4],
}

/// The projections LoRA can adapt, in the order of [`Layer::lora`].
const LORA_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "dense"];

/// Loads a Phi Hugging Face directory.
///
/// # Errors
/// A bad `config.json`, missing or unreadable weights, or a tensor whose shape does not fit.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Phi<B>> {
    let config = PhiConfig::load(&dir.join("config.json"))?;
    let weights = Weights::open(dir)?;
    // Initialization draws random numbers that the weights overwrite.
    let mut model = crate::unseeded(|| config.init::<B>(device));
    let shape = [config.vocab_size, config.hidden_size];
    let embed = weights.tensor::<B, 2>("model.embed_tokens.weight", shape, false, device)?;
    model.embed.weight = Param::from_tensor(embed);
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        weights.load_layer_norm(
            &mut layer.input_norm,
            &format!("{p}.input_layernorm"),
            device,
        )?;
        for (l, name) in [
            (&mut layer.q_proj, "self_attn.q_proj"),
            (&mut layer.k_proj, "self_attn.k_proj"),
            (&mut layer.v_proj, "self_attn.v_proj"),
            (&mut layer.dense, "self_attn.dense"),
            (&mut layer.fc1, "mlp.fc1"),
            (&mut layer.fc2, "mlp.fc2"),
        ] {
            weights.load_linear(l, &format!("{p}.{name}"), device)?;
        }
    }
    weights.load_layer_norm(&mut model.final_norm, "model.final_layernorm", device)?;
    weights.load_linear(&mut model.lm_head, "lm_head", device)?;
    // What the weights did not replace is still lazy: drawn here, under the lock.
    Ok(crate::unseeded(|| crate::drawn(model)))
}

impl<B: Backend> Phi<B> {
    /// Layers (one key/value cache entry each).
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The longest sequence.
    pub fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed.weight.dims()[0]
    }

    /// The device the weights are on.
    pub fn device(&self) -> B::Device {
        self.embed.weight.device()
    }

    /// No bias-free `[vocab, d]` head: Phi's head has a bias.
    pub fn head_weight(&self) -> Option<Tensor<B, 2>> {
        None
    }

    /// Grows (or cuts) the vocabulary to `n`: embedding rows, head columns and head bias;
    /// new entries are the means of the existing ones.
    pub fn resize_token_embeddings(mut self, n: usize) -> Self {
        self.embed.weight = self.embed.weight.map(|w| layers::resize_rows(w, n));
        self.lm_head.weight = self
            .lm_head
            .weight
            .map(|w| layers::resize_rows(w.transpose(), n).transpose());
        self.lm_head.bias = self
            .lm_head
            .bias
            .map(|b| b.map(|b| layers::resize_bias(b, n)));
        if let Some(map) = self.config.raw.as_object_mut() {
            map.insert("vocab_size".into(), n.into());
        }
        self.config.vocab_size = n;
        self
    }

    /// Freezes every base weight and adds adapters to the `config.targets` projections of
    /// every layer (default `q_proj`, `v_proj`): afterwards only the adapters train.
    ///
    /// # Errors
    /// A rank of 0, or a target that is not `q_proj`, `k_proj`, `v_proj` or `dense`.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self, String> {
        let chosen = lora::targets(config, "phi", &LORA_TARGETS, &["q_proj", "v_proj"])?;
        let mut model = self.no_grad();
        for layer in &mut model.layers {
            let bases = [&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.dense];
            for (i, base) in bases.into_iter().enumerate() {
                if chosen.contains(&LORA_TARGETS[i]) {
                    layer.lora[i] = Some(Lora::new(base, config, device));
                }
            }
        }
        Ok(model)
    }

    /// Whether any adapter is attached.
    pub fn has_lora(&self) -> bool {
        self.loras().next().is_some()
    }

    /// The adapters attached.
    pub fn loras(&self) -> impl Iterator<Item = &Lora<B>> {
        self.layers.iter().flat_map(|l| l.lora.iter().flatten())
    }

    /// Folds the adapters into the base weights and removes them.
    pub fn merge_lora(mut self) -> Self {
        for layer in &mut self.layers {
            let [q, k, v, d] = std::mem::take(&mut layer.lora);
            lora::merge(&mut layer.q_proj, q);
            lora::merge(&mut layer.k_proj, k);
            lora::merge(&mut layer.v_proj, v);
            lora::merge(&mut layer.dense, d);
        }
        self
    }

    /// Hidden states `[n, d]` to logits `[n, vocab]` (the untied head with its bias).
    pub fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        self.lm_head.forward(hidden)
    }

    /// The final hidden states (after the last LayerNorm), `[batch, seq, d]`.
    pub fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let mask = crate::gpt2::attend_mask::<B>(batch, seq, attention_mask, &device);
        self.decode(input_ids, &mask, None)
    }

    /// Reads `input_ids` after the positions in `cache` (left-padded as it says) and returns the logits
    /// of the last new position, `[batch, vocab]`, adding the new keys and values to `cache`.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [batch, seq] = input_ids.dims();
        let mask = cache.mask(batch, seq, &input_ids.device());
        let h = self.decode(input_ids, &mask, Some(cache));
        self.project(layers::last_position(h))
    }

    /// The final hidden states of `input_ids`, read after the positions in `cache` (none:
    /// from position 0), `[batch, seq, d]`.
    fn decode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let device = input_ids.device();
        let [batch, seq] = input_ids.dims();
        let past = cache.as_ref().map_or(0, |c| c.len);
        let rope = Rope::new(&self.config.inv_freq(), past, seq, &device);
        let x = self.embed.forward(input_ids);
        let d = x.dims()[2];
        let x = x.reshape([batch * seq, d]);
        let x = layers::run_layers(&self.layers, x, seq, cache, |layer, x, kv| {
            layer.forward(x, mask, &rope, &self.config, batch, seq, kv)
        });
        self.final_norm.forward(x).reshape([batch, seq, d])
    }
}

impl<B: Backend> Layer<B> {
    /// The layer over `seq` new positions after the cached `past` keys/values; returns the
    /// output and every key/value.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: Tensor<B, 2>,
        mask: &Tensor<B, 4, Bool>,
        rope: &Rope<B>,
        config: &PhiConfig,
        batch: usize,
        seq: usize,
        past: Option<Kv<B>>,
    ) -> (Tensor<B, 2>, Kv<B>) {
        let h = self.input_norm.forward(x.clone());
        let (heads, hd) = (config.num_attention_heads, config.head_dim());
        let split = |t: Tensor<B, 2>| t.reshape([batch, seq, heads, hd]).swap_dims(1, 2);
        let [lq, lk, lv, ld] = self.lora.each_ref().map(Option::as_ref);
        let q = rope.apply(split(lora::project(&self.q_proj, lq, h.clone())));
        let k = rope.apply(split(lora::project(&self.k_proj, lk, h.clone())));
        let v = split(lora::project(&self.v_proj, lv, h.clone()));
        let (k, v) = layers::extend_kv(past, k, v);
        let attn = layers::attention(q, k.clone(), v.clone(), mask, None);
        let attn = lora::project(&self.dense, ld, attn);
        let mlp = self
            .fc2
            .forward(crate::kernels::gelu_tanh(self.fc1.forward(h)));
        (x + attn + mlp, (k, v))
    }
}

/// Saves `model` as a Hugging Face directory (`config.json` as loaded, `model.safetensors`
/// in float32 with transformers' names).
///
/// # Errors
/// The directory or a file cannot be written.
pub fn save<B: Backend>(model: &Phi<B>, dir: &Path) -> Result<()> {
    // Adapters are merged on export: the file is a plain Phi.
    let merged;
    let model = if model.has_lora() {
        merged = model.clone().merge_lora();
        &merged
    } else {
        model
    };
    let mut w = WeightsWriter::new();
    w.tensor("model.embed_tokens.weight", model.embed.weight.val(), false);
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        w.layer_norm(&layer.input_norm, &format!("{p}.input_layernorm"));
        w.linear(&layer.q_proj, &format!("{p}.self_attn.q_proj"));
        w.linear(&layer.k_proj, &format!("{p}.self_attn.k_proj"));
        w.linear(&layer.v_proj, &format!("{p}.self_attn.v_proj"));
        w.linear(&layer.dense, &format!("{p}.self_attn.dense"));
        w.linear(&layer.fc1, &format!("{p}.mlp.fc1"));
        w.linear(&layer.fc2, &format!("{p}.mlp.fc2"));
    }
    w.layer_norm(&model.final_norm, "model.final_layernorm");
    w.linear(&model.lm_head, "lm_head");
    w.write(dir, &model.config.raw)
}

impl layers::HfConfig for PhiConfig {
    fn set_raw(&mut self, raw: serde_json::Value) {
        self.raw = raw;
    }

    fn check(&self) -> std::result::Result<(), String> {
        let config = self;
        let heads = config.num_attention_heads;
        if heads == 0 || !config.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of {heads} heads",
                config.hidden_size
            ));
        }
        if config.kv_heads() != heads {
            return Err("Phi with grouped-query attention is not supported".into());
        }
        if config.qk_layernorm {
            return Err("qk_layernorm is not supported".into());
        }
        Ok(())
    }
}
