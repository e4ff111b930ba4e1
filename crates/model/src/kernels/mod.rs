//! Fused row kernels behind backend-generic functions.
//!
//! Each function here is written once with burn tensor ops, which every backend runs, and has
//! a fast path for burn-flex (kiln's default CPU backend) that works on the tensor's storage
//! in place: one pass per row instead of one burn op (and one allocation) per step, a
//! vectorised `exp` instead of libm's scalar one, and rows spread over rayon's threads. Both
//! paths compute the same function; the tests compare them.
//!
//! Row sums never run through one f32 accumulator: the flex kernels add f32 lanes into f64
//! ([`FLUSH`]), and [`log_softmax_f64`] / [`softmax_f64`] (for results read on the host) work
//! in f64. A plain f32 running sum over a 50,257-wide row rounds away the tail of a peaked
//! distribution: on `tests/fixtures/numerics/tiny-gpt2-peaked` a top probability of 0.90750
//! came out 0.90715.

use std::any::{Any, TypeId};
use std::mem::MaybeUninit;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, IndexingUpdateOp, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::Flex;

mod adamw;
mod attention;
mod embedding;
mod gemv;
mod head_index;
mod layer_norm;
mod linear;
mod llama;
mod lm_head;
mod qkv_attention;
pub use adamw::AdamW;
pub use attention::scaled_masked_softmax;
pub use embedding::embedding;
pub use gemv::{linear, matmul_nt};
pub use head_index::{HeadCache, HeadIndex, head_argmax, head_argmax_runs_on};
pub use layer_norm::layer_norm;
pub use llama::{rms_norm, rms_norm_ops, swiglu, swiglu_ops};
pub use lm_head::{LinearCeOut, linear_cross_entropy};
pub use qkv_attention::qkv_attention;

/// Runs `f` on the storage of `t` when the backend is burn-flex and `t` is a contiguous f32
/// tensor (as a matrix product's output is), and gives `t` back with `f`'s result; otherwise
/// gives `t` back untouched with `None`.
fn on_flex_storage<B: Backend, const D: usize, R>(
    t: Tensor<B, D>,
    f: impl FnOnce(&mut [f32]) -> R,
) -> (Tensor<B, D>, Option<R>) {
    match t.into_primitive() {
        TensorPrimitive::Float(mut p) => {
            let any: &mut dyn Any = &mut p;
            let result = any.downcast_mut::<FlexTensor>().and_then(|ft| {
                let n = ft.layout().num_elements();
                if ft.dtype() != DType::F32 || ft.layout().contiguous_offsets() != Some((0, n)) {
                    return None;
                }
                let storage = ft.storage_mut::<f32>();
                (storage.len() == n).then(|| f(storage))
            });
            (Tensor::from_primitive(TensorPrimitive::Float(p)), result)
        }
        q => (Tensor::from_primitive(q), None),
    }
}

/// `exp(x)` to about 2 ulp, without branches so that loops over it vectorise (Cephes'
/// `expf`: `2^n · e^r` with `|r| ≤ ln2/2` and a degree-6 polynomial). Inputs above 88 are
/// clamped to 88; below −87, where `exp` leaves the normal f32 range, the result is 0 (a
/// masked attention score's weight).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let below = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    let y = p * f32::from_bits(((n as i32 + 127) << 23) as u32);
    if below { 0.0 } else { y }
}

/// Lanes of the partial sums and maxima: wide enough for AVX-512, and a fixed order of
/// summation whatever the machine.
const LANES: usize = 16;

/// The widest instruction set [`multiversion!`]'s copies of a kernel are compiled for that
/// this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Baseline,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            return if has!("avx512f") {
                Isa::Avx512
            } else {
                Isa::Avx2
            };
        }
    }
    Isa::Baseline
}

/// `fn name(args) -> R => body;` defines `name`, which calls the `#[inline(always)]` kernel
/// `body` compiled for AVX-512, for AVX2 + FMA, or for the baseline, the widest this CPU
/// runs ([`isa`]; the detection is cached, so a call costs a load and a branch). Results do
/// not depend on the copy: Rust never fuses a multiply and an add, and the kernels sum over a
/// fixed number of [`LANES`], so every copy rounds the same operations the same way.
///
/// Call `name` inside each rayon task, not around a parallel loop: a closure handed to rayon
/// is compiled as a function of its own, without the target features of the function that
/// wrote it (the decoding GEMV ran SSE2 that way).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::kernels::isa() {
                    // SAFETY: the CPU has the features each function was compiled for.
                    $crate::kernels::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::kernels::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::kernels::Isa::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Chunks of [`LANES`] elements after which [`exp_sum`] adds its f32 lane sums into f64: no
/// f32 partial sum holds more than this many terms, so the small terms of a peaked row are
/// not rounded away under its largest one.
const FLUSH: usize = 8;

/// The largest element of `row` (NaN skipped), over [`LANES`] lanes.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut max = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for l in 0..LANES {
            max[l] = max[l].max(c[l]);
        }
    }
    max.iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Overwrites every `v` of `row` with `exp(v − m)` and returns their sum: f32 sums over
/// [`LANES`] lanes, added into f64 lanes every [`FLUSH`] chunks.
#[inline(always)]
fn exp_sum(row: &mut [f32], m: f32) -> f64 {
    let mut total = [0f64; LANES];
    let (chunks, tail) = row.as_chunks_mut::<LANES>();
    for block in chunks.chunks_mut(FLUSH) {
        let mut part = [0f32; LANES];
        for c in block.iter_mut() {
            for l in 0..LANES {
                let e = exp_approx(c[l] - m);
                c[l] = e;
                part[l] += e;
            }
        }
        for l in 0..LANES {
            total[l] += f64::from(part[l]);
        }
    }
    let mut s: f64 = total.iter().sum();
    for v in tail.iter_mut() {
        let e = exp_approx(*v - m);
        *v = e;
        s += f64::from(e);
    }
    s
}

/// `Σ a ⊙ b` over [`LANES`] f32 lanes (each holding `len / LANES` terms), added in f64.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let lanes: f64 = acc.iter().map(|&v| f64::from(v)).sum();
    let rest: f64 = at.iter().zip(bt).map(|(x, y)| f64::from(x * y)).sum();
    (lanes + rest) as f32
}

