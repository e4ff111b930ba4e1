//! Greedy decoding's argmax over the tied LM head without reading all of it in f32.
//!
//! A decoding step reads every weight once; with DistilGPT-2's shape the f32 head
//! (`[50257, 768]`, 154 MB) is half of those bytes. [`HeadIndex`] keeps an int8 copy of the
//! head (a scale per row; 39 MB) and a bound, per row, on how far the int8 estimate of that
//! row's logit can be from the f32 logit [`super::matmul_nt`] computes. A step estimates every
//! logit from the int8 copy, keeps the rows whose upper bound reaches the best lower bound,
//! and computes only those in f32, with the same dot product as the full head. So the token
//! is the full argmax's, bit for bit (ties go to the lowest id, as a scan of all the logits
//! would): the rows left out are provably below the maximum.
//!
//! The bound for row `v` with hidden state `h` (`‖h‖₁` its L1 norm, `k` its width):
//! - int8 rounding: `|h·w_v − h·(s_v q_v)| ≤ ‖h‖₁ · e_v`, with `e_v` the row's largest
//!   `|w − s_v q|`, measured when the index is built;
//! - f32 rounding of the two dot products: each within `γ · ‖h‖₁ · max|row|`, with
//!   `γ = (k + 32) · 2⁻²³` (more than the `k · 2⁻²⁴` of a sum of `k` products).

use std::any::TypeId;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_flex::FlexTensor;
use parking_lot::Mutex;
use rayon::prelude::*;

use super::{LANES, cast, dot};
use crate::Flex;

/// Rows of the head per rayon task.
const BLOCK: usize = 512;

/// An int8 copy of a `[rows, k]` f32 head, with what bounds its error (see the module).
#[derive(Debug, Clone)]
pub struct HeadIndex {
    q: Vec<i8>,
    scale: Vec<f32>,
    /// Per row: `e_v + γ · (max|w_v| + 127 · s_v)`; times `‖h‖₁` it bounds the distance of
    /// the estimate from the f32 logit. Infinite for a row with a non-finite weight.
    slack: Vec<f64>,
    rows: usize,
    k: usize,
}

impl HeadIndex {
    /// Indexes `w` (`rows × k`, row-major).
    ///
    /// # Panics
    /// When `k` is 0 or does not divide `w.len()`.
    #[must_use]
    pub fn new(w: &[f32], k: usize) -> Self {
        assert!(k > 0 && w.len().is_multiple_of(k), "a [rows, {k}] head");
        let rows = w.len() / k;
        let gamma = (k as f64 + 32.0) * f64::from(f32::EPSILON);
        let mut q = vec![0i8; w.len()];
        let mut scale = vec![0f32; rows];
        let mut err = vec![0f32; rows];
        q.par_chunks_mut(BLOCK * k)
            .zip(scale.par_chunks_mut(BLOCK))
            .zip(err.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(|(b, ((q, s), e))| {
                let w = &w[b * BLOCK * k..(b * BLOCK + s.len()) * k];
                quantize_block(w, q, s, e, k);
            });
        // The f32 error measurement itself rounds: widen it by a few ulps of the row's scale.
        let slack = err
            .iter()
            .zip(&scale)
            .map(|(&e, &s)| {
                let (e, s) = (f64::from(e), f64::from(s));
                let max = 127.0 * s;
                e * (1.0 + 1e-6) + max * 1e-6 + gamma * (max + 127.0 * s)
            })
            .collect();
        Self {
            q,
            scale,
            slack,
            rows,
            k,
        }
    }

    /// The id `v` with the largest `dot(h, w_v)` (the lowest on a tie; NaN logits never win,
    /// and 0 when none is above −∞), as a scan of [`super::matmul_nt`]'s logits picks it. `w`
    /// must be the head the index was built from.
    ///
    /// # Panics
    /// When `h` or `w` does not have the index's shape.
    #[must_use]
    pub fn argmax(&self, h: &[f32], w: &[f32]) -> u32 {
        assert!(h.len() == self.k && w.len() == self.rows * self.k, "shapes");
        match self.candidates(h) {
            Some(ids) => scan(h, w, self.k, ids.into_iter()),
            None => scan(h, w, self.k, 0..self.rows),
        }
    }

    /// The rows whose f32 logit may be the largest, increasing; `None` when `h` is not
    /// finite (then every row is).
    fn candidates(&self, h: &[f32]) -> Option<Vec<usize>> {
        let l1: f64 = h.iter().map(|x| f64::from(x.abs())).sum();
        if !l1.is_finite() {
            return None;
        }
        let mut estimate = vec![0f32; self.rows];
        estimate
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(b, out)| estimate_task(h, &self.q, &self.scale, out, b * BLOCK, self.k));
        // Slightly wider than the bound: l1 itself and the f64 products round.
        let widen = |slack: f64| l1 * slack * (1.0 + 1e-9) + f64::MIN_POSITIVE;
        let best_low = estimate
            .iter()
            .zip(&self.slack)
            .map(|(&a, &s)| f64::from(a) - widen(s))
            .fold(f64::NEG_INFINITY, f64::max);
        Some(
            estimate
                .iter()
                .zip(&self.slack)
                .enumerate()
                .filter(|(_, (a, s))| f64::from(**a) + widen(**s) >= best_low)
                .map(|(v, _)| v)
                .collect(),
        )
    }
}

