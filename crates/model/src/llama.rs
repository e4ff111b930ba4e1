//! The Llama family in burn: Llama (1 to 3.2, SmolLM2, TinyLlama) and Qwen2/2.5, as
//! transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` compute them: RMSNorm before attention
//! and MLP, rotary positions in Hugging Face's half-split layout (with llama-3 `rope_scaling`),
//! grouped-query attention (`num_key_value_heads`), a SwiGLU MLP, Qwen2's q/k/v biases, and a
//! tied or untied LM head.
//!
//! Loading reads `config.json` and `model.safetensors` (or its shards) through
//! [`crate::weights`]; `nn.Linear` weights are stored `[out, in]` and transposed to burn's
//! `[in, out]`.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, Linear, RmsNorm};
use burn::prelude::*;
use serde::Deserialize;

use crate::error::Result;
use crate::gpt2::KvCache;
use crate::layers::{self, Kv, Rope};
use crate::lora::{self, Lora, LoraConfig};
use crate::weights::{Weights, WeightsWriter};

/// A Llama-family `config.json` (the keys kiln uses; others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// The whole `config.json`, written back unchanged when the model is saved.
    #[serde(skip)]
    pub raw: serde_json::Value,
    /// `llama` or `qwen2`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); default: as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size; default `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base (transformers 4.x writes it at the top level).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Rotary scaling (transformers 4.x).
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// Rotary base and scaling together (transformers 5.x).
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Whether the LM head is the token embedding (then no `lm_head.weight` is stored).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (Llama's flag; Qwen2 always has q/k/v biases).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's projections.
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}

/// Rotary settings: the base and an optional scaling (`llama3` or none).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    /// `default` or `llama3`.
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// Rotary base (transformers 5.x puts it here).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// llama3: how much longer the context became.
    #[serde(default)]
    pub factor: Option<f64>,
    /// llama3: below this many wavelengths per context, frequencies are divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// llama3: above this, frequencies stay.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// llama3: the context the model was trained at.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

impl LlamaConfig {
    /// Reads and checks `config.json`.
    ///
    /// # Errors
    /// Unreadable, not JSON, not a `llama`/`qwen2` config, or sizes that do not fit together.
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

    /// Key/value heads.
    #[must_use]
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head size.
    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v carry biases (Qwen2 always; Llama when `attention_bias`).
    #[must_use]
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    fn rope(&self) -> Option<&RopeParameters> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// The rotary frequencies, `head_dim / 2` of them, as transformers computes them
    /// (including llama-3 scaling).
    #[must_use]
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.head_dim();
        let theta = self
            .rope()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let base = layers::rope_frequencies(theta, dim);
        match self.rope() {
            Some(r) if r.rope_type.as_deref() == Some("llama3") => llama3_scaling(&base, r),
            _ => base,
        }
    }
}

/// transformers' `_compute_llama3_parameters`.
fn llama3_scaling(inv_freq: &[f64], r: &RopeParameters) -> Vec<f64> {
    let factor = r.factor.unwrap_or(8.0);
    let low = r.low_freq_factor.unwrap_or(1.0);
    let high = r.high_freq_factor.unwrap_or(4.0);
    let old = r.original_max_position_embeddings.unwrap_or(8192.0);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// A Llama-family causal LM.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// Token embedding `[vocab, d]`.
    pub embed: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<Layer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
    /// The LM head when untied, `[vocab, d]` as stored (so the fused LM loss gets it as a
    /// parameter, not a transposed view).
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// The configuration (not a parameter).
    #[module(skip)]
    pub config: LlamaConfig,
}

/// One decoder layer.
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    /// RMSNorm before attention.
    pub input_norm: RmsNorm<B>,
    /// Query projection `[d, heads·hd]`.
    pub q_proj: Linear<B>,
    /// Key projection `[d, kv_heads·hd]`.
    pub k_proj: Linear<B>,
    /// Value projection `[d, kv_heads·hd]`.
    pub v_proj: Linear<B>,
    /// Output projection `[heads·hd, d]`.
    pub o_proj: Linear<B>,
    /// RMSNorm before the MLP.
    pub post_norm: RmsNorm<B>,
    /// SwiGLU gate `[d, inner]`.
    pub gate_proj: Linear<B>,
    /// SwiGLU up `[d, inner]`.
    pub up_proj: Linear<B>,
    /// SwiGLU down `[inner, d]`.
    pub down_proj: Linear<B>,
    /// LoRA adapters on `q_proj`, `k_proj`, `v_proj`, `o_proj` (when attached).
    pub lora: [Option<Lora<B>>; 4],
}

/// The projections LoRA can adapt, in the order of [`Layer::lora`].
const LORA_TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

