//! Cross-entropy through the tied LM head on burn-flex, with its gradients, in three buffers.
//!
//! The generic path (`kiln_train::loss::linear_cross_entropy_parts`) runs each chunk of rows
//! through burn's matmul: every product is a fresh tensor (burn-flex zeroes it, then copies
//! it into an aligned allocation), and the weight's gradient is summed as one `[vocab, d]`
//! tensor per chunk (154 MB each for GPT-2). Here the products go straight
//! to `gemm` with the strides burn-flex passes it: the chunk's logits live in one reused
//! buffer, each chunk's rows of the hidden gradient are written in place, and the weight's
//! gradient is accumulated in place (`dst + product`, the sum burn's `total + p` takes), so
//! the results are the generic path's, bit for bit (a test compares them).

use burn::prelude::*;
use burn_flex::FlexTensor;

use super::{back, cast, ce_rows_dispatch, zeroed};
use crate::Flex;

/// The loss and the gradients asked for (see [`linear_cross_entropy`]).
pub type LinearCeOut<B> = (Tensor<B, 1>, Option<Tensor<B, 2>>, Option<Tensor<B, 2>>);

/// Row-major f32 storage of a contiguous flex tensor.
fn contiguous(t: &FlexTensor) -> Option<&[f32]> {
    (t.dtype() == burn::tensor::DType::F32)
        .then(|| t.as_slice::<f32>())
        .flatten()
}

/// burn-flex's rule for `gemm`'s threads: all of them from 192³ multiply-adds.
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// A row-major matrix or a transposed view of one: its element strides.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub(super) ptr: *const f32,
    /// Stride between columns.
    pub(super) cs: isize,
    /// Stride between rows.
    pub(super) rs: isize,
}

/// `dst (m × n, row-major) = [dst +] lhs · rhs` (`k` inner), as burn-flex calls `gemm`.
///
/// # Safety
/// The views address `m × k` and `k × n` elements of live buffers; `dst` holds `m × n`.
unsafe fn product(
    dst: &mut [f32],
    accumulate: bool,
    dims: (usize, usize, usize),
    lhs: View,
    rhs: View,
) {
    debug_assert!(dst.len() >= dims.0 * dims.1);
    // SAFETY: the caller's contract.
    unsafe { gemm_into(dst.as_mut_ptr(), accumulate, dims, lhs, rhs) }
}

/// [`product`] into `m × n` elements at `dst`, which `gemm` only writes (each once) unless
/// `accumulate`: so `dst` may be uninitialized memory when not accumulating.
///
/// # Safety
/// The views address `m × k` and `k × n` elements of live buffers; `dst` points to `m × n`
/// writable elements, initialized when `accumulate`.
pub(super) unsafe fn gemm_into(
    dst: *mut f32,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: View,
    rhs: View,
) {
    let threads = parallelism(m, n, k);
    // SAFETY: the caller's contract.
    unsafe { gemm_call(dst, n as isize, accumulate, (m, n, k), lhs, rhs, threads) }
}

/// `dst (m × n, rows `rs` apart) = lhs · rhs` on `threads`, written (not read) as
/// [`gemm_into`] writes: burn-flex's batched matmul runs each matrix of a batch this way.
///
/// # Safety
/// The views address `m × k` and `k × n` elements of live buffers; `dst` addresses `m`
/// rows of `n` writable elements, `rs` apart.
pub(super) unsafe fn gemm_strided(
    dst: *mut f32,
    rs: isize,
    dims: (usize, usize, usize),
    lhs: View,
    rhs: View,
    threads: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe { gemm_call(dst, rs, false, dims, lhs, rhs, threads) }
}

/// `gemm` as burn-flex calls it (`dst` row-major, its rows `rs` apart).
///
/// # Safety
/// As [`gemm_strided`]; `dst` initialized when `accumulate`.
unsafe fn gemm_call(
    dst: *mut f32,
    rs: isize,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    lhs: View,
    rhs: View,
    threads: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            threads,
        );
    }
}

