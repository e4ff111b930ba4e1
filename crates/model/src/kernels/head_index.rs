//! Greedy decoding's argmax over the tied LM head without reading all of it in f32.
//!
//! A decoding step reads every weight once; with DistilGPT-2's shape the f32 head
//! (`[50257, 768]`, 154 MB) is half of those bytes. [`HeadIndex`] keeps an int8 copy of the
//! head (a scale per row; 39 MB) and a bound, per row, on how far the estimate of that row's
//! logit can be from the f32 logit [`super::matmul_nt`] computes. A step estimates every
//! logit from the int8 copy, keeps the rows whose upper bound reaches the best lower bound,
//! and computes only those in f32, with the same dot product as the full head. So the token
//! is the full argmax's, bit for bit (ties go to the lowest id, as a scan of all the logits
//! would): the rows left out are provably below the maximum.
//!
//! The estimate multiplies integers: the hidden state rounded to int16 (`h ≈ t · h16`, one
//! step `t` for the whole vector) against the int8 rows, summed exactly in i32 (the step is
//! chosen so that no sum can overflow), then scaled in f64. The bound for row `v` with
//! hidden state `h` (`‖h‖₁` its L1 norm, `k` its width):
//! - int8 rounding of the row: `|h·w_v − h·(s_v q_v)| ≤ ‖h‖₁ · e_v`, with `e_v` the row's
//!   largest `|w − s_v q|`, measured when the index is built;
//! - int16 rounding of `h`: `|(h − t h16)·(s_v q_v)| ≤ d · s_v ‖q_v‖₁`, with `d` the largest
//!   `|h − t h16|`, measured at each step;
//! - f32 rounding of the f32 logit: within `γ · ‖h‖₁ · max|w_v|`, with `γ = (k + 32) · 2⁻²³`
//!   (more than the `k · 2⁻²⁴` of a sum of `k` products), and a little more for the f64
//!   scaling of the estimate.
//!
//! The copy is laid out for one sequential read: groups of [`GROUP`] rows, each group's
//! columns in chunks of [`CHUNK`] with the group's rows side by side. Read row after row, a
//! step ran at about half the memory bandwidth; read in order, with one VNNI instruction per
//! 32 weights, the read itself is most of its time.

use std::any::TypeId;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_flex::FlexTensor;
use parking_lot::Mutex;
use rayon::prelude::*;

use super::{LANES, cast, dot};
use crate::Flex;

/// Rows of the head per rayon task (a multiple of [`GROUP`]).
const BLOCK: usize = 512;
/// Rows whose estimates one pass over a group of the copy computes.
const GROUP: usize = 8;
/// Columns of one row side by side in the copy: one 256-bit load.
const CHUNK: usize = 32;

/// An int8 copy of a `[rows, k]` f32 head, with what bounds its error (see the module).
#[derive(Debug, Clone)]
pub struct HeadIndex {
    /// The copy, interleaved (see the module): rows padded to a multiple of [`GROUP`] and
    /// columns to [`Self::width`] with zeros.
    q: Vec<i8>,
    scale: Vec<f32>,
    /// Per row: `e_v + γ · (max|w_v| + 127 · s_v)`; times `‖h‖₁` it bounds the distance of
    /// the estimate from the f32 logit, but for `h`'s int16 rounding. Infinite for a row with
    /// a non-finite weight.
    slack: Vec<f64>,
    /// Per row: `s_v · ‖q_v‖₁`; times the largest int16 rounding error of `h` it bounds that
    /// rounding's effect on the estimate.
    norm: Vec<f64>,
    rows: usize,
    k: usize,
    /// `k` rounded up to a multiple of [`CHUNK`].
    width: usize,
}