impl LlamaConfig {
    /// A model of this shape with weights to be loaded (initialized with zeros).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let d = self.hidden_size;
        let (hd, heads, kv) = (self.head_dim(), self.num_attention_heads, self.kv_heads());
        let linear = |i: usize, o: usize, bias: bool| layers::linear(i, o, bias, device);
        let norm = || layers::rms_norm(d, self.rms_norm_eps, device);
        let layers = (0..self.num_hidden_layers)
            .map(|_| Layer {
                input_norm: norm(),
                q_proj: linear(d, heads * hd, self.qkv_bias()),
                k_proj: linear(d, kv * hd, self.qkv_bias()),
                v_proj: linear(d, kv * hd, self.qkv_bias()),
                o_proj: linear(heads * hd, d, self.attention_bias),
                post_norm: norm(),
                gate_proj: linear(d, self.intermediate_size, self.mlp_bias),
                up_proj: linear(d, self.intermediate_size, self.mlp_bias),
                down_proj: linear(self.intermediate_size, d, self.mlp_bias),
                lora: [None, None, None, None],
            })
            .collect();
        Llama {
            embed: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
            layers,
            norm: norm(),
            lm_head: (!self.tie_word_embeddings)
                .then(|| Param::from_tensor(Tensor::zeros([self.vocab_size, d], device))),
            config: self.clone(),
        }
    }
}

/// Loads a Llama-family Hugging Face directory.
///
/// # Errors
/// A bad `config.json`, missing or unreadable weights, or a tensor whose shape does not fit
/// the configuration (naming it and both shapes).
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Llama<B>> {
    let config = LlamaConfig::load(&dir.join("config.json"))?;
    let weights = Weights::open(dir)?;
    // Initialization draws random numbers that the weights overwrite.
    let mut model = crate::unseeded(|| config.init::<B>(device));
    model.embed.weight = Param::from_tensor(weights.tensor::<B, 2>(
        "model.embed_tokens.weight",
        [config.vocab_size, config.hidden_size],
        false,
        device,
    )?);
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        weights.load_rms_norm(
            &mut layer.input_norm,
            &format!("{p}.input_layernorm"),
            device,
        )?;
        for (l, name) in [
            (&mut layer.q_proj, "self_attn.q_proj"),
            (&mut layer.k_proj, "self_attn.k_proj"),
            (&mut layer.v_proj, "self_attn.v_proj"),
            (&mut layer.o_proj, "self_attn.o_proj"),
            (&mut layer.gate_proj, "mlp.gate_proj"),
            (&mut layer.up_proj, "mlp.up_proj"),
            (&mut layer.down_proj, "mlp.down_proj"),
        ] {
            weights.load_linear(l, &format!("{p}.{name}"), device)?;
        }
        let post = format!("{p}.post_attention_layernorm");
        weights.load_rms_norm(&mut layer.post_norm, &post, device)?;
    }
    weights.load_rms_norm(&mut model.norm, "model.norm", device)?;
    if model.lm_head.is_some() {
        let shape = [config.vocab_size, config.hidden_size];
        let head = weights.tensor::<B, 2>("lm_head.weight", shape, false, device)?;
        model.lm_head = Some(Param::from_tensor(head));
    }
    // What the weights did not replace is still lazy: drawn here, under the lock.
    Ok(crate::unseeded(|| crate::drawn(model)))
}

