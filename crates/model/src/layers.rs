//! Pieces the architectures beyond GPT-2 share, written once: zero-initialized layers to load
//! weights into, rotary position embeddings (full or partial, Hugging Face's half-split
//! layout), grouped-query key/value repetition, and masked scaled-dot-product attention with an
//! optional additive bias (ALiBi).

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::Result;
use crate::weights::Weights;

/// A linear layer `[i, o]` of zeros (its weights are about to be loaded).
pub(crate) fn linear<B: Backend>(i: usize, o: usize, bias: bool, device: &B::Device) -> Linear<B> {
    LinearConfig::new(i, o)
        .with_bias(bias)
        .with_initializer(burn::nn::Initializer::Zeros)
        .init(device)
}

/// A LayerNorm over `d` features with epsilon `eps`.
pub(crate) fn layer_norm<B: Backend>(d: usize, eps: f64, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(eps).init(device)
}

/// An RMSNorm over `d` features with epsilon `eps`.
pub(crate) fn rms_norm<B: Backend>(d: usize, eps: f64, device: &B::Device) -> RmsNorm<B> {
    RmsNormConfig::new(d).with_epsilon(eps).init(device)
}

/// `norm` applied to `x` through the fused kernel ([`crate::kernels::rms_norm`]).
pub(crate) fn rms<B: Backend, const D: usize>(norm: &RmsNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    crate::kernels::rms_norm(x, norm.gamma.val(), norm.epsilon)
}

impl Weights {
    /// Loads `name.weight` (an `nn.Linear` `[out, in]`) and `name.bias` when the layer has one.
    pub(crate) fn load_linear<B: Backend>(
        &self,
        layer: &mut Linear<B>,
        name: &str,
        device: &B::Device,
    ) -> Result<()> {
        let [i, o] = layer.weight.dims();
        layer.weight =
            Param::from_tensor(self.tensor(&format!("{name}.weight"), [i, o], true, device)?);
        if layer.bias.is_some() {
            let bias = self.tensor(&format!("{name}.bias"), [o], false, device)?;
            layer.bias = Some(Param::from_tensor(bias));
        }
        Ok(())
    }

    /// Loads a LayerNorm's `name.weight` and `name.bias`.
    pub(crate) fn load_layer_norm<B: Backend>(
        &self,
        norm: &mut LayerNorm<B>,
        name: &str,
        device: &B::Device,
    ) -> Result<()> {
        let [d] = norm.gamma.dims();
        norm.gamma =
            Param::from_tensor(self.tensor(&format!("{name}.weight"), [d], false, device)?);
        norm.beta = Some(Param::from_tensor(self.tensor(
            &format!("{name}.bias"),
            [d],
            false,
            device,
        )?));
        Ok(())
    }

    /// Loads an RMSNorm's `name.weight`.
    pub(crate) fn load_rms_norm<B: Backend>(
        &self,
        norm: &mut RmsNorm<B>,
        name: &str,
        device: &B::Device,
    ) -> Result<()> {
        let [d] = norm.gamma.dims();
        norm.gamma =
            Param::from_tensor(self.tensor(&format!("{name}.weight"), [d], false, device)?);
        Ok(())
    }
}

/// The base rotary frequencies `1 / θ^(2i/dim)` for `i < dim/2`, computed in f32 as
/// transformers does.
pub(crate) fn rope_frequencies(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| f64::from(1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32)))
        .collect()
}

/// cos and sin of the rotary angles of positions `start..start + len`, `[1, 1, len, rot]` with
/// `rot = 2 · frequencies` (each frequency twice: Hugging Face's `cat(freqs, freqs)`). Only
/// the first `rot` dimensions of a head rotate (Phi's partial rotary); the rest pass through.
pub(crate) struct Rope<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    rot: usize,
}

