//! BLOOM in burn, as transformers' `BloomForCausalLM` computes it: a LayerNorm right after the
//! word embedding, pre-LayerNorm blocks with a fused `query_key_value` laid out per head as
//! `[q, k, v]`, ALiBi position biases instead of position embeddings (with the extra slopes for
//! head counts that are not powers of two, as `build_alibi_tensor`), the tanh GELU, and the
//! LM head tied to the word embedding.

use std::path::Path;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::TensorData;
use serde::Deserialize;

use crate::error::Result;
use crate::gpt2::KvCache;
use crate::layers::{self, Kv};
use crate::lora::{self, Lora, LoraConfig};
use crate::weights::{Weights, WeightsWriter};

/// A BLOOM `config.json` (the keys kiln uses).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BloomConfig {
    /// The whole `config.json`, written back unchanged when the model is saved.
    #[serde(skip)]
    pub raw: serde_json::Value,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (older configs: `n_embed`).
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Whether the residual is taken after the LayerNorm (false in every released BLOOM).
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
}

fn default_eps() -> f64 {
    1e-5
}

impl BloomConfig {
    /// Reads and checks `config.json`.
    ///
    /// # Errors
    /// Unreadable, not JSON, or a hidden size that is not a multiple of the heads.
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

    /// A model of this shape with weights to be loaded.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Bloom<B> {
        let d = self.hidden_size;
        let eps = self.layer_norm_epsilon;
        let blocks = (0..self.n_layer)
            .map(|_| Block {
                input_norm: layers::layer_norm(d, eps, device),
                query_key_value: layers::linear(d, 3 * d, true, device),
                dense: layers::linear(d, d, true, device),
                post_norm: layers::layer_norm(d, eps, device),
                dense_h_to_4h: layers::linear(d, 4 * d, true, device),
                dense_4h_to_h: layers::linear(4 * d, d, true, device),
                lora: [None, None],
            })
            .collect();
        Bloom {
            embed: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(burn::nn::Initializer::Zeros)
                .init(device),
            embed_norm: layers::layer_norm(d, eps, device),
            blocks,
            ln_f: layers::layer_norm(d, eps, device),
            config: self.clone(),
        }
    }

    /// The ALiBi slope of every head, as transformers' `build_alibi_tensor`.
    #[must_use]
    pub fn alibi_slopes(&self) -> Vec<f64> {
        let heads = self.n_head;
        let closest = 1usize << heads.ilog2();
        let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
        let mut slopes: Vec<f64> = (1..=closest).map(|p| base.powi(p as i32)).collect();
        if closest != heads {
            let extra = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
            let remaining = closest.min(heads - closest);
            slopes.extend((0..remaining).map(|i| extra.powi((1 + 2 * i) as i32)));
        }
        slopes
    }
}

/// A BLOOM causal LM.
#[derive(Module, Debug)]
pub struct Bloom<B: Backend> {
    /// Word embedding `[vocab, d]` (also the LM head).
    pub embed: Embedding<B>,
    /// The LayerNorm after the embedding.
    pub embed_norm: LayerNorm<B>,
    /// Blocks.
    pub blocks: Vec<Block<B>>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm<B>,
    /// The configuration (not a parameter).
    #[module(skip)]
    pub config: BloomConfig,
}

/// One BLOOM block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// LayerNorm before attention.
    pub input_norm: LayerNorm<B>,
    /// Fused projection `[d, 3d]`, per head `[q, k, v]`.
    pub query_key_value: Linear<B>,
    /// Attention output `[d, d]`.
    pub dense: Linear<B>,
    /// LayerNorm before the MLP.
    pub post_norm: LayerNorm<B>,
    /// MLP in `[d, 4d]`.
    pub dense_h_to_4h: Linear<B>,
    /// MLP out `[4d, d]`.
    pub dense_4h_to_h: Linear<B>,
    /// LoRA adapters on `query_key_value` and `dense` (when attached).
    pub lora: [Option<Lora<B>>; 2],
}

/// The projections LoRA can adapt, in the order of [`Block::lora`].
const LORA_TARGETS: [&str; 2] = ["query_key_value", "dense"];

