//! LoRA adapters on GPT-2's attention projections: `y = W x + (α / r) · B A dropout(x)`, with
//! the base weights frozen and only `A` (`[in, r]`, Kaiming-uniform as peft) and `B`
//! (`[r, out]`, zeros, so training starts from the base model) trained. Merging folds the
//! adapters into the base weights for export.

use burn::module::{Initializer, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::prelude::*;

use crate::gpt2::Gpt2;

/// Which projections get adapters, and their size.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// Scale numerator α (the update is scaled by α / r).
    #[config(default = 8.0)]
    pub alpha: f64,
    /// Dropout on the adapter's input.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Adapt `attn.c_attn` (queries, keys, values).
    #[config(default = true)]
    pub c_attn: bool,
    /// Adapt `attn.c_proj` (the attention output).
    #[config(default = false)]
    pub c_proj: bool,
    /// The projections to adapt in other architectures (`q_proj`, `v_proj`,
    /// `query_key_value`, …); empty: the architecture's default.
    #[config(default = "Vec::new()")]
    pub targets: Vec<String>,
}

/// One adapter.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// Down-projection `[in, r]`.
    pub a: Param<Tensor<B, 2>>,
    /// Up-projection `[r, out]`.
    pub b: Param<Tensor<B, 2>>,
    /// α / r.
    pub scale: f64,
    /// Input dropout.
    pub dropout: Dropout,
}

impl<B: Backend> Lora<B> {
    pub(crate) fn new(base: &Linear<B>, config: &LoraConfig, device: &B::Device) -> Self {
        let [d_in, d_out] = base.weight.dims();
        let r = config.rank;
        // peft's init of A: kaiming_uniform(a = √5), i.e. U(±1/√fan_in) with fan_in = d_in.
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([d_in, r], device),
            b: Initializer::Zeros.init([r, d_out], device),
            scale: config.alpha / r as f64,
            dropout: DropoutConfig::new(config.dropout).init(),
        }
    }

    /// The adapter's contribution for `x` (`[n, in]` → `[n, out]`).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.dropout.forward(x);
        x.matmul(self.a.val()).matmul(self.b.val()) * self.scale
    }

    /// Whether the forward pass draws random numbers (dropout above 0 while training).
    #[must_use]
    pub fn draws(&self) -> bool {
        self.dropout.prob > 0.0
    }

    /// `scale · A B`, the update to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()) * self.scale
    }
}

/// `linear(x)`, plus its adapter's contribution when it has one.
pub(crate) fn project<B: Backend>(
    linear: &Linear<B>,
    lora: Option<&Lora<B>>,
    x: Tensor<B, 2>,
) -> Tensor<B, 2> {
    match lora {
        Some(l) => linear.forward(x.clone()) + l.forward(x),
        None => linear.forward(x),
    }
}

/// The projections `config` adapts among those an architecture offers (`offered`), or its
/// `default` ones when `config.targets` is empty.
///
/// # Errors
/// A rank of 0, or a target the architecture does not have (naming those it has).
pub(crate) fn targets<'a>(
    config: &'a LoraConfig,
    arch: &str,
    offered: &[&str],
    default: &'a [&'a str],
) -> Result<Vec<&'a str>, String> {
    if config.rank == 0 {
        return Err("lora rank must be at least 1".into());
    }
    let chosen: Vec<&str> = if config.targets.is_empty() {
        default.to_vec()
    } else {
        config.targets.iter().map(String::as_str).collect()
    };
    if let Some(bad) = chosen.iter().find(|t| !offered.contains(t)) {
        return Err(format!(
            "lora_targets: {bad:?} is not a projection of {arch}: write one of {}",
            offered.join(", ")
        ));
    }
    Ok(chosen)
}

/// Folds `lora` into `linear`'s weight.
pub(crate) fn merge<B: Backend>(linear: &mut Linear<B>, lora: Option<Lora<B>>) {
    if let Some(l) = lora {
        let delta = l.delta();
        linear.weight = linear.weight.clone().map(|w: Tensor<B, 2>| w + delta);
    }
}

impl<B: Backend> Gpt2<B> {
    /// Freezes every base weight and adds fresh adapters where `config` says: afterwards only
    /// the adapters train.
    ///
    /// # Errors
    /// A rank of 0.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self, String> {
        if !config.targets.is_empty() {
            // Named targets must be GPT-2's (its c_attn/c_proj flags say which).
            targets(config, "gpt2", &["c_attn", "c_proj"], &[])?;
        }
        if config.rank == 0 {
            return Err("lora rank must be at least 1".into());
        }
        let mut model = self.no_grad();
        for block in &mut model.blocks {
            let attn = &mut block.attn;
            if config.c_attn {
                attn.lora_attn = Some(Lora::new(&attn.c_attn, config, device));
            }
            if config.c_proj {
                attn.lora_proj = Some(Lora::new(&attn.c_proj, config, device));
            }
        }
        Ok(model)
    }

    /// The adapters attached.
    pub fn loras(&self) -> impl Iterator<Item = &Lora<B>> {
        self.blocks
            .iter()
            .flat_map(|b| [&b.attn.lora_attn, &b.attn.lora_proj])
            .flatten()
    }

    /// Whether any adapter is attached.
    pub fn has_lora(&self) -> bool {
        self.loras().next().is_some()
    }

    /// Folds the adapters into the base weights (`W + (α/r)·A B`) and removes them: the model
    /// computes the same function as a plain GPT-2.
    pub fn merge_lora(mut self) -> Self {
        for block in &mut self.blocks {
            let attn = &mut block.attn;
            merge(&mut attn.c_attn, attn.lora_attn.take());
            merge(&mut attn.c_proj, attn.lora_proj.take());
        }
        self
    }
}
