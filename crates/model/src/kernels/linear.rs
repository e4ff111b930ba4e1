//! A linear layer (`x · W + b`) whose products go straight to `gemm` on burn-flex: under
//! autodiff as one op (with a bias), and without autodiff for more rows than a GEMV takes.
//!
//! burn's `linear` runs burn-flex's matmul for the output and for each gradient, and
//! burn-flex makes every product's output with `FlexTensor::empty`: a zeroed byte vector
//! copied again into an aligned allocation, on the calling thread while rayon's workers wait.
//! Here `gemm` writes each product into a fresh vector that is neither zeroed first nor
//! copied after and becomes the tensor, and the bias is added in place over rayon's threads.
//! `gemm` gets the arguments burn-flex gives it (the same shapes, strides and threads) and the
//! bias's gradient is burn-flex's own sum, so outputs and gradients are burn's, bit for bit
//! (tests compare them). GPT-2 124M training, batch 16 × 64, three interleaved rounds on
//! 2 cores: 147 → 169 tok/s.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::lm_head::{View, gemm_into};
use super::{CHUNK, back, cast, record};
use crate::Flex;

/// A row-major f32 matrix's elements (`None`: another dtype or a strided view).
fn rows_of(t: &FlexTensor) -> Option<&[f32]> {
    t.as_slice::<f32>()
}

/// A row-major `[rows, cols]` matrix at `data`, or (`transposed`) the transpose of one stored
/// `[cols, rows]`: the strides burn-flex hands `gemm` for it.
fn view(data: &[f32], cols: usize, transposed: bool) -> View {
    let (cs, rs) = if transposed {
        (cols as isize, 1)
    } else {
        (1, cols as isize)
    };
    View {
        ptr: data.as_ptr(),
        cs,
        rs,
    }
}

/// The `[m, n]` product `lhs · rhs` (inner dimension `k`) as a new tensor: `gemm` writes every
/// element of a fresh vector (it does not read its destination), so the vector is neither
/// zeroed first nor copied after, as burn-flex's `matmul` does on the calling thread.
///
/// # Safety
/// `lhs` and `rhs` address `m × k` and `k × n` readable elements.
unsafe fn product_new(
    (m, n, k): (usize, usize, usize),
    lhs: View,
    rhs: View,
    then: impl FnOnce(&mut [f32]),
) -> FlexTensor {
    let len = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: `out` has room for `m × n` elements, which `gemm_into` (not accumulating)
    // writes, each once, so all `len` are initialized when it returns; the views are the
    // caller's contract.
    unsafe {
        gemm_into(out.as_mut_ptr(), false, (m, n, k), lhs, rhs);
        out.set_len(len);
    }
    then(&mut out);
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

/// `x · w [+ b]` (`x`: `[rows, k]`, `w`: `[k, n]`): the product, then the bias added to each
/// row (burn's `matmul` then broadcast `add`: the same two roundings).
fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, rows: usize, k: usize, n: usize) -> FlexTensor {
    let add_bias = |y: &mut [f32]| {
        let Some(b) = b else { return };
        let per_task = n * (CHUNK / n.max(1)).max(1);
        y.par_chunks_mut(per_task).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                for (v, &bias) in row.iter_mut().zip(b) {
                    *v += bias;
                }
            }
        });
    };
    // SAFETY: the views address `rows × k` and `k × n` elements of `x` and `w`.
    unsafe { product_new((rows, n, k), view(x, k, false), view(w, n, false), add_bias) }
}

/// `x · w [+ b]` on burn-flex without autodiff (inference over more rows than a GEMV takes):
/// the product straight to `gemm` as in training; `None` when a tensor is not a plain f32
/// matrix (or vector) of matching shape.
pub(super) fn forward_flex(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
) -> Option<FlexTensor> {
    let (xs, ws) = (rows_of(x)?, rows_of(w)?);
    let (xd, wd) = (x.layout().shape(), w.layout().shape());
    if xd.num_dims() != 2 || wd.num_dims() != 2 || wd[0] != xd[1] {
        return None;
    }
    let (rows, k, n) = (xd[0], xd[1], wd[1]);
    let bs = match b {
        Some(b) => Some(rows_of(b).filter(|b| b.len() == n)?),
        None => None,
    };
    Some(forward(xs, ws, bs, rows, k, n))
}