/// [`dot`] of `a` with each of four rows at once, in one pass over `a` (four streams of
/// `b` in flight); each result equal to [`dot`]'s, bit for bit.
#[inline(always)]
fn dot4(a: &[f32], b: [&[f32]; 4]) -> [f32; 4] {
    let (ac, at) = a.as_chunks::<LANES>();
    let [b0, b1, b2, b3] = b.map(|b| b.as_chunks::<LANES>().0);
    let mut acc = [[0f32; LANES]; 4];
    // Zipped iterators, not indices: indexing four rows made LLVM keep the sums on the stack,
    // one scalar add at a time.
    for ((((x, y0), y1), y2), y3) in ac.iter().zip(b0).zip(b1).zip(b2).zip(b3) {
        for l in 0..LANES {
            acc[0][l] += x[l] * y0[l];
            acc[1][l] += x[l] * y1[l];
            acc[2][l] += x[l] * y2[l];
            acc[3][l] += x[l] * y3[l];
        }
    }
    std::array::from_fn(|q| {
        let lanes: f64 = acc[q].iter().map(|&v| f64::from(v)).sum();
        let tail = &b[q][ac.len() * LANES..];
        let rest: f64 = at.iter().zip(tail).map(|(x, y)| f64::from(x * y)).sum();
        (lanes + rest) as f32
    })
}

/// One row of [`softmax_cross_entropy`] on the CPU: returns `logsumexp(row) − row[target]`
/// and, when `grad`, overwrites the row with `weight · (softmax(row) − onehot(target))`.
/// A row holding NaN or ±inf gives NaN.
#[inline(always)]
fn ce_row(row: &mut [f32], target: usize, weight: f32, grad: bool) -> f64 {
    let picked = row[target];
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut max = [f32::NEG_INFINITY; LANES];
    // `check` stays 0 unless the row holds NaN or ±inf (then `v · 0` is NaN), which max()
    // would skip.
    let mut check = [0f32; LANES];
    for c in chunks {
        for l in 0..LANES {
            max[l] = max[l].max(c[l]);
            check[l] += c[l] * 0.0;
        }
    }
    let mut m = max.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut finite = check.iter().sum::<f32>() == 0.0;
    for &v in tail {
        m = m.max(v);
        finite &= v.is_finite();
    }
    if !finite {
        return f64::NAN;
    }
    let s = exp_sum(row, m);
    if grad {
        let scale = (weight as f64 / s) as f32;
        for v in row.iter_mut() {
            *v *= scale;
        }
        row[target] -= weight;
    }
    s.ln() + m as f64 - picked as f64
}

multiversion! {
    fn ce_row_dispatch(row: &mut [f32], target: usize, weight: f32, grad: bool) -> f64 => ce_row;
}

/// [`ce_row`] over every row, in parallel; the per-row results are summed in row order so
/// the total does not depend on the threads.
fn ce_rows_dispatch(
    data: &mut [f32],
    vocab: usize,
    targets: &[usize],
    weights: &[f32],
    grad: bool,
) -> f64 {
    let mut nll = vec![0f64; targets.len()];
    data.par_chunks_mut(vocab)
        .zip(nll.par_iter_mut())
        .enumerate()
        .for_each(|(i, (row, out))| *out = ce_row_dispatch(row, targets[i], weights[i], grad));
    nll.iter().zip(weights).map(|(l, &w)| l * w as f64).sum()
}

/// `Tensor<B, D>` as `Tensor<C, D>` when `B` and `C` are the same backend; otherwise the
/// tensor back. (How the generic functions here find out that they run on burn-flex.)
fn cast<B: Backend, C: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> std::result::Result<Tensor<C, D>, Tensor<B, D>> {
    if TypeId::of::<B>() != TypeId::of::<C>() {
        return Err(t);
    }
    match t.into_primitive() {
        TensorPrimitive::Float(p) => {
            let boxed: Box<dyn Any> = Box::new(p);
            match boxed.downcast::<C::FloatTensorPrimitive>() {
                Ok(q) => Ok(Tensor::from_primitive(TensorPrimitive::Float(*q))),
                Err(boxed) => Err(Tensor::from_primitive(TensorPrimitive::Float(
                    *boxed
                        .downcast::<B::FloatTensorPrimitive>()
                        .expect("a value boxed from B's primitive is B's primitive"),
                ))),
            }
        }
        q => Err(Tensor::from_primitive(q)),
    }
}

/// `t` as `Tensor<B, D>` again, where [`cast`] found `B` to be `C`.
fn back<B: Backend, C: Backend, const D: usize>(t: Tensor<C, D>) -> Tensor<B, D> {
    cast(t).unwrap_or_else(|_| unreachable!("B is C"))
}