impl<B: Backend> Rope<B> {
    pub(crate) fn new(freqs: &[f64], start: usize, len: usize, device: &B::Device) -> Self {
        let rot = 2 * freqs.len();
        let mut cos = Vec::with_capacity(len * rot);
        let mut sin = Vec::with_capacity(len * rot);
        for p in start..start + len {
            for _ in 0..2 {
                for &f in freqs {
                    // transformers: float32 frequency times float32 position, in float32.
                    let angle = (f as f32) * (p as f32);
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let make =
            |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, [1, 1, len, rot]), device);
        Self {
            cos: make(cos),
            sin: make(sin),
            rot,
        }
    }

    /// `x * cos + rotate_half(x) * sin` on the first `rot` dimensions of `x`
    /// (`[batch, heads, len, head_dim]`).
    pub(crate) fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let hd = x.dims()[3];
        let (r, pass) = if self.rot < hd {
            (
                x.clone().narrow(3, 0, self.rot),
                Some(x.narrow(3, self.rot, hd - self.rot)),
            )
        } else {
            (x, None)
        };
        let half = self.rot / 2;
        let rotated = Tensor::cat(
            vec![
                r.clone().narrow(3, half, half).neg(),
                r.clone().narrow(3, 0, half),
            ],
            3,
        );
        let r = r * self.cos.clone() + rotated * self.sin.clone();
        match pass {
            Some(p) => Tensor::cat(vec![r, p], 3),
            None => r,
        }
    }
}

/// Key/value heads repeated for grouped-query attention: `[batch, kv, len, hd]` to
/// `[batch, heads, len, hd]`, query head `i` reading key/value head `i / (heads / kv)`.
pub(crate) fn repeat_kv<B: Backend>(t: Tensor<B, 4>, heads: usize) -> Tensor<B, 4> {
    let [batch, kv, len, hd] = t.dims();
    let group = heads / kv;
    if group == 1 {
        return t;
    }
    t.reshape([batch, kv, 1, len, hd])
        .expand([batch, kv, group, len, hd])
        .reshape([batch, heads, len, hd])
}

/// `softmax(q·kᵀ / √hd + bias, masked) · v` for `q` `[batch, heads, sq, hd]`, `k`/`v`
/// `[batch, heads, sk, hd]`, `mask` true where a query must not see a key, and an optional
/// additive `bias` broadcast over the scores (ALiBi). Returns `[batch·sq, heads·hd]`.
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 2> {
    let [batch, heads, sq, hd] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3));
    let scale = (hd as f64).sqrt();
    // As Hugging Face: masked scores take the dtype's minimum, not -inf.
    let probs = match bias {
        None => crate::kernels::scaled_masked_softmax(scores, scale, mask),
        Some(bias) => {
            crate::kernels::softmax_last((scores / scale + bias).mask_fill(mask.clone(), f32::MIN))
        }
    };
    probs
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([batch * sq, heads * hd])
}

/// Keys and values of one layer: `[batch, kv_heads, positions, head_dim]` each.
pub(crate) type Kv<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// `[batch, 1, seq, past + seq]`: true where query `i` (absolute `past + i`) must not see
/// key `j`: a later one (`j > past + i`), or one of row `r`'s `pad[r]` left-padding positions
/// (batched decoding; `pad` empty: no padding).
pub(crate) fn cached_mask<B: Backend>(
    batch: usize,
    past: usize,
    seq: usize,
    pad: &[usize],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let total = past + seq;
    let row = |p: usize| (0..seq).flat_map(move |i| (0..total).map(move |j| j > past + i || j < p));
    if pad.is_empty() {
        let blocked: Vec<bool> = row(0).collect();
        return Tensor::<B, 4, Bool>::from_data(
            TensorData::new(blocked, [1, 1, seq, total]),
            device,
        )
        .expand([batch, 1, seq, total]);
    }
    let blocked: Vec<bool> = pad.iter().flat_map(|&p| row(p)).collect();
    Tensor::<B, 4, Bool>::from_data(TensorData::new(blocked, [batch, 1, seq, total]), device)
}

