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
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{avx2_fma, back, cast};
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
/// it), as [`Linear::forward`] computes it.
pub fn linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let x = match cast::<B, Flex, 2>(x) {
        Ok(x) if x.dims()[0] <= MAX_ROWS => x,
        Ok(x) => return layer.forward(back(x)),
        Err(x) => return layer.forward(x),
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
    gemv_dispatch(xs, ws, bs, &mut y, rows, k, n);
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
    nt_dispatch(hs, ws, &mut y, k, n);
    back(Tensor::<Flex, 2>::from_data(
        TensorData::new(y, [rows, n]),
        &h.device(),
    ))
}

/// `y[r, v] = dot(h[r], w[v])`, the rows of `w` by blocks over rayon's threads.
#[inline(always)]
fn nt(h: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    let rows = h.len() / k;
    let mut by_column = vec![0f32; rows * n];
    by_column
        .par_chunks_mut(rows * COLUMNS)
        .enumerate()
        .for_each(|(block, out)| {
            let v0 = block * COLUMNS;
            for (c, o) in out.chunks_exact_mut(rows).enumerate() {
                let wv = &w[(v0 + c) * k..(v0 + c + 1) * k];
                for (r, o) in o.iter_mut().enumerate() {
                    *o = super::dot(&h[r * k..(r + 1) * k], wv);
                }
            }
        });
    for (v, col) in by_column.chunks_exact(rows).enumerate() {
        for (r, &val) in col.iter().enumerate() {
            y[r * n + v] = val;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn nt_avx2(h: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    nt(h, w, y, k, n);
}

fn nt_dispatch(h: &[f32], w: &[f32], y: &mut [f32], k: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { nt_avx2(h, w, y, k, n) };
    }
    nt(h, w, y, k, n);
}

/// `acc[r, j] += Σ_{i0 ≤ i < i1} x[r, i] · w[i, j]`: a contiguous slab of `w`'s rows, each
/// row read once for every input row.
#[inline(always)]
fn slab(x: &[f32], w: &[f32], acc: &mut [f32], i0: usize, i1: usize, k: usize, n: usize) {
    let rows = x.len() / k;
    for i in i0..i1 {
        let wr = &w[i * n..(i + 1) * n];
        for r in 0..rows {
            let xi = x[r * k + i];
            for (o, &wv) in acc[r * n..(r + 1) * n].iter_mut().zip(wr) {
                *o += xi * wv;
            }
        }
    }
}

/// `y = x · w + b` (`rows × n`, row-major): the weight's rows in fixed slabs of [`K_CHUNK`]
/// over rayon's threads, each slab's partial sums then added in order after the bias.
#[inline(always)]
fn gemv(x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32], rows: usize, k: usize, n: usize) {
    let parts: Vec<Vec<f32>> = (0..k.div_ceil(K_CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut acc = vec![0f32; rows * n];
            slab(
                x,
                w,
                &mut acc,
                c * K_CHUNK,
                ((c + 1) * K_CHUNK).min(k),
                k,
                n,
            );
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemv_avx2(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    rows: usize,
    k: usize,
    n: usize,
) {
    gemv(x, w, b, y, rows, k, n);
}

fn gemv_dispatch(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    rows: usize,
    k: usize,
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has the features the function was compiled for.
        return unsafe { gemv_avx2(x, w, b, y, rows, k, n) };
    }
    gemv(x, w, b, y, rows, k, n);
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

    /// The GEMV path against burn-flex's own product (the `gemm` crate) on decoding shapes:
    /// one and three rows, widths that are and are not a multiple of the block.
    #[test]
    fn linear_matches_burns_product() {
        let device = Default::default();
        for (rows, k, n, bias) in [
            (1, 768, 2304, true),
            (3, 64, 200, true),
            (2, 50, 130, false),
            (5, 200, 70, true),
            (8, 3072, 96, true),
        ] {
            let layer = LinearConfig::new(k, n)
                .with_bias(bias)
                .init::<Flex>(&device);
            let x = Tensor::<Flex, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), &device);
            close(linear(&layer, x.clone()), layer.forward(x));
        }
    }

    #[test]
    fn the_tied_head_matches_burns_product() {
        let device = Default::default();
        for (rows, k, n) in [(1, 768, 1000), (4, 32, 300)] {
            let h = Tensor::<Flex, 2>::random([rows, k], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 0.02), &device);
            close(matmul_nt(h.clone(), w.clone()), h.matmul(w.transpose()));
        }
    }

    /// More rows than a GEMV takes, and another backend: burn's own product, unchanged.
    #[test]
    fn other_shapes_and_backends_fall_back() {
        let device = Default::default();
        let layer = LinearConfig::new(16, 8).init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([MAX_ROWS + 1, 16], Distribution::Default, &device);
        let y = linear(&layer, x.clone());
        assert_eq!(
            y.into_data().to_vec::<f32>().expect("f32"),
            layer.forward(x).into_data().to_vec::<f32>().expect("f32")
        );
        type Nd = burn::backend::NdArray<f32>;
        let nd = Default::default();
        let layer = LinearConfig::new(16, 8).init::<Nd>(&nd);
        let x = Tensor::<Nd, 2>::random([1, 16], Distribution::Default, &nd);
        assert_eq!(
            linear(&layer, x.clone())
                .into_data()
                .to_vec::<f32>()
                .expect("f32"),
            layer.forward(x).into_data().to_vec::<f32>().expect("f32")
        );
    }
}
