//! The research objectives' losses, written to match PyTorch exactly.
//!
//! burn's `CrossEntropyLoss` has no ignore index and no KL divergence, so both are here:
//! [`masked_cross_entropy`] is `F.cross_entropy(…, ignore_index=-100)` (mean over the targets
//! that are not ignored) and [`internalization`] is the prompt-internalization objective with
//! `F.kl_div(log_softmax(student / T), softmax(teacher / T), reduction="batchmean")`, computed
//! in f64 (f32 row sums over the vocabulary and f32 differences of log-probabilities near −15
//! are off by ~1e-4 relative on a peaked teacher).

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use kiln_model::backend::{log_softmax, sum};

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
    let picked = log_softmax(logits)
        .gather(1, safe.reshape([n, 1]))
        .reshape([n]);
    let weight = keep.float().cast(picked.dtype());
    let count = sum(weight.clone()).clamp_min(1.0);
    -sum(picked * weight) / count
}

/// Rows of the LM head per chunk in [`linear_cross_entropy`]: at most about 16M logits
/// (64 MiB, one reused buffer on burn-flex) instead of the `[n, vocab]` tensor, in multiples
/// of 64 rows, the height of gemm's AVX-512 tile: 320 rows of GPT-2's vocabulary. (Chunks of
/// 2M logits, 41 rows, left a third of each tile empty and summed the weight's gradient in
/// 25 passes over its 154 MB.)
fn chunk_rows(vocab: usize) -> usize {
    ((1 << 24) / vocab.max(1) / 64 * 64).clamp(64, 1024)
}

/// What [`linear_cross_entropy_parts`] computes.
#[derive(Debug)]
pub struct LinearCe<B: Backend> {
    /// Mean cross-entropy over the targets that are not ignored, `[1]` (0 when none is).
    pub loss: Tensor<B, 1>,
    /// Its gradient with respect to the kept rows of `hidden`, `[kept, d]`, when asked for.
    pub grad_hidden: Option<Tensor<B, 2>>,
    /// Its gradient with respect to `weight`, `[vocab, d]`, when asked for.
    pub grad_weight: Option<Tensor<B, 2>>,
    /// The rows of `hidden` whose target is not ignored, in order.
    pub kept: Vec<usize>,
}

/// Mean cross-entropy of the logits `hidden · weightᵀ` against `targets` (entries equal to
/// [`IGNORE`] skipped), as [`masked_cross_entropy`] of those logits computes it, and on request
/// its gradients, without ever holding the `[n, vocab]` logits: only the rows with a target
/// are projected, a chunk of rows at a time, and each chunk's logits become its gradient in
/// place ([`kiln_model::kernels::softmax_cross_entropy`]). No autodiff: see
/// [`linear_cross_entropy`].
///
/// # Shapes
/// - `hidden`: `[n, d]`; `weight`: `[vocab, d]` (GPT-2's tied LM head); `targets`: `n`
pub fn linear_cross_entropy_parts<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[i64],
    grad_hidden: bool,
    grad_weight: bool,
) -> LinearCe<B> {
    let device = hidden.device();
    let [n, _] = hidden.dims();
    debug_assert_eq!(targets.len(), n);
    let kept: Vec<usize> = (0..n).filter(|&i| targets[i] != IGNORE).collect();
    let rows = kept.len();
    if rows == 0 {
        return LinearCe {
            loss: Tensor::zeros([1], &device),
            grad_hidden: None,
            grad_weight: None,
            kept,
        };
    }
    let hidden = kept_rows(hidden, &kept);
    let target: Vec<usize> = kept.iter().map(|&i| targets[i] as usize).collect();
    let weights = vec![1.0 / rows as f32; rows];
    let chunk = chunk_rows(weight.dims()[0]);
    let per_row = (&target[..], &weights[..]);
    let grads = (grad_hidden, grad_weight);
    let (loss, grad_hidden, grad_weight) =
        match kiln_model::kernels::linear_cross_entropy(hidden, weight, per_row, chunk, grads) {
            Ok(out) => out,
            Err((hidden, weight)) => chunked(hidden, weight, per_row, chunk, grads),
        };
    LinearCe {
        loss,
        grad_hidden,
        grad_weight,
        kept,
    }
}

/// [`kiln_model::kernels::linear_cross_entropy`] with burn's ops, on any backend: each
/// chunk's logits, hidden gradient and weight-gradient term a tensor of its own.
fn chunked<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    (target, weights): (&[usize], &[f32]),
    chunk: usize,
    (grad_hidden, grad_weight): (bool, bool),
) -> kiln_model::kernels::LinearCeOut<B> {
    let device = hidden.device();
    let rows = target.len();
    let grad = grad_hidden || grad_weight;
    let mut loss: Option<Tensor<B, 1>> = None;
    let mut dh = Vec::new();
    let mut dw: Option<Tensor<B, 2>> = None;
    for start in (0..rows).step_by(chunk) {
        let len = chunk.min(rows - start);
        let h = hidden.clone().narrow(0, start, len);
        let logits = h.clone().matmul(weight.clone().transpose());
        let (part, g) = kiln_model::kernels::softmax_cross_entropy(
            logits,
            &target[start..start + len],
            &weights[start..start + len],
            grad,
        );
        loss = Some(match loss {
            Some(total) => total + part,
            None => part,
        });
        if grad_hidden {
            dh.push(g.clone().matmul(weight.clone()));
        }
        if grad_weight {
            let p = g.transpose().matmul(h);
            dw = Some(match dw {
                Some(total) => total + p,
                None => p,
            });
        }
    }
    (
        loss.unwrap_or_else(|| Tensor::zeros([1], &device)),
        grad_hidden.then(|| Tensor::cat(dh, 0)),
        dw,
    )
}

