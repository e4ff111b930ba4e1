//! GPT-2's multi-head attention from its `c_attn` rows (q, k and v side by side,
//! `[batch·seq, 3·d]`) to the rows `c_proj` reads (`[batch·seq, d]`), as one op on burn-flex.
//!
//! Composed of burn ops it is three head splits (copies), two batched matmuls, the scaled
//! masked softmax ([`super::scaled_masked_softmax`]) and a head merge; backwards, every split
//! writes its gradient into a zeroed `[batch·seq, 3·d]` tensor that burn then sums with the
//! other two, each matmul's output is zeroed and copied on the calling thread, and the keys'
//! gradient comes out transposed and is copied back strided, also on the calling thread.
//! Here each (batch row, head) pair is one rayon task that runs the same `gemm` products on
//! the heads where they lie in the rows (strides instead of copies) and the same row
//! kernels, and writes its part of the output (or of the one `[batch·seq, 3·d]` gradient)
//! directly. Every element takes the composed form's products in the same order and the
//! same roundings, so the results are its results bit for bit (a test compares them).

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::attention::{Mask, divisor};
use super::lm_head::{View, gemm_strided};
use super::{back, cast, record, softmax_backward_rows_dispatch, softmax_rows_dispatch, zeroed};
use crate::Flex;

/// The attention's shape: `batch` rows of `seq` positions, `heads` heads of `dh` columns.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    dh: usize,
}

impl Dims {
    /// Columns of the output rows (`d`).
    fn d(&self) -> usize {
        self.heads * self.dh
    }

    /// Columns of the `c_attn` rows (`3·d`).
    fn width(&self) -> usize {
        3 * self.d()
    }

    /// Rows of either (`batch·seq`).
    fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Batch row and head of task `bh`.
    fn split(&self, bh: usize) -> (usize, usize) {
        (bh / self.heads, bh % self.heads)
    }

    /// Where part `part` (q 0, k 1, v 2) of head `h` of batch row `b` starts in the
    /// `c_attn` rows (or their gradient).
    fn part(&self, b: usize, h: usize, part: usize) -> usize {
        b * self.seq * self.width() + part * self.d() + h * self.dh
    }

    /// Where head `h` of batch row `b` starts in the output rows (or their gradient).
    fn out(&self, b: usize, h: usize) -> usize {
        b * self.seq * self.d() + h * self.dh
    }
}

/// A buffer that tasks write disjoint parts of through `gemm`.
#[derive(Clone, Copy)]
struct Dst(*mut f32);

// SAFETY: every task writes only its own head's elements (see `Dims::part` and `Dims::out`),
// so no two threads touch the same element.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The element `offset` elements in (a method, so closures capture the whole `Dst`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A `seq × cols` block of row-major rows `rs` apart at `ptr` (or its transpose).
fn block(ptr: *const f32, rs: usize, transposed: bool) -> View {
    let rs = rs as isize;
    if transposed {
        View { ptr, cs: rs, rs: 1 }
    } else {
        View { ptr, cs: 1, rs }
    }
}

/// `dst[.. rows rs apart] = lhs · rhs` (`m × n`, inner `k`), one thread, as burn-flex's
/// batched matmul runs each matrix of a batch.
///
/// # Safety
/// The views address `m × k` and `k × n` live elements; `dst` addresses `m` rows of `n`
/// writable elements, `rs` apart, that no other thread touches meanwhile.
unsafe fn product(dst: *mut f32, rs: usize, dims: (usize, usize, usize), lhs: View, rhs: View) {
    // SAFETY: the caller's contract.
    unsafe { gemm_strided(dst, rs as isize, dims, lhs, rhs, gemm::Parallelism::None) }
}

/// A vector of `len` elements that `write` initializes, every one of them.
///
/// # Safety
/// `write` writes each of the `len` elements at the pointer it gets.
unsafe fn written(len: usize, write: impl FnOnce(Dst)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    write(Dst(v.as_mut_ptr()));
    // SAFETY: the caller's contract.
    unsafe { v.set_len(len) };
    v
}