/// `y` as the output of the autodiff op `op` over `parents`, keeping `state` for its
/// backward pass when a parent is tracked.
fn record<O: Backward<Flex, N>, const N: usize>(
    op: O,
    parents: [&FloatTensor<Autodiff<Flex>>; N],
    state: O::State,
    y: FlexTensor,
) -> FloatTensor<Autodiff<Flex>> {
    match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// `2·√(2/π)`: GPT-2's GELU is `x·σ(K1·x + K2·x³)`.
const K1: f32 = 1.595_769;
/// `2·√(2/π)·0.044715`.
const K2: f32 = 0.071_354_82;

#[inline(always)]
fn gelu_one(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let u = x * (K1 + K2 * x2);
    let s = 1.0 / (1.0 + exp_approx(-u));
    let y = x * s;
    // d/dx x·σ(u) = σ + x·σ(1−σ)·u'
    (y, s + y * (1.0 - s) * (K1 + 3.0 * K2 * x2))
}

#[inline(always)]
fn gelu_chunk(x: &[f32], y: &mut [MaybeUninit<f32>], d: Option<&mut [MaybeUninit<f32>]>) {
    match d {
        Some(d) => {
            for ((x, y), d) in x.iter().zip(y.iter_mut()).zip(d.iter_mut()) {
                let (v, g) = gelu_one(*x);
                y.write(v);
                d.write(g);
            }
        }
        None => {
            for (x, y) in x.iter().zip(y.iter_mut()) {
                y.write(gelu_one(*x).0);
            }
        }
    }
}

multiversion! {
    fn gelu_chunk_dispatch(x: &[f32], y: &mut [MaybeUninit<f32>], d: Option<&mut [MaybeUninit<f32>]>) => gelu_chunk;
}

/// Elements per rayon task of the element-wise kernels.
const CHUNK: usize = 1 << 14;

/// GELU of a burn-flex tensor and, when `grad`, its derivative, each a new tensor; `None`
/// when the tensor is not f32.
fn gelu_flex<const D: usize>(
    x: Tensor<Flex, D>,
    grad: bool,
) -> Option<(Tensor<Flex, D>, Option<Tensor<Flex, D>>)> {
    let shape = x.shape();
    let device = x.device();
    let ft = x.into_primitive().tensor();
    let ft = if ft.is_contiguous() && ft.layout().start_offset() == 0 {
        ft
    } else {
        ft.to_contiguous()
    };
    let n = ft.layout().num_elements();
    let xs = ft.as_slice::<f32>()?;
    let mut y: Vec<f32> = Vec::with_capacity(n);
    let mut d: Vec<f32> = Vec::with_capacity(if grad { n } else { 0 });
    {
        let ys = &mut y.spare_capacity_mut()[..n];
        if grad {
            let ds = &mut d.spare_capacity_mut()[..n];
            xs.par_chunks(CHUNK)
                .zip(ys.par_chunks_mut(CHUNK))
                .zip(ds.par_chunks_mut(CHUNK))
                .for_each(|((x, y), d)| gelu_chunk_dispatch(x, y, Some(d)));
        } else {
            xs.par_chunks(CHUNK)
                .zip(ys.par_chunks_mut(CHUNK))
                .for_each(|(x, y)| gelu_chunk_dispatch(x, y, None));
        }
    }
    // SAFETY: every element of the first `n` was written above (the chunks cover `0..n`).
    unsafe {
        y.set_len(n);
        if grad {
            d.set_len(n);
        }
    }
    let y = Tensor::from_data(TensorData::new(y, shape.clone()), &device);
    let d = grad.then(|| Tensor::from_data(TensorData::new(d, shape), &device));
    Some((y, d))
}

/// `g ⊙ d` into `g`, in parallel: the backward pass of an element-wise op whose derivative
/// `d` was written in the forward pass.
fn mul_into(g: &mut [f32], d: &[f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(d.par_chunks(CHUNK))
        .for_each(|(g, d)| g.iter_mut().zip(d).for_each(|(g, d)| *g *= d));
}

/// GELU as one autodiff op over burn-flex: the forward pass writes the value and the
/// derivative, kept for a backward pass of one parallel product. `None` when the tensor is
/// not f32.
fn gelu_autodiff_flex<const D: usize>(
    x: FloatTensor<Autodiff<Flex>>,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    #[derive(Debug)]
    struct GeluBackward;

    impl Backward<Flex, 1> for GeluBackward {
        type State = FlexTensor;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let d = ops.state;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let mut g = owned_contiguous(grad);
                match (d.as_slice::<f32>(), g.dtype() == DType::F32) {
                    (Some(ds), true) => {
                        mul_into(g.storage_mut::<f32>(), ds);
                        g
                    }
                    _ => Flex::float_mul(g, d),
                }
            });
        }
    }

    let inner = Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
    let (y, d) = gelu_flex(inner, true)?;
    let y = y.into_primitive().tensor();
    let d = d?.into_primitive().tensor();
    Some(record(GeluBackward, [&x], d, y))
}

/// GELU, tanh approximation (`gelu_new` in Hugging Face's GPT-2):
/// `0.5·x·(1 + tanh(c·(x + 0.044715·x³)))`, computed as the equal `x·σ(2c·x·(1 + 0.044715·x²))`.
///
/// On burn-flex, one parallel pass; under autodiff over burn-flex (training), one op whose
/// forward pass also writes the derivative and whose backward pass is one parallel product
/// (the composed form replays a chain of six ops). Elsewhere, [`gelu_tanh_ops`].
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = match cast::<B, Autodiff<Flex>, D>(x) {
        Ok(x) => {
            let y = match gelu_autodiff_flex::<D>(x.clone().into_primitive().tensor()) {
                Some(y) => Tensor::<Autodiff<Flex>, D>::from_primitive(TensorPrimitive::Float(y)),
                None => gelu_tanh_ops(x),
            };
            return back(y);
        }
        Err(x) => x,
    };
    match cast::<B, Flex, D>(x) {
        Ok(x) => {
            let y = match gelu_flex(x.clone(), false) {
                Some((y, _)) => y,
                None => gelu_tanh_ops(x),
            };
            back(y)
        }
        Err(x) => gelu_tanh_ops(x),
    }
}

/// [`gelu_tanh`] composed of burn ops (any backend): a sigmoid is one fused op with its own
/// backward, where tanh and `powf` were several slow ones.
pub fn gelu_tanh_ops<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let two_c = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
    let inner = x.clone() * ((x.clone() * x.clone()) * (0.044715 * two_c) + two_c);
    x * sigmoid(inner)
}

/// Softmax of each row of `row` elements of `x`, into `y` (as long as `x`).
#[inline(always)]
fn softmax_rows(x: &[f32], y: &mut [f32], row: usize) {
    for (x, y) in x.chunks_exact(row).zip(y.chunks_exact_mut(row)) {
        let m = row_max(x);
        y.copy_from_slice(x);
        let inv = (1.0 / exp_sum(y, m)) as f32;
        for v in y.iter_mut() {
            *v *= inv;
        }
    }
}

multiversion! {
    fn softmax_rows_dispatch(x: &[f32], y: &mut [f32], row: usize) => softmax_rows;
}

/// Elements per rayon task of a row kernel: whole rows of `row` elements, about [`CHUNK`].
fn rows_per_task(row: usize) -> usize {
    row * (CHUNK / row.max(1)).max(1)
}

/// Softmax over the last dimension of a burn-flex tensor, as a new tensor
/// ([`softmax_rows`] over rayon's threads); `None` when it is not f32.
fn softmax_flex<const D: usize>(x: &FlexTensor) -> Option<FlexTensor> {
    let x = flex_f32(x)?;
    let dims = x.layout().shape();
    let shape: [usize; D] = std::array::from_fn(|i| dims[i]);
    let row = shape[D - 1];
    let src = x.as_slice::<f32>()?;
    Some(flex_new(shape, |y| {
        if row > 0 {
            let per_task = rows_per_task(row);
            src.par_chunks(per_task)
                .zip(y.par_chunks_mut(per_task))
                .for_each(|(x, y)| softmax_rows_dispatch(x, y, row));
        }
    }))
}

/// `dx = y ⊙ (g − Σ g ⊙ y)` per row of `row` elements: softmax's backward pass, into `g`.
#[inline(always)]
fn softmax_backward_rows(y: &[f32], g: &mut [f32], row: usize) {
    for (y, g) in y.chunks_exact(row).zip(g.chunks_exact_mut(row)) {
        let dot = dot(y, g);
        for (g, y) in g.iter_mut().zip(y) {
            *g = *y * (*g - dot);
        }
    }
}

multiversion! {
    fn softmax_backward_rows_dispatch(y: &[f32], g: &mut [f32], row: usize) => softmax_backward_rows;
}