impl HeadIndex {
    /// Indexes `w` (`rows × k`, row-major).
    ///
    /// # Panics
    /// When `k` is 0 or does not divide `w.len()`, or when a head `k` wide does not
    /// [`Self::fits`].
    #[must_use]
    pub fn new(w: &[f32], k: usize) -> Self {
        assert!(k > 0 && w.len().is_multiple_of(k), "a [rows, {k}] head");
        let rows = w.len() / k;
        assert!(Self::fits(k), "a head {k} wide");
        let width = k.div_ceil(CHUNK) * CHUNK;
        let gamma = (k as f64 + 32.0) * f64::from(f32::EPSILON);
        let mut q = vec![0i8; rows.div_ceil(GROUP) * GROUP * width];
        let (mut scale, mut err, mut norm) = (vec![0f32; rows], vec![0f32; rows], vec![0.0; rows]);
        q.par_chunks_mut(BLOCK * width)
            .zip(scale.par_chunks_mut(BLOCK))
            .zip(err.par_chunks_mut(BLOCK).zip(norm.par_chunks_mut(BLOCK)))
            .enumerate()
            .for_each(|(b, ((q, s), (e, n)))| {
                let w = &w[b * BLOCK * k..(b * BLOCK + s.len()) * k];
                let mut flat = vec![0i8; w.len()];
                quantize_block(w, &mut flat, s, e, k);
                for ((row, n), &s) in flat.chunks_exact(k).zip(n.iter_mut()).zip(s.iter()) {
                    let l1: i64 = row.iter().map(|&x| i64::from(x).abs()).sum();
                    *n = l1 as f64 * f64::from(s);
                }
                interleave(&flat, q, k, width);
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
            norm,
            rows,
            k,
            width,
        }
    }

    /// Whether a head `k` wide can be indexed: its hidden states keep at least 9 bits in
    /// int16 without an i32 sum overflowing (`k` up to about 66,000).
    #[must_use]
    pub fn fits(k: usize) -> bool {
        k > 0 && hidden_max(k.div_ceil(CHUNK) * CHUNK) >= 256
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
        let hidden = Hidden::new(h, self.width)?;
        let mut upper = vec![0f64; self.rows];
        let best_low = upper
            .par_chunks_mut(BLOCK)
            .enumerate()
            .map(|(b, upper)| self.bounds(&hidden, b * BLOCK, upper))
            .reduce(|| f64::NEG_INFINITY, f64::max);
        Some((0..self.rows).filter(|&v| upper[v] >= best_low).collect())
    }

    /// Writes the upper bound of the logits of rows `v0..` into `upper` and returns their
    /// largest lower bound.
    fn bounds(&self, hidden: &Hidden, v0: usize, upper: &mut [f64]) -> f64 {
        let mut sums = [0i32; BLOCK];
        let sums = &mut sums[..upper.len().div_ceil(GROUP) * GROUP];
        estimate_task(&hidden.h16, &self.q, sums, v0 / GROUP, self.width);
        let mut best_low = f64::NEG_INFINITY;
        for (i, (up, &sum)) in upper.iter_mut().zip(sums.iter()).enumerate() {
            let (estimate, radius) = self.estimate(hidden, v0 + i, sum);
            *up = estimate + radius;
            best_low = best_low.max(estimate - radius);
        }
        best_low
    }

    /// Row `v`'s estimate from its integer sum, and how far the f32 logit can be from it.
    fn estimate(&self, hidden: &Hidden, v: usize, sum: i32) -> (f64, f64) {
        let estimate = f64::from(sum) * hidden.step * f64::from(self.scale[v]);
        // Slightly wider than the bound: the f64 products round.
        let radius = (hidden.l1 * self.slack[v] + hidden.err * self.norm[v]) * (1.0 + 1e-9)
            + f64::MIN_POSITIVE;
        (estimate, radius)
    }
}

/// The largest `|h16|` for which a sum of `width` products `h16 · q` (`|q| ≤ 127`) fits
/// in an i32.
fn hidden_max(width: usize) -> i32 {
    let fits = i32::MAX as usize / (127 * width);
    fits.min(i16::MAX as usize) as i32
}

/// A hidden state rounded to int16 for the estimate: `h ≈ step · h16`.
struct Hidden {
    /// Padded with zeros to the index's width.
    h16: Vec<i16>,
    step: f64,
    /// The largest `|h − step · h16|`, widened by its own rounding.
    err: f64,
    /// `‖h‖₁`.
    l1: f64,
}

impl Hidden {
    /// `None` when `h` is not finite.
    fn new(h: &[f32], width: usize) -> Option<Self> {
        let l1: f64 = h.iter().map(|x| f64::from(x.abs())).sum();
        if !l1.is_finite() {
            return None;
        }
        let max = h.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
        let top = f64::from(hidden_max(width));
        let step = if max > 0.0 { max / top } else { 1.0 };
        let mut h16 = vec![0i16; width];
        let mut err = 0f64;
        for (x, y) in h.iter().zip(h16.iter_mut()) {
            let r = (f64::from(*x) / step).round().clamp(-top, top);
            *y = r as i16;
            err = err.max((f64::from(*x) - step * r).abs());
        }
        // `step · r` rounds once in f64.
        let err = err + max * 1e-15;
        Some(Self { h16, step, err, l1 })
    }
}

/// Copies the rows of `flat` (`k` wide, row-major) into `q` in the interleaved layout of
/// [`HeadIndex::q`] (rows padded to a multiple of [`GROUP`], columns to `width`).
fn interleave(flat: &[i8], q: &mut [i8], k: usize, width: usize) {
    for (r, row) in flat.chunks_exact(k).enumerate() {
        let group = &mut q[(r / GROUP) * GROUP * width..][..GROUP * width];
        for (c, part) in row.chunks(CHUNK).enumerate() {
            let at = c * GROUP * CHUNK + (r % GROUP) * CHUNK;
            group[at..at + part.len()].copy_from_slice(part);
        }
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
/// [`super::matmul_nt`]'s logits picks. `None` off burn-flex, for a head that is not a
/// plain f32 matrix, or one too wide for the index ([`HeadIndex::fits`]).
pub fn head_argmax<B: Backend>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    cache: &HeadCache,
) -> Option<u32> {
    let [rows, k] = head.dims();
    if hidden.dims() != [1, k] || !HeadIndex::fits(k) {
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

/// `sums[g·GROUP + j] = Σ h16 ⊙ q` of row `j` of group `g0 + g` of the interleaved copy, for
/// the `sums.len() / GROUP` groups from `g0`, exactly (integers): with AVX-512 VNNI where the
/// CPU has it, else the portable loop compiled for the widest instruction set. Both give the
/// same sums.
fn estimate_task(h16: &[i16], q: &[i8], sums: &mut [i32], g0: usize, width: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512F, BW and VNNI.
        unsafe { avx512::estimate_groups(h16, q, sums, g0, width) };
        return;
    }
    estimate_block(h16, q, sums, g0, width);
}

/// [`estimate_task`]'s portable loop: each row of a group, chunk after chunk, in `i32`
/// lanes. (No closures: a closure is compiled without the caller's target features.)
#[inline(always)]
fn estimate_groups(h16: &[i16], q: &[i8], sums: &mut [i32], g0: usize, width: usize) {
    for (g, out) in sums.chunks_exact_mut(GROUP).enumerate() {
        let group = &q[(g0 + g) * GROUP * width..][..GROUP * width];
        for (j, sum) in out.iter_mut().enumerate() {
            let mut acc = [0i32; CHUNK];
            for (c, x) in h16[..width].chunks_exact(CHUNK).enumerate() {
                let row = &group[c * GROUP * CHUNK + j * CHUNK..][..CHUNK];
                for l in 0..CHUNK {
                    acc[l] += i32::from(x[l]) * i32::from(row[l]);
                }
            }
            *sum = acc.iter().sum();
        }
    }
}

super::multiversion! {
    fn estimate_block(h16: &[i16], q: &[i8], sums: &mut [i32], g0: usize, width: usize) => estimate_groups;
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm512_cvtepi8_epi16, _mm512_dpwssd_epi32, _mm512_loadu_si512,
        _mm512_reduce_add_epi32, _mm512_setzero_si512,
    };

    use super::{CHUNK, GROUP};

    /// Whether the CPU has what [`estimate_groups`] needs.
    pub(super) fn available() -> bool {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
    }

    /// [`super::estimate_groups`] with one VNNI multiply-add (32 products into 16 i32 lanes)
    /// per chunk of a row, the group's [`GROUP`] rows in flight.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn estimate_groups(
        h16: &[i16],
        q: &[i8],
        sums: &mut [i32],
        g0: usize,
        width: usize,
    ) {
        let groups = sums.len() / GROUP;
        // Every load below stays inside these bounds.
        assert!(
            width.is_multiple_of(CHUNK)
                && h16.len() >= width
                && sums.len().is_multiple_of(GROUP)
                && (g0 + groups) * GROUP * width <= q.len()
        );
        for (g, out) in sums.chunks_exact_mut(GROUP).enumerate() {
            let base = (g0 + g) * GROUP * width;
            let mut acc = [_mm512_setzero_si512(); GROUP];
            for c in 0..width / CHUNK {
                // SAFETY: c·CHUNK + CHUNK ≤ width ≤ h16.len() (asserted above).
                let x = unsafe { _mm512_loadu_si512(h16.as_ptr().add(c * CHUNK).cast()) };
                for (j, a) in acc.iter_mut().enumerate() {
                    let at = base + c * GROUP * CHUNK + j * CHUNK;
                    // SAFETY: at + CHUNK ≤ (g0 + groups) · GROUP · width ≤ q.len() (asserted).
                    let y = unsafe { _mm256_loadu_si256(q.as_ptr().add(at).cast::<__m256i>()) };
                    *a = _mm512_dpwssd_epi32(*a, x, _mm512_cvtepi8_epi16(y));
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                *o = _mm512_reduce_add_epi32(a);
            }
        }
    }
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
                let (simd, portable) = sums(&index, &h);
                assert_eq!(simd, portable, "rows {rows}, h {t}: the two paths' sums");
                let hidden = Hidden::new(&h, index.width).expect("finite");
                for v in 0..rows {
                    let exact = f64::from(dot(&h, &w[v * k..(v + 1) * k]));
                    let (estimate, radius) = index.estimate(&hidden, v, simd[v]);
                    let gap = (exact - estimate).abs();
                    assert!(gap <= radius, "row {v}: {gap} > {radius}");
                }
            }
        }
    }

    /// The integer sums of every row of `index` with `h`, through [`estimate_task`] (VNNI
    /// where the CPU has it) and through the portable loop.
    fn sums(index: &HeadIndex, h: &[f32]) -> (Vec<i32>, Vec<i32>) {
        let hidden = Hidden::new(h, index.width).expect("finite");
        let padded = index.q.len() / index.width;
        let (mut simd, mut portable) = (vec![0; padded], vec![0; padded]);
        estimate_task(&hidden.h16, &index.q, &mut simd, 0, index.width);
        estimate_groups(&hidden.h16, &index.q, &mut portable, 0, index.width);
        (simd, portable)
    }

    /// Row `v` of the interleaved copy.
    fn copy_row(index: &HeadIndex, v: usize) -> Vec<i8> {
        let group = &index.q[(v / GROUP) * GROUP * index.width..][..GROUP * index.width];
        (0..index.k)
            .map(|i| group[(i / CHUNK) * GROUP * CHUNK + (v % GROUP) * CHUNK + i % CHUNK])
            .collect()
    }

    /// The largest sums the int16 step allows (every weight and every `|h|` at its maximum)
    /// are exact: no i32 overflows, on either path.
    #[test]
    fn the_largest_sums_do_not_overflow_and_wider_heads_are_declined() {
        for k in [768, 1000, 4096] {
            let rows = 9;
            let w: Vec<f32> = (0..rows * k)
                .map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            let index = HeadIndex::new(&w, k);
            let h = vec![2.5f32; k];
            let (simd, portable) = sums(&index, &h);
            let top = i64::from(hidden_max(index.width));
            for v in 0..rows {
                assert_eq!(
                    copy_row(&index, v),
                    vec![if v % 2 == 0 { 127 } else { -127 }; k]
                );
                let want = top * 127 * k as i64 * if v % 2 == 0 { 1 } else { -1 };
                assert_eq!(i64::from(simd[v]), want, "k {k}, row {v}");
                assert_eq!(i64::from(portable[v]), want, "k {k}, row {v}");
            }
            assert_eq!(index.argmax(&h, &w), 0);
        }
        assert!(HeadIndex::fits(1) && HeadIndex::fits(66_000));
        assert!(!HeadIndex::fits(0) && !HeadIndex::fits(70_000));
        // Too wide for the index: the caller falls back to the full logits.
        use burn::prelude::*;
        let device = Default::default();
        let k = 70_000;
        let head = Tensor::<crate::Flex, 2>::zeros([2, k], &device);
        let hidden = Tensor::<crate::Flex, 2>::zeros([1, k], &device);
        assert_eq!(head_argmax(hidden, head, &HeadCache::default()), None);
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
        assert_eq!(copy_row(&index, 40), copy_row(&index, top));
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