/// Whether [`head_argmax`] can run on backend `B` (burn-flex): asked before the forward pass
/// that produces its hidden state, so that a caller falls back without having read anything.
#[must_use]
pub fn head_argmax_runs_on<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// A model's [`HeadIndex`], kept across decoding calls with the head it was built from.
///
/// The index stays valid while the head is the very tensor it indexed: the cache holds a
/// clone of that burn-flex tensor, whose storage is shared and copied on write, so those
/// bytes can neither change nor be freed (and their address reused) while it is named here.
/// A head with other storage (new weights loaded, a resize, a training step) rebuilds it.
/// Clones of a model share one cache.
#[derive(Clone, Default)]
pub struct HeadCache(Arc<Mutex<Option<Indexed>>>);

/// The head a [`HeadIndex`] was built from, and the index.
struct Indexed {
    head: FlexTensor,
    index: Arc<HeadIndex>,
}

impl std::fmt::Debug for HeadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = self.0.lock().is_some();
        f.debug_struct("HeadCache").field("built", &built).finish()
    }
}

impl HeadCache {
    /// The index of `head` (`[rows, k]`, f32, contiguous as `w`), built unless the cache
    /// already holds this head's.
    fn index_of(&self, head: &FlexTensor, w: &[f32], k: usize) -> Arc<HeadIndex> {
        let mut slot = self.0.lock();
        let same = |cached: &Indexed| {
            cached.index.k == k
                && cached
                    .head
                    .as_slice::<f32>()
                    .is_some_and(|c| std::ptr::eq(c, w))
        };
        match slot.as_ref() {
            Some(cached) if same(cached) => Arc::clone(&cached.index),
            _ => {
                let index = Arc::new(HeadIndex::new(w, k));
                *slot = Some(Indexed {
                    head: head.clone(),
                    index: Arc::clone(&index),
                });
                index
            }
        }
    }
}

/// The argmax of `hidden · headᵀ` (`hidden`: `[1, k]`, `head`: `[rows, k]`) through the
/// int8 index of `head` in `cache` (built on first use): the id a scan of
/// [`super::matmul_nt`]'s logits picks. `None` off burn-flex or for a head that is not a
/// plain f32 matrix.
pub fn head_argmax<B: Backend>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    cache: &HeadCache,
) -> Option<u32> {
    let [rows, k] = head.dims();
    if hidden.dims() != [1, k] {
        return None;
    }
    let head = cast::<B, Flex, 2>(head).ok()?;
    let h = crate::host::read_f32(hidden);
    let TensorPrimitive::Float(head) = head.into_primitive() else {
        return None;
    };
    let w = (head.dtype() == burn::tensor::DType::F32)
        .then(|| head.as_slice::<f32>())
        .flatten()
        .filter(|w| w.len() == rows * k)?;
    Some(cache.index_of(&head, w, k).argmax(&h, w))
}