/// Summed weighted cross-entropy of the logits `hidden · weightᵀ` (targets `target`, weights
/// `weights`, `chunk` rows at a time), and its gradients with respect to `hidden` and
/// `weight` when asked for, on burn-flex; the inputs back on another backend or layout.
///
/// # Shapes
/// - `hidden`: `[rows, d]`; `weight`: `[vocab, d]`; `target`, `weights`: `rows` each
#[allow(clippy::type_complexity)]
pub fn linear_cross_entropy<B: Backend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    (target, weights): (&[usize], &[f32]),
    chunk: usize,
    (grad_hidden, grad_weight): (bool, bool),
) -> Result<LinearCeOut<B>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let (h, w) = match (cast::<B, Flex, 2>(hidden), cast::<B, Flex, 2>(weight)) {
        (Ok(h), Ok(w)) => (h, w),
        (h, w) => return Err((h.map_or_else(|t| t, back), w.map_or_else(|t| t, back))),
    };
    let ([rows, d], [vocab, d2]) = (h.dims(), w.dims());
    if d != d2 || chunk == 0 || target.len() != rows || weights.len() != rows {
        return Err((back(h), back(w)));
    }
    // A view (rows of a wider tensor, a transpose) is copied once, not run strided.
    let hp = h.clone().into_primitive().tensor().to_contiguous();
    let wp = w.clone().into_primitive().tensor().to_contiguous();
    let (Some(hs), Some(ws)) = (contiguous(&hp), contiguous(&wp)) else {
        return Err((back(h), back(w)));
    };
    let grad = grad_hidden || grad_weight;
    let mut logits = zeroed(chunk.min(rows) * vocab);
    let mut dh = zeroed(if grad_hidden { rows * d } else { 0 });
    let mut dw = zeroed(if grad_weight { vocab * d } else { 0 });
    let mut loss: Option<f32> = None;
    for start in (0..rows).step_by(chunk) {
        let len = chunk.min(rows - start);
        let logits = &mut logits[..len * vocab];
        let h_rows = View {
            ptr: hs[start * d..].as_ptr(),
            cs: 1,
            rs: d as isize,
        };
        let w_t = View {
            ptr: ws.as_ptr(),
            cs: d as isize,
            rs: 1,
        };
        // SAFETY: every view below addresses only the buffers' own elements.
        unsafe { product(logits, false, (len, vocab, d), h_rows, w_t) };
        let part = ce_rows_dispatch(
            logits,
            vocab,
            &target[start..start + len],
            &weights[start..start + len],
            grad,
        ) as f32;
        // burn: `total + part`, each part a one-element f32 tensor.
        loss = Some(loss.map_or(part, |total| total + part));
        let g = View {
            ptr: logits.as_ptr(),
            cs: 1,
            rs: vocab as isize,
        };
        if grad_hidden {
            let w_rows = View {
                ptr: ws.as_ptr(),
                cs: 1,
                rs: d as isize,
            };
            unsafe { product(&mut dh[start * d..], false, (len, d, vocab), g, w_rows) };
        }
        if grad_weight {
            let g_t = View {
                ptr: logits.as_ptr(),
                cs: vocab as isize,
                rs: 1,
            };
            unsafe { product(&mut dw, start > 0, (vocab, d, len), g_t, h_rows) };
        }
    }
    let device = Default::default();
    let matrix = |values: Vec<f32>, shape: [usize; 2]| {
        back::<B, Flex, 2>(Tensor::from_data(TensorData::new(values, shape), &device))
    };
    let loss = back::<B, Flex, 1>(Tensor::from_floats([loss.unwrap_or(0.0)], &device));
    Ok((
        loss,
        grad_hidden.then(|| matrix(dh, [rows, d])),
        grad_weight.then(|| matrix(dw, [vocab, d])),
    ))
}
