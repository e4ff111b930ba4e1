//! One causal-LM interface for every architecture ([`CausalLm`]), and [`Model`], which holds
//! any of them, loaded by `config.json`'s `model_type` ([`load`]). Evaluation and decoding use
//! only this interface.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::bloom::{self, Bloom};
use crate::error::{Error, Result};
use crate::gpt2::{Gpt2, KvCache};
use crate::llama::{self, Llama};
use crate::phi::{self, Phi};

/// The `model_type`s kiln loads.
pub const MODEL_TYPES: &[&str] = &["gpt2", "bloom", "phi", "llama", "qwen2"];

/// What evaluation and decoding need of a causal language model.
pub trait CausalLm<B: Backend> {
    /// The final hidden states, `[batch, seq, d]`; `attention_mask` `[batch, seq]` is 0 for
    /// padding.
    fn hidden(&self, input_ids: Tensor<B, 2, Int>, mask: Option<Tensor<B, 2, Int>>)
    -> Tensor<B, 3>;

    /// Hidden states `[n, d]` to logits `[n, vocab]`.
    fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2>;

    /// Reads `input_ids` after the positions in `cache` (left-padded as it says) and returns the logits of
    /// the last new position, `[batch, vocab]`.
    fn forward_cached(&self, input_ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 2>;

    /// Greedy decoding's next token after reading `input_ids` as [`Self::forward_cached`]
    /// does, without computing every logit (through the model's int8 head copy, built on
    /// first use and kept while the head is unchanged): the argmax of `forward_cached`'s
    /// logits, bit for bit. `None`, having read nothing, where the model cannot (it can: GPT-2
    /// on burn-flex, batch 1).
    fn greedy_cached(&self, input_ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Option<u32>;

    /// An empty cache for [`Self::forward_cached`].
    fn new_cache(&self) -> KvCache<B>;

    /// The vocabulary size.
    fn vocab_size(&self) -> usize;

    /// The longest sequence the model reads (`None`: no learned limit, as BLOOM's ALiBi).
    fn max_positions(&self) -> Option<usize>;

    /// The device its weights are on.
    fn device(&self) -> B::Device;

    /// The LM head as a bias-free `[vocab, d]` matrix, when it is one (then the fused LM
    /// loss can project a chunk of rows at a time); `None` for a head with a bias (Phi).
    fn head_weight(&self) -> Option<Tensor<B, 2>>;

    /// Logits for every position, `[batch, seq, vocab]`.
    fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let h = self.hidden(input_ids, mask);
        let [batch, seq, d] = h.dims();
        let logits = self.project(h.reshape([batch * seq, d]));
        let vocab = logits.dims()[1];
        logits.reshape([batch, seq, vocab])
    }

    /// Logits at one position per row, `[batch, vocab]`, without projecting the others.
    fn logits_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 2, Int>>,
        positions: &[usize],
    ) -> Tensor<B, 2> {
        let device = input_ids.device();
        let h = self.hidden(input_ids, mask);
        let [batch, seq, d] = h.dims();
        let flat: Vec<i64> = positions
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * seq + p) as i64)
            .collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [batch]), &device);
        self.project(h.reshape([batch * seq, d]).select(0, index))
    }
}

/// A model of any architecture kiln knows.
#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    /// GPT-2 and DistilGPT-2.
    Gpt2(Gpt2<B>),
    /// BLOOM.
    Bloom(Bloom<B>),
    /// Phi-1.5 and Phi-2.
    Phi(Phi<B>),
    /// Llama, SmolLM2, TinyLlama and Qwen2.
    Llama(Llama<B>),
}