/// Softmax over the last dimension under autodiff over burn-flex, as one op: the forward
/// pass of [`softmax_flex`], and a backward pass of one parallel sweep per row that keeps
/// only the output (the composed form records a max, a subtraction, an exp, a sum and a
/// broadcast division, and replays each backwards).
fn softmax_last_autodiff_flex<const D: usize>(
    x: FloatTensor<Autodiff<Flex>>,
) -> FloatTensor<Autodiff<Flex>> {
    #[derive(Debug)]
    struct SoftmaxBackward;

    impl Backward<Flex, 1> for SoftmaxBackward {
        type State = FlexTensor;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let y = ops.state.to_contiguous();
            let row = y.layout().shape()[y.layout().num_dims() - 1];
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let mut g = owned_contiguous(grad);
                match (y.as_slice::<f32>(), g.dtype() == DType::F32) {
                    (Some(ys), true) if row > 0 => {
                        let per_task = rows_per_task(row);
                        ys.par_chunks(per_task)
                            .zip(g.storage_mut::<f32>().par_chunks_mut(per_task))
                            .for_each(|(y, g)| softmax_backward_rows_dispatch(y, g, row));
                        g
                    }
                    _ => {
                        // Not f32: the composed formula on burn-flex ops.
                        let dim = y.layout().num_dims() - 1;
                        let yg = Flex::float_mul(y.clone(), g);
                        let dot = Flex::float_sum_dim(yg.clone(), dim);
                        Flex::float_sub(yg, Flex::float_mul(y.clone(), dot))
                    }
                }
            });
        }
    }

    let y = softmax_flex::<D>(&x.primitive)
        .unwrap_or_else(|| burn_flex::ops::activation::softmax(x.primitive.clone(), D - 1));
    record(SoftmaxBackward, [&x], y.clone(), y)
}

/// Softmax over the last dimension (`burn::tensor::activation::softmax(x, D - 1)`). On
/// burn-flex, [`softmax_flex`] (its row sums added in f64, see [`FLUSH`]); under autodiff
/// over burn-flex, as one op with a fused backward pass. Elsewhere, the backend's softmax.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let x = match cast::<B, Autodiff<Flex>, D>(x) {
        Ok(x) => {
            let y = softmax_last_autodiff_flex::<D>(x.into_primitive().tensor());
            return back(Tensor::<Autodiff<Flex>, D>::from_primitive(
                TensorPrimitive::Float(y),
            ));
        }
        Err(x) => x,
    };
    match cast::<B, Flex, D>(x) {
        Ok(x) => {
            let p = x.into_primitive().tensor();
            let y = softmax_flex::<D>(&p)
                .unwrap_or_else(|| burn_flex::ops::activation::softmax(p, D - 1));
            back(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(y)))
        }
        Err(x) => softmax(x, D - 1),
    }
}

/// Where the heads live in a `[batch·seq, width]` matrix: columns `offset..offset + h·dh`.
#[derive(Debug, Clone, Copy)]
struct HeadLayout {
    batch: usize,
    seq: usize,
    heads: usize,
    dh: usize,
    width: usize,
    offset: usize,
}

impl HeadLayout {
    /// `dst[b, h, s, :] = src[b·seq + s, offset + h·dh ..]`, over `[batch, heads, seq, dh]`.
    fn rows_to_heads(&self, src: &[f32], dst: &mut [f32]) {
        let Self {
            seq,
            heads,
            dh,
            width,
            offset,
            ..
        } = *self;
        dst.par_chunks_mut(seq * dh)
            .enumerate()
            .for_each(|(bh, block)| {
                let (b, h) = (bh / heads, bh % heads);
                for (s, out) in block.chunks_exact_mut(dh).enumerate() {
                    let start = (b * seq + s) * width + offset + h * dh;
                    out.copy_from_slice(&src[start..start + dh]);
                }
            });
    }

    /// The inverse: `dst[b·seq + s, offset + h·dh ..] = src[b, h, s, :]`; other columns of
    /// `dst` are left as they are.
    fn heads_to_rows(&self, src: &[f32], dst: &mut [f32]) {
        let Self {
            seq,
            heads,
            dh,
            width,
            offset,
            ..
        } = *self;
        dst.par_chunks_mut(width)
            .enumerate()
            .for_each(|(row, out)| {
                let (b, s) = (row / seq, row % seq);
                for h in 0..heads {
                    let start = ((b * heads + h) * seq + s) * dh;
                    out[offset + h * dh..offset + (h + 1) * dh]
                        .copy_from_slice(&src[start..start + dh]);
                }
            });
    }

    fn rows_shape(&self) -> [usize; 2] {
        [self.batch * self.seq, self.width]
    }

    fn heads_shape(&self) -> [usize; 4] {
        [self.batch, self.heads, self.seq, self.dh]
    }
}

/// A contiguous f32 copy of a flex tensor's elements, or `None` for another dtype.
fn flex_f32(t: &FlexTensor) -> Option<FlexTensor> {
    let t = t.to_contiguous();
    t.as_slice::<f32>().is_some().then_some(t)
}

/// `t` contiguous, for a kernel to write in place: `t` itself when it already is.
/// (`to_contiguous` of a contiguous tensor shares its buffer, and while the original is
/// alive burn-flex's copy-on-write copies that buffer on the first write.)
fn owned_contiguous(t: FlexTensor) -> FlexTensor {
    let c = t.to_contiguous();
    drop(t);
    c
}

/// [`owned_contiguous`] when `t` is f32; `None` for another dtype.
fn owned_f32(t: FlexTensor) -> Option<FlexTensor> {
    let t = owned_contiguous(t);
    t.as_slice::<f32>().is_some().then_some(t)
}

