//! Scoring with a language model: next-token distributions and top-k tables, the negative
//! log-likelihood of a sequence and of a continuation given a prefix, per-token label traces,
//! and the internalization gap between a teacher (text + prompt) and a student (text).
//!
//! All functions take token ids; [`crate::Lm`] adds the tokenizer and the research code's
//! conventions (BOS prefixed, continuations joined with a space).
//!
//! Softmaxes over the vocabulary are taken on the host in f64
//! ([`kiln_model::kernels::softmax_f64`]) from the model's logits, so that the tail of a
//! peaked distribution is not rounded away (an f32 sum over 50,257 ids loses ~1e-4 of it).

use burn::prelude::*;
use burn::tensor::TensorData;
use kiln_model::CausalLm;
use kiln_model::kernels::{log_softmax_f64, softmax_f64};

use crate::error::{Error, Result};

fn ids_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// Checks that `ids` can be read by a model with `n_positions` positions and `vocab` tokens.
///
/// # Errors
/// Empty input, input longer than the context, an id outside the vocabulary.
pub fn check_input(ids: &[u32], n_positions: usize, vocab: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::Invalid(
            "the text is empty (no tokens to read)".into(),
        ));
    }
    if ids.len() > n_positions {
        return Err(Error::Invalid(format!(
            "the text is {} tokens, longer than the model's context of {n_positions}; shorten it (kiln does not truncate silently)",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "token id {bad} is outside the model's vocabulary ({vocab})"
        )));
    }
    Ok(())
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    kiln_model::host::read_f32(t)
}

/// Log-probabilities of every position's next token: `[len, vocab]` as rows.
pub fn log_probs<B: Backend, M: CausalLm<B>>(model: &M, ids: &[u32]) -> Vec<Vec<f32>> {
    let device = model.device();
    let logits = model.forward(ids_tensor::<B>(ids, &device), None);
    let vocab = logits.dims()[2];
    let flat = log_softmax_f64(&to_vec(logits), vocab);
    flat.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// The next-token distribution after `ids`.
pub fn next_token_probs<B: Backend, M: CausalLm<B>>(model: &M, ids: &[u32]) -> Vec<f32> {
    let device = model.device();
    let logits = model.logits_at(ids_tensor::<B>(ids, &device), None, &[ids.len() - 1]);
    let vocab = logits.dims()[1];
    softmax_f64(&to_vec(logits), vocab)
}

/// The `k` most probable entries of `probs`, most probable first (ties by lower id).
///
/// # Errors
/// `k` of 0 or larger than the vocabulary.
pub fn top_k(probs: &[f32], k: usize) -> Result<Vec<(u32, f32)>> {
    if k == 0 || k > probs.len() {
        return Err(Error::Invalid(format!(
            "k = {k} must be between 1 and the vocabulary size ({})",
            probs.len()
        )));
    }
    let mut order: Vec<u32> = (0..probs.len() as u32).collect();
    order.sort_by(|&a, &b| {
        probs[b as usize]
            .total_cmp(&probs[a as usize])
            .then(a.cmp(&b))
    });
    Ok(order
        .into_iter()
        .take(k)
        .map(|i| (i, probs[i as usize]))
        .collect())
}

/// `−Σ log p(ids[i] | ids[..i])` over `i ≥ from` (`from ≥ 1`: the first token is context).
pub fn nll_from<B: Backend, M: CausalLm<B>>(model: &M, ids: &[u32], from: usize) -> f64 {
    let rows = log_probs(model, ids);
    (from.max(1)..ids.len())
        .map(|i| -f64::from(rows[i - 1][ids[i] as usize]))
        .sum()
}

/// One position of a label trace.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TracePoint {
    /// Position in the text's tokens.
    pub position: usize,
    /// The token read at this position.
    pub token: u32,
    /// p(positive label) / (p(positive) + p(negative)) for the next token.
    pub positive: f32,
    /// p(negative label) / (p(positive) + p(negative)).
    pub negative: f32,
    /// The most probable next token.
    pub top_token: u32,
    /// Its probability.
    pub top_prob: f32,
}

/// For every position of `ids`: the next-token softmax restricted to the two label tokens
/// (`negative`, `positive`), and the most probable next token.
pub fn label_trace<B: Backend, M: CausalLm<B>>(
    model: &M,
    ids: &[u32],
    negative: u32,
    positive: u32,
) -> Vec<TracePoint> {
    log_probs(model, ids)
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (ln, lp) = (row[negative as usize], row[positive as usize]);
            let m = ln.max(lp);
            let (en, ep) = ((ln - m).exp(), (lp - m).exp());
            let (top, top_lp) =
                row.iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |acc, (j, &v)| {
                        if v > acc.1 { (j, v) } else { acc }
                    });
            TracePoint {
                position: i,
                token: ids[i],
                positive: ep / (en + ep),
                negative: en / (en + ep),
                top_token: top as u32,
                top_prob: f64::from(top_lp).exp() as f32,
            }
        })
        .collect()
}

/// One step of an iterative-generation trace: after the first `position + 1` tokens, the
/// greedy next token and the token the text actually has next.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NextStep {
    /// Index of the last token of the prefix.
    pub position: usize,
    /// That token.
    pub token: u32,
    /// The most probable next token (what greedy generation would write).
    pub greedy: u32,
    /// Its probability.
    pub greedy_prob: f32,
    /// The text's next token (none after the last).
    pub next: Option<u32>,
    /// The probability of the text's next token.
    pub next_prob: Option<f32>,
}

/// At every prefix length of `ids`, the greedy next token (one causal forward pass: position
/// `i`'s distribution is the model's given `ids[..=i]`), next to the text's own next token.
pub fn iterative<B: Backend, M: CausalLm<B>>(model: &M, ids: &[u32]) -> Vec<NextStep> {
    log_probs(model, ids)
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (greedy, lp) =
                row.iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |acc, (j, &v)| {
                        if v > acc.1 { (j, v) } else { acc }
                    });
            let next = ids.get(i + 1).copied();
            NextStep {
                position: i,
                token: ids[i],
                greedy: greedy as u32,
                greedy_prob: lp.exp(),
                next,
                next_prob: next.and_then(|n| row.get(n as usize)).map(|v| v.exp()),
            }
        })
        .collect()
}

/// How far a student (text alone) is from its teacher (text + prompt) at the last position.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Gap {
    /// max over the vocabulary of |p_teacher − p_student|.
    pub max: f64,
    /// mean over the vocabulary.
    pub mean: f64,
    /// sum over the vocabulary (twice the total variation distance).
    pub sum: f64,
}

/// The internalization gap for one text: the teacher reads `ids` + `prompt`, the student
/// reads `ids`; both distributions are taken at their last position.
pub fn internalization_gap<B: Backend, S: CausalLm<B>, T: CausalLm<B>>(
    student: &S,
    teacher: &T,
    ids: &[u32],
    prompt: &[u32],
) -> Gap {
    let s = next_token_probs(student, ids);
    let mut with_prompt = ids.to_vec();
    with_prompt.extend_from_slice(prompt);
    let t = next_token_probs(teacher, &with_prompt);
    let diffs: Vec<f64> = s
        .iter()
        .zip(&t)
        .map(|(a, b)| f64::from((a - b).abs()))
        .collect();
    let sum: f64 = diffs.iter().sum();
    Gap {
        max: diffs.iter().copied().fold(0.0, f64::max),
        mean: sum / diffs.len().max(1) as f64,
        sum,
    }
}
