//! The research objectives' losses, written to match PyTorch exactly.
//!
//! burn's `CrossEntropyLoss` has no ignore index and no KL divergence, so both are here:
//! [`masked_cross_entropy`] is `F.cross_entropy(…, ignore_index=-100)` (mean over the targets
//! that are not ignored) and [`internalization`] is the prompt-internalization objective with
//! `F.kl_div(log_softmax(student / T), softmax(teacher / T), reduction="batchmean")`.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// The target value that is not trained (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Mean cross-entropy of `logits` against `targets` over the targets that are not
/// [`IGNORE`]; 0 when every target is ignored.
///
/// # Shapes
/// - `logits`: `[n, vocab]`
/// - `targets`: `[n]`
/// - output: `[1]`
pub fn masked_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let keep = targets.clone().not_equal_elem(IGNORE);
    let safe = targets.mask_fill(keep.clone().bool_not(), 0);
    let picked = log_softmax(logits, 1)
        .gather(1, safe.reshape([n, 1]))
        .reshape([n]);
    let weight = keep.float();
    let count = weight.clone().sum().clamp_min(1.0);
    -(picked * weight).sum() / count
}

/// `KL(p ‖ q)` summed over the vocabulary and averaged over rows (`reduction="batchmean"`),
/// from log-probabilities; rows where `p` underflows to 0 contribute 0, as PyTorch's.
///
/// # Shapes
/// - `log_p`, `log_q`: `[batch, vocab]`
/// - output: `[1]`
pub fn kl_batchmean<B: Backend>(log_p: Tensor<B, 2>, log_q: Tensor<B, 2>) -> Tensor<B, 1> {
    let [batch, _] = log_p.dims();
    let p = log_p.clone().exp();
    (p * (log_p - log_q)).sum() / batch as f64
}

/// The prompt-internalization loss:
/// `α·CE(student, labels) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`, batch-mean.
/// With `teacher` `None` (α = 1) only the cross-entropy is computed.
///
/// # Shapes
/// - `student`: logits at each row's last attended token, `[batch, vocab]`
/// - `teacher`: logits at the prompt's last token, `[batch, vocab]`
/// - `labels`: label token ids, `[batch]`
/// - output: `[1]`
pub fn internalization<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Option<Tensor<B, 2>>,
    labels: Tensor<B, 1, Int>,
    alpha: f64,
    temperature: f64,
) -> Tensor<B, 1> {
    let ce = masked_cross_entropy(student.clone(), labels);
    let Some(teacher) = teacher.filter(|_| alpha < 1.0) else {
        return ce;
    };
    let log_p = log_softmax(teacher / temperature, 1);
    let log_q = log_softmax(student / temperature, 1);
    let kl = kl_batchmean(log_p, log_q);
    ce * alpha + kl * ((1.0 - alpha) * temperature * temperature)
}