/// Loads a BLOOM Hugging Face directory.
///
/// # Errors
/// A bad `config.json`, missing or unreadable weights, or a tensor whose shape does not fit.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Bloom<B>> {
    let config = BloomConfig::load(&dir.join("config.json"))?;
    let weights = Weights::open(dir)?;
    // Initialization draws random numbers that the weights overwrite.
    let mut model = crate::unseeded(|| config.init::<B>(device));
    // Checkpoints from bigscience name tensors without the `transformer.` prefix.
    let prefix = if weights.contains("transformer.word_embeddings.weight") {
        "transformer."
    } else {
        ""
    };
    let shape = [config.vocab_size, config.hidden_size];
    let name = format!("{prefix}word_embeddings.weight");
    model.embed.weight = Param::from_tensor(weights.tensor::<B, 2>(&name, shape, false, device)?);
    let name = format!("{prefix}word_embeddings_layernorm");
    weights.load_layer_norm(&mut model.embed_norm, &name, device)?;
    for (i, block) in model.blocks.iter_mut().enumerate() {
        let p = format!("{prefix}h.{i}");
        weights.load_layer_norm(
            &mut block.input_norm,
            &format!("{p}.input_layernorm"),
            device,
        )?;
        let post = format!("{p}.post_attention_layernorm");
        weights.load_layer_norm(&mut block.post_norm, &post, device)?;
        for (l, name) in [
            (&mut block.query_key_value, "self_attention.query_key_value"),
            (&mut block.dense, "self_attention.dense"),
            (&mut block.dense_h_to_4h, "mlp.dense_h_to_4h"),
            (&mut block.dense_4h_to_h, "mlp.dense_4h_to_h"),
        ] {
            weights.load_linear(l, &format!("{p}.{name}"), device)?;
        }
    }
    weights.load_layer_norm(&mut model.ln_f, &format!("{prefix}ln_f"), device)?;
    // What the weights did not replace is still lazy: drawn here, under the lock.
    Ok(crate::unseeded(|| crate::drawn(model)))
}

impl<B: Backend> Bloom<B> {
    /// Blocks (one key/value cache entry each).
    pub fn layer_count(&self) -> usize {
        self.blocks.len()
    }

    /// The LM head as `[vocab, d]` (the tied word embedding).
    pub fn head_weight(&self) -> Option<Tensor<B, 2>> {
        Some(self.embed.weight.val())
    }

    /// Grows (or cuts) the vocabulary to `n` rows; new rows are the mean embedding.
    pub fn resize_token_embeddings(mut self, n: usize) -> Self {
        self.embed.weight = self.embed.weight.map(|w| layers::resize_rows(w, n));
        if let Some(map) = self.config.raw.as_object_mut() {
            map.insert("vocab_size".into(), n.into());
        }
        self.config.vocab_size = n;
        self
    }

    /// Freezes every base weight and adds adapters to the `config.targets` projections of
    /// every block (default `query_key_value`): afterwards only the adapters train.
    ///
    /// # Errors
    /// A rank of 0, or a target that is not `query_key_value` or `dense`.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self, String> {
        let chosen = lora::targets(config, "bloom", &LORA_TARGETS, &["query_key_value"])?;
        let mut model = self.no_grad();
        for block in &mut model.blocks {
            let bases = [&block.query_key_value, &block.dense];
            for (i, base) in bases.into_iter().enumerate() {
                if chosen.contains(&LORA_TARGETS[i]) {
                    block.lora[i] = Some(Lora::new(base, config, device));
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
        self.blocks.iter().flat_map(|l| l.lora.iter().flatten())
    }

    /// Folds the adapters into the base weights and removes them.
    pub fn merge_lora(mut self) -> Self {
        for block in &mut self.blocks {
            let [qkv, dense] = std::mem::take(&mut block.lora);
            lora::merge(&mut block.query_key_value, qkv);
            lora::merge(&mut block.dense, dense);
        }
        self
    }

    /// No learned positions: ALiBi has no limit.
    pub fn max_positions(&self) -> Option<usize> {
        None
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.embed.weight.dims()[0]
    }

    /// The device the weights are on.
    pub fn device(&self) -> B::Device {
        self.embed.weight.device()
    }

    /// Hidden states `[n, d]` to logits `[n, vocab]` (the tied head).
    pub fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        hidden.matmul(self.embed.weight.val().transpose())
    }

    /// The final hidden states, `[batch, seq, d]`.
    pub fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let device = input_ids.device();
        let [batch, seq] = input_ids.dims();
        let keep = attention_mask
            .clone()
            .unwrap_or_else(|| Tensor::ones([batch, seq], &device));
        let alibi = self.alibi(keep);
        let mask = crate::gpt2::attend_mask::<B>(batch, seq, attention_mask, &device);
        self.decode(input_ids, &mask, &alibi, None)
    }

    /// Reads `input_ids` after the positions in `cache` (left-padded as it says) and returns the logits
    /// of the last new position, `[batch, vocab]`, adding the new keys and values to `cache`.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let device = input_ids.device();
        let [batch, seq] = input_ids.dims();
        let alibi = self.alibi(cache.key_mask(batch, seq, &device));
        let mask = cache.mask(batch, seq, &device);
        let h = self.decode(input_ids, &mask, &alibi, Some(cache));
        self.project(layers::last_position(h))
    }

    /// The final hidden states of `input_ids`, read after the positions in `cache` (none:
    /// from position 0), `[batch, seq, d]`.
    fn decode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        alibi: &Tensor<B, 4>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let x = self.embed_norm.forward(self.embed.forward(input_ids));
        let d = x.dims()[2];
        let x = x.reshape([batch * seq, d]);
        let x = layers::run_layers(&self.blocks, x, seq, cache, |block, x, kv| {
            block.forward(x, mask, alibi, &self.config, batch, seq, kv)
        });
        self.ln_f.forward(x).reshape([batch, seq, d])
    }

    /// `[batch, heads, 1, seq]`: slope × the key's position among the row's attended tokens
    /// (`(cumsum(mask) − 1) · mask`, as transformers), added to every query's scores; computed
    /// on the device.
    fn alibi(&self, keep: Tensor<B, 2, Int>) -> Tensor<B, 4> {
        let [batch, seq] = keep.dims();
        let device = keep.device();
        let positions = (keep.clone().cumsum(1) - 1) * keep;
        let slopes: Vec<f32> = self
            .config
            .alibi_slopes()
            .iter()
            .map(|&s| s as f32)
            .collect();
        let heads = slopes.len();
        let slopes = Tensor::<B, 4>::from_data(TensorData::new(slopes, [1, heads, 1, 1]), &device);
        positions.float().reshape([batch, 1, 1, seq]) * slopes
    }
}