/// The forward pass: the output rows `[batch·seq, d]` and the probabilities
/// `[batch, heads, seq, seq]` (kept for the backward pass).
fn forward(qkv: &[f32], mask: &Mask, dims: Dims) -> (Vec<f32>, Vec<f32>) {
    let (s, dh, w, d) = (dims.seq, dims.dh, dims.width(), dims.d());
    let c = divisor((dh as f64).sqrt());
    let mut probs = zeroed(dims.batch * dims.heads * s * s);
    let fill = |out: Dst| {
        probs.par_chunks_mut(s * s).enumerate().for_each(|(bh, p)| {
            let (b, h) = dims.split(bh);
            let part = |i| qkv.as_ptr().wrapping_add(dims.part(b, h, i));
            let mut z = vec![0f32; s * s];
            // SAFETY: q and k are `seq × dh` blocks of `qkv`, rows `w` apart.
            unsafe {
                let (q, k) = (block(part(0), w, false), block(part(1), w, true));
                product(z.as_mut_ptr(), s, (s, s, dh), q, k);
            }
            for (i, z) in z.chunks_exact_mut(s).enumerate() {
                for (z, &m) in z.iter_mut().zip(mask.row(bh * s + i)) {
                    *z = if m { f32::MIN } else { *z / c };
                }
            }
            softmax_rows_dispatch(&z, p, s);
            // SAFETY: `p` is `seq × seq`, v a block of `qkv`; the destination is
            // this task's head in the output.
            unsafe {
                let (pv, v) = (block(p.as_ptr(), s, false), block(part(2), w, false));
                product(out.at(dims.out(b, h)), d, (s, dh, s), pv, v);
            }
        });
    };
    // SAFETY: each task writes rows `out(b, h) + i·d .. + dh` for i < seq: every element
    // of the `rows × d` output exactly once over all tasks.
    let out = unsafe { written(dims.rows() * d, fill) };
    (out, probs)
}

/// The backward pass: the gradient of the `c_attn` rows from the output rows' gradient `g`.
fn backward(qkv: &[f32], probs: &[f32], g: &[f32], mask: &Mask, dims: Dims) -> Vec<f32> {
    let (s, dh, w, d) = (dims.seq, dims.dh, dims.width(), dims.d());
    let inv = 1.0 / divisor((dh as f64).sqrt());
    let fill = |dx: Dst| {
        probs.par_chunks(s * s).enumerate().for_each(|(bh, p)| {
            let (b, h) = dims.split(bh);
            let part = |i| qkv.as_ptr().wrapping_add(dims.part(b, h, i));
            let dst = |i| dx.at(dims.part(b, h, i));
            let go = block(g.as_ptr().wrapping_add(dims.out(b, h)), d, false);
            let mut ds = vec![0f32; s * s];
            // SAFETY: the blocks address `seq × dh` (or `seq × seq`) live elements; the
            // destinations are this task's heads of the gradient.
            unsafe {
                // dv = pᵀ·g; dp = g·vᵀ.
                product(dst(2), w, (s, dh, s), block(p.as_ptr(), s, true), go);
                product(ds.as_mut_ptr(), s, (s, s, dh), go, block(part(2), w, true));
            }
            softmax_backward_rows_dispatch(p, &mut ds, s);
            for (i, g) in ds.chunks_exact_mut(s).enumerate() {
                for (g, &m) in g.iter_mut().zip(mask.row(bh * s + i)) {
                    *g = if m { 0.0 } else { *g * inv };
                }
            }
            // SAFETY: as above.
            unsafe {
                // dq = ds·k; dk = dsᵀ·q.
                let (dsv, dst_t) = (block(ds.as_ptr(), s, false), block(ds.as_ptr(), s, true));
                product(dst(0), w, (s, dh, s), dsv, block(part(1), w, false));
                product(dst(1), w, (s, dh, s), dst_t, block(part(0), w, false));
            }
        });
    };
    // SAFETY: each task writes rows `part(b, h, i) + r·w .. + dh` for the three parts and
    // r < seq: every element of the `rows × 3·d` gradient exactly once over all tasks.
    unsafe { written(dims.rows() * w, fill) }
}

