//! Decoding throughput with and without the KV cache, and of a left-padded batch: greedy
//! generation from a random-weight GPT-2 of a given shape (the weights do not change the
//! work), tokens per second.

use std::time::Instant;

use burn::prelude::*;
use kiln_model::gpt2::Gpt2Config;

use crate::decode::{self, GenerateOptions};

/// Tokens/s generating `new_tokens` after a `prompt_len`-token prompt (the second of two
/// identical runs).
///
/// # Errors
/// When the prompt and the new tokens do not fit the configuration's context.
pub fn generate_tokens_per_s<B: Backend>(
    config: &Gpt2Config,
    prompt_len: usize,
    new_tokens: usize,
    kv_cache: bool,
    device: &B::Device,
) -> crate::Result<f64> {
    if prompt_len + new_tokens > config.n_positions {
        return Err(crate::Error::Invalid(format!(
            "{prompt_len} + {new_tokens} tokens do not fit the context of {}",
            config.n_positions
        )));
    }
    config.check_fits::<B>(Some((1, prompt_len + new_tokens)))?;
    let model =
        kiln_model::seeded::<B, _>(device, 0, || kiln_model::drawn(config.init::<B>(device)));
    let prompt = bench_prompt(prompt_len, 0, config.vocab_size);
    let opts = greedy(new_tokens, kv_cache);
    let (out, seconds) = second_run(|| decode::generate(&model, &prompt, &opts))?;
    Ok(out.tokens.len() as f64 / seconds)
}

/// Greedy decoding of exactly `new_tokens` (no stop token).
fn greedy(new_tokens: usize, kv_cache: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: new_tokens,
        temperature: 0.0,
        top_k: None,
        seed: 0,
        stop: None,
        kv_cache,
    }
}

/// Runs `f` twice and times the second run (seconds), as the peer does: burn initializes
/// parameters lazily, on their first use.
fn second_run<T>(f: impl Fn() -> crate::Result<T>) -> crate::Result<(T, f64)> {
    f()?;
    let started = Instant::now();
    let out = f()?;
    Ok((out, started.elapsed().as_secs_f64()))
}

/// The prompt of row `row` of the decoding benchmarks: `len` ids `((i + row) · 7919) mod
/// vocab` (`benches/peers/hf_generate.py` makes the same).
pub fn bench_prompt(len: usize, row: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| (((i + row) * 7919) % vocab) as u32)
        .collect()
}

/// Tokens/s of [`decode::generate_batch`] generating `new_tokens` for each of `batch` prompts
/// at once; row `r`'s prompt is `prompt_len − r` tokens long ([`bench_prompt`]), so the batch
/// is left-padded. Every row generates exactly `new_tokens` (no stop token).
///
/// # Errors
/// When the prompts and the new tokens do not fit the context, or `batch` exceeds `prompt_len`.
pub fn generate_batch_tokens_per_s<B: Backend>(
    config: &Gpt2Config,
    prompt_len: usize,
    new_tokens: usize,
    batch: usize,
    device: &B::Device,
) -> crate::Result<f64> {
    if batch == 0 || batch > prompt_len || prompt_len + new_tokens > config.n_positions {
        return Err(crate::Error::Invalid(format!(
            "a batch of {batch} prompts of up to {prompt_len} tokens and {new_tokens} new ones does not fit (context {})",
            config.n_positions
        )));
    }
    config.check_fits::<B>(Some((batch, prompt_len + new_tokens)))?;
    let model =
        kiln_model::seeded::<B, _>(device, 0, || kiln_model::drawn(config.init::<B>(device)));
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|r| bench_prompt(prompt_len - r, r, config.vocab_size))
        .collect();
    let opts = greedy(new_tokens, true);
    let (out, seconds) = second_run(|| decode::generate_batch(&model, &prompts, &opts))?;
    let tokens: usize = out.iter().map(|g| g.tokens.len()).sum();
    Ok(tokens as f64 / seconds)
}
