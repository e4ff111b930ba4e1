//! Attention's probabilities from its raw scores, `softmax(mask_fill(s / scale, mask, MIN))`
//! over the last dimension, as one op on burn-flex.
//!
//! Composed of burn ops this is a division by a scalar and a `mask_fill` (each a pass over
//! the scores on the calling thread; `mask_fill` first copies the broadcast mask out to the
//! scores' shape) before the softmax, and their two backward passes after its backward pass.
//! Here each row is scaled, masked and normalized in one sweep over rayon's threads, and its
//! gradient is masked and scaled in the same sweep as the softmax's backward pass. Every
//! element takes the same roundings as in the composed form (`s / scale` in f32, masked
//! scores `f32::MIN`, the gradient `g · (1 / scale)` as burn's autodiff writes it, masked
//! gradients 0), so the results are the composed form's bit for bit (a test compares them).

use std::any::Any;
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{
    back, cast, owned_contiguous, record, rows_per_task, softmax_backward_rows_dispatch,
    softmax_last, softmax_rows_dispatch, zeroed,
};
use crate::Flex;

/// A boolean mask `[mb, mh, sq, sk]` read as broadcast over scores `[batch, heads, sq, sk]`
/// (`mb` is 1 or `batch`, `mh` 1 or `heads`).
#[derive(Debug)]
pub(super) struct Mask {
    blocked: Vec<bool>,
    mb: usize,
    mh: usize,
    heads: usize,
    sq: usize,
    sk: usize,
}

impl Mask {
    /// The mask's values for scores of `dims`; `None` when it does not broadcast to them.
    pub(super) fn read<B: Backend>(mask: &Tensor<B, 4, Bool>, dims: [usize; 4]) -> Option<Self> {
        let [batch, heads, sq, sk] = dims;
        let [mb, mh, msq, msk] = mask.dims();
        let fits = (mb == 1 || mb == batch) && (mh == 1 || mh == heads);
        if !fits || msq != sq || msk != sk {
            return None;
        }
        let blocked = flex_bools(mask)?;
        Some(Self {
            blocked,
            mb,
            mh,
            heads,
            sq,
            sk,
        })
    }

    /// The mask of score row `r` (row-major over `[batch, heads, sq]`).
    pub(super) fn row(&self, r: usize) -> &[bool] {
        let (b, h, i) = (
            r / (self.heads * self.sq),
            (r / self.sq) % self.heads,
            r % self.sq,
        );
        let b = if self.mb == 1 { 0 } else { b };
        let h = if self.mh == 1 { 0 } else { h };
        let start = ((b * self.mh + h) * self.sq + i) * self.sk;
        &self.blocked[start..start + self.sk]
    }
}

/// A burn-flex boolean tensor's values in row-major order, from its storage (host memory,
/// so not a device read); `None` on another backend.
fn flex_bools<B: Backend, const D: usize>(mask: &Tensor<B, D, Bool>) -> Option<Vec<bool>> {
    let primitive: Box<dyn Any> = Box::new(mask.clone().into_primitive());
    let t = primitive.downcast::<FlexTensor>().ok()?.to_contiguous();
    // Stored one byte per value (burn-flex has no other boolean storage yet).
    if !matches!(t.dtype(), DType::Bool(_)) || t.dtype().size() != 1 {
        return None;
    }
    let (start, end) = t.layout().contiguous_offsets()?;
    Some(
        t.storage::<u8>()[start..end]
            .iter()
            .map(|&b| b != 0)
            .collect(),
    )
}

/// The f32 divisor burn-flex's `div_scalar` applies for `scale`.
pub(super) fn divisor(scale: f64) -> f32 {
    scale as f32
}

/// The forward pass into a new tensor of `dims`: each row scaled, masked and normalized.
fn forward(scores: &[f32], mask: &Mask, scale: f64, dims: [usize; 4]) -> FlexTensor {
    let row = dims[3];
    let c = divisor(scale);
    let mut y = zeroed(scores.len());
    if row > 0 {
        let per_task = rows_per_task(row);
        scores
            .par_chunks(per_task)
            .zip(y.par_chunks_mut(per_task))
            .enumerate()
            .for_each(|(task, (s, y))| {
                let first = task * (per_task / row);
                let mut z = vec![0f32; s.len()];
                for (r, (s, z)) in s.chunks_exact(row).zip(z.chunks_exact_mut(row)).enumerate() {
                    for ((z, &s), &m) in z.iter_mut().zip(s).zip(mask.row(first + r)) {
                        *z = if m { f32::MIN } else { s / c };
                    }
                }
                softmax_rows_dispatch(&z, y, row);
            });
    }
    FlexTensor::from_data(TensorData::new(y, dims))
}

/// The backward pass in place on `g` (the probabilities' gradient): softmax's, then the
/// mask's (masked gradients 0) and the division's (`· (1 / scale)`).
fn backward(y: &[f32], g: &mut [f32], mask: &Mask, scale: f64, row: usize) {
    if row == 0 {
        return;
    }
    let inv = 1.0 / divisor(scale);
    let per_task = rows_per_task(row);
    y.par_chunks(per_task)
        .zip(g.par_chunks_mut(per_task))
        .enumerate()
        .for_each(|(task, (y, g))| {
            softmax_backward_rows_dispatch(y, g, row);
            let first = task * (per_task / row);
            for (r, g) in g.chunks_exact_mut(row).enumerate() {
                for (g, &m) in g.iter_mut().zip(mask.row(first + r)) {
                    *g = if m { 0.0 } else { *g * inv };
                }
            }
        });
}

