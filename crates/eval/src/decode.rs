//! Decoding: sampling with temperature and top-k (temperature → 0 is greedy), stopping at
//! EOS, with or without a KV cache; and product-of-experts decoding, where each token is drawn
//! from the sum of several contexts' logits (each expert keeping its own context).
//!
//! Rule for long inputs: the prompt must fit the model's context (an error otherwise);
//! generation stops early, reporting [`Stop::ContextFull`], when the context is full.

use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_data::rng::SplitMix64;
use kiln_model::CausalLm;
use kiln_model::gpt2::KvCache;

use crate::error::{Error, Result};
use crate::score::check_input;

/// How to decode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Softmax temperature; at or below 1e-5 decoding is greedy (argmax).
    pub temperature: f64,
    /// Sample only among the `k` most probable tokens.
    pub top_k: Option<usize>,
    /// Seed of the sampler.
    pub seed: u64,
    /// Stop after generating this token (EOS).
    pub stop: Option<u32>,
    /// Reuse keys and values of earlier positions instead of re-reading the context.
    pub kv_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 50,
            temperature: 1.0,
            top_k: None,
            seed: 0,
            stop: None,
            kv_cache: true,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// The stop token was generated (it is the last of the tokens).
    Eos,
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The model's context is full.
    ContextFull,
}

/// Generated tokens and why generation ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generated {
    /// The new tokens (not the prompt).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop: Stop,
}

/// The fewest new tokens for which greedy decoding goes through the head's int8 copy: the
/// model builds it on first use (one pass over the head), which costs about as much as the
/// reads it saves on a dozen tokens of DistilGPT-2 (measured when it was added: 69 ms to
/// build, 5.7 ms saved per token); later calls reuse it.
const INDEX_PAYS_FROM: usize = 16;

/// Picks the next token from `logits` (summed over experts, not yet divided by the
/// temperature).
fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut SplitMix64) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |acc, (i, &v)| {
                if v > acc.1 { (i, v) } else { acc }
            })
            .0 as u32
    };
    if opts.temperature <= 1e-5 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if let Some(k) = opts.top_k.filter(|&k| k < logits.len()) {
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        order.truncate(k.max(1));
    }
    let t = opts.temperature;
    let max = order
        .iter()
        .map(|&i| f64::from(logits[i]) / t)
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| (f64::from(logits[i]) / t - max).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // 53 random bits → [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut acc = 0.0;
    for (w, &i) in weights.iter().zip(&order) {
        acc += w;
        if u < acc {
            return i as u32;
        }
    }
    order.last().map_or_else(argmax, |&i| i as u32)
}

/// One expert's reading state.
struct Reader<'a, B: Backend, M> {
    model: &'a M,
    context: Vec<u32>,
    cache: Option<KvCache<B>>,
}

impl<B: Backend, M: CausalLm<B>> Reader<'_, B, M> {
    /// Logits after the whole context (first call) or after the last token appended.
    fn logits(&mut self, only_last: bool) -> Vec<f32> {
        let device = self.model.device();
        let read: &[u32] = match (&self.cache, only_last) {
            (Some(_), true) => &self.context[self.context.len() - 1..],
            _ => &self.context,
        };
        let ids: Vec<i64> = read.iter().map(|&t| i64::from(t)).collect();
        let n = ids.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
        let logits = match &mut self.cache {
            Some(cache) => self.model.forward_cached(ids, cache),
            None => self.model.logits_at(ids, None, &[n - 1]),
        };
        kiln_model::host::read_f32(logits)
    }

    /// The greedy next token through the model's int8 head copy ([`CausalLm::greedy_cached`]),
    /// reading as [`Self::logits`] with the cache does; `None`, having read nothing, where the
    /// model cannot.
    fn greedy(&mut self, only_last: bool) -> Option<u32> {
        let cache = self.cache.as_mut()?;
        let read: &[u32] = if only_last {
            &self.context[self.context.len() - 1..]
        } else {
            &self.context
        };
        let ids: Vec<i64> = read.iter().map(|&t| i64::from(t)).collect();
        let n = ids.len();
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &self.model.device());
        self.model.greedy_cached(ids, cache)
    }
}