/// `n` zeros, written over rayon's threads when there are many (`vec![0.0; n]` zeroes a
/// reused allocation on the calling thread while the workers wait).
fn zeroed(n: usize) -> Vec<f32> {
    if n < 8 * CHUNK {
        return vec![0f32; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.fill(MaybeUninit::new(0.0)));
    // SAFETY: the loop above initialized all `n` elements of the capacity.
    unsafe { v.set_len(n) };
    v
}

/// A new flex tensor of `shape`, zeros written over by `fill`.
fn flex_new<const D: usize>(shape: [usize; D], fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut data = zeroed(shape.iter().product());
    fill(&mut data);
    Tensor::<Flex, D>::from_data(TensorData::new(data, shape), &Default::default())
        .into_primitive()
        .tensor()
}

/// Heads to rows (`merge`) or rows to heads (split), as one autodiff op over burn-flex
/// whose forward and backward passes are each one parallel copy. `None` when not f32.
fn heads_op_autodiff_flex(
    x: FloatTensor<Autodiff<Flex>>,
    layout: HeadLayout,
    merge: bool,
) -> Option<FloatTensor<Autodiff<Flex>>> {
    fn apply(x: &FlexTensor, layout: HeadLayout, merge: bool) -> Option<FlexTensor> {
        let x = flex_f32(x)?;
        let src = x.as_slice::<f32>()?;
        Some(if merge {
            // Columns outside the heads (the other parts, in a split's backward pass) stay 0.
            flex_new(layout.rows_shape(), |dst| layout.heads_to_rows(src, dst))
        } else {
            flex_new(layout.heads_shape(), |dst| layout.rows_to_heads(src, dst))
        })
    }

    #[derive(Debug)]
    struct HeadsBackward;

    impl Backward<Flex, 1> for HeadsBackward {
        type State = (HeadLayout, bool);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let (layout, merge) = ops.state;
            // The backward pass of a merge is a split, and the other way round.
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                apply(&grad, layout, !merge).expect("an f32 op (see below) gets f32 gradients")
            });
        }
    }

    let y = apply(&x.primitive, layout, merge)?;
    Some(record(HeadsBackward, [&x], (layout, merge), y))
}

/// Attention heads from a projection's rows: of `x` `[batch·seq, parts·d]` (e.g. `c_attn`'s
/// q, k, v side by side, `parts` = 3), the `part`-th block of `d` columns as
/// `[batch, heads, seq, d / heads]`. Under autodiff over burn-flex one op with a parallel
/// copy each way (the composed narrow/reshape/swap copies strided, and its backward
/// zero-fills the whole projection per part).
pub fn split_heads<B: Backend>(
    x: Tensor<B, 2>,
    batch: usize,
    seq: usize,
    heads: usize,
    parts: usize,
    part: usize,
) -> Tensor<B, 4> {
    let width = x.dims()[1];
    let d = width / parts;
    let layout = HeadLayout {
        batch,
        seq,
        heads,
        dh: d / heads,
        width,
        offset: part * d,
    };
    let x = match cast::<B, Autodiff<Flex>, 2>(x) {
        Ok(x) => match heads_op_autodiff_flex(x.clone().into_primitive().tensor(), layout, false) {
            Some(y) => {
                let y = Tensor::<Autodiff<Flex>, 4>::from_primitive(TensorPrimitive::Float(y));
                return back(y);
            }
            None => back(x),
        },
        Err(x) => x,
    };
    x.reshape([batch, seq, width])
        .narrow(2, part * d, d)
        .reshape([batch, seq, heads, d / heads])
        .swap_dims(1, 2)
}

/// Attention heads `[batch, heads, seq, dh]` back to rows `[batch·seq, heads·dh]`; the
/// inverse of [`split_heads`] with one part, and one op the same way.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch, heads, seq, dh] = x.dims();
    let layout = HeadLayout {
        batch,
        seq,
        heads,
        dh,
        width: heads * dh,
        offset: 0,
    };
    let x = match cast::<B, Autodiff<Flex>, 4>(x) {
        Ok(x) => match heads_op_autodiff_flex(x.clone().into_primitive().tensor(), layout, true) {
            Some(y) => {
                let y = Tensor::<Autodiff<Flex>, 2>::from_primitive(TensorPrimitive::Float(y));
                return back(y);
            }
            None => back(x),
        },
        Err(x) => x,
    };
    x.swap_dims(1, 2).reshape([batch * seq, heads * dh])
}

/// The two (input, gradient) pairs of [`with_gradients`].
pub type GradPairs<B> = [(
    Tensor<B, 2>,
    Option<Tensor<<B as AutodiffBackend>::InnerBackend, 2>>,
); 2];

/// A scalar whose value is `value` and whose gradient with respect to each input is the
/// tensor paired with it (times the upstream gradient; `None`: no gradient): for a loss whose
/// gradients were computed in its forward pass. Under autodiff over burn-flex, one op;
/// elsewhere `value + (Σ x ⊙ G − value(Σ x ⊙ G))`, exactly `value` with those gradients.
pub fn with_gradients<B: AutodiffBackend>(
    value: Tensor<B::InnerBackend, 1>,
    inputs: GradPairs<B>,
) -> Tensor<B, 1> {
    if TypeId::of::<B>() == TypeId::of::<Autodiff<Flex>>() {
        let [(a, ga), (b, gb)] = inputs;
        let flex = |g: Option<Tensor<B::InnerBackend, 2>>| {
            g.and_then(|g| cast::<B::InnerBackend, Flex, 2>(g).ok())
                .map(|g| g.into_primitive().tensor())
        };
        if let (Ok(a), Ok(b), Ok(v)) = (
            cast::<B, Autodiff<Flex>, 2>(a.clone()),
            cast::<B, Autodiff<Flex>, 2>(b.clone()),
            cast::<B::InnerBackend, Flex, 1>(value.clone()),
        ) {
            let out = with_gradients_autodiff_flex(
                v.into_primitive().tensor(),
                [a.into_primitive().tensor(), b.into_primitive().tensor()],
                [flex(ga), flex(gb)],
            );
            let out = Tensor::<Autodiff<Flex>, 1>::from_primitive(TensorPrimitive::Float(out));
            return back(out);
        }
        return with_gradients_ops([(a, ga), (b, gb)], value);
    }
    with_gradients_ops(inputs, value)
}

fn with_gradients_ops<B: AutodiffBackend>(
    inputs: GradPairs<B>,
    value: Tensor<B::InnerBackend, 1>,
) -> Tensor<B, 1> {
    let link = inputs
        .into_iter()
        .filter_map(|(x, g)| g.map(|g| (x * Tensor::from_inner(g)).sum()))
        .reduce(|a, b| a + b);
    let value = Tensor::from_inner(value);
    match link {
        // `link − value(link)` is exactly 0 in the forward pass and passes the gradient
        // through. (Not `detach()`: a detached tensor keeps `require_grad` and so becomes a
        // leaf that holds the step's graph in memory.)
        Some(link) => {
            let constant = Tensor::from_inner(link.clone().inner());
            value + (link - constant)
        }
        None => value,
    }
}

