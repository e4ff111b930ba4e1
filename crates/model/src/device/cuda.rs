//! `device: cuda[:N]`: burn-cuda on an NVIDIA GPU (the driver is loaded at run time).

// burn-cuda turns on cubecl's `cuda` runtime, which it does not re-export.
use burn_cubecl::cubecl::cuda::{CudaDevice, CudaRuntime};

use super::gpu::{self, Platform};
use super::{Job, Precision};
use crate::error::{Error, Result};

struct Cuda;

impl Platform for Cuda {
    type Runtime = CudaRuntime;
    type Bool = u8;
    const PRECISIONS: &'static [Precision] = &[Precision::F32, Precision::F16, Precision::Bf16];
    const INSTEAD: &'static str = "CUDA offers f32, f16 and bf16 where the GPU supports them";
}

/// Loads the driver library and counts devices, so that a machine without a GPU gets an
/// error instead of a panic inside burn's CUDA runtime.
pub(super) fn device_count() -> Result<usize, String> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Count = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: loading the CUDA driver runs no initialisation beyond the library's own;
    // the two symbols have these C signatures in every driver since CUDA 2.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1")
            .or_else(|_| libloading::Library::new("libcuda.so"))
            .map_err(|e| format!("no NVIDIA driver found ({e})"))?;
        let init: libloading::Symbol<Init> = lib
            .get(b"cuInit\0")
            .map_err(|e| format!("the CUDA driver has no cuInit: {e}"))?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!("the CUDA driver failed to initialise (error {rc})"));
        }
        let count: libloading::Symbol<Count> = lib
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| format!("the CUDA driver has no cuDeviceGetCount: {e}"))?;
        let mut n = 0i32;
        let rc = count(&mut n);
        if rc != 0 {
            return Err(format!("the CUDA driver cannot count devices (error {rc})"));
        }
        Ok(n.max(0) as usize)
    }
}

fn check_driver(index: usize) -> Result<()> {
    let n = device_count()
        .map_err(|e| Error::Device(format!("device cuda:{index}: {e}; use device: cpu or wgpu")))?;
    if index >= n {
        return Err(Error::Device(format!(
            "device cuda:{index} asked for, but this machine has {n} CUDA device(s)"
        )));
    }
    Ok(())
}

/// Runs `job` on CUDA GPU `index` at `precision`.
pub(super) fn dispatch<J: Job>(index: usize, precision: Precision, job: J) -> Result<J::Output> {
    check_driver(index)?;
    gpu::run::<Cuda, J>(
        &format!("cuda:{index}"),
        CudaDevice::new(index),
        precision,
        job,
    )
}