/// Quantizes the rows of `w` into `q`: per row its scale `s = max|w| / 127` and the largest
/// `|w − s·q|` (infinite for a row with a non-finite weight).
#[inline(always)]
fn quantize_rows(w: &[f32], q: &mut [i8], scale: &mut [f32], err: &mut [f32], k: usize) {
    let rows = w.chunks_exact(k).zip(q.chunks_exact_mut(k));
    for ((row, qv), (s, e)) in rows.zip(scale.iter_mut().zip(err.iter_mut())) {
        let (max, finite) = max_abs(row);
        if !finite {
            (*s, *e) = (0.0, f32::INFINITY);
            qv.fill(0);
        } else if max == 0.0 {
            (*s, *e) = (0.0, 0.0);
            qv.fill(0);
        } else {
            let step = max / 127.0;
            (*s, *e) = (step, quantize_row(row, qv, step, 127.0 / max));
        }
    }
}

/// `max |x|` over `row`, and whether every `x` is finite, in [`LANES`] lanes (a fold through
/// `f32::max` stays scalar).
#[inline(always)]
fn max_abs(row: &[f32]) -> (f32, bool) {
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut max = [0f32; LANES];
    // x · 0 is 0 for finite x, NaN for ±inf and NaN.
    let mut zero = [0f32; LANES];
    for c in chunks {
        for l in 0..LANES {
            let a = c[l].abs();
            max[l] = if a > max[l] { a } else { max[l] };
            zero[l] += c[l] * 0.0;
        }
    }
    let mut m = 0f32;
    let mut z = 0f32;
    for l in 0..LANES {
        m = if max[l] > m { max[l] } else { m };
        z += zero[l];
    }
    for x in tail {
        m = if x.abs() > m { x.abs() } else { m };
        z += x * 0.0;
    }
    (m, z == 0.0)
}

/// Writes `round(x / step)` of each `x` of `row` to `q` and returns the largest `|x − step·q|`.
#[inline(always)]
fn quantize_row(row: &[f32], q: &mut [i8], step: f32, inv: f32) -> f32 {
    let mut worst = [0f32; LANES];
    let (chunks, tail) = row.as_chunks::<LANES>();
    let (qc, qt) = q.as_chunks_mut::<LANES>();
    for (c, out) in chunks.iter().zip(qc.iter_mut()) {
        for l in 0..LANES {
            let v = (c[l] * inv).round_ties_even().clamp(-127.0, 127.0);
            out[l] = v as i8;
            let d = (c[l] - step * v).abs();
            worst[l] = if d > worst[l] { d } else { worst[l] };
        }
    }
    let mut w = 0f32;
    for d in worst {
        w = if d > w { d } else { w };
    }
    for (x, out) in tail.iter().zip(qt.iter_mut()) {
        let v = (x * inv).round_ties_even().clamp(-127.0, 127.0);
        *out = v as i8;
        let d = (x - step * v).abs();
        w = if d > w { d } else { w };
    }
    w
}

super::multiversion! {
    fn quantize_block(w: &[f32], q: &mut [i8], scale: &mut [f32], err: &mut [f32], k: usize) => quantize_rows;
}

/// The lowest id with the largest `dot(h, w_v)` among `ids` (increasing), NaN never winning.
fn scan(h: &[f32], w: &[f32], k: usize, ids: impl Iterator<Item = usize>) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for v in ids {
        let logit = dot(h, &w[v * k..(v + 1) * k]);
        if logit > best.1 {
            best = (v, logit);
        }
    }
    best.0 as u32
}