fn with_gradients_autodiff_flex(
    value: FlexTensor,
    inputs: [FloatTensor<Autodiff<Flex>>; 2],
    gradients: [Option<FlexTensor>; 2],
) -> FloatTensor<Autodiff<Flex>> {
    #[derive(Debug)]
    struct Given;

    impl Backward<Flex, 2> for Given {
        type State = [Option<FlexTensor>; 2];

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let upstream = grads.consume::<Flex>(&ops.node);
            let scale = Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(upstream));
            for (parent, g) in ops.parents.into_iter().zip(ops.state) {
                if let (Some(parent), Some(g)) = (parent, g) {
                    // The upstream gradient is 1 for a plain `backward()`; under gradient
                    // accumulation, the loss's scale.
                    let g = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(g))
                        * scale.clone().unsqueeze();
                    grads.register::<Flex>(parent.id, g.into_primitive().tensor());
                }
            }
        }
    }

    let [a, b] = inputs;
    record(Given, [&a, &b], gradients, value)
}

/// Weighted cross-entropy of each row of `logits` against its target:
/// `Σᵢ weightᵢ · (logsumexp(logitsᵢ) − logitsᵢ[targetᵢ])`, and, when `grad`, its gradient
/// with respect to the logits, `weightᵢ · (softmax(logitsᵢ) − onehot(targetᵢ))`, which takes
/// the logits' place (no second `[rows, vocab]` tensor). Without `grad` the second tensor is
/// unspecified.
///
/// # Shapes
/// - `logits`: `[rows, vocab]`
/// - `targets`, `weights`: `rows` each, targets `< vocab`
/// - output: `[1]` and `[rows, vocab]`
pub fn softmax_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    weights: &[f32],
    grad: bool,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [rows, vocab] = logits.dims();
    assert_eq!(targets.len(), rows, "one target per row");
    assert_eq!(weights.len(), rows, "one weight per row");
    let device = logits.device();
    let (logits, fast) = on_flex_storage(logits, |data| {
        ce_rows_dispatch(data, vocab, targets, weights, grad)
    });
    if let Some(total) = fast {
        return (Tensor::from_floats([total as f32], &device), logits);
    }
    let index = Tensor::<B, 2, Int>::from_data(
        TensorData::new(targets.iter().map(|&t| t as i64).collect(), [rows, 1]),
        &device,
    );
    let w = Tensor::<B, 2>::from_data(TensorData::new(weights.to_vec(), [rows, 1]), &device);
    let log_p = crate::backend::log_softmax(logits);
    let picked = log_p.clone().gather(1, index.clone());
    let total = -crate::backend::sum(picked * w.clone());
    if !grad {
        return (total, log_p);
    }
    let g = (log_p.exp() * w.clone()).scatter(1, index, -w, IndexingUpdateOp::Add);
    (total, g)
}

