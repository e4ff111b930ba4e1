//! GPT-2 in burn: learned position embeddings, pre-LayerNorm blocks, causal self-attention
//! that honours an attention mask (right padding), GELU in its tanh form, a final LayerNorm and
//! an LM head tied to the token embedding.
//!
//! Module field names follow Hugging Face's (`wte`, `wpe`, `h` → `blocks`, `ln_1`, `attn.c_attn`,
//! `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`), so loading a `model.safetensors`
//! is a key rename (see [`crate::hf`]): Hugging Face's Conv1D weights are `[in, out]`, which is
//! burn's `Linear` layout already.

use burn::module::Initializer;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::kernels::layer_norm;
use crate::lora::Lora;

/// GPT-2's hyper-parameters.
#[derive(Config, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (learned positions).
    pub n_positions: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_epsilon: f64,
    /// Standard deviation of the normal initialization of weights (GPT-2: 0.02).
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// The end-of-text (and padding) token, when known (GPT-2: 50256).
    #[config(default = "None")]
    pub eos_token_id: Option<usize>,
}

impl Gpt2Config {
    /// The number of parameters (the LM head is tied to the token embeddings, so it is not
    /// counted twice): 124,439,808 for GPT-2, as `transformers` counts it.
    #[must_use]
    pub fn parameters(&self) -> u64 {
        let d = self.n_embd as u64;
        let embeddings = (self.vocab_size + self.n_positions) as u64 * d;
        // Two LayerNorms, attention (qkv and projection) and the MLP, with biases.
        let block =
            4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d);
        embeddings + self.n_layer as u64 * block + 2 * d
    }

    /// The largest tensor a model of this configuration holds, and, given `rows × positions`
    /// of a training batch, computes (attention scores, the MLP's hidden layer): what it is
    /// and how many elements it has.
    #[must_use]
    pub fn largest_tensor(&self, batch: Option<(usize, usize)>) -> (String, u64) {
        let d = self.n_embd as u64;
        let mut candidates = vec![
            (
                format!("the token embedding ({} × {d})", self.vocab_size),
                self.vocab_size as u64 * d,
            ),
            (
                format!("the position embedding ({} × {d})", self.n_positions),
                self.n_positions as u64 * d,
            ),
            (format!("an MLP weight ({d} × {})", 4 * d), 4 * d * d),
        ];
        if let Some((rows, positions)) = batch {
            let (b, l, h) = (rows as u64, positions as u64, self.n_head as u64);
            candidates.push((
                format!("a batch's attention scores ({b} rows × {h} heads × {l}²)"),
                b * h * l * l,
            ));
            candidates.push((
                format!("a batch's MLP activations ({b} × {l} × {})", 4 * d),
                b * l * 4 * d,
            ));
        }
        candidates
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .unwrap_or_default()
    }

    /// Checks that every tensor of [`Self::largest_tensor`] fits the device the current job
    /// runs on ([`crate::device::check_fits`]), at `B`'s float width.
    ///
    /// # Errors
    /// The largest tensor is larger than the device binds.
    pub fn check_fits<B: Backend>(&self, batch: Option<(usize, usize)>) -> crate::Result<()> {
        let (what, elements) = self.largest_tensor(batch);
        let width = std::mem::size_of::<B::FloatElem>() as u64;
        crate::device::check_fits(|| what, elements * width)
    }

    /// GPT-2 small (124M).
    pub fn gpt2() -> Self {
        Self::new(50257, 1024, 768, 12, 12).with_eos_token_id(Some(50256))
    }

    /// GPT-2 medium (355M).
    pub fn gpt2_medium() -> Self {
        Self::new(50257, 1024, 1024, 24, 16).with_eos_token_id(Some(50256))
    }

    /// DistilGPT-2 (82M).
    pub fn distilgpt2() -> Self {
        Self::new(50257, 1024, 768, 6, 12).with_eos_token_id(Some(50256))
    }

    /// A named configuration (`gpt2`, `gpt2-medium`, `distilgpt2`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "gpt2" => Some(Self::gpt2()),
            "gpt2-medium" => Some(Self::gpt2_medium()),
            "distilgpt2" => Some(Self::distilgpt2()),
            _ => None,
        }
    }

    /// Checks that the sizes make a model.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if let Some(eos) = self.eos_token_id.filter(|&e| e >= self.vocab_size) {
            return Err(format!(
                "eos_token_id {eos} is outside the vocabulary ({})",
                self.vocab_size
            ));
        }
        Ok(())
    }

    /// Builds a randomly initialized model: weights from N(0, `initializer_range`) as GPT-2
    /// (the residual output projections scaled by 1/√(2·n_layer)), biases zero, LayerNorms
    /// identity. Seed the backend first (`B::seed`) for a reproducible init.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt2<B> {
        let d = self.n_embd;
        let std = self.initializer_range;
        let normal = |std: f64| Initializer::Normal { mean: 0.0, std };
        let linear = |i: usize, o: usize, std: f64| {
            let mut l = LinearConfig::new(i, o)
                .with_initializer(normal(std))
                .init(device);
            l.bias = l.bias.map(|b| b.map(|t: Tensor<B, 1>| t.zeros_like()));
            l
        };
        let proj_std = std / ((2 * self.n_layer) as f64).sqrt();
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        Gpt2 {
            config: self.clone(),
            head_index: crate::kernels::HeadCache::default(),
            wte: EmbeddingConfig::new(self.vocab_size, d)
                .with_initializer(normal(std))
                .init(device),
            wpe: EmbeddingConfig::new(self.n_positions, d)
                .with_initializer(normal(std / 2.0))
                .init(device),
            blocks: (0..self.n_layer)
                .map(|_| Block {
                    ln_1: ln(),
                    attn: Attention {
                        c_attn: linear(d, 3 * d, std),
                        c_proj: linear(d, d, proj_std),
                        n_head: self.n_head,
                        lora_attn: None,
                        lora_proj: None,
                    },
                    ln_2: ln(),
                    mlp: Mlp {
                        c_fc: linear(d, 4 * d, std),
                        c_proj: linear(4 * d, d, proj_std),
                    },
                })
                .collect(),
            ln_f: ln(),
        }
    }
}

