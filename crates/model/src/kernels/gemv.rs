//! Products of a few rows by a weight matrix (decoding: one new token per sequence).
//!
//! burn-flex hands every matrix product to the `gemm` crate and runs one below 192³
//! multiply-adds on a single thread: a decoding step's products (`[1, 768] × [768, 3072]`)
//! all fall below it, so a token read each weight on one core. These kernels split the work
//! over rayon's threads instead: a linear layer's weight by fixed slabs of rows (partial sums
//! added in order), the tied LM head by its rows (one dot product each). The split is fixed,
//! so the result does not depend on the number of threads.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{back, cast, dot, dot4};
use crate::Flex;

/// At most this many input rows take the GEMV path; more are a GEMM's work.
const MAX_ROWS: usize = 8;
/// Rows of the tied LM head per task.
const COLUMNS: usize = 128;
/// Weight rows per task of [`linear`]: each task streams one contiguous slab of the weight
/// (splitting its columns instead strides across pages, which the prefetcher does not follow:
/// measured 22 GB/s of the machine's 44).
const K_CHUNK: usize = 64;

/// The contiguous f32 storage of a burn-flex tensor.
fn slice(t: &FlexTensor) -> Option<&[f32]> {
    (t.dtype() == burn::tensor::DType::F32)
        .then(|| t.as_slice::<f32>())
        .flatten()
}

fn primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// A parameter's value on burn-flex, `None` on another backend.
fn param<B: Backend, const D: usize>(p: &Param<Tensor<B, D>>) -> Option<Tensor<Flex, D>> {
    cast::<B, Flex, D>(p.val()).ok()
}

/// `x · layer.weight + layer.bias` (`x`: `[rows, in]`, the weight `[in, out]` as burn keeps
/// it), as [`Linear::forward`] computes it: on burn-flex a GEMV for at most [`MAX_ROWS`]
/// rows, under autodiff over burn-flex one op straight to `gemm` (`kernels/linear.rs`).
pub fn linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let x = match cast::<B, Flex, 2>(x) {
        Ok(x) if x.dims()[0] <= MAX_ROWS => x,
        Ok(x) => return linear_rows(layer, x),
        Err(x) => return super::linear::linear_autodiff(layer, x),
    };
    let fast = match (param(&layer.weight), layer.bias.as_ref().map(param)) {
        (Some(w), None) => linear_flex(&x, &w, None),
        (Some(w), Some(Some(b))) => linear_flex(&x, &w, Some(&b)),
        _ => None,
    };
    match fast {
        Some(y) => back(y),
        None => layer.forward(back(x)),
    }
}

/// [`linear`] on burn-flex for more than [`MAX_ROWS`] rows: one product straight to `gemm`
/// (`kernels/linear.rs`), burn's `Linear::forward` when a tensor is not a plain f32 matrix.
fn linear_rows<B: Backend>(layer: &Linear<B>, x: Tensor<Flex, 2>) -> Tensor<B, 2> {
    let w = param(&layer.weight).map(primitive);
    let b = layer.bias.as_ref().map(|b| param(b).map(primitive));
    let y = match (w, b) {
        (Some(w), None) => super::linear::forward_flex(&primitive(x.clone()), &w, None),
        (Some(w), Some(Some(b))) => {
            super::linear::forward_flex(&primitive(x.clone()), &w, Some(&b))
        }
        _ => None,
    };
    match y {
        Some(y) => back(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(y))),
        None => layer.forward(back(x)),
    }
}

fn linear_flex(
    x: &Tensor<Flex, 2>,
    w: &Tensor<Flex, 2>,
    b: Option<&Tensor<Flex, 1>>,
) -> Option<Tensor<Flex, 2>> {
    let [rows, k] = x.dims();
    let [k2, n] = w.dims();
    if k != k2 {
        return None;
    }
    let (xp, wp) = (primitive(x.clone()), primitive(w.clone()));
    let bp = b.map(|b| primitive(b.clone()));
    let (xs, ws) = (slice(&xp)?, slice(&wp)?);
    let bs = match &bp {
        Some(b) => Some(slice(b).filter(|b| b.len() == n)?),
        None => None,
    };
    let mut y = vec![0f32; rows * n];
    gemv(xs, ws, bs, &mut y, rows, k, n);
    Some(Tensor::from_data(
        TensorData::new(y, [rows, n]),
        &x.device(),
    ))
}