/// The op under autodiff over burn-flex; `None` when `qkv` is not plain f32.
fn autodiff_flex(
    qkv: &FloatTensor<Autodiff<Flex>>,
    mask: Arc<Mask>,
    dims: Dims,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct QkvAttention;

    impl Backward<Flex, 1> for QkvAttention {
        type State = (FlexTensor, Arc<Vec<f32>>, Arc<Mask>, Dims);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let (qkv, probs, mask, dims) = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let grad = grad.to_contiguous();
                let (xs, gs) = (qkv.as_slice::<f32>(), grad.as_slice::<f32>());
                let (xs, gs) = xs.zip(gs).expect("the op's input and gradient are f32");
                let dx = backward(xs, &probs, gs, &mask, dims);
                FlexTensor::from_data(TensorData::new(dx, [dims.rows(), dims.width()]))
            });
        }
    }

    let x = &qkv.primitive;
    let (out, probs) = forward(x.as_slice::<f32>()?, &mask, dims);
    let y = FlexTensor::from_data(TensorData::new(out, [dims.rows(), dims.d()]));
    Some(record(
        QkvAttention,
        [qkv],
        (x.clone(), Arc::new(probs), mask, dims),
        y,
    ))
}

/// Multi-head attention over `[batch·seq, 3·d]` rows of q, k and v side by side (GPT-2's
/// `c_attn` output), `heads` heads, scores scaled by `√(d / heads)` and masked to
/// `f32::MIN` where `mask` (`[batch or 1, heads or 1, seq, seq]`) is true: the merged heads'
/// rows `[batch·seq, d]`. One op each way on burn-flex, with or without autodiff (see the
/// module's doc); `qkv` back, for the caller to compose the attention from burn ops, on
/// another backend, or when the shapes or the mask do not fit.
pub fn qkv_attention<B: Backend>(
    qkv: Tensor<B, 2>,
    mask: &Tensor<B, 4, Bool>,
    batch: usize,
    seq: usize,
    heads: usize,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let [rows, width] = qkv.dims();
    let dims = Dims {
        batch,
        seq,
        heads,
        dh: width / 3 / heads.max(1),
    };
    let fits = rows == batch * seq && rows > 0 && dims.dh > 0 && width == dims.width();
    let Some(m) = fits
        .then(|| Mask::read(mask, [batch, heads, seq, seq]))
        .flatten()
    else {
        return Err(qkv);
    };
    let qkv = match cast::<B, Autodiff<Flex>, 2>(qkv) {
        Ok(x) => {
            let p = x.clone().into_primitive().tensor();
            return match autodiff_flex(&p, Arc::new(m), dims) {
                Some(y) => Ok(back(Tensor::<Autodiff<Flex>, 2>::from_primitive(
                    TensorPrimitive::Float(y),
                ))),
                None => Err(back(x)),
            };
        }
        Err(x) => x,
    };
    let x = cast::<B, Flex, 2>(qkv)?;
    let p = x.clone().into_primitive().tensor();
    let Some(xs) = p.as_slice::<f32>() else {
        return Err(back(x));
    };
    let out = forward(xs, &m, dims).0;
    let y = FlexTensor::from_data(TensorData::new(out, [dims.rows(), dims.d()]));
    Ok(back(Tensor::<Flex, 2>::from_primitive(
        TensorPrimitive::Float(y),
    )))
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::tensor_bits as bits;
    use crate::kernels::{merge_heads, scaled_masked_softmax, split_heads};

    type Ad = Autodiff<Flex>;

    /// A causal mask `[mb, 1, seq, seq]` with row `b`'s first `b` keys blocked too (left
    /// padding).
    fn mask<B: Backend>(mb: usize, seq: usize) -> Tensor<B, 4, Bool> {
        let blocked: Vec<bool> = (0..mb)
            .flat_map(|b| (0..seq).flat_map(move |i| (0..seq).map(move |j| j > i || j < b)))
            .collect();
        Tensor::from_data(
            TensorData::new(blocked, [mb, 1, seq, seq]),
            &Default::default(),
        )
    }

    /// GPT-2's attention composed of burn ops (as `gpt2::Attention::attend` without a cache).
    fn composed<B: Backend>(
        qkv: Tensor<B, 2>,
        m: &Tensor<B, 4, Bool>,
        (batch, seq, heads): (usize, usize, usize),
    ) -> Tensor<B, 2> {
        let dh = qkv.dims()[1] / 3 / heads;
        let split = |i| split_heads(qkv.clone(), batch, seq, heads, 3, i);
        let (q, k, v) = (split(0), split(1), split(2));
        let probs = scaled_masked_softmax(q.matmul(k.swap_dims(2, 3)), (dh as f64).sqrt(), m);
        merge_heads(probs.matmul(v))
    }

    /// Against the composed ops: the output and the `c_attn` rows' gradient bit for bit
    /// (autodiff over burn-flex), and the output without autodiff; for a mask per batch row
    /// and one broadcast over the batch, GPT-2's head size (64) and small ones.
    #[test]
    fn equals_the_composed_attention_and_its_gradient_bit_for_bit() {
        let device = Default::default();
        for (batch, seq, heads, dh, mb) in [(2, 5, 3, 4, 2), (3, 7, 2, 8, 1), (2, 64, 2, 64, 2)] {
            let shape = (batch, seq, heads);
            let width = 3 * heads * dh;
            let dist = Distribution::Normal(0.0, 1.0);
            let (x, up) = crate::unseeded(|| {
                (
                    Tensor::<Ad, 2>::random([batch * seq, width], dist, &device),
                    Tensor::<Ad, 2>::random([batch * seq, heads * dh], dist, &device),
                )
            });
            let m = mask::<Ad>(mb, seq);
            let run = |fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    qkv_attention(x.clone(), &m, batch, seq, heads)
                        .unwrap_or_else(|_| panic!("burn-flex takes the fused op"))
                } else {
                    composed(x.clone(), &m, shape)
                };
                let grads = (y.clone() * up.clone()).sum().backward();
                let dx = x.grad(&grads).expect("the rows' gradient");
                (bits(y.inner()), bits(dx))
            };
            let (fused, plain) = (run(true), run(false));
            assert_eq!(
                fused.0, plain.0,
                "output, {shape:?} dh {dh}, mask batch {mb}"
            );
            assert_eq!(
                fused.1, plain.1,
                "gradient, {shape:?} dh {dh}, mask batch {mb}"
            );
            let (xi, mi) = (x.clone().inner(), mask::<Flex>(mb, seq));
            let inference = qkv_attention(xi.clone(), &mi, batch, seq, heads)
                .unwrap_or_else(|_| panic!("burn-flex takes the fused op"));
            assert_eq!(bits(inference), bits(composed(xi, &mi, shape)), "burn-flex");
        }
    }

    /// The gradient is the attention's: a perturbed upstream gradient or a perturbed mask
    /// changes it (so the comparison above cannot pass on a zero or unmasked gradient).
    #[test]
    fn a_different_mask_gives_a_different_output_and_gradient() {
        let device = Default::default();
        let (batch, seq, heads, dh) = (2, 6, 2, 4);
        let x = crate::unseeded(|| {
            Tensor::<Ad, 2>::random(
                [batch * seq, 3 * heads * dh],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        });
        let run = |m: Tensor<Ad, 4, Bool>| {
            let x = x.clone().detach().require_grad();
            let y = qkv_attention(x.clone(), &m, batch, seq, heads)
                .unwrap_or_else(|_| panic!("burn-flex takes the fused op"));
            let grads = (y.clone() * y.clone()).sum().backward();
            (bits(y.inner()), bits(x.grad(&grads).expect("gradient")))
        };
        let (causal, padded) = (run(mask(1, seq)), run(mask(2, seq)));
        assert_ne!(causal.0, padded.0);
        assert_ne!(causal.1, padded.1);
        assert!(causal.1.iter().any(|&b| f32::from_bits(b) != 0.0));
    }
}