/// The GPT-2 language model.
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    /// Token embedding, also the LM head (tied).
    pub wte: Embedding<B>,
    /// Position embedding.
    pub wpe: Embedding<B>,
    /// Transformer blocks.
    pub blocks: Vec<Block<B>>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm<B>,
    /// The configuration it was built from (not a parameter; `vocab_size` follows resizes).
    #[module(skip)]
    pub config: Gpt2Config,
    /// The tied head's int8 index for greedy decoding ([`Self::greedy_cached`]), built on
    /// first use and rebuilt when the head's tensor changes.
    #[module(skip)]
    head_index: crate::kernels::HeadCache,
}

/// One pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// LayerNorm before attention.
    pub ln_1: LayerNorm<B>,
    /// Causal self-attention.
    pub attn: Attention<B>,
    /// LayerNorm before the MLP.
    pub ln_2: LayerNorm<B>,
    /// The MLP.
    pub mlp: Mlp<B>,
}

/// Multi-head causal self-attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query, key and value projections in one: `[d, 3d]`.
    pub c_attn: Linear<B>,
    /// Output projection.
    pub c_proj: Linear<B>,
    /// Heads.
    pub n_head: usize,
    /// LoRA adapter on `c_attn`, when attached ([`Gpt2::with_lora`]).
    pub lora_attn: Option<Lora<B>>,
    /// LoRA adapter on `c_proj`, when attached.
    pub lora_proj: Option<Lora<B>>,
}

/// The block's feed-forward network.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d, 4d]`.
    pub c_fc: Linear<B>,
    /// `[4d, d]`.
    pub c_proj: Linear<B>,
}

/// GELU, tanh approximation (`gelu_new` in Hugging Face's GPT-2); see
/// [`crate::kernels::gelu_tanh`].
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    crate::kernels::gelu_tanh(x)
}

impl<B: Backend> Gpt2<B> {
    /// Blocks (one key/value cache entry each).
    pub fn layer_count(&self) -> usize {
        self.blocks.len()
    }

    /// The LM head as `[vocab, d]` (the tied token embedding).
    pub fn head_weight(&self) -> Option<Tensor<B, 2>> {
        Some(self.wte.weight.val())
    }

    /// The longest sequence (learned positions).
    pub fn max_positions(&self) -> Option<usize> {
        Some(self.wpe.weight.dims()[0])
    }