impl<B: Backend> Block<B> {
    /// The block over `seq` new positions after the cached `past` keys/values; returns the
    /// output and every key/value.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: Tensor<B, 2>,
        mask: &Tensor<B, 4, Bool>,
        alibi: &Tensor<B, 4>,
        config: &BloomConfig,
        batch: usize,
        seq: usize,
        past: Option<Kv<B>>,
    ) -> (Tensor<B, 2>, Kv<B>) {
        let h = self.input_norm.forward(x.clone());
        let residual = if config.apply_residual_connection_post_layernorm {
            h.clone()
        } else {
            x
        };
        let (a, kv) = self.attend(h, mask, alibi, config, batch, seq, past);
        let x = residual + lora::project(&self.dense, self.lora[1].as_ref(), a);
        let h = self.post_norm.forward(x.clone());
        let residual = if config.apply_residual_connection_post_layernorm {
            h.clone()
        } else {
            x
        };
        let inner = crate::kernels::gelu_tanh(self.dense_h_to_4h.forward(h));
        (residual + self.dense_4h_to_h.forward(inner), kv)
    }

    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        x: Tensor<B, 2>,
        mask: &Tensor<B, 4, Bool>,
        alibi: &Tensor<B, 4>,
        config: &BloomConfig,
        batch: usize,
        seq: usize,
        past: Option<Kv<B>>,
    ) -> (Tensor<B, 2>, Kv<B>) {
        let heads = config.n_head;
        let hd = config.hidden_size / heads;
        // Per head [q, k, v]: `view(batch, seq, heads, 3, hd)`.
        let qkv = lora::project(&self.query_key_value, self.lora[0].as_ref(), x)
            .reshape([batch, seq, heads, 3, hd]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(3, i, 1)
                .reshape([batch, seq, heads, hd])
                .swap_dims(1, 2)
        };
        let (k, v) = layers::extend_kv(past, part(1), part(2));
        let out = layers::attention(part(0), k.clone(), v.clone(), mask, Some(alibi.clone()));
        (out, (k, v))
    }
}

/// Saves `model` as a Hugging Face directory (`config.json` as loaded, `model.safetensors`
/// in float32 with transformers' `transformer.` names; the tied head is not written).
///
/// # Errors
/// The directory or a file cannot be written.
pub fn save<B: Backend>(model: &Bloom<B>, dir: &Path) -> Result<()> {
    // Adapters are merged on export: the file is a plain BLOOM.
    let merged;
    let model = if model.has_lora() {
        merged = model.clone().merge_lora();
        &merged
    } else {
        model
    };
    let mut w = WeightsWriter::new();
    w.tensor(
        "transformer.word_embeddings.weight",
        model.embed.weight.val(),
        false,
    );
    w.layer_norm(&model.embed_norm, "transformer.word_embeddings_layernorm");
    for (i, block) in model.blocks.iter().enumerate() {
        let p = format!("transformer.h.{i}");
        w.layer_norm(&block.input_norm, &format!("{p}.input_layernorm"));
        w.linear(
            &block.query_key_value,
            &format!("{p}.self_attention.query_key_value"),
        );
        w.linear(&block.dense, &format!("{p}.self_attention.dense"));
        w.layer_norm(&block.post_norm, &format!("{p}.post_attention_layernorm"));
        w.linear(&block.dense_h_to_4h, &format!("{p}.mlp.dense_h_to_4h"));
        w.linear(&block.dense_4h_to_h, &format!("{p}.mlp.dense_4h_to_h"));
    }
    w.layer_norm(&model.ln_f, "transformer.ln_f");
    w.write(dir, &model.config.raw)
}

impl layers::HfConfig for BloomConfig {
    fn set_raw(&mut self, raw: serde_json::Value) {
        self.raw = raw;
    }

    fn check(&self) -> std::result::Result<(), String> {
        let config = self;
        if config.n_head == 0 || !config.hidden_size.is_multiple_of(config.n_head) {
            return Err(format!(
                "hidden_size {} is not a multiple of {} heads",
                config.hidden_size, config.n_head
            ));
        }
        Ok(())
    }
}