/// Generates from `prompt`.
///
/// # Errors
/// An empty prompt, one longer than the context, or an id outside the vocabulary.
pub fn generate<B: Backend, M: CausalLm<B> + Sync>(
    model: &M,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Generated> {
    generate_poe(model, &[prompt.to_vec()], opts)
}

/// Product-of-experts decoding: every token is drawn from `Σ_experts logits / T` and appended
/// to every expert's context. With one context this is plain generation.
///
/// # Errors
/// No contexts, or a context that [`generate`] would refuse.
pub fn generate_poe<B: Backend, M: CausalLm<B> + Sync>(
    model: &M,
    contexts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Generated> {
    in_pool(|| poe_in_pool(model, contexts, opts))
}

/// Runs `f` on one of rayon's threads. A decoding step is some two dozen parallel kernels
/// (a few hundred microseconds each); called from outside the pool, each one hands its work
/// to the pool and puts the caller to sleep until it is done, and those wake-ups took about
/// 7% of a DistilGPT-2 token (`kiln bench generate`). From a thread of the pool, the caller
/// works on each kernel itself beside the others.
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// [`generate_poe`] on the thread it is called on.
fn poe_in_pool<B: Backend, M: CausalLm<B>>(
    model: &M,
    contexts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Generated> {
    if contexts.is_empty() {
        return Err(Error::Invalid("no context to generate from".into()));
    }
    check_all(model, contexts, opts)?;
    let n_positions = model.max_positions().unwrap_or(usize::MAX);
    let vocab = model.vocab_size();
    let mut rng = SplitMix64::new(opts.seed);
    let mut readers: Vec<Reader<'_, B, M>> = contexts
        .iter()
        .map(|c| Reader {
            model,
            context: c.clone(),
            cache: opts.kv_cache.then(|| model.new_cache()),
        })
        .collect();
    let mut out = Vec::new();
    let mut first = true;
    // Greedy decoding of one context takes the argmax through the head's int8 copy (built on
    // first use and kept with the model): the same token as the scan of every logit, with
    // fewer bytes read.
    let greedy =
        opts.temperature <= 1e-5 && readers.len() == 1 && opts.max_new_tokens >= INDEX_PAYS_FROM;
    loop {
        if out.len() >= opts.max_new_tokens {
            return Ok(Generated {
                tokens: out,
                stop: Stop::MaxTokens,
            });
        }
        let fast = if greedy {
            readers[0].greedy(!first)
        } else {
            None
        };
        let next = match fast {
            Some(next) => next,
            None => pick(&summed_logits(&mut readers, !first, vocab), opts, &mut rng),
        };
        first = false;
        out.push(next);
        if opts.stop == Some(next) {
            return Ok(Generated {
                tokens: out,
                stop: Stop::Eos,
            });
        }
        if readers.iter().any(|r| r.context.len() >= n_positions) {
            return Ok(Generated {
                tokens: out,
                stop: Stop::ContextFull,
            });
        }
        for r in &mut readers {
            r.context.push(next);
        }
    }
}

/// The next position's logits summed over the experts' contexts (after the whole context
/// the first time, `only_last` afterwards).
fn summed_logits<B: Backend, M: CausalLm<B>>(
    readers: &mut [Reader<'_, B, M>],
    only_last: bool,
    vocab: usize,
) -> Vec<f32> {
    let mut sum = vec![0f32; vocab];
    for r in readers {
        for (s, l) in sum.iter_mut().zip(r.logits(only_last)) {
            *s += l;
        }
    }
    sum
}

/// Checks every context against the model and `opts.top_k` against its vocabulary.
fn check_all<B: Backend, M: CausalLm<B>>(
    model: &M,
    contexts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<()> {
    let n_positions = model.max_positions().unwrap_or(usize::MAX);
    let vocab = model.vocab_size();
    for c in contexts {
        check_input(c, n_positions, vocab)?;
    }
    if let Some(k) = opts.top_k
        && (k == 0 || k > vocab)
    {
        return Err(Error::Invalid(format!(
            "top-k {k} must be between 1 and the vocabulary size ({vocab})"
        )));
    }
    Ok(())
}

/// Generates from each of `prompts` at once: one left-padded batch read through one KV cache
/// ([`KvCache::left_padded`]), each row decoded as [`generate`] decodes it alone (its own
/// sampler seeded with `opts.seed`, its own stop), equal to it up to the last bits of the
/// logits. Rows that have stopped ride along until every row has; their tokens are dropped.
///
/// Without the KV cache, or when the longest prompt and `max_new_tokens` would overrun the
/// model's context (a shorter row would stop early where alone it would not), the prompts
/// are generated one at a time.
///
/// # Errors
/// A prompt or option that [`generate`] would refuse.
pub fn generate_batch<B: Backend, M: CausalLm<B> + Sync>(
    model: &M,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Generated>> {
    in_pool(|| batch_in_pool(model, prompts, opts))
}

/// [`generate_batch`] on the thread it is called on.
fn batch_in_pool<B: Backend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Generated>> {
    check_all(model, prompts, opts)?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let n_positions = model.max_positions().unwrap_or(usize::MAX);
    if prompts.len() < 2 || !opts.kv_cache || longest + opts.max_new_tokens > n_positions {
        return prompts
            .iter()
            .map(|p| poe_in_pool(model, std::slice::from_ref(p), opts))
            .collect();
    }
    let (batch, vocab, device) = (prompts.len(), model.vocab_size(), model.device());
    let pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    // Padding reads token 0; no query ever sees its keys.
    let ids: Vec<i64> = prompts
        .iter()
        .flat_map(|p| {
            std::iter::repeat_n(0, longest - p.len()).chain(p.iter().map(|&t| i64::from(t)))
        })
        .collect();
    let mut cache = model.new_cache().left_padded(pad);
    let read = |ids: Vec<i64>, n: usize, cache: &mut KvCache<B>| {
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, n]), &device);
        kiln_model::host::read_f32(model.forward_cached(ids, cache))
    };
    let mut logits = read(ids, longest, &mut cache);
    let mut rngs = vec![SplitMix64::new(opts.seed); batch];
    let mut outs: Vec<Option<Generated>> = vec![None; batch];
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); batch];
    loop {
        for r in 0..batch {
            if outs[r].is_some() {
                continue;
            }
            if tokens[r].len() >= opts.max_new_tokens {
                outs[r] = Some(Generated {
                    tokens: std::mem::take(&mut tokens[r]),
                    stop: Stop::MaxTokens,
                });
                continue;
            }
            let next = pick(&logits[r * vocab..(r + 1) * vocab], opts, &mut rngs[r]);
            tokens[r].push(next);
            // As `generate`: the stop token first, then the count (checked here rather than
            // at the next step's top, saving the batch a step no row needs).
            let stop = if opts.stop == Some(next) {
                Some(Stop::Eos)
            } else {
                (tokens[r].len() >= opts.max_new_tokens).then_some(Stop::MaxTokens)
            };
            if let Some(stop) = stop {
                outs[r] = Some(Generated {
                    tokens: std::mem::take(&mut tokens[r]),
                    stop,
                });
            }
        }
        if outs.iter().all(Option::is_some) {
            return Ok(outs.into_iter().flatten().collect());
        }
        let last: Vec<i64> = tokens
            .iter()
            .map(|t| t.last().map_or(0, |&t| i64::from(t)))
            .collect();
        logits = read(last, 1, &mut cache);
    }
}