/// `(k, v)` after the cached `past` ones, along the positions.
pub(crate) fn extend_kv<B: Backend>(
    past: Option<Kv<B>>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Kv<B> {
    match past {
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
        None => (k, v),
    }
}

/// `w` (`[rows, d]`) with `n` rows: cut, or grown with rows equal to the mean of the existing
/// ones, as Hugging Face's `resize_token_embeddings(mean_resizing=True)` starts them. The
/// result is a new trainable parameter value ([`fresh`]).
pub(crate) fn resize_rows<B: Backend>(w: Tensor<B, 2>, n: usize) -> Tensor<B, 2> {
    let [old, d] = w.dims();
    if n <= old {
        return fresh(w.narrow(0, 0, n));
    }
    let extra = w.clone().mean_dim(0).expand([n - old, d]);
    fresh(Tensor::cat(vec![w, extra], 0))
}

/// `b` (`[n]`) with `n` entries: cut, or grown with the mean of the existing ones; a new
/// trainable parameter value ([`fresh`]).
pub(crate) fn resize_bias<B: Backend>(b: Tensor<B, 1>, n: usize) -> Tensor<B, 1> {
    let [old] = b.dims();
    if n <= old {
        return fresh(b.narrow(0, 0, n));
    }
    let extra = b.clone().mean().expand([n - old]);
    fresh(Tensor::cat(vec![b, extra], 0))
}

/// `t` as a parameter value of its own: a leaf that requires gradients (under autodiff).
/// A value computed from a parameter (a resized embedding) is otherwise an intermediate of
/// the graph: burn then keeps no gradient for it, and training never updates it.
pub(crate) fn fresh<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.detach().require_grad()
}

/// Runs `layers` over `x` (`[batch·seq, d]`, `seq` new positions). With a `cache`, each layer
/// reads its keys and values from it (taken out and put back extended) and the cache then
/// counts the new positions; without, every layer starts from none. Returns every position's
/// output.
pub(crate) fn run_layers<B: Backend, L>(
    layers: &[L],
    x: Tensor<B, 2>,
    seq: usize,
    cache: Option<&mut crate::gpt2::KvCache<B>>,
    step: impl Fn(&L, Tensor<B, 2>, Option<Kv<B>>) -> (Tensor<B, 2>, Kv<B>),
) -> Tensor<B, 2> {
    let Some(cache) = cache else {
        return layers.iter().fold(x, |x, layer| step(layer, x, None).0);
    };
    let mut x = x;
    for (layer, slot) in layers.iter().zip(cache.layers.iter_mut()) {
        let (out, kv) = step(layer, x, slot.take());
        *slot = Some(kv);
        x = out;
    }
    cache.len += seq;
    x
}

/// The last position of `[batch, seq, d]` hidden states, `[batch, d]`.
pub(crate) fn last_position<B: Backend>(h: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, seq, d] = h.dims();
    h.narrow(1, seq - 1, 1).reshape([batch, d])
}

/// An architecture's `config.json`: what serde reads of it, the whole JSON kept beside (written
/// back on save), and the checks serde cannot make.
pub(crate) trait HfConfig: serde::de::DeserializeOwned {
    /// Keeps the whole `config.json`.
    fn set_raw(&mut self, raw: serde_json::Value);
    /// Checks that the sizes fit together; says why not.
    fn check(&self) -> std::result::Result<(), String>;
}

/// Reads and checks the `config.json` at `path`.
pub(crate) fn read_config<C: HfConfig>(path: &std::path::Path) -> Result<C> {
    let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
        what: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    let json = serde_json::from_str(&text).map_err(|e| crate::Error::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse_config(json, path)
}

/// Checks a `config.json` given as JSON (`model.init`'s named shapes).
pub(crate) fn config_from_value<C: HfConfig>(value: &serde_json::Value) -> Result<C> {
    parse_config(value.clone(), std::path::Path::new("config.json"))
}

fn parse_config<C: HfConfig>(json: serde_json::Value, path: &std::path::Path) -> Result<C> {
    let bad = |message: String| crate::Error::Config {
        path: path.to_owned(),
        message,
    };
    let mut config: C = serde_json::from_value(json.clone()).map_err(|e| bad(e.to_string()))?;
    config.set_raw(json);
    config.check().map_err(bad)?;
    Ok(config)
}