    /// The device the weights are on.
    pub fn device(&self) -> B::Device {
        self.wte.weight.device()
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    /// - `attention_mask`: `[batch, seq]`, 1 for tokens to attend to and 0 for padding (none:
    ///   attend to everything)
    /// - output: `[batch, seq, vocab]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let h = self.hidden(input_ids, attention_mask);
        let [batch, seq, d] = h.dims();
        let logits = self.project(h.reshape([batch * seq, d]));
        let vocab = logits.dims()[1];
        logits.reshape([batch, seq, vocab])
    }

    /// Logits at one position per row (e.g. each row's last attended token), without
    /// projecting the other positions onto the vocabulary.
    ///
    /// # Shapes
    /// - `positions`: one index per row, each `< seq`
    /// - output: `[batch, vocab]`
    pub fn logits_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        positions: &[usize],
    ) -> Tensor<B, 2> {
        let device = input_ids.device();
        let h = self.hidden(input_ids, attention_mask);
        let [batch, seq, d] = h.dims();
        debug_assert_eq!(positions.len(), batch);
        let flat: Vec<i64> = positions
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * seq + p) as i64)
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [batch]), &device);
        self.project(h.reshape([batch * seq, d]).select(0, index))
    }

    /// The tied LM head: hidden states `[n, n_embd]` to logits `[n, vocab]`.
    pub fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        crate::kernels::matmul_nt(hidden, self.wte.weight.val())
    }

    /// The vocabulary size (rows of the token embedding).
    pub fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }

    /// Grows the token embedding (and so the tied LM head) to `vocab_size` rows after special
    /// tokens were added; new rows are the mean of the existing ones, as Hugging Face's
    /// `resize_token_embeddings(mean_resizing=True)` starts them. Shrinking keeps the first
    /// rows.
    pub fn resize_token_embeddings(mut self, vocab_size: usize) -> Self {
        let old = self.vocab_size();
        if vocab_size == old {
            return self;
        }
        self.wte.weight = self
            .wte
            .weight
            .map(|w: Tensor<B, 2>| crate::layers::resize_rows(w, vocab_size));
        self.config.vocab_size = vocab_size;
        self
    }

    /// The final hidden states (after `ln_f`).
    ///
    /// # Shapes
    /// - output: `[batch, seq, n_embd]`
    pub fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let device = input_ids.device();
        let [batch, seq] = input_ids.dims();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let x = crate::kernels::embedding(&self.wte, input_ids)
            + crate::kernels::embedding(&self.wpe, positions);
        let d = x.dims()[2];
        let mask = attend_mask::<B>(batch, seq, attention_mask, &device);
        // Rows of all positions: every projection is then one [batch·seq, ·] matrix product
        // instead of `batch` broadcast ones.
        let mut x = x.reshape([batch * seq, d]);
        let eps = self.config.layer_norm_epsilon;
        for block in &self.blocks {
            x = block.forward(x, mask.clone(), batch, seq, eps);
        }
        layer_norm(&self.ln_f, eps, x).reshape([batch, seq, d])
    }
}

/// Keys and values of the positions a model has already read, per block, for incremental
/// decoding: each new token attends to them instead of recomputing the whole prefix.
///
/// A batch of prompts of different lengths is read left-padded ([`KvCache::left_padded`]):
/// row `r`'s first `pad[r]` positions are padding that no query sees, and its real tokens
/// take the positions they would take alone.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    pub(crate) len: usize,
    pub(crate) pad: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model of `n_layer` blocks.
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
            len: 0,
            pad: Vec::new(),
        }
    }

    /// The cache for a left-padded batch: row `r` starts with `pad[r]` padding positions
    /// (one entry per row of the batch the cache will read).
    #[must_use]
    pub fn left_padded(mut self, pad: Vec<usize>) -> Self {
        self.pad = pad;
        self
    }

    /// Positions read so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The model position of each of `seq` new tokens per row, `[batch, seq]`: `len + i`,
    /// less the row's padding (padding positions themselves read as 0).
    pub(crate) fn positions(
        &self,
        batch: usize,
        seq: usize,
        device: &B::Device,
    ) -> Tensor<B, 2, Int> {
        let past = self.len;
        if self.pad.is_empty() {
            return Tensor::<B, 1, Int>::arange(past as i64..(past + seq) as i64, device)
                .reshape([1, seq])
                .expand([batch, seq]);
        }
        let ids: Vec<i64> = self
            .pad
            .iter()
            .flat_map(|&p| (past..past + seq).map(move |j| j.saturating_sub(p) as i64))
            .collect();
        Tensor::from_data(TensorData::new(ids, [batch, seq]), device)
    }

    /// `[batch, len + seq]`: 1 for a real key, 0 for padding (BLOOM's ALiBi reads it).
    pub(crate) fn key_mask(
        &self,
        batch: usize,
        seq: usize,
        device: &B::Device,
    ) -> Tensor<B, 2, Int> {
        let total = self.len + seq;
        if self.pad.is_empty() {
            return Tensor::ones([batch, total], device);
        }
        let keep: Vec<i64> = self
            .pad
            .iter()
            .flat_map(|&p| (0..total).map(move |j| i64::from(j >= p)))
            .collect();
        Tensor::from_data(TensorData::new(keep, [batch, total]), device)
    }

    /// `[batch, 1, seq, len + seq]` attention mask of `seq` new positions ([`crate::layers`]).
    pub(crate) fn mask(&self, batch: usize, seq: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
        crate::layers::cached_mask::<B>(batch, self.len, seq, &self.pad, device)
    }
}