/// [`linear_cross_entropy_parts`] as a differentiable loss: the gradients are computed in the
/// forward pass (on the inner backend, with no graph over the logits) and handed to `hidden`
/// and `weight` by [`kiln_model::kernels::with_gradients`]. Same value and gradients as
/// [`masked_cross_entropy`] on the full logits, with neither the `[n, vocab]` logits nor
/// their graph.
pub fn linear_cross_entropy<B: AutodiffBackend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    targets: &[i64],
) -> Tensor<B, 1> {
    let parts = linear_cross_entropy_parts::<B::InnerBackend>(
        hidden.clone().inner(),
        weight.clone().inner(),
        targets,
        // `is_require_grad` is true only for leaves: `hidden` comes out of the model, so its
        // gradient is always wanted; `weight` is the embedding, frozen under LoRA.
        true,
        weight.is_require_grad(),
    );
    if parts.kept.is_empty() {
        // Every target ignored: a loss of 0 that still backpropagates (zero gradients), as
        // `masked_cross_entropy`'s does; with no tracked input the backward pass would fail.
        return Tensor::from_inner(parts.loss) + sum(hidden) * 0.0;
    }
    let kept = kept_rows(hidden, &parts.kept);
    kiln_model::kernels::with_gradients(
        parts.loss,
        [(kept, parts.grad_hidden), (weight, parts.grad_weight)],
    )
}

/// The rows `kept` of `t` (all of them without a copy when nothing was dropped).
fn kept_rows<B: Backend>(t: Tensor<B, 2>, kept: &[usize]) -> Tensor<B, 2> {
    if kept.len() == t.dims()[0] {
        return t;
    }
    let index: Vec<i64> = kept.iter().map(|&i| i as i64).collect();
    let device = t.device();
    t.select(
        0,
        Tensor::from_data(TensorData::new(index, [kept.len()]), &device),
    )
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
    sum(p * (log_p - log_q)) / batch as f64
}

/// The prompt-internalization loss:
/// `α·CE(student, labels) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T))`, batch-mean.
/// With `teacher` `None` (α = 1) only the cross-entropy is computed. The logits are cast to f64
/// and the loss computed there (the gradients flow back through the casts); it is returned in
/// the student's dtype. On wgpu, whose shaders have no f64 `exp`/`log`, it is computed in f32.
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
    let dtype = student.dtype();
    let wide = kiln_model::backend::wide_float::<B>(&student.device());
    let student = student.cast(wide);
    let ce = masked_cross_entropy(student.clone(), labels);
    let Some(teacher) = teacher.filter(|_| alpha < 1.0) else {
        return ce.cast(dtype);
    };
    let log_p = log_softmax(teacher.cast(wide) / temperature);
    let log_q = log_softmax(student / temperature);
    let kl = kl_batchmean(log_p, log_q);
    (ce * alpha + kl * ((1.0 - alpha) * temperature * temperature)).cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_model::Flex;

    /// `len` values in [−2, 2) from a fixed xorshift stream.
    fn values(len: usize, mut state: u64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn the_flex_lm_head_kernel_equals_burns_ops_bit_for_bit() {
        let (rows, vocab, d) = (700, 1500, 24);
        let device = Default::default();
        let hidden =
            Tensor::<Flex, 2>::from_data(TensorData::new(values(rows * d, 1), [rows, d]), &device);
        // The weight as a transposed view, as a model holding `[d, vocab]` would pass it.
        let weight = Tensor::<Flex, 2>::from_data(
            TensorData::new(values(vocab * d, 2), [d, vocab]),
            &device,
        )
        .transpose();
        let target: Vec<usize> = values(rows, 3)
            .iter()
            .map(|v| ((v + 2.0) / 4.0 * vocab as f32) as usize % vocab)
            .collect();
        let weights = vec![1.0 / rows as f32; rows];
        let bits = |t: Tensor<Flex, 2>| -> Vec<u32> {
            t.into_data()
                .to_vec::<f32>()
                .expect("f32")
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        // Three chunks, the last one short.
        let chunk = 300;
        let (fl, fh, fw) = kiln_model::kernels::linear_cross_entropy(
            hidden.clone(),
            weight.clone(),
            (&target, &weights),
            chunk,
            (true, true),
        )
        .unwrap_or_else(|_| panic!("flex takes the fast path"));
        let (gl, gh, gw) = chunked(hidden, weight, (&target, &weights), chunk, (true, true));
        let scalar = |t: Tensor<Flex, 1>| t.into_scalar();
        let (fl, gl) = (scalar(fl), scalar(gl));
        assert!(fl > 1.0 && fl.is_finite(), "a real loss: {fl}");
        assert_eq!(fl.to_bits(), gl.to_bits(), "loss {fl} vs {gl}");
        let (fh, gh) = (fh.expect("dh"), gh.expect("dh"));
        assert_eq!(fh.dims(), [rows, d]);
        assert_eq!(bits(fh), bits(gh), "hidden gradient");
        let (fw, gw) = (fw.expect("dw"), gw.expect("dw"));
        assert_eq!(fw.dims(), [vocab, d]);
        let (fw, gw) = (bits(fw), bits(gw));
        assert!(
            fw.iter().any(|&b| f32::from_bits(b) != 0.0),
            "a weight gradient"
        );
        assert_eq!(fw, gw, "weight gradient");
    }
}
