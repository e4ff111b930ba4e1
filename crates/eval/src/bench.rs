//! Decoding throughput with and without the KV cache: greedy generation from a random-weight
//! GPT-2 of a given shape (the weights do not change the work), tokens per second.

use std::time::Instant;

use burn::prelude::*;
use kiln_model::gpt2::Gpt2Config;

use crate::decode::{self, GenerateOptions};

/// Tokens/s generating `new_tokens` after a `prompt_len`-token prompt.
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
    B::seed(device, 0);
    let model = config.init::<B>(device);
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919) % config.vocab_size as u32)
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        temperature: 0.0,
        top_k: None,
        seed: 0,
        stop: None,
        kv_cache,
    };
    let started = Instant::now();
    let out = decode::generate(&model, &prompt, &opts)?;
    Ok(out.tokens.len() as f64 / started.elapsed().as_secs_f64())
}