/// Reads `config.json`'s `model_type` and loads the directory as that architecture.
///
/// # Errors
/// An unreadable `config.json`, a `model_type` kiln does not know (the message lists those it
/// does), or the architecture's own loading errors.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Model<B>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        what: "cannot read",
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let model_type = json
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("gpt2");
    Ok(match model_type {
        "gpt2" => Model::Gpt2(crate::hf::load::<B>(dir, device)?.1),
        "bloom" => Model::Bloom(bloom::load(dir, device)?),
        "phi" => Model::Phi(phi::load(dir, device)?),
        "llama" | "qwen2" => Model::Llama(llama::load(dir, device)?),
        other => {
            return Err(Error::Config {
                path,
                message: format!(
                    "model_type {other:?} is not supported: kiln loads {}",
                    MODEL_TYPES.join(", ")
                ),
            });
        }
    })
}

/// A token id of `dir/config.json` (`bos_token_id`, `eos_token_id`, `pad_token_id`; the
/// first when it is a list, as Llama 3's `eos_token_id`), if present.
#[must_use]
pub fn config_token_id(dir: &Path, key: &str) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let value = json.get(key)?;
    let id = value
        .as_u64()
        .or_else(|| value.as_array()?.first()?.as_u64())?;
    u32::try_from(id).ok()
}

/// Calls `$f` on whichever architecture `$m` holds.
macro_rules! each {
    ($m:expr, $x:ident => $f:expr) => {
        match $m {
            Model::Gpt2($x) => $f,
            Model::Bloom($x) => $f,
            Model::Phi($x) => $f,
            Model::Llama($x) => $f,
        }
    };
}

impl<B: Backend> CausalLm<B> for Model<B> {
    fn hidden(&self, ids: Tensor<B, 2, Int>, mask: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        each!(self, m => CausalLm::hidden(m, ids, mask))
    }
    fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        each!(self, m => CausalLm::project(m, hidden))
    }
    fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 2> {
        each!(self, m => CausalLm::forward_cached(m, ids, cache))
    }
    fn greedy_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Option<u32> {
        each!(self, m => CausalLm::greedy_cached(m, ids, cache))
    }
    fn new_cache(&self) -> KvCache<B> {
        each!(self, m => CausalLm::new_cache(m))
    }
    fn vocab_size(&self) -> usize {
        each!(self, m => CausalLm::vocab_size(m))
    }
    fn max_positions(&self) -> Option<usize> {
        each!(self, m => CausalLm::max_positions(m))
    }
    fn device(&self) -> B::Device {
        each!(self, m => CausalLm::device(m))
    }
    fn head_weight(&self) -> Option<Tensor<B, 2>> {
        each!(self, m => CausalLm::head_weight(m))
    }
}