/// `out[i] = s_v · Σ h ⊙ q_v` for the rows `v = v0 + i`, four rows at a time: four
/// independent sums and four streams of the copy in flight. (No closures: a closure is
/// compiled without the caller's target features, and its loop stays scalar.)
#[inline(always)]
fn estimate_rows(h: &[f32], q: &[i8], scale: &[f32], out: &mut [f32], v0: usize, k: usize) {
    let q = &q[v0 * k..(v0 + out.len()) * k];
    let scale = &scale[v0..v0 + out.len()];
    let mut i = 0;
    while i + 4 <= out.len() {
        let rows = &q[i * k..(i + 4) * k];
        let (a, b) = rows.split_at(2 * k);
        let ((r0, r1), (r2, r3)) = (a.split_at(k), b.split_at(k));
        let sums = dot4_i8(h, [r0, r1, r2, r3]);
        for j in 0..4 {
            out[i + j] = sums[j] * scale[i + j];
        }
        i += 4;
    }
    while i < out.len() {
        out[i] = dot_i8(h, &q[i * k..(i + 1) * k]) * scale[i];
        i += 1;
    }
}

/// `Σ h ⊙ row` over [`LANES`] f32 lanes.
#[inline(always)]
fn dot_i8(h: &[f32], row: &[i8]) -> f32 {
    let (hc, ht) = h.as_chunks::<LANES>();
    let (rc, rt) = row.as_chunks::<LANES>();
    let mut acc = [0f32; LANES];
    for (x, y) in hc.iter().zip(rc) {
        for l in 0..LANES {
            acc[l] += x[l] * f32::from(y[l]);
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in ht.iter().zip(rt) {
        sum += x * f32::from(*y);
    }
    sum
}

/// [`dot_i8`] of `h` with four rows in one pass over `h`.
#[inline(always)]
fn dot4_i8(h: &[f32], rows: [&[i8]; 4]) -> [f32; 4] {
    let (hc, ht) = h.as_chunks::<LANES>();
    let [c0, c1, c2, c3] = rows.map(|r| r.as_chunks::<LANES>().0);
    let mut acc = [[0f32; LANES]; 4];
    for ((((x, y0), y1), y2), y3) in hc.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        for l in 0..LANES {
            acc[0][l] += x[l] * f32::from(y0[l]);
            acc[1][l] += x[l] * f32::from(y1[l]);
            acc[2][l] += x[l] * f32::from(y2[l]);
            acc[3][l] += x[l] * f32::from(y3[l]);
        }
    }
    let mut out = [0f32; 4];
    for j in 0..4 {
        let mut sum = acc[j].iter().sum::<f32>();
        let tail = &rows[j][hc.len() * LANES..];
        for (x, y) in ht.iter().zip(tail) {
            sum += x * f32::from(*y);
        }
        out[j] = sum;
    }
    out
}

/// [`estimate_rows`] with AVX-512 intrinsics where the CPU has them (LLVM leaves the int8 →
/// f32 conversions of the portable loop scalar), else the portable loop compiled for the
/// widest instruction set. The estimates differ in their last bits between the two, which
/// the bound covers: the token is the same.
fn estimate_task(h: &[f32], q: &[i8], scale: &[f32], out: &mut [f32], v0: usize, k: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::isa() == super::Isa::Avx512 {
        // SAFETY: the CPU has AVX-512F.
        unsafe { avx512::estimate_rows(h, q, scale, out, v0, k) };
        return;
    }
    estimate_block(h, q, scale, out, v0, k);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm512_cvtepi8_epi32, _mm512_cvtepi32_ps, _mm512_fmadd_ps,
        _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps,
    };

    /// [`super::estimate_rows`] eight rows at a time (eight streams in flight: read from
    /// memory, four took about twice as long), 16 lanes per instruction.
    #[target_feature(enable = "avx512f")]
    pub(super) fn estimate_rows(
        h: &[f32],
        q: &[i8],
        scale: &[f32],
        out: &mut [f32],
        v0: usize,
        k: usize,
    ) {
        // Every load below stays inside these bounds.
        assert!(h.len() >= k && (v0 + out.len()) * k <= q.len() && v0 + out.len() <= scale.len());
        let chunks = k / 16;
        let mut i = 0;
        while i < out.len() {
            let n = (out.len() - i).min(8);
            let mut acc = [_mm512_setzero_ps(); 8];
            for c in 0..chunks {
                // SAFETY: c·16 + 16 ≤ k ≤ h.len() (asserted above).
                let x = unsafe { _mm512_loadu_ps(h.as_ptr().add(c * 16)) };
                for (j, a) in acc.iter_mut().enumerate().take(n) {
                    let at = (v0 + i + j) * k + c * 16;
                    // SAFETY: at + 16 ≤ (v0 + out.len()) · k ≤ q.len() (asserted above).
                    let y = unsafe { _mm_loadu_si128(q.as_ptr().add(at).cast::<__m128i>()) };
                    // One rounding instead of two: still within the bound's γ.
                    *a = _mm512_fmadd_ps(x, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(y)), *a);
                }
            }
            for (j, a) in acc.iter().enumerate().take(n) {
                let v = v0 + i + j;
                let mut sum = _mm512_reduce_add_ps(*a);
                for t in chunks * 16..k {
                    sum += h[t] * f32::from(q[v * k + t]);
                }
                out[i + j] = sum * scale[v];
            }
            i += n;
        }
    }
}

