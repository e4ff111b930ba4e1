//! Where training runs: the `device` param (`cpu`, `cuda`, `cuda:N`) and the `precision`
//! param (`f32`, or `bf16` on CUDA), turned into a concrete burn backend.
//!
//! CPU is burn-flex or burn-ndarray (`cpu:flex`, `cpu:ndarray`; `cpu` is the faster,
//! [`DEFAULT_CPU`]). CUDA needs a build with the `cuda` cargo feature and a
//! machine with an NVIDIA driver; both are checked before anything touches the GPU, so a
//! missing driver is an error message rather than a panic in burn's device thread.

use burn::tensor::backend::AutodiffBackend;

use crate::error::{Error, Result};

/// A CPU backend of burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBackendKind {
    /// burn-ndarray.
    NdArray,
    /// burn-flex.
    Flex,
}

/// A device to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, on a given burn backend (`cpu` picks the faster, [`DEFAULT_CPU`]).
    Cpu(CpuBackendKind),
    /// CUDA GPU number N.
    Cuda(usize),
}

/// The CPU backend `device: cpu` means: the faster of the two in `kiln bench train`.
pub const DEFAULT_CPU: CpuBackendKind = CpuBackendKind::Flex;

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu(DEFAULT_CPU)),
            "cpu:flex" => Ok(Self::Cpu(CpuBackendKind::Flex)),
            "cpu:ndarray" => Ok(Self::Cpu(CpuBackendKind::NdArray)),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    format!("{s:?} is not a device: write cpu (or cpu:flex, cpu:ndarray), cuda or cuda:N")
                }),
        }
    }
}

/// Floating-point precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// bfloat16 (CUDA only).
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("{s:?} is not a precision: write f32 or bf16")),
        }
    }
}

/// Work to run on whichever backend the device param picks.
pub trait Job {
    /// What it returns.
    type Output;
    /// Runs on backend `B`, on `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// The ndarray CPU autodiff backend.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

/// The flex CPU autodiff backend.
pub type FlexBackend = burn::backend::Autodiff<burn::backend::Flex<f32, i32>>;

/// Runs `job` on `device` at `precision`.
///
/// # Errors
/// CUDA in a build without the `cuda` feature or on a machine without a usable driver, or
/// bf16 on the CPU.
pub fn dispatch<J: Job>(device: Device, precision: Precision, job: J) -> Result<J::Output> {
    match (device, precision) {
        (Device::Cpu(CpuBackendKind::NdArray), Precision::F32) => {
            Ok(job.run::<CpuBackend>(Default::default()))
        }
        (Device::Cpu(CpuBackendKind::Flex), Precision::F32) => {
            Ok(job.run::<FlexBackend>(Default::default()))
        }
        (Device::Cpu(_), Precision::Bf16) => Err(Error::Device(
            "precision bf16 needs a CUDA device; on the CPU use f32".into(),
        )),
        (Device::Cuda(index), precision) => cuda::dispatch(index, precision, job),
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::{Job, Precision};
    use crate::error::{Error, Result};

    pub(super) fn dispatch<J: Job>(index: usize, _: Precision, _: J) -> Result<J::Output> {
        Err(Error::Device(format!(
            "device cuda:{index} asked for, but this kiln was built without CUDA support: \
             rebuild with `cargo build --release --features cuda` (or use device: cpu)"
        )))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Job, Precision};
    use crate::error::{Error, Result};

    type CudaF32 = burn::backend::Autodiff<burn_cuda::Cuda<f32, i32>>;
    type CudaBf16 = burn::backend::Autodiff<burn_cuda::Cuda<burn::tensor::bf16, i32>>;

    /// Loads the driver library and counts devices, so that a machine without a GPU gets an
    /// error instead of a panic inside burn's CUDA runtime.
    fn check_driver(index: usize) -> Result<()> {
        type Init = unsafe extern "C" fn(u32) -> i32;
        type Count = unsafe extern "C" fn(*mut i32) -> i32;
        // SAFETY: loading the CUDA driver runs no initialisation beyond the library's own;
        // the two symbols have these C signatures in every driver since CUDA 2.
        unsafe {
            let lib = libloading::Library::new("libcuda.so.1")
                .or_else(|_| libloading::Library::new("libcuda.so"))
                .map_err(|e| {
                    Error::Device(format!(
                        "device cuda:{index}: no NVIDIA driver found ({e}); use device: cpu"
                    ))
                })?;
            let init: libloading::Symbol<Init> = lib
                .get(b"cuInit\0")
                .map_err(|e| Error::Device(format!("the CUDA driver has no cuInit: {e}")))?;
            let rc = init(0);
            if rc != 0 {
                return Err(Error::Device(format!(
                    "device cuda:{index}: the CUDA driver failed to initialise (error {rc}); use device: cpu"
                )));
            }
            let count: libloading::Symbol<Count> = lib.get(b"cuDeviceGetCount\0").map_err(|e| {
                Error::Device(format!("the CUDA driver has no cuDeviceGetCount: {e}"))
            })?;
            let mut n = 0i32;
            let rc = count(&mut n);
            if rc != 0 || index >= n.max(0) as usize {
                return Err(Error::Device(format!(
                    "device cuda:{index} asked for, but this machine has {n} CUDA device(s)"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn dispatch<J: Job>(
        index: usize,
        precision: Precision,
        job: J,
    ) -> Result<J::Output> {
        check_driver(index)?;
        let device = burn_cuda::CudaDevice::new(index);
        Ok(match precision {
            Precision::F32 => job.run::<CudaF32>(device),
            Precision::Bf16 => job.run::<CudaBf16>(device),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu(DEFAULT_CPU)));
        assert_eq!(
            "cpu:ndarray".parse(),
            Ok(Device::Cpu(CpuBackendKind::NdArray))
        );
        assert_eq!("cuda:1".parse(), Ok(Device::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        struct Nothing;
        impl Job for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _: B::Device) {}
        }
        let err = dispatch(Device::Cuda(0), Precision::F32, Nothing).expect_err("no cuda");
        assert!(err.to_string().contains("--features cuda"), "{err}");
        let err = dispatch(Device::Cpu(DEFAULT_CPU), Precision::Bf16, Nothing)
            .expect_err("no bf16 on cpu");
        assert!(err.to_string().contains("bf16"), "{err}");
    }
}
