//! GPT-2 in burn: learned position embeddings, pre-LayerNorm blocks, causal self-attention
//! that honours an attention mask (right padding), GELU in its tanh form, a final LayerNorm and
//! an LM head tied to the token embedding.
//!
//! Module field names follow Hugging Face's (`wte`, `wpe`, `h` → `blocks`, `ln_1`, `attn.c_attn`,
//! `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`), so loading a `model.safetensors`
//! is a key rename (see [`crate::hf`]): Hugging Face's Conv1D weights are `[in, out]`, which is
//! burn's `Linear` layout already.

use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;

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
}

impl Gpt2Config {
    /// GPT-2 small (124M).
    pub fn gpt2() -> Self {
        Self::new(50257, 1024, 768, 12, 12)
    }

    /// GPT-2 medium (355M).
    pub fn gpt2_medium() -> Self {
        Self::new(50257, 1024, 1024, 24, 16)
    }

    /// DistilGPT-2 (82M).
    pub fn distilgpt2() -> Self {
        Self::new(50257, 1024, 768, 6, 12)
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

    /// Builds a randomly initialized model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt2<B> {
        let d = self.n_embd;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        Gpt2 {
            wte: EmbeddingConfig::new(self.vocab_size, d).init(device),
            wpe: EmbeddingConfig::new(self.n_positions, d).init(device),
            blocks: (0..self.n_layer)
                .map(|_| Block {
                    ln_1: ln(),
                    attn: Attention {
                        c_attn: LinearConfig::new(d, 3 * d).init(device),
                        c_proj: LinearConfig::new(d, d).init(device),
                        n_head: self.n_head,
                    },
                    ln_2: ln(),
                    mlp: Mlp {
                        c_fc: LinearConfig::new(d, 4 * d).init(device),
                        c_proj: LinearConfig::new(4 * d, d).init(device),
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
}

/// The block's feed-forward network.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d, 4d]`.
    pub c_fc: Linear<B>,
    /// `[4d, d]`.
    pub c_proj: Linear<B>,
}

/// GELU, tanh approximation (`gelu_new` in Hugging Face's GPT-2).
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powf_scalar(3.0) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

impl<B: Backend> Gpt2<B> {
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
        let w = self.wte.weight.val(); // [vocab, d]
        let vocab = w.dims()[0];
        h.reshape([batch * seq, d])
            .matmul(w.transpose())
            .reshape([batch, seq, vocab])
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
        let mut x = self.wte.forward(input_ids) + self.wpe.forward(positions);
        let mask = attend_mask::<B>(batch, seq, attention_mask, &device);
        for block in &self.blocks {
            x = block.forward(x, mask.clone());
        }
        self.ln_f.forward(x)
    }
}

/// `[batch, 1, seq, seq]`: true where query i may attend to key j (j ≤ i and key j not padding).
fn attend_mask<B: Backend>(
    batch: usize,
    seq: usize,
    attention_mask: Option<Tensor<B, 2, Int>>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let causal: Vec<bool> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| j <= i))
        .collect();
    let causal = Tensor::<B, 4, Bool>::from_data(TensorData::new(causal, [1, 1, seq, seq]), device)
        .expand([batch, 1, seq, seq]);
    match attention_mask {
        None => causal,
        Some(m) => {
            let keys = m
                .equal_elem(1)
                .reshape([batch, 1, 1, seq])
                .expand([batch, 1, seq, seq]);
            causal.int().mul(keys.int()).equal_elem(1)
        }
    }
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), mask);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.c_proj.forward(gelu_tanh(self.c_fc.forward(x)))
    }
}

impl<B: Backend> Attention<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let [batch, seq, d] = x.dims();
        let heads = self.n_head;
        let dh = d / heads;
        let qkv = self.c_attn.forward(x);
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * d, d)
                .reshape([batch, seq, heads, dh])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt();
        // As Hugging Face: masked scores take the dtype's minimum, not -inf.
        let scores = scores.mask_fill(mask.bool_not(), f32::MIN);
        let probs = softmax(scores, 3);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([batch, seq, d]);
        self.c_proj.forward(out)
    }
}
