//! What kiln's numerics need to know about the backend they run on, found out from burn's
//! backend name (so it works through autodiff and for every float type).
//!
//! - burn's cubecl backends (CUDA, wgpu) sum a whole tensor with atomic adds, in whatever
//!   order the GPU schedules them: the last bits of a loss or a gradient norm change from run
//!   to run. [`sum`] reduces along one dimension there instead, which adds in a fixed order.
//! - Vulkan and Metal shaders have no f64 `exp`/`log` (wgpu computes garbage, not an error):
//!   [`wide_float`] is f64 where the backend computes those in f64, else f32.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor};

/// Whether `B` runs on burn's cubecl backend (CUDA, wgpu), directly or under autodiff.
#[must_use]
pub fn is_cubecl<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("cubecl<")
}

/// The sum of all of `x`'s elements, `[1]`, in an order that does not change between runs on
/// any backend (on the CPU backends exactly burn's `sum`).
pub fn sum<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
    if is_cubecl::<B>(&x.device()) {
        let n = x.shape().num_elements();
        x.reshape([n]).sum_dim(0)
    } else {
        x.sum()
    }
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