impl<B: Backend> Gpt2<B> {
    /// Reads `input_ids` after the positions in `cache` and returns the logits of the last new
    /// position, `[batch, vocab]`.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        self.project(self.hidden_cached(input_ids, cache))
    }

    /// Greedy decoding's next token after reading `input_ids` (batch 1) as
    /// [`Self::forward_cached`] does, found through the int8 copy of the tied head (built on
    /// first use, kept while the head is this tensor) without computing every logit: the
    /// argmax of `forward_cached`'s logits, bit for bit. `None`, having read nothing, off
    /// burn-flex or for a batch.
    pub fn greedy_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Option<u32> {
        if input_ids.dims()[0] != 1 || !crate::kernels::head_argmax_runs_on::<B>() {
            return None;
        }
        let hidden = self.hidden_cached(input_ids, cache);
        crate::kernels::head_argmax(hidden, self.wte.weight.val(), &self.head_index)
    }

    /// Reads `input_ids` after the positions already in `cache` (left-padded as the cache
    /// says) and returns the final hidden state of the last new position, `[batch, d]`
    /// (after `ln_f`), adding the new keys and values to `cache`.
    ///
    /// # Panics
    /// When the cache would exceed the model's positions (callers check the length first).
    fn hidden_cached(&self, input_ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 2> {
        let device = input_ids.device();
        let [batch, seq] = input_ids.dims();
        let positions = cache.positions(batch, seq, &device);
        let x = crate::kernels::embedding(&self.wte, input_ids)
            + crate::kernels::embedding(&self.wpe, positions);
        let d = x.dims()[2];
        let total = cache.len + seq;
        let mask = cache.mask(batch, seq, &device);
        let mut x = x.reshape([batch * seq, d]);
        let eps = self.config.layer_norm_epsilon;
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let (out, kv) = block.forward_kv(x, mask.clone(), batch, seq, eps, slot.take());
            *slot = Some(kv);
            x = out;
        }
        cache.len = total;
        let last = x
            .reshape([batch, seq, d])
            .narrow(1, seq - 1, 1)
            .reshape([batch, d]);
        layer_norm(&self.ln_f, eps, last)
    }
}

/// `[batch, 1, seq, seq]`: true where query i must NOT attend to key j (j > i, or key j is
/// padding), ready for `mask_fill`.
pub(crate) fn attend_mask<B: Backend>(
    batch: usize,
    seq: usize,
    attention_mask: Option<Tensor<B, 2, Int>>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let future: Vec<bool> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| j > i))
        .collect();
    let future = Tensor::<B, 4, Bool>::from_data(TensorData::new(future, [1, 1, seq, seq]), device)
        .expand([batch, 1, seq, seq]);
    match attention_mask {
        None => future,
        Some(m) => {
            let padding = m
                .equal_elem(0)
                .reshape([batch, 1, 1, seq])
                .expand([batch, 1, seq, seq]);
            future.int().add(padding.int()).greater_elem(0)
        }
    }
}