/// `ln Σ exp(row)`, accumulated in f64 (so exact to f64 rounding at any width); −∞ for an
/// empty row or one of −∞ only, NaN when the row holds +∞ or NaN.
pub fn logsumexp_f64(row: &[f32]) -> f64 {
    if row.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let m = f64::from(row.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    if m == f64::NEG_INFINITY {
        return m;
    }
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
    m + sum.ln()
}

/// Log-softmax of every row of `width` elements of `logits`, on the host: each
/// `x − logsumexp(row)` in f64 ([`logsumexp_f64`]), rounded to f32. Rows in parallel.
pub fn log_softmax_f64(logits: &[f32], width: usize) -> Vec<f32> {
    rows_f64(logits, width, |x, lse| (f64::from(x) - lse) as f32)
}

/// Softmax of every row of `width` elements of `logits`, on the host: each
/// `exp(x − logsumexp(row))` in f64, rounded to f32. Rows in parallel.
pub fn softmax_f64(logits: &[f32], width: usize) -> Vec<f32> {
    rows_f64(logits, width, |x, lse| (f64::from(x) - lse).exp() as f32)
}

fn rows_f64(logits: &[f32], width: usize, f: impl Fn(f32, f64) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    if width > 0 {
        out.par_chunks_mut(width)
            .zip(logits.par_chunks(width))
            .for_each(|(y, x)| {
                let lse = logsumexp_f64(x);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = f(x, lse);
                }
            });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;
    use burn::tensor::backend::AutodiffBackend;

    /// A burn-flex tensor's f32 elements as bit patterns (the kernels' tests compare bit for
    /// bit).
    pub(super) fn tensor_bits<const D: usize>(t: Tensor<Flex, D>) -> Vec<u32> {
        let v = t.into_data().to_vec::<f32>().expect("f32");
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Values spread over several magnitudes and both signs, as activations are.
    fn wavy(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = (i as f32 + seed as f32 * 0.37) * 0.618;
                t.sin() * (1.0 + (t * 0.11).cos() * 3.0)
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Every copy `multiversion!` compiles rounds the same: the dispatched kernels (AVX-512
    /// or AVX2 where the CPU has them) against the same kernel called from this test, which
    /// is compiled for the baseline.
    #[test]
    fn multiversioned_kernels_equal_the_baseline_bit_for_bit() {
        eprintln!("instruction set: {:?}", isa());
        let x = wavy(5 * 301, 1);
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        softmax_rows(&x, &mut a, 301);
        softmax_rows_dispatch(&x, &mut b, 301);
        assert_eq!(bits(&a), bits(&b), "softmax");
        let g = wavy(x.len(), 2);
        let (mut ga, mut gb) = (g.clone(), g);
        softmax_backward_rows(&a, &mut ga, 301);
        softmax_backward_rows_dispatch(&a, &mut gb, 301);
        assert_eq!(bits(&ga), bits(&gb), "softmax backward");
        for grad in [false, true] {
            let (mut ra, mut rb) = (x[..1000].to_vec(), x[..1000].to_vec());
            let (la, lb) = (
                ce_row(&mut ra, 17, 0.5, grad),
                ce_row_dispatch(&mut rb, 17, 0.5, grad),
            );
            assert_eq!(la.to_bits(), lb.to_bits(), "cross-entropy, grad {grad}");
            assert_eq!(bits(&ra), bits(&rb), "cross-entropy gradient");
        }
        let uninit = |n| vec![MaybeUninit::<f32>::uninit(); n];
        let (mut ya, mut da, mut yb, mut db) = (uninit(999), uninit(999), uninit(999), uninit(999));
        gelu_chunk(&x[..999], &mut ya, Some(&mut da));
        gelu_chunk_dispatch(&x[..999], &mut yb, Some(&mut db));
        // SAFETY: both kernels write every element of their outputs.
        let read = |v: &[MaybeUninit<f32>]| {
            v.iter()
                .map(|e| unsafe { e.assume_init() }.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(read(&ya), read(&yb), "gelu");
        assert_eq!(read(&da), read(&db), "gelu derivative");
    }

    /// Four dot products in one pass equal four calls of [`dot`], bit for bit, with and
    /// without a tail shorter than [`LANES`].
    #[test]
    fn dot4_equals_dot() {
        for len in [768, 77, 5] {
            let a = wavy(len, 3);
            let rows: Vec<Vec<f32>> = (0..4).map(|q| wavy(len, 10 + q)).collect();
            let four = dot4(&a, [&rows[0], &rows[1], &rows[2], &rows[3]]);
            for (q, row) in rows.iter().enumerate() {
                assert_eq!(
                    four[q].to_bits(),
                    dot(&a, row).to_bits(),
                    "len {len}, row {q}"
                );
            }
        }
    }

    #[test]
    fn exp_approx_is_close_to_exp() {
        let mut worst = 0f64;
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let rel = ((exp_approx(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_approx_is_zero_below_the_normal_range() {
        assert_eq!(exp_approx(-87.5), 0.0);
        assert_eq!(exp_approx(f32::MIN), 0.0);
        assert!(exp_approx(f32::NAN).is_nan());
    }

    /// A GPT-2-wide row whose top probability is about 0.9 and whose 50,256 other terms are
    /// each about 2e-6 of it (the case where an f32 running sum loses the tail), and its
    /// softmax in f64.
    fn peaked_row() -> (Vec<f32>, Vec<f64>) {
        const TOP: f32 = 13.15;
        let x: Vec<f32> = (0..50_257)
            .map(|i| {
                if i == 9 {
                    TOP
                } else {
                    ((i * 7919) % 1000) as f32 / 5000.0
                }
            })
            .collect();
        let m = f64::from(TOP);
        let sum: f64 = x.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        let p = x.iter().map(|&v| (f64::from(v) - m).exp() / sum).collect();
        (x, p)
    }

    fn worst(got: &[f32], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn softmax_of_a_wide_peaked_row_keeps_its_tail() {
        let (x, want) = peaked_row();
        assert!(want[9] > 0.9 && want[9] < 0.91, "{}", want[9]);
        let n = x.len();
        let device = Default::default();
        let flex = softmax_last(Tensor::<Flex, 2>::from_data(
            TensorData::new(x.clone(), [1, n]),
            &device,
        ));
        let autodiff = softmax_last(Tensor::<Autodiff<Flex>, 2>::from_data(
            TensorData::new(x.clone(), [1, n]),
            &device,
        ));
        for y in [
            flex.into_data().to_vec::<f32>().unwrap_or_default(),
            autodiff.into_data().to_vec::<f32>().unwrap_or_default(),
        ] {
            assert_eq!(y.len(), n);
            let err = worst(&y, &want);
            assert!(err < 3e-7, "max |softmax − f64| = {err:e}");
        }
        let host = softmax_f64(&x, n);
        assert!(worst(&host, &want) < 1e-7);
        let lse = logsumexp_f64(&x);
        let log_p = log_softmax_f64(&x, n);
        assert!((f64::from(log_p[9]) - want[9].ln()).abs() < 1e-6);
        assert!((lse - (f64::from(13.15f32) - want[9].ln())).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_of_a_wide_peaked_row_matches_f64() {
        let (x, want) = peaked_row();
        let n = x.len();
        let device = Default::default();
        // Through a matrix product, so flex computes in place on a fresh output.
        let logits = Tensor::<Flex, 2>::from_data(TensorData::new(x, [n, 1]), &device)
            .matmul(Tensor::ones([1, 1], &device))
            .reshape([1, n]);
        let (total, g) = softmax_cross_entropy(logits, &[9], &[1.0], true);
        let nll = f64::from(total.into_scalar().elem::<f32>());
        assert!((nll + want[9].ln()).abs() < 1e-6, "{nll}");
        let mut g_want = want.clone();
        g_want[9] -= 1.0;
        let g = g.into_data().to_vec::<f32>().unwrap_or_default();
        assert!(worst(&g, &g_want) < 3e-7, "{:e}", worst(&g, &g_want));
    }

    #[test]
    fn host_rows_handle_edge_cases() {
        assert_eq!(logsumexp_f64(&[]), f64::NEG_INFINITY);
        assert_eq!(logsumexp_f64(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert!(logsumexp_f64(&[0.0, f32::NAN]).is_nan());
        assert!(logsumexp_f64(&[0.0, f32::INFINITY]).is_nan());
        // Two rows of two: ln 2 apart from uniform.
        let lp = log_softmax_f64(&[0.0, 0.0, 1.0, 1.0], 2);
        let half = -std::f32::consts::LN_2;
        assert_eq!(lp, vec![half; 4]);
        assert_eq!(softmax_f64(&[3.0, 3.0], 2), vec![0.5, 0.5]);
        assert!(softmax_f64(&[], 0).is_empty());
    }

    fn case<B: Backend>(grad: bool) -> (f32, Vec<f32>) {
        let device = Default::default();
        let (rows, vocab) = (5, 37);
        let values: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0)
            .collect();
        let logits = Tensor::<B, 2>::from_data(TensorData::new(values, [rows, vocab]), &device);
        // Through a matrix product, as the loss calls it, so flex gets its own fresh output.
        let logits = logits.matmul(Tensor::eye(vocab, &device));
        let targets = [0, 36, 5, 17, 17];
        let weights = [0.25, 0.0, 0.25, 0.25, 0.25];
        let (total, g) = softmax_cross_entropy(logits, &targets, &weights, grad);
        let g = g.into_data().to_vec::<f32>().unwrap_or_default();
        (total.into_scalar().elem::<f32>(), g)
    }

    #[test]
    fn the_flex_path_matches_the_generic_one() {
        let (loss_flex, g_flex) = case::<Flex>(true);
        let (loss_cpu, g_cpu) = case::<Cpu>(true);
        assert!(
            (loss_flex - loss_cpu).abs() < 1e-5 * loss_cpu.abs(),
            "{loss_flex} vs {loss_cpu}"
        );
        assert_eq!(g_flex.len(), g_cpu.len());
        for (a, b) in g_flex.iter().zip(&g_cpu) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // The ignored row (weight 0) has no gradient.
        assert!(g_flex[37..74].iter().all(|&v| v == 0.0));
        let (loss_value, _) = case::<Flex>(false);
        assert_eq!(loss_value, loss_flex);
    }

    /// `f(x)` and the gradient of `Σ f(x) ⊙ w` with respect to `x` (a weighted sum, so the
    /// upstream gradient differs per element).
    fn value_and_grad<B: AutodiffBackend, const D: usize>(
        x: Vec<f32>,
        w: Vec<f32>,
        shape: [usize; D],
        f: impl Fn(Tensor<B, D>) -> Tensor<B, D>,
    ) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let x = Tensor::<B, D>::from_data(TensorData::new(x, shape), &device).require_grad();
        let w = Tensor::<B, D>::from_data(TensorData::new(w, shape), &device);
        let y = f(x.clone());
        let grads = (y.clone() * w).sum().backward();
        let flat =
            |t: Tensor<B::InnerBackend, D>| t.into_data().to_vec::<f32>().unwrap_or_default();
        let g = x.grad(&grads).map(flat).unwrap_or_default();
        (y.into_data().to_vec::<f32>().unwrap_or_default(), g)
    }

    fn gelu_case<B: AutodiffBackend>() -> (Vec<f32>, Vec<f32>) {
        let x = (0..3000).map(|i| (i as f32 - 1500.0) / 150.0).collect();
        let w = (0..3000).map(|i| (i % 7) as f32 - 3.0).collect();
        value_and_grad::<B, 2>(x, w, [30, 100], gelu_tanh)
    }

    #[test]
    fn gelu_on_flex_matches_the_composed_form_and_its_gradient() {
        let (y_flex, g_flex) = gelu_case::<Autodiff<Flex>>();
        let (y_ops, g_ops) = gelu_case::<Autodiff<Cpu>>();
        assert_eq!((y_flex.len(), g_flex.len()), (3000, 3000));
        for (a, b) in y_flex.iter().zip(&y_ops) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        for (a, b) in g_flex.iter().zip(&g_ops) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Without autodiff, the same values.
        let device = Default::default();
        let x: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) / 150.0).collect();
        let y = gelu_tanh(Tensor::<Flex, 2>::from_data(
            TensorData::new(x, [30, 100]),
            &device,
        ));
        assert_eq!(y.into_data().to_vec::<f32>().unwrap_or_default(), y_flex);
    }

    fn softmax_case<B: AutodiffBackend>() -> (Vec<f32>, Vec<f32>) {
        let n = 2 * 3 * 5 * 7;
        let x = (0..n).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let w = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
        value_and_grad::<B, 4>(x, w, [2, 3, 5, 7], softmax_last)
    }

    #[test]
    fn the_fused_softmax_matches_the_composed_one_and_its_gradient() {
        let (y_flex, g_flex) = softmax_case::<Autodiff<Flex>>();
        let (y_ops, g_ops) = softmax_case::<Autodiff<Cpu>>();
        assert_eq!((y_flex.len(), g_flex.len()), (210, 210));
        for (a, b) in y_flex.iter().zip(&y_ops).chain(g_flex.iter().zip(&g_ops)) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
        assert!(g_flex.iter().any(|&g| g.abs() > 1e-3), "a real gradient");
    }

    /// Part 1 of 3 split into 2 heads and merged back, weighted, summed: the merged values
    /// and the gradient with respect to the projection.
    fn heads_case<B: AutodiffBackend>() -> (Vec<f32>, Vec<f32>) {
        let (batch, seq, heads, d) = (2, 3, 2, 4);
        let n = batch * seq * 3 * d;
        let x = (0..n).map(|i| i as f32).collect();
        let w = (0..n / 3)
            .map(|i| (i % 5) as f32 - 2.0)
            .collect::<Vec<f32>>();
        let device = Default::default();
        let x = Tensor::<B, 2>::from_data(TensorData::new(x, [batch * seq, 3 * d]), &device)
            .require_grad();
        let w = Tensor::<B, 2>::from_data(TensorData::new(w, [batch * seq, d]), &device);
        let h = split_heads(x.clone() * 1.0, batch, seq, heads, 3, 1);
        assert_eq!(h.dims(), [batch, heads, seq, d / heads]);
        let y = merge_heads(h * 3.0);
        let grads = (y.clone() * w).sum().backward();
        let g = x
            .grad(&grads)
            .map(|g| g.into_data().to_vec::<f32>().unwrap_or_default());
        (
            y.into_data().to_vec::<f32>().unwrap_or_default(),
            g.unwrap_or_default(),
        )
    }

    #[test]
    fn split_and_merge_heads_match_the_composed_form_and_its_gradient() {
        let (y_flex, g_flex) = heads_case::<Autodiff<Flex>>();
        let (y_ops, g_ops) = heads_case::<Autodiff<Cpu>>();
        assert_eq!((y_flex.len(), g_flex.len()), (24, 72));
        assert_eq!(y_flex, y_ops);
        assert_eq!(g_flex, g_ops);
        // Row 0 of part 1 is columns 4..8 of the projection, times 3.
        assert_eq!(y_flex[..4], [12.0, 15.0, 18.0, 21.0]);
        // Parts 0 and 2 get no gradient.
        assert!(g_flex[..4].iter().chain(&g_flex[8..12]).all(|&g| g == 0.0));
    }

    fn given_case<B: AutodiffBackend>() -> (f32, Vec<f32>, bool) {
        let device = Default::default();
        let a = Tensor::<B, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device).require_grad();
        let b = Tensor::<B, 2>::from_floats([[5.0, 6.0]], &device).require_grad();
        let ga = Tensor::<B::InnerBackend, 2>::from_floats([[0.1, 0.2], [0.3, 0.4]], &device);
        let value = Tensor::<B::InnerBackend, 1>::from_floats([7.0], &device);
        // `a * 2` is not a leaf, as the hidden states are not.
        let out = with_gradients::<B>(value, [(a.clone() * 2.0, Some(ga)), (b.clone(), None)]);
        let v = out.clone().into_scalar().elem::<f32>();
        // An upstream gradient of 0.5, as under gradient accumulation.
        let grads = (out * 0.5).backward();
        let ga = a
            .grad(&grads)
            .map(|g| g.into_data().to_vec::<f32>().unwrap_or_default());
        (v, ga.unwrap_or_default(), b.grad(&grads).is_some())
    }

    #[test]
    fn given_gradients_reach_the_inputs_times_the_upstream_gradient() {
        for (v, ga, b_has_grad) in [
            given_case::<Autodiff<Flex>>(),
            given_case::<Autodiff<Cpu>>(),
        ] {
            assert_eq!(v, 7.0);
            // d(out)/d(a) = 2 · G · 0.5
            assert_eq!(ga, vec![0.1, 0.2, 0.3, 0.4]);
            assert!(!b_has_grad);
        }
    }

    #[test]
    fn a_non_finite_logit_gives_nan() {
        let device = Default::default();
        let logits =
            Tensor::<Flex, 2>::from_floats([[0.0, f32::NAN, 1.0], [0.0, 1.0, 2.0]], &device)
                .matmul(Tensor::eye(3, &device));
        let (total, _) = softmax_cross_entropy(logits, &[0, 1], &[0.5, 0.5], true);
        assert!(total.into_scalar().is_nan());
    }
}