/// `h · wᵀ` (`h`: `[rows, k]`, `w`: `[n, k]`), as `h.matmul(w.transpose())`: the LM head tied
/// to the token embeddings. On burn-flex with few rows, each output is one `dot` of two
/// contiguous rows, the vocabulary split over rayon's threads.
pub fn matmul_nt<B: Backend>(h: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let (h, w) = match (cast::<B, Flex, 2>(h), cast::<B, Flex, 2>(w)) {
        (Ok(h), Ok(w)) if h.dims()[0] <= MAX_ROWS && h.dims()[1] == w.dims()[1] => (h, w),
        (h, w) => {
            let h: Tensor<B, 2> = h.map_or_else(|h| h, back);
            let w: Tensor<B, 2> = w.map_or_else(|w| w, back);
            return h.matmul(w.transpose());
        }
    };
    let ([rows, k], [n, _]) = (h.dims(), w.dims());
    let (hp, wp) = (primitive(h.clone()), primitive(w.clone()));
    let (Some(hs), Some(ws)) = (slice(&hp), slice(&wp)) else {
        return back(h.matmul(w.transpose()));
    };
    let mut y = vec![0f32; rows * n];
    nt(hs, ws, &mut y, k, n);
    back(Tensor::<Flex, 2>::from_data(
        TensorData::new(y, [rows, n]),
        &h.device(),
    ))
}

/// `y[r, v] = dot(h[r], w[v])`, the rows of `w` by blocks over rayon's threads.
fn nt(h: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    let rows = h.len() / k;
    let mut by_column = vec![0f32; rows * n];
    by_column
        .par_chunks_mut(rows * COLUMNS)
        .enumerate()
        .for_each(|(block, out)| nt_task_dispatch(h, w, out, block * COLUMNS, k));
    for (v, col) in by_column.chunks_exact(rows).enumerate() {
        for (r, &val) in col.iter().enumerate() {
            y[r * n + v] = val;
        }
    }
}

/// One task of [`nt`]: `out[c·rows + r] = dot(h[r], w[v0 + c])` for the
/// `out.len() / rows` rows of `w` from `v0`, four at a time ([`super::dot4`]: four streams
/// of the weight in flight instead of one).
#[inline(always)]
fn nt_task(h: &[f32], w: &[f32], out: &mut [f32], v0: usize, k: usize) {
    let rows = h.len() / k;
    let columns = out.len() / rows;
    let w_row = |c: usize| &w[(v0 + c) * k..(v0 + c + 1) * k];
    let mut c = 0;
    while c + 4 <= columns {
        let ws = [w_row(c), w_row(c + 1), w_row(c + 2), w_row(c + 3)];
        for r in 0..rows {
            for (q, d) in dot4(&h[r * k..(r + 1) * k], ws).into_iter().enumerate() {
                out[(c + q) * rows + r] = d;
            }
        }
        c += 4;
    }
    for c in c..columns {
        for r in 0..rows {
            out[c * rows + r] = dot(&h[r * k..(r + 1) * k], w_row(c));
        }
    }
}

super::multiversion! {
    fn nt_task_dispatch(h: &[f32], w: &[f32], out: &mut [f32], v0: usize, k: usize) => nt_task;
}