impl<B: Backend> Block<B> {
    /// `x`: `[batch·seq, d]`; `eps`: the LayerNorms' epsilon.
    fn forward(
        &self,
        x: Tensor<B, 2>,
        mask: Tensor<B, 4, Bool>,
        batch: usize,
        seq: usize,
        eps: f64,
    ) -> Tensor<B, 2> {
        let a = self
            .attn
            .attend_rows(layer_norm(&self.ln_1, eps, x.clone()), &mask, batch, seq);
        self.residual_mlp(x + a, eps)
    }

    /// The block over `seq` new positions after `past` keys/values (if any); also returns
    /// all keys/values, for a [`KvCache`].
    #[allow(clippy::type_complexity)]
    fn forward_kv(
        &self,
        x: Tensor<B, 2>,
        mask: Tensor<B, 4, Bool>,
        batch: usize,
        seq: usize,
        eps: f64,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 2>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let (a, kv) = self.attn.attend(
            self.attn.qkv(layer_norm(&self.ln_1, eps, x.clone())),
            mask,
            batch,
            seq,
            past,
        );
        (self.residual_mlp(x + a, eps), kv)
    }

    /// `x + mlp(ln_2(x))`.
    fn residual_mlp(&self, x: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
        x.clone() + self.mlp.forward(layer_norm(&self.ln_2, eps, x))
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let linear = crate::kernels::linear;
        linear(&self.c_proj, gelu_tanh(linear(&self.c_fc, x)))
    }
}

impl<B: Backend> Attention<B> {
    /// Attention of `seq` new positions, from their `c_attn` rows `qkv` (`[batch·seq, 3·d]`,
    /// see [`Self::qkv`]), over `past` keys/values (if any) and their own, composed of burn
    /// ops; returns the output `[batch·seq, d]` and all keys/values
    /// `[batch, heads, past + seq, dh]`.
    #[allow(clippy::type_complexity)]
    fn attend(
        &self,
        qkv: Tensor<B, 2>,
        mask: Tensor<B, 4, Bool>,
        batch: usize,
        seq: usize,
        past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> (Tensor<B, 2>, (Tensor<B, 4>, Tensor<B, 4>)) {
        let heads = self.n_head;
        let dh = qkv.dims()[1] / 3 / heads;
        let split = |i: usize| crate::kernels::split_heads(qkv.clone(), batch, seq, heads, 3, i);
        let (q, mut k, mut v) = (split(0), split(1), split(2));
        if let Some((pk, pv)) = past {
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        let scores = q.matmul(k.clone().swap_dims(2, 3));
        // As Hugging Face: masked scores take the dtype's minimum, not -inf.
        let probs = crate::kernels::scaled_masked_softmax(scores, (dh as f64).sqrt(), &mask);
        let out = crate::kernels::merge_heads(probs.matmul(v.clone()));
        (self.project(out), (k, v))
    }

    /// [`Self::attend`] of the rows `x` without a cache and without returning the keys and values: on
    /// burn-flex one fused op from the `c_attn` rows to the `c_proj` rows
    /// ([`crate::kernels::qkv_attention`]), which training runs.
    fn attend_rows(
        &self,
        x: Tensor<B, 2>,
        mask: &Tensor<B, 4, Bool>,
        batch: usize,
        seq: usize,
    ) -> Tensor<B, 2> {
        match crate::kernels::qkv_attention(self.qkv(x), mask, batch, seq, self.n_head) {
            Ok(out) => self.project(out),
            Err(qkv) => self.attend(qkv, mask.clone(), batch, seq, None).0,
        }
    }

    /// q, k and v side by side, `[rows, 3·d]` (`c_attn`, plus its LoRA update).
    fn qkv(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.lora_attn {
            Some(lora) => self.c_attn.forward(x.clone()) + lora.forward(x),
            None => crate::kernels::linear(&self.c_attn, x),
        }
    }

    /// The output projection (`c_proj`, plus its LoRA update).
    fn project(&self, out: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.lora_proj {
            Some(lora) => self.c_proj.forward(out.clone()) + lora.forward(out),
            None => crate::kernels::linear(&self.c_proj, out),
        }
    }
}

#[cfg(test)]
mod parameter_tests {
    use super::Gpt2Config;

    #[test]
    fn parameters_match_the_published_counts() {
        // transformers' `GPT2LMHeadModel(config).num_parameters()`.
        assert_eq!(Gpt2Config::gpt2().parameters(), 124_439_808);
        assert_eq!(Gpt2Config::distilgpt2().parameters(), 81_912_576);
    }
}