super::multiversion! {
    fn estimate_block(h: &[f32], q: &[i8], scale: &[f32], out: &mut [f32], v0: usize, k: usize) => estimate_rows;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::tensor_bits;

    /// A full scan of the f32 logits, as decoding's `pick` does.
    fn full(h: &[f32], w: &[f32], k: usize) -> u32 {
        scan(h, w, k, 0..w.len() / k)
    }

    /// Deterministic pseudo-random values in (−1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn the_estimate_is_within_its_bound_and_the_argmax_is_the_full_scans() {
        for (rows, k, seed) in [(1000, 96, 1), (3001, 100, 2), (17, 768, 3)] {
            let w: Vec<f32> = values(rows * k, seed).iter().map(|v| v * 0.05).collect();
            let index = HeadIndex::new(&w, k);
            for t in 0..20 {
                let h: Vec<f32> = values(k, 100 + t).iter().map(|v| v * 3.0).collect();
                assert_eq!(index.argmax(&h, &w), full(&h, &w, k), "rows {rows}, h {t}");
                let l1: f64 = h.iter().map(|x| f64::from(x.abs())).sum();
                let mut estimate = vec![0f32; rows];
                estimate_task(&h, &index.q, &index.scale, &mut estimate, 0, k);
                let mut portable = vec![0f32; rows];
                estimate_rows(&h, &index.q, &index.scale, &mut portable, 0, k);
                for v in 0..rows {
                    let exact = f64::from(dot(&h, &w[v * k..(v + 1) * k]));
                    let gap = (exact - f64::from(estimate[v])).abs();
                    assert!(gap <= l1 * index.slack[v], "row {v}: {gap}");
                    let gap = (exact - f64::from(portable[v])).abs();
                    assert!(gap <= l1 * index.slack[v], "row {v}, portable: {gap}");
                }
            }
        }
    }

    /// Near-ties the int8 copy cannot tell apart: rows equal but for the last bits, and exact
    /// duplicates (the lowest id wins), are settled in f32.
    #[test]
    fn near_ties_are_settled_in_f32_and_exact_ties_go_to_the_lowest_id() {
        let k = 64;
        let rows = 300;
        let mut w: Vec<f32> = values(rows * k, 7).iter().map(|v| v * 0.02).collect();
        let h = values(k, 8);
        let top = full(&h, &w, k) as usize;
        let row: Vec<f32> = w[top * k..(top + 1) * k].to_vec();
        // Row 250: the winner with its term of largest |h| one ulp larger; row 40: a copy.
        let i = (0..k)
            .max_by(|&a, &b| h[a].abs().total_cmp(&h[b].abs()))
            .unwrap_or(0);
        let mut nudged = row.clone();
        nudged[i] = if h[i] > 0.0 {
            nudged[i].next_up()
        } else {
            nudged[i].next_down()
        };
        w[250 * k..251 * k].copy_from_slice(&nudged);
        w[40 * k..41 * k].copy_from_slice(&row);
        let index = HeadIndex::new(&w, k);
        let want = full(&h, &w, k);
        assert_eq!(index.argmax(&h, &w), want);
        // The int8 copies of the three rows are equal: only the f32 products can order them.
        assert_eq!(index.q[40 * k..41 * k], index.q[top * k..(top + 1) * k]);
        assert!(want == 40 || want == 250 || want as usize == top, "{want}");
    }

    #[test]
    fn non_finite_values_fall_back_to_the_full_scan() {
        let k = 32;
        let mut w: Vec<f32> = values(200 * k, 9).iter().map(|v| v * 0.1).collect();
        w[77 * k + 3] = f32::NAN;
        w[150 * k + 5] = f32::INFINITY;
        let index = HeadIndex::new(&w, k);
        let mut h = values(k, 10);
        assert_eq!(index.argmax(&h, &w), full(&h, &w, k));
        h[4] = f32::NAN;
        assert_eq!(index.argmax(&h, &w), full(&h, &w, k));
        assert_eq!(index.argmax(&vec![0.0; k], &vec![0.0; 200 * k]), 0);
    }

    /// The f32 logits the index compares are [`super::super::matmul_nt`]'s, bit for bit.
    #[test]
    fn its_dot_products_are_the_heads() {
        use burn::prelude::*;
        let (rows, k) = (300, 48);
        let w = values(rows * k, 11);
        let h = values(k, 12);
        let device = Default::default();
        let wt =
            Tensor::<crate::Flex, 2>::from_data(TensorData::new(w.clone(), [rows, k]), &device);
        let ht = Tensor::<crate::Flex, 2>::from_data(TensorData::new(h.clone(), [1, k]), &device);
        let head: Vec<u32> = (0..rows)
            .map(|v| dot(&h, &w[v * k..(v + 1) * k]).to_bits())
            .collect();
        assert_eq!(tensor_bits(super::super::matmul_nt(ht, wt)), head);
    }

    /// The cache keeps one index per head tensor: the same tensor (or a clone of it, which
    /// shares its storage) reuses it; a head with other storage, even equal values, and a
    /// head whose values changed get their own, and the argmax follows the head given.
    #[test]
    fn the_cache_reuses_an_index_only_for_the_same_head() {
        use burn::prelude::*;
        let (rows, k) = (700, 64);
        let device = Default::default();
        let w = values(rows * k, 21);
        let tensor = |w: Vec<f32>| {
            Tensor::<crate::Flex, 2>::from_data(TensorData::new(w, [rows, k]), &device)
        };
        let h = values(k, 22);
        let hidden =
            || Tensor::<crate::Flex, 2>::from_data(TensorData::new(h.clone(), [1, k]), &device);
        let (head, cache) = (tensor(w.clone()), HeadCache::default());
        let built = |head: &Tensor<crate::Flex, 2>| {
            assert_eq!(
                head_argmax(hidden(), head.clone(), &cache),
                Some(full(&h, &tensor_f32(head), k))
            );
            let slot = cache.0.lock();
            Arc::clone(&slot.as_ref().expect("built").index)
        };
        let first = built(&head);
        assert!(
            Arc::ptr_eq(&first, &built(&head.clone())),
            "the same head reuses it"
        );
        let equal = built(&tensor(w.clone()));
        assert!(!Arc::ptr_eq(&first, &equal), "other storage rebuilds it");
        let negated = head.clone().neg();
        let other = built(&negated);
        assert!(!Arc::ptr_eq(&equal, &other));
        assert_ne!(
            full(&h, &tensor_f32(&negated), k),
            full(&h, &w, k),
            "the two heads pick different ids, so a stale index would be seen"
        );
        assert!(
            !Arc::ptr_eq(&other, &built(&head)),
            "back to the first head: rebuilt"
        );
    }

    fn tensor_f32(t: &Tensor<crate::Flex, 2>) -> Vec<f32> {
        crate::host::read_f32(t.clone())
    }
}