impl<B: Backend> Model<B> {
    /// The architecture's `model_type` (`llama` also for Qwen2).
    #[must_use]
    pub fn model_type(&self) -> &'static str {
        match self {
            Self::Gpt2(_) => "gpt2",
            Self::Bloom(_) => "bloom",
            Self::Phi(_) => "phi",
            Self::Llama(_) => "llama",
        }
    }

    /// Saves as a Hugging Face directory `transformers` loads (GPT-2's LoRA adapters merged).
    ///
    /// # Errors
    /// The directory or a file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        match self {
            Self::Gpt2(m) => crate::hf::save(m, &m.config, dir),
            Self::Bloom(m) => bloom::save(m, dir),
            Self::Phi(m) => phi::save(m, dir),
            Self::Llama(m) => llama::save(m, dir),
        }
    }

    /// Whether LoRA adapters are attached.
    #[must_use]
    pub fn has_lora(&self) -> bool {
        each!(self, m => m.has_lora())
    }

    /// Whether a training forward pass draws random numbers (LoRA dropout): those draws come
    /// from burn's shared generator, so a caller that wants them reproducible runs the pass
    /// inside [`crate::seeded`].
    #[must_use]
    pub fn draws_in_forward(&self) -> bool {
        each!(self, m => m.loras().any(crate::lora::Lora::draws))
    }

    /// Freezes the base weights and attaches LoRA adapters: GPT-2's `c_attn`/`c_proj`
    /// flags, or `config.targets` (default `query_key_value` for BLOOM, `q_proj` and
    /// `v_proj` for Phi and the Llama family).
    ///
    /// # Errors
    /// A rank of 0, or a target the architecture lacks (naming those it has).
    pub fn with_lora(
        self,
        config: &crate::lora::LoraConfig,
        device: &B::Device,
    ) -> Result<Self, String> {
        Ok(match self {
            Self::Gpt2(m) => Self::Gpt2(m.with_lora(config, device)?),
            Self::Bloom(m) => Self::Bloom(m.with_lora(config, device)?),
            Self::Phi(m) => Self::Phi(m.with_lora(config, device)?),
            Self::Llama(m) => Self::Llama(m.with_lora(config, device)?),
        })
    }

    /// Folds every adapter into the base weights and removes them.
    #[must_use]
    pub fn merge_lora(self) -> Self {
        match self {
            Self::Gpt2(m) => Self::Gpt2(m.merge_lora()),
            Self::Bloom(m) => Self::Bloom(m.merge_lora()),
            Self::Phi(m) => Self::Phi(m.merge_lora()),
            Self::Llama(m) => Self::Llama(m.merge_lora()),
        }
    }

    /// Grows (or cuts) the vocabulary to `n` after tokens were added; new rows are means.
    #[must_use]
    pub fn resize_token_embeddings(self, n: usize) -> Self {
        match self {
            Self::Gpt2(m) => Self::Gpt2(m.resize_token_embeddings(n)),
            Self::Bloom(m) => Self::Bloom(m.resize_token_embeddings(n)),
            Self::Phi(m) => Self::Phi(m.resize_token_embeddings(n)),
            Self::Llama(m) => Self::Llama(m.resize_token_embeddings(n)),
        }
    }
}

/// Greedy decoding through an int8 copy of the head, per architecture: GPT-2's; the others
/// keep the default, `None` (their heads are burn's matrix product, whose last bits the
/// copy's f32 dot products would not reproduce).
trait GreedyHead<B: Backend> {
    fn greedy_head(&self, _ids: Tensor<B, 2, Int>, _cache: &mut KvCache<B>) -> Option<u32> {
        None
    }
}

impl<B: Backend> GreedyHead<B> for Gpt2<B> {
    fn greedy_head(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Option<u32> {
        Gpt2::greedy_cached(self, ids, cache)
    }
}

impl<B: Backend> GreedyHead<B> for Bloom<B> {}
impl<B: Backend> GreedyHead<B> for Phi<B> {}
impl<B: Backend> GreedyHead<B> for Llama<B> {}

/// Each architecture's inherent methods, as the interface.
macro_rules! causal_lm {
    ($($t:ident),*) => {$(
        impl<B: Backend> CausalLm<B> for $t<B> {
            fn hidden(&self, ids: Tensor<B, 2, Int>, mask: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
                $t::hidden(self, ids, mask)
            }
            fn project(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
                $t::project(self, hidden)
            }
            fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 2> {
                $t::forward_cached(self, ids, cache)
            }
            fn greedy_cached(
                &self,
                ids: Tensor<B, 2, Int>,
                cache: &mut KvCache<B>,
            ) -> Option<u32> {
                GreedyHead::greedy_head(self, ids, cache)
            }
            fn new_cache(&self) -> KvCache<B> {
                KvCache::new(self.layer_count())
            }
            fn vocab_size(&self) -> usize {
                $t::vocab_size(self)
            }
            fn max_positions(&self) -> Option<usize> {
                $t::max_positions(self)
            }
            fn device(&self) -> B::Device {
                $t::device(self)
            }
            fn head_weight(&self) -> Option<Tensor<B, 2>> {
                $t::head_weight(self)
            }
        }
    )*};
}

causal_lm!(Gpt2, Bloom, Phi, Llama);
