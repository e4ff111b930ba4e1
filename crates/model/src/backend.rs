//! What kiln's numerics need to know about the backend they run on, found out from burn's
//! backend name (so it works through autodiff and for every float type).
//!
//! - burn's cubecl backends (CUDA, wgpu) sum a whole tensor with atomic adds, in whatever
//!   order the GPU schedules them: the last bits of a loss or a gradient norm change from run
//!   to run. And they sum a long row mostly one element after another: over GPT-2's 50,257
//!   ids an f32 sum of a peaked row's `exp` loses its tail (the KL of a peaked teacher came
//!   out 1.2e-4 relative off). [`sum`], [`row_sums`] and [`log_softmax`] add there in a fixed
//!   order, at most [`CHUNK`] terms at a time, and leave the CPU backends' bits as they were.
//! - Vulkan and Metal shaders have no f64 `exp`/`log` (wgpu computes garbage, not an error):
//!   [`wide_float`] is f64 where the backend computes those in f64, else f32.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};

/// Whether `B` runs on burn's cubecl backend (CUDA, wgpu), directly or under autodiff.
#[must_use]
pub fn is_cubecl<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("cubecl<")
}

/// The most terms a cubecl reduction adds in one sequence in [`row_sums`].
pub const CHUNK: usize = 64;

/// The sum of all of `x`'s elements, `[1]`, in an order that does not change between runs on
/// any backend (on the CPU backends exactly burn's `sum`).
pub fn sum<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    if is_cubecl::<B>(&x.device()) {
        let n = x.shape().num_elements();
        row_sums(x.reshape([1, n]))
    } else {
        x.sum()
    }
}

/// The sum of each row of `x`, `[rows]`. On cubecl, in levels of at most [`CHUNK`] terms (a
/// row is padded with zeros to a multiple of it), so no sum runs along a whole long row; on
/// the CPU backends burn's `sum_dim`.
pub fn row_sums<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    let [rows, _] = x.dims();
    if !is_cubecl::<B>(&x.device()) {
        return x.sum_dim(1).reshape([rows]);
    }
    let mut x = x;
    loop {
        let width = x.dims()[1];
        if width <= CHUNK {
            return x.sum_dim(1).reshape([rows]);
        }
        let pad = width.next_multiple_of(CHUNK) - width;
        if pad > 0 {
            // pad < CHUNK < width: zeros of x's dtype and device, shaped [rows, pad].
            let zeros = x.clone().narrow(1, 0, pad).zeros_like();
            x = Tensor::cat(vec![x, zeros], 1);
        }
        let parts = (width + pad) / CHUNK;
        x = x
            .reshape([rows, parts, CHUNK])
            .sum_dim(2)
            .reshape([rows, parts]);
    }
}

/// `log_softmax(x, 1)` of `[rows, width]` logits: burn's on the CPU backends; on cubecl the
/// same steps (the row maximum subtracted, `exp`, sum, `log`) with the sum of [`row_sums`].
pub fn log_softmax<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    if !is_cubecl::<B>(&x.device()) {
        return burn::tensor::activation::log_softmax(x, 1);
    }
    let [rows, _] = x.dims();
    let max = x.clone().detach().max_dim(1);
    let shifted = x - max;
    let log_sum = row_sums(shifted.clone().exp()).log().reshape([rows, 1]);
    shifted - log_sum
}

/// The float type to compute precision-sensitive sums and logarithms in: f64 where the device
/// computes `exp` and `log` in f64 (the CPU backends, CUDA), else f32 (wgpu).
#[must_use]
pub fn wide_float<B: Backend>(device: &B::Device) -> FloatDType {
    let name = B::name(device);
    if !name.contains("wgpu") && B::supports_dtype(device, DType::F64) {
        FloatDType::F64
    } else {
        FloatDType::F32
    }
}