/// The input's gradient `g · wᵀ` (`g`: `[rows, n]`), as burn's `linear_x_backward` asks
/// burn-flex for it (the weight's transpose as a strided view).
fn grad_x(g: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> FlexTensor {
    // SAFETY: the views address `rows × n` and `n × k` elements of `g` and `w`.
    unsafe { product_new((rows, k, n), view(g, n, false), view(w, n, true), |_| ()) }
}

/// The weight's gradient `xᵀ · g`, as burn's `linear_weight_backward` asks for it.
fn grad_w(x: &[f32], g: &[f32], rows: usize, k: usize, n: usize) -> FlexTensor {
    // SAFETY: the views address `k × rows` and `rows × n` elements of `x` and `g`.
    unsafe { product_new((k, n, rows), view(x, k, true), view(g, n, false), |_| ()) }
}

/// The three gradients from `grad`, each only when its parent is tracked; burn-flex's own
/// ops (burn's `linear_*_backward`) when `grad` is not a plain f32 matrix.
fn gradients(
    grad: FlexTensor,
    (x, w): &(FlexTensor, FlexTensor),
    want: [bool; 3],
) -> [Option<FlexTensor>; 3] {
    let [rows, k] = [x.layout().shape()[0], x.layout().shape()[1]];
    let n = w.layout().shape()[1];
    let bias = |g: FlexTensor| Flex::float_reshape(Flex::float_sum_dim(g, 0), Shape::new([n]));
    let dims_match = grad.layout().shape().as_slice() == [rows, n].as_slice();
    let plain = (
        rows_of(x),
        rows_of(w),
        rows_of(&grad).filter(|_| dims_match),
    );
    let [dx, dw] = match plain {
        (Some(xs), Some(ws), Some(gs)) => [
            want[0].then(|| grad_x(gs, ws, rows, k, n)),
            want[1].then(|| grad_w(xs, gs, rows, k, n)),
        ],
        _ => [
            want[0]
                .then(|| Flex::float_matmul(grad.clone(), Flex::float_swap_dims(w.clone(), 0, 1))),
            want[1]
                .then(|| Flex::float_matmul(Flex::float_swap_dims(x.clone(), 0, 1), grad.clone())),
        ],
    };
    [dx, dw, want[2].then(|| bias(grad))]
}

/// `layer.forward(x)` under autodiff over burn-flex, as one op (see the module's doc); `x`
/// back when the layer has no bias or a tensor is not a plain f32 matrix.
fn autodiff_flex(
    x: &FloatTensor<Autodiff<Flex>>,
    w: &FloatTensor<Autodiff<Flex>>,
    b: &FloatTensor<Autodiff<Flex>>,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct LinearBackward;

    impl Backward<Flex, 3> for LinearBackward {
        type State = (FlexTensor, FlexTensor);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<Flex>(&ops.node);
            let want = ops.parents.each_ref().map(Option::is_some);
            let computed = gradients(grad, &ops.state, want);
            for (parent, g) in ops.parents.into_iter().zip(computed) {
                if let (Some(node), Some(g)) = (parent, g) {
                    grads.register::<Flex>(node.id, g);
                }
            }
        }
    }

    let (xp, wp, bp) = (&x.primitive, &w.primitive, &b.primitive);
    let (xs, ws, bs) = (rows_of(xp)?, rows_of(wp)?, rows_of(bp)?);
    let (xd, wd) = (xp.layout().shape(), wp.layout().shape());
    if xd.num_dims() != 2 || wd.num_dims() != 2 {
        return None;
    }
    let (rows, k, n) = (xd[0], xd[1], bs.len());
    if wd[0] != k || wd[1] != n {
        return None;
    }
    let y = forward(xs, ws, Some(bs), rows, k, n);
    Some(record(
        LinearBackward,
        [x, w, b],
        (xp.clone(), wp.clone()),
        y,
    ))
}

/// `layer.forward(x)` (`x`: `[rows, in]`): under autodiff over burn-flex with a bias, one op
/// whose products go straight to `gemm` (see the module's doc); elsewhere burn's.
pub(super) fn linear_autodiff<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let Some(bias) = &layer.bias else {
        return layer.forward(x);
    };
    let x = match cast::<B, Autodiff<Flex>, 2>(x) {
        Ok(x) => x,
        Err(x) => return layer.forward(x),
    };
    let param = |p: Tensor<B, 1>| cast::<B, Autodiff<Flex>, 1>(p);
    let (Ok(b), Ok(w)) = (
        param(bias.val()),
        cast::<B, Autodiff<Flex>, 2>(layer.weight.val()),
    ) else {
        unreachable!("a layer's parameters are on its input's backend")
    };
    let prim = |t: Tensor<Autodiff<Flex>, 2>| t.into_primitive().tensor();
    let fused = autodiff_flex(&prim(x.clone()), &prim(w), &b.into_primitive().tensor());
    match fused {
        Some(y) => back(Tensor::<Autodiff<Flex>, 2>::from_primitive(
            TensorPrimitive::Float(y),
        )),
        None => layer.forward(back(x)),
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::tensor_bits as bits;

    type Ad = Autodiff<Flex>;

    /// The op against burn's own `Linear::forward` on the same autodiff backend: the output
    /// and the gradients of the input, the weight and the bias, bit for bit, for a product
    /// `gemm` runs on one thread and one it runs on all of them (≥ 192³ multiply-adds).
    #[test]
    fn equals_burns_linear_and_its_gradients_bit_for_bit() {
        let device = Default::default();
        for (rows, k, n) in [(10, 7, 5), (256, 192, 200)] {
            let layer = crate::seeded::<Ad, _>(&device, 3, || {
                let mut layer = LinearConfig::new(k, n).init::<Ad>(&device);
                let b = Tensor::<Ad, 1>::random([n], Distribution::Normal(0.0, 1.0), &device);
                layer.bias = Some(burn::module::Param::from_tensor(b));
                crate::drawn(layer)
            });
            let (x, upstream) = crate::unseeded(|| {
                (
                    Tensor::<Ad, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), &device),
                    Tensor::<Ad, 2>::random([rows, n], Distribution::Default, &device),
                )
            });
            let run = |fused: bool| {
                let x = x.clone().detach().require_grad();
                let y = if fused {
                    linear_autodiff(&layer, x.clone())
                } else {
                    layer.forward(x.clone())
                };
                let grads = (y.clone() * upstream.clone()).sum().backward();
                let bias = layer.bias.as_ref().expect("a bias");
                (
                    bits(y.inner()),
                    bits(x.grad(&grads).expect("the input's gradient")),
                    bits(layer.weight.grad(&grads).expect("the weight's gradient")),
                    bits(bias.grad(&grads).expect("the bias's gradient")),
                )
            };
            let (fused, burn) = (run(true), run(false));
            assert_eq!(fused.0, burn.0, "output, {rows}×{k}×{n}");
            assert_eq!(fused.1, burn.1, "input gradient, {rows}×{k}×{n}");
            assert_eq!(fused.2, burn.2, "weight gradient, {rows}×{k}×{n}");
            assert_eq!(fused.3, burn.3, "bias gradient, {rows}×{k}×{n}");
        }
    }
}