/// The op under autodiff over burn-flex; `None` when the scores are not plain f32.
fn autodiff_flex(
    scores: &FloatTensor<Autodiff<Flex>>,
    mask: Arc<Mask>,
    scale: f64,
    dims: [usize; 4],
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct ScaledMaskedSoftmax;

    impl Backward<Flex, 1> for ScaledMaskedSoftmax {
        type State = (FlexTensor, Arc<Mask>, f64);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let (y, mask, scale) = ops.state;
            let row = mask.sk;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let mut g = owned_contiguous(grad);
                let ys = y
                    .as_slice::<f32>()
                    .expect("the op's own output is contiguous f32");
                assert_eq!(g.dtype(), DType::F32, "attention gradients are f32");
                backward(ys, g.storage_mut::<f32>(), &mask, scale, row);
                g
            });
        }
    }

    let y = forward(scores.primitive.as_slice::<f32>()?, &mask, scale, dims);
    Some(record(
        ScaledMaskedSoftmax,
        [scores],
        (y.clone(), mask, scale),
        y,
    ))
}

/// `softmax(scores / scale` with `mask`'s true entries set to `f32::MIN`, over the last
/// dimension): attention's probabilities from `q · kᵀ`, as Hugging Face masks them. On
/// burn-flex (with or without autodiff) one sweep per row each way (see the module's doc);
/// elsewhere, or for a mask that does not broadcast to the scores, the composed burn ops.
pub fn scaled_masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    mask: &Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    let composed = |s: Tensor<B, 4>| softmax_last((s / scale).mask_fill(mask.clone(), f32::MIN));
    let dims = scores.dims();
    let on_flex = cast::<B, Autodiff<Flex>, 4>(scores.clone()).is_ok()
        || cast::<B, Flex, 4>(scores.clone()).is_ok();
    let Some(m) = on_flex.then(|| Mask::read(mask, dims)).flatten() else {
        return composed(scores);
    };
    let scores = match cast::<B, Autodiff<Flex>, 4>(scores) {
        Ok(s) => {
            let p = s.clone().into_primitive().tensor();
            return match autodiff_flex(&p, Arc::new(m), scale, dims) {
                Some(y) => back(Tensor::<Autodiff<Flex>, 4>::from_primitive(
                    TensorPrimitive::Float(y),
                )),
                None => composed(back(s)),
            };
        }
        Err(s) => s,
    };
    match cast::<B, Flex, 4>(scores) {
        Ok(s) => {
            let p = s.clone().into_primitive().tensor();
            match p.as_slice::<f32>() {
                Some(xs) => back(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(
                    forward(xs, &m, scale, dims),
                ))),
                None => composed(back(s)),
            }
        }
        Err(s) => composed(s),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::tensor_bits as bits;

    type Ad = Autodiff<Flex>;

    /// A causal mask `[mb, 1, sq, sk]` (the last `sq` of `sk` positions) with row `b`'s first
    /// `b` keys blocked too (left padding).
    fn mask<B: Backend>(mb: usize, sq: usize, sk: usize) -> Tensor<B, 4, Bool> {
        let past = sk - sq;
        let blocked: Vec<bool> = (0..mb)
            .flat_map(|b| (0..sq).flat_map(move |i| (0..sk).map(move |j| j > past + i || j < b)))
            .collect();
        Tensor::from_data(
            TensorData::new(blocked, [mb, 1, sq, sk]),
            &Default::default(),
        )
    }

    /// Against the composed burn ops on the same autodiff backend: the probabilities and the
    /// scores' gradient bit for bit, for a mask per row of the batch, one broadcast over the
    /// batch, and keys after cached ones (`sk > sq`); and without autodiff on burn-flex.
    #[test]
    fn equals_the_composed_ops_and_their_gradient_bit_for_bit() {
        let device = Default::default();
        for (batch, heads, sq, sk, mb) in [(3, 2, 5, 5, 3), (2, 3, 7, 7, 1), (2, 2, 3, 9, 2)] {
            let dims = [batch, heads, sq, sk];
            let (s, upstream) = crate::unseeded(|| {
                (
                    Tensor::<Ad, 4>::random(dims, Distribution::Normal(0.0, 3.0), &device),
                    Tensor::<Ad, 4>::random(dims, Distribution::Default, &device),
                )
            });
            let m = mask::<Ad>(mb, sq, sk);
            let scale = (16f64).sqrt() + 0.37;
            let run = |fused: bool| {
                let s = s.clone().detach().require_grad();
                let p = if fused {
                    scaled_masked_softmax(s.clone(), scale, &m)
                } else {
                    softmax_last((s.clone() / scale).mask_fill(m.clone(), f32::MIN))
                };
                let grads = (p.clone() * upstream.clone()).sum().backward();
                (
                    bits(p.inner()),
                    bits(s.grad(&grads).expect("the scores' gradient")),
                )
            };
            let (fused, composed) = (run(true), run(false));
            assert_eq!(
                fused.0, composed.0,
                "probabilities, {dims:?}, mask batch {mb}"
            );
            assert_eq!(fused.1, composed.1, "gradient, {dims:?}, mask batch {mb}");
            let (si, mi) = (s.clone().inner(), mask::<Flex>(mb, sq, sk));
            let inference = scaled_masked_softmax(si.clone(), scale, &mi);
            let plain = softmax_last((si / scale).mask_fill(mi, f32::MIN));
            assert_eq!(bits(inference), bits(plain), "burn-flex, {dims:?}");
        }
    }
}