/// `acc[r, j] += Σ_{i0 ≤ i < i1} x[r, i] · w[i, j]`: a contiguous slab of `w`'s rows, four
/// at a time (four streams of the weight in flight), each sum still adding its terms in the
/// order of `i`.
#[inline(always)]
fn slab(x: &[f32], w: &[f32], acc: &mut [f32], i0: usize, i1: usize, k: usize, n: usize) {
    let rows = x.len() / k;
    let w_row = |i: usize| &w[i * n..(i + 1) * n];
    let mut i = i0;
    while i + 4 <= i1 {
        let (w0, w1, w2, w3) = (w_row(i), w_row(i + 1), w_row(i + 2), w_row(i + 3));
        for r in 0..rows {
            let xs = &x[r * k + i..r * k + i + 4];
            let (x0, x1, x2, x3) = (xs[0], xs[1], xs[2], xs[3]);
            let out = &mut acc[r * n..(r + 1) * n];
            for j in 0..n {
                out[j] = (((out[j] + x0 * w0[j]) + x1 * w1[j]) + x2 * w2[j]) + x3 * w3[j];
            }
        }
        i += 4;
    }
    for i in i..i1 {
        let wr = w_row(i);
        for r in 0..rows {
            let xi = x[r * k + i];
            for (o, &wv) in acc[r * n..(r + 1) * n].iter_mut().zip(wr) {
                *o += xi * wv;
            }
        }
    }
}

super::multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn slab_dispatch(
        x: &[f32],
        w: &[f32],
        acc: &mut [f32],
        i0: usize,
        i1: usize,
        k: usize,
        n: usize,
    ) => slab;
}