impl<B: Backend> Llama<B> {
    /// Layers (one key/value cache entry each).
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The longest sequence.
    pub fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }

    /// The LM head as `[vocab, d]`: the token embedding when tied, else `lm_head`'s weight.
    pub fn head_weight(&self) -> Option<Tensor<B, 2>> {
        Some(match &self.lm_head {
            Some(head) => head.val(),
            None => self.embed.weight.val(),
        })
    }

    /// Freezes every base weight and adds adapters to the `config.targets` projections of
    /// every layer (default `q_proj`, `v_proj`): afterwards only the adapters train.
    ///
    /// # Errors
    /// A rank of 0, or a target that is not `q_proj`, `k_proj`, `v_proj` or `o_proj`.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self, String> {
        let chosen = lora::targets(config, "llama", &LORA_TARGETS, &["q_proj", "v_proj"])?;
        let mut model = self.no_grad();
        for layer in &mut model.layers {
            let bases = [&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj];
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
            let [q, k, v, o] = std::mem::take(&mut layer.lora);
            lora::merge(&mut layer.q_proj, q);
            lora::merge(&mut layer.k_proj, k);
            lora::merge(&mut layer.v_proj, v);
            lora::merge(&mut layer.o_proj, o);
        }
        self
    }

    /// Grows (or cuts) the vocabulary to `n`: embedding rows and, when untied, head columns;
    /// new entries are the means of the existing ones.
    pub fn resize_token_embeddings(mut self, n: usize) -> Self {
        self.embed.weight = self.embed.weight.map(|w| layers::resize_rows(w, n));
        self.lm_head = self
            .lm_head
            .map(|head| head.map(|w| layers::resize_rows(w, n)));
        if let Some(map) = self.config.raw.as_object_mut() {
            map.insert("vocab_size".into(), n.into());
        }
        self.config.vocab_size = n;
        self
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed.weight.dims()[0]
    }

    /// The device the weights are on.
    pub fn device(&self) -> B::Device {
        self.embed.weight.device()
    }

    /// Hidden states `[n, d]` to logits `[n, vocab]` (the untied head, or the embedding).
    pub fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let head = match &self.lm_head {
            Some(head) => head.val(),
            None => self.embed.weight.val(),
        };
        hidden.matmul(head.transpose())
    }

    /// The final hidden states (after the last RMSNorm), `[batch, seq, d]`.
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
        layers::rms(&self.norm, x).reshape([batch, seq, d])
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
        config: &LlamaConfig,
        batch: usize,
        seq: usize,
        past: Option<Kv<B>>,
    ) -> (Tensor<B, 2>, Kv<B>) {
        let h = layers::rms(&self.input_norm, x.clone());
        let (a, kv) = self.attend(h, mask, rope, config, batch, seq, past);
        let x = x + a;
        let h = layers::rms(&self.post_norm, x.clone());
        let act =
            crate::kernels::swiglu(self.gate_proj.forward(h.clone()), self.up_proj.forward(h));
        (x + self.down_proj.forward(act), kv)
    }

    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        x: Tensor<B, 2>,
        mask: &Tensor<B, 4, Bool>,
        rope: &Rope<B>,
        config: &LlamaConfig,
        batch: usize,
        seq: usize,
        past: Option<Kv<B>>,
    ) -> (Tensor<B, 2>, Kv<B>) {
        let (hd, heads, kv) = (
            config.head_dim(),
            config.num_attention_heads,
            config.kv_heads(),
        );
        let split = |t: Tensor<B, 2>, n: usize| {
            t.reshape([batch, seq, n, hd]).swap_dims(1, 2) // [batch, n, seq, hd]
        };
        let [lq, lk, lv, lo] = self.lora.each_ref().map(Option::as_ref);
        let q = rope.apply(split(lora::project(&self.q_proj, lq, x.clone()), heads));
        let k = rope.apply(split(lora::project(&self.k_proj, lk, x.clone()), kv));
        let v = split(lora::project(&self.v_proj, lv, x), kv);
        let (k, v) = layers::extend_kv(past, k, v);
        let out = layers::attention(
            q,
            layers::repeat_kv(k.clone(), heads),
            layers::repeat_kv(v.clone(), heads),
            mask,
            None,
        );
        (lora::project(&self.o_proj, lo, out), (k, v))
    }
}

/// Saves `model` as a Hugging Face directory (`config.json` as loaded, `model.safetensors`
/// in float32 with transformers' names; no `lm_head.weight` when tied).
///
/// # Errors
/// The directory or a file cannot be written.
pub fn save<B: Backend>(model: &Llama<B>, dir: &Path) -> Result<()> {
    // Adapters are merged on export: the file is a plain Llama.
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
        w.rms_norm(&layer.input_norm, &format!("{p}.input_layernorm"));
        w.linear(&layer.q_proj, &format!("{p}.self_attn.q_proj"));
        w.linear(&layer.k_proj, &format!("{p}.self_attn.k_proj"));
        w.linear(&layer.v_proj, &format!("{p}.self_attn.v_proj"));
        w.linear(&layer.o_proj, &format!("{p}.self_attn.o_proj"));
        w.rms_norm(&layer.post_norm, &format!("{p}.post_attention_layernorm"));
        w.linear(&layer.gate_proj, &format!("{p}.mlp.gate_proj"));
        w.linear(&layer.up_proj, &format!("{p}.mlp.up_proj"));
        w.linear(&layer.down_proj, &format!("{p}.mlp.down_proj"));
    }
    w.rms_norm(&model.norm, "model.norm");
    if let Some(head) = &model.lm_head {
        w.tensor("lm_head.weight", head.val(), false);
    }
    w.write(dir, &model.config.raw)
}

impl layers::HfConfig for LlamaConfig {
    fn set_raw(&mut self, raw: serde_json::Value) {
        self.raw = raw;
    }

    fn check(&self) -> std::result::Result<(), String> {
        let config = self;
        if !matches!(config.model_type.as_str(), "llama" | "qwen2") {
            return Err(format!(
                "model_type {:?} is not llama or qwen2",
                config.model_type
            ));
        }
        let heads = config.num_attention_heads;
        if heads == 0 || config.kv_heads() == 0 || !heads.is_multiple_of(config.kv_heads()) {
            return Err(format!(
                "{heads} attention heads do not split into {} key/value heads",
                config.kv_heads()
            ));
        }
        if config.head_dim.is_none() && !config.hidden_size.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of {heads} heads",
                config.hidden_size
            ));
        }
        if !config.head_dim().is_multiple_of(2) {
            return Err(format!("head_dim {} is odd", config.head_dim()));
        }
        Ok(())
    }
}