/// `y = x · w + b` (`rows × n`, row-major): the weight's rows in fixed slabs of [`K_CHUNK`]
/// over rayon's threads, each slab's partial sums then added in order after the bias.
fn gemv(x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32], rows: usize, k: usize, n: usize) {
    let parts: Vec<Vec<f32>> = (0..k.div_ceil(K_CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; rows * n];
            let (i0, i1) = (c * K_CHUNK, ((c + 1) * K_CHUNK).min(k));
            slab_dispatch(x, w, &mut acc, i0, i1, k, n);
            acc
        })
        .collect();
    for out in y.chunks_exact_mut(n) {
        match b {
            Some(b) => out.copy_from_slice(b),
            None => out.fill(0.0),
        }
    }
    for part in &parts {
        for (o, &v) in y.iter_mut().zip(part) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;

    use super::*;

    fn close(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) {
        assert_eq!(a.dims(), b.dims());
        let a = a.into_data().to_vec::<f32>().expect("f32");
        let b = b.into_data().to_vec::<f32>().expect("f32");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    /// A random `k → n` linear layer (with or without a bias) and `rows` random inputs,
    /// drawn under the RNG lock.
    fn layer_and_input(
        rows: usize,
        k: usize,
        n: usize,
        bias: bool,
    ) -> (Linear<Flex>, Tensor<Flex, 2>) {
        let device = Default::default();
        crate::unseeded(|| {
            let layer = LinearConfig::new(k, n)
                .with_bias(bias)
                .init::<Flex>(&device);
            let x = Tensor::<Flex, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), &device);
            (crate::drawn(layer), x)
        })
    }

    /// The GEMV path against burn-flex's own product (the `gemm` crate) on decoding shapes:
    /// one and three rows, widths that are and are not a multiple of the block.
    #[test]
    fn linear_matches_burns_product() {
        for (rows, k, n, bias) in [
            (1, 768, 2304, true),
            (3, 64, 200, true),
            (2, 50, 130, false),
            (5, 200, 70, true),
            (8, 3072, 96, true),
        ] {
            let (layer, x) = layer_and_input(rows, k, n, bias);
            close(linear(&layer, x.clone()), layer.forward(x));
        }
    }

    /// More rows than a GEMV takes: the product straight to `gemm` equals burn's
    /// `Linear::forward` on burn-flex bit for bit (one thread and all of them, with and
    /// without a bias).
    #[test]
    fn many_rows_equal_burns_linear_bit_for_bit() {
        for (rows, k, n, bias) in [
            (9, 70, 33, true),
            (256, 192, 200, true),
            (300, 64, 40, false),
        ] {
            let (layer, x) = layer_and_input(rows, k, n, bias);
            assert_eq!(
                super::super::tests::tensor_bits(linear(&layer, x.clone())),
                super::super::tests::tensor_bits(layer.forward(x)),
                "{rows}×{k}×{n}, bias {bias}"
            );
        }
    }

    #[test]
    fn the_tied_head_matches_burns_product() {
        let device = Default::default();
        for (rows, k, n) in [(1, 768, 1000), (4, 32, 300)] {
            let (h, w) = crate::unseeded(|| {
                (
                    Tensor::<Flex, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), &device),
                    Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 0.02), &device),
                )
            });
            close(matmul_nt(h.clone(), w.clone()), h.matmul(w.transpose()));
        }
    }

    /// The slab kernel reads four weight rows at a time but adds each output's terms in the
    /// order of the input index, as one row at a time would: against that plain loop, bit
    /// for bit (two input rows, a slab that is not a multiple of four).
    #[test]
    fn four_rows_at_a_time_add_in_the_same_order() {
        let (rows, k, n) = (2, 11, 37);
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 997.0 - 0.5;
        let x: Vec<f32> = (0..rows * k).map(value).collect();
        let w: Vec<f32> = (0..k * n).map(|i| value(i + 13)).collect();
        let start: Vec<f32> = (0..rows * n).map(|i| value(i + 101)).collect();
        let mut plain = start.clone();
        for i in 1..k {
            for r in 0..rows {
                for j in 0..n {
                    plain[r * n + j] += x[r * k + i] * w[i * n + j];
                }
            }
        }
        let mut fast = start;
        slab_dispatch(&x, &w, &mut fast, 1, k, k, n);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fast), bits(&plain));
    }

    /// The tied head's task kernel (four rows of the weight at a time) against one
    /// [`dot`] per output, bit for bit: three input rows, a block that is not a multiple of four.
    #[test]
    fn the_tied_head_task_equals_one_dot_per_output() {
        let (rows, k, columns) = (3, 40, 11);
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 997.0 - 0.5;
        let h: Vec<f32> = (0..rows * k).map(value).collect();
        let w: Vec<f32> = (0..(columns + 2) * k).map(|i| value(i + 7)).collect();
        let mut out = vec![0f32; rows * columns];
        nt_task_dispatch(&h, &w, &mut out, 2, k);
        for c in 0..columns {
            for r in 0..rows {
                let want = dot(&h[r * k..(r + 1) * k], &w[(2 + c) * k..(3 + c) * k]);
                assert_eq!(
                    out[c * rows + r].to_bits(),
                    want.to_bits(),
                    "column {c}, row {r}"
                );
            }
        }
    }

    /// More rows than a GEMV takes, and another backend: burn's own product, unchanged.
    #[test]
    fn other_shapes_and_backends_fall_back() {
        let device = Default::default();
        let (layer, x) = crate::unseeded(|| {
            let layer = crate::drawn(LinearConfig::new(16, 8).init::<Flex>(&device));
            let x = Tensor::<Flex, 2>::random([MAX_ROWS + 1, 16], Distribution::Default, &device);
            (layer, x)
        });
        let y = linear(&layer, x.clone());
        assert_eq!(
            y.into_data().to_vec::<f32>().expect("f32"),
            layer.forward(x).into_data().to_vec::<f32>().expect("f32")
        );
        type Nd = burn::backend::NdArray<f32>;
        let nd = Default::default();
        let (layer, x) = crate::unseeded(|| {
            let layer = crate::drawn(LinearConfig::new(16, 8).init::<Nd>(&nd));
            (
                layer,
                Tensor::<Nd, 2>::random([1, 16], Distribution::Default, &nd),
            )
        });
        assert_eq!(
            linear(&layer, x.clone())
                .into_data()
                .to_vec::<f32>()
                .expect("f32"),
            layer.forward(x).into_data().to_vec::<f32>().expect("f32")
        );
    }
}
